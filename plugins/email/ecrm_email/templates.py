"""E-mail templates: marketer-authored Jinja2, rendered in a sandbox.

A template has a ``subject``, an ``html`` and/or a ``text`` part.  Parts are
Jinja2 source rendered in an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
with :class:`~jinja2.StrictUndefined`: autoescaping is on for the HTML part
and off for the subject and the text part; the rendered subject must be one
line.  The HTML is passed through ``css_inline`` (``@media`` rules stay in a
``<style>`` block); a missing text part is derived from the HTML with
``inscriptis``.

Templates come from three places, searched in order by one
:class:`~jinja2.ChoiceLoader` (so ``{% extends %}``/``{% include %}`` work
across them):

1. stored templates of the workspace (table ``email_templates``,
   :meth:`Templates.save`); the part of a stored template ``NAME`` is
   addressed as ``NAME.subject``, ``NAME.html`` or ``NAME.txt``;
2. the ``directory`` given to :class:`Templates` (files ``NAME.subject``,
   ``NAME.html``, ``NAME.txt``);
3. the built-in layouts of this package (``layouts/base.html``).

Rendering is bounded: the output of each part is limited to ``max_output``
bytes and the whole render to ``max_seconds``; the operations that can blow
up a value (``*``, ``+``, ``%``, ``**``, ``~``, string padding, ``replace``,
``join``, ``format``…) are checked before they allocate, and loops and calls
check the time limit.  Every failure is a :class:`ecrm_core.channels.TemplateError`
naming the part (``template.html``) and the line.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import re
import string
import threading
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from attrs import frozen
from ecrm_core.channels import ChannelConfigError, TemplateError
from ecrm_core.errors import NotFound
from ecrm_core.validation import check_slug, check_text
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    FileSystemLoader,
    PrefixLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    nodes,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from .schema import TABLE

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "PARTS",
    "LAYOUTS_DIR",
    "Rendered",
    "Templates",
    "sample_context",
    "rewrite_links",
    "add_open_pixel",
    "track_html",
]

#: The parts of a template, in rendering order.
PARTS = ("subject", "html", "text")
_SUFFIX = {"subject": ".subject", "html": ".html", "text": ".txt"}
#: The built-in layouts (``{% extends "layouts/base.html" %}``).
LAYOUTS_DIR = Path(__file__).resolve().parent / "layouts"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")
_LINE_BREAKS = ("\r", "\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_MAX_SOURCE = 500_000
_MAX_INT_BITS = 4096
_JINJA_DOCS = "see https://jinja.palletsprojects.com/en/stable/templates/"


@frozen
class Rendered:
    """A rendered template: one-line ``subject``, inlined ``html`` (or ``None``), ``text``."""

    subject: str
    html: str | None
    text: str


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------


class _Limit(Exception):
    """A bound was hit while rendering (turned into a TemplateError)."""


class _Budget:
    """Per-render limits, kept in a thread-local while a render runs."""

    __slots__ = ("allowance", "deadline", "max_seconds", "spent")

    def __init__(self, max_seconds: float, allowance: int) -> None:
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.allowance = allowance
        self.spent = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Limit(f"rendering took longer than {self.max_seconds:g} s (max_seconds)")

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > self.allowance:
            raise _Limit(f"the template builds more than {self.allowance} bytes of text while rendering")


_local = threading.local()


def _budget() -> _Budget | None:
    return getattr(_local, "budget", None)


def _weight(value: Any, limit: int) -> int:
    """Roughly ``len(str(value))``, computed without building it; stops past ``limit``.

    Walks nested lists and dicts (a structure that shares itself many times
    costs what its string would), so each step adds at least one to the total
    and the walk is bounded by ``limit``.
    """
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 3
        elif isinstance(v, bool) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 2
        elif isinstance(v, Mapping):
            total += 2 + 4 * len(v)
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            if total <= limit:
                stack.extend(v)
        else:
            total += 40
        if total > limit:
            return total
    return total


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


# ---------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``~`` and ``{% for %}`` routed through checks."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        flag = "context.eval_ctx.autoescape" if frame.eval_ctx.volatile else repr(bool(frame.eval_ctx.autoescape))
        self.write(f"environment.ecrm_concat({flag}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        original = node.iter
        wrapped = nodes.Call(nodes.EnvironmentAttribute("ecrm_iter"), [original], [], None, None, lineno=node.lineno)
        wrapped.set_environment(self.environment)
        node.iter = wrapped
        try:
            super().visit_For(node, frame)
        finally:
            node.iter = original


class _BoundedIter:
    """An iterable that checks the time limit while a loop runs."""

    __slots__ = ("_it",)

    def __init__(self, iterable: Any) -> None:
        self._it = iterable

    def __len__(self) -> int:
        return len(self._it)

    def __iter__(self) -> Iterator[Any]:
        budget = _budget()
        for i, item in enumerate(self._it):
            if budget is not None and not i & 63:
                budget.tick()
            yield item


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """``default``: the fallback when the value is undefined or ``None``
    (or, with ``boolean=true``, any false value)."""
    if isinstance(value, Undefined) or value is None or (boolean and not value):
        return default_value
    return value


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith((".html", ".htm", ".xml"))


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with output bounds (one per workspace)."""

    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, loader: BaseLoader, max_output: int) -> None:
        self.max_output = max_output
        super().__init__(
            loader=loader,
            autoescape=_autoescape,
            undefined=StrictUndefined,
            finalize=self._finalize,
            auto_reload=True,
            cache_size=400,
        )
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) would build gigabytes
        filters = dict(self.filters)
        filters["default"] = filters["d"] = _default
        self.filters = {name: self._bounded_filter(name, f) for name, f in filters.items()}

    # -- accounting ------------------------------------------------------
    def _too_big(self, size: int, what: str = "output") -> None:
        if size > self.max_output:
            raise _Limit(f"{what} larger than {self.max_output} bytes (max_output)")

    def _produced(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple):
            self._too_big(len(value))
            budget = _budget()
            if budget is not None:
                budget.spend(len(value))
        return value

    def _check_weight(self, value: Any) -> None:
        self._too_big(_weight(value, self.max_output))

    def _check_width(self, width: Any) -> None:
        if isinstance(width, int) and width > self.max_output:
            raise _Limit(f"width {width} larger than max_output ({self.max_output})")

    def _check_percent(self, fmt: str, args: Any) -> None:
        for match in _PERCENT_SPEC.finditer(fmt):
            for num in match.group(1, 2):
                if num == "*":
                    raise _Limit("'*' widths in '%' formats are not allowed in templates")
                if num:
                    self._check_width(int(num))
        self._check_weight(args)

    def _check_format_spec(self, fmt: str) -> None:
        for _literal, field, spec, _conv in string.Formatter().parse(fmt):
            if field is not None and spec:
                if "{" in spec:
                    raise _Limit("nested replacement fields in format specs are not allowed in templates")
                for num in re.findall(r"\d+", spec):
                    self._check_width(int(num))

    def _check_replace(self, s: Any, old: Any, new: Any, count: Any = None) -> None:
        if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
            n = s.count(old) if old else len(s) + 1
            if isinstance(count, int) and count >= 0:
                n = min(n, count)
            self._too_big(len(s) + n * max(0, len(new) - len(old)))

    # -- finalize (what {{ ... }} prints) ---------------------------------
    def _finalize(self, value: Any) -> Any:
        if value is None:
            return ""
        if not isinstance(value, str) and isinstance(value, Mapping | list | tuple | set | frozenset):
            self._check_weight(value)
        elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _Limit("number too large to print")
        return value

    # -- hooks called by the generated code -------------------------------
    def ecrm_iter(self, iterable: Any) -> _BoundedIter:
        return _BoundedIter(iterable)

    def ecrm_concat(self, autoescape: bool, parts: tuple[Any, ...]) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        total = 0
        for part in parts:
            total += _weight(part, self.max_output)
            self._too_big(total)
        return self._produced(markup_join(parts) if autoescape else str_join(parts))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > _MAX_INT_BITS:
                    raise _Limit(f"number too large: {left} ** {right}")
            return left**right
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, str) and isinstance(n, int):
                self._too_big(len(seq) * max(n, 0))
            elif isinstance(seq, list | tuple) and isinstance(n, int):
                self._too_big(len(seq) * max(n, 0))
                self._too_big(_weight(seq, self.max_output) * max(n, 0))
            elif isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise _Limit("number too large")
            return self._produced(left * right)
        if operator == "%":
            if isinstance(left, str):
                self._check_percent(left, right)
            return self._produced(left % right)
        # "+"
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            self._too_big(len(left) + len(right))
        return self._produced(left + right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(__obj, types.BuiltinMethodType | types.MethodType) and isinstance(owner, str):
            args = __self._check_str_method(owner, __obj.__name__, args, kwargs)
        return __self._produced(super().call(__context, __obj, *args, **kwargs))

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if name in ("ljust", "rjust", "center", "zfill"):
            self._check_width(args[0] if args else kwargs.get("width"))
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int):
                self._too_big(len(s) + s.count("\t") * size)
        elif name == "replace":
            self._check_replace(s, *args[:3], **{k: v for k, v in kwargs.items() if k == "count"})
        elif name == "join" and args:
            items = builtins.list(_BoundedIter(args[0]))
            self._too_big(len(items) * len(s))
            self._check_weight(items)
            return (items, *args[1:])
        return args

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            self._check_format_spec(fmt)
            self._check_weight((args, kwargs))
            result: str = self._produced(wrapper(*args, **kwargs))  # a Markup stays a Markup
            return result

        return bounded

    # -- filters ------------------------------------------------------------
    def _bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
        check = getattr(self, f"_pre_{name}", None)

        @functools.wraps(func)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            budget = _budget()
            if budget is not None:
                budget.tick()
            if check is not None and len(args) > skip:
                args = (*args[:skip], *check(args[skip:], kwargs))
            return self._produced(func(*args, **kwargs))

        return bounded

    # Each ``_pre_<filter>(args, kwargs)`` checks a filter call before it runs
    # (``args`` start with the filtered value) and returns the positional args.
    def _pre_center(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        self._check_width(_arg(args, kwargs, 1, "width", 80))
        return args

    def _pre_indent(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        s, width = args[0], _arg(args, kwargs, 1, "width", 4)
        w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if isinstance(s, str):
            self._too_big(len(s) + (s.count("\n") + 1) * w)
        return args

    def _pre_format(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if isinstance(args[0], str):
            self._check_percent(args[0], (args[1:], kwargs))
        return args

    def _pre_replace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        self._check_replace(
            args[0], _arg(args, kwargs, 1, "old", ""), _arg(args, kwargs, 2, "new", ""), _arg(args, kwargs, 3, "count")
        )
        return args

    def _pre_join(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if isinstance(args[0], Undefined):
            return args
        items = builtins.list(_BoundedIter(args[0]))
        sep = _arg(args, kwargs, 1, "d", "")
        self._too_big(len(items) * (len(sep) if isinstance(sep, str) else 0))
        self._check_weight(items)
        return (items, *args[1:])

    def _pre_wordwrap(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        s, width, wrap = args[0], _arg(args, kwargs, 1, "width", 79), _arg(args, kwargs, 3, "wrapstring")
        if isinstance(s, str) and isinstance(wrap, str) and isinstance(width, int) and width > 0:
            self._too_big(len(s) + (len(s) // width + 1) * len(wrap))
        return args

    def _pre_batch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        count = _arg(args, kwargs, 1, "linecount", 1)
        if isinstance(count, int) and count > MAX_RANGE:
            raise _Limit(f"batch size larger than {MAX_RANGE}")
        return args

    def _pre_slice(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        count = _arg(args, kwargs, 1, "slices", 1)
        if isinstance(count, int) and count > MAX_RANGE:
            raise _Limit(f"slice count larger than {MAX_RANGE}")
        return args

    def _pre_string(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        self._check_weight(args[0])
        return args

    _pre_pprint = _pre_tojson = _pre_string


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _split(template: str) -> tuple[str, str] | None:
    for part, suffix in _SUFFIX.items():
        if template.endswith(suffix) and len(template) > len(suffix):
            return template[: -len(suffix)], part
    return None


class _StoredLoader(BaseLoader):
    """Parts of the workspace's stored templates, as ``NAME.subject|html|txt``."""

    def __init__(self, templates: Templates, workspace: str) -> None:
        self.templates = templates
        self.workspace = workspace

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        split = _split(template)
        if split is None or not _NAME.match(split[0]):
            raise TemplateNotFound(template)
        name, part = split
        row = self.templates._row(self.workspace, name)
        if row is None or row[part] is None:
            raise TemplateNotFound(template)
        source, stamp = row[part], row["updated_at"]

        def uptodate() -> bool:
            now = self.templates._row(self.workspace, name)
            return now is not None and now["updated_at"] == stamp and now[part] == source

        return source, f"db:{self.workspace}/{template}", uptodate


class _Shadowed(BaseLoader):
    """A directory or built-in loader whose templates give way to stored ones.

    A template loaded from here stays valid while no stored template of the
    same name appears (checked through the row cache, so a template saved by
    another process is seen within ``cache_seconds``).
    """

    def __init__(self, inner: BaseLoader, templates: Templates, workspace: str) -> None:
        self.inner = inner
        self.templates = templates
        self.workspace = workspace

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, inner_uptodate = self.inner.get_source(environment, template)
        split = _split(template)
        stored = split[0] if split is not None and _NAME.match(split[0]) else None

        def uptodate() -> bool:
            if inner_uptodate is not None and not inner_uptodate():
                return False
            if stored is None:
                return True
            row = self.templates._row(self.workspace, stored)
            return row is None or row[split[1]] is None  # type: ignore[index]

        return source, filename, uptodate


# ---------------------------------------------------------------------------
# Sample data for previews
# ---------------------------------------------------------------------------


def sample_context() -> dict[str, Any]:
    """The data :meth:`Templates.preview` renders with (a fresh copy)."""
    return {
        "customer": {
            "id": 0,
            "external_id": "sample-ada",
            "email": "ada@example.com",
            "phone": None,
            "name": "Ada Lovelace",
            "first_name": "Ada",
            "attributes": {"tier": "gold", "city": "London", "favourite_category": "books"},
            "lifecycle_stage": "active",
            "timezone": "Europe/London",
            "locale": "en-GB",
            "consent": {"email": "granted"},
        },
        "offer": {
            "id": 0,
            "code": "spring-sale",
            "name": "Spring sale: 20% off",
            "kind": "discount",
            "content": {"discount": "20%", "coupon": "SPRING20", "url": "https://shop.example.com/spring"},
            "priority": 0,
            "channels": ["email"],
            "status": "active",
        },
        "message": {"id": "preview", "channel": "email", "purpose": "newsletter"},
        "unsubscribe_url": "https://example.com/unsubscribe/PREVIEW",
        "preferences_url": "https://example.com/preferences/PREVIEW",
    }


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------


class Templates:
    """Store, load and render e-mail templates for a CRM.

    ``directory`` adds file templates (``NAME.subject``, ``NAME.html``,
    ``NAME.txt``) after the stored ones; ``max_output`` bounds each rendered
    part (bytes of UTF-8), ``max_seconds`` a whole render.  Stored rows are
    cached for ``cache_seconds`` (a save or delete through this object is
    seen at once; one made by another process within ``cache_seconds``).
    One object serves every workspace and every thread.
    """

    def __init__(
        self,
        crm: CRM,
        *,
        directory: str | Path | None = None,
        max_output: int = 1_000_000,
        max_seconds: float = 2.0,
        cache_seconds: float = 2.0,
    ) -> None:
        self.crm = crm
        self.directory = Path(directory).resolve() if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            raise ChannelConfigError(f"templates_dir: {str(self.directory)!r} is not a directory")
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise ChannelConfigError(f"max_output must be a positive number of bytes, got {max_output!r}")
        if not isinstance(max_seconds, int | float) or max_seconds <= 0:
            raise ChannelConfigError(f"max_seconds must be a positive number, got {max_seconds!r}")
        self.max_output = max_output
        self.max_seconds = float(max_seconds)
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._envs: dict[str, _Sandbox] = {}
        self._rows: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._inline: OrderedDict[tuple[str, str, str], Template] = OrderedDict()
        import css_inline

        self._inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)

    # -- storage --------------------------------------------------------
    @property
    def table(self) -> sa.Table:
        try:
            return self.crm.db.tables[TABLE]
        except KeyError:
            raise ChannelConfigError(
                "the email_templates table is not registered: load the e-mail plugin "
                "(CRM(plugins=[ecrm_email.plugin]) or install ecrm-email) and run crm.upgrade()"
            ) from None

    def _ws(self, workspace: str | None) -> str:
        return check_slug(workspace or self.crm.workspace, "workspace", "workspace id")

    def _row(self, workspace: str, name: str) -> dict[str, Any] | None:
        key = (workspace, name)
        hit = self._rows.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        t = self.table
        with self.crm.db.read() as conn:
            found = conn.execute(sa.select(t).where(t.c.workspace_id == workspace, t.c.name == name)).first()
        row = self._public(found._mapping) if found is not None else None
        with self._lock:
            if len(self._rows) > 10_000:
                self._rows.clear()
            self._rows[key] = (now + self.cache_seconds, row)
        return row

    @staticmethod
    def _public(m: Any) -> dict[str, Any]:
        return {
            "name": m["name"],
            "subject": m["subject"],
            "html": m["html"],
            "text": m["text"],
            "description": m["description"],
            "created_at": m["created_at"],
            "updated_at": m["updated_at"],
        }

    def _db_source(self, filename: str) -> str | None:
        """The source behind a stored template's file name ``db:<ws>/<name>.<ext>``."""
        ws, _, template = filename.removeprefix("db:").partition("/")
        split = _split(template)
        if split is None:
            return None
        row = self._row(ws, split[0])
        return row[split[1]] if row is not None else None

    def _forget(self, workspace: str, name: str) -> None:
        with self._lock:
            self._rows.pop((workspace, name), None)

    def save(
        self,
        name: str,
        *,
        subject: str,
        html: str | None = None,
        text: str | None = None,
        description: str = "",
        workspace: str | None = None,
    ) -> None:
        """Create or replace the template ``name`` (upsert).

        Every part is compiled first; a syntax error raises
        :class:`TemplateError` naming the part and the line, and nothing is
        stored.  ``html`` or ``text`` (or both) is required.
        """
        name = _check_name(name)
        ws = self._ws(workspace)
        description = check_text(description, "description", max_length=2000)
        parts = {"subject": subject, "html": html, "text": text}
        for part, source in parts.items():
            if source is None and part != "subject":
                continue
            if not isinstance(source, str):
                raise TemplateError(f"template.{part}", source, "not a string", "send the template source as text")
            if len(source) > _MAX_SOURCE or "\x00" in source:
                raise TemplateError(
                    f"template.{part}",
                    source,
                    f"longer than {_MAX_SOURCE} characters or contains NUL",
                    "send a shorter template; put shared parts in a layout",
                )
        if not subject.strip():
            raise TemplateError("template.subject", subject, "empty subject", "give the e-mail a subject")
        if html is None and text is None:
            raise TemplateError("template", name, "no body", "give html=..., text=... or both")
        env = self._env(ws)
        for part, source in parts.items():
            if source is not None:
                try:
                    env.compile(source, name=f"{name}{_SUFFIX[part]}", filename=f"<{part}>")
                except TemplateSyntaxError as exc:
                    raise _syntax_error(part, exc, source) from None
        t = self.table
        now = self.crm.now()
        self.crm.db.check_schema()
        values = {"subject": subject, "html": html, "text": text, "description": description, "updated_at": now}
        where = (t.c.workspace_id == ws, t.c.name == name)
        for attempt in (1, 2):
            try:
                with self.crm.db.write() as conn:
                    done = conn.execute(sa.update(t).where(*where).values(**values)).rowcount
                    if not done:
                        conn.execute(sa.insert(t).values(workspace_id=ws, name=name, created_at=now, **values))
                break
            except sa.exc.IntegrityError:  # a concurrent save inserted it first: update it
                if attempt == 2:
                    raise
        self._forget(ws, name)

    def get(self, name: str, *, workspace: str | None = None) -> dict[str, Any]:
        """The stored template ``name``: name, subject, html, text, description, created_at, updated_at."""
        name = _check_name(name)
        ws = self._ws(workspace)
        t = self.table
        self.crm.db.check_schema()
        with self.crm.db.read() as conn:
            found = conn.execute(sa.select(t).where(t.c.workspace_id == ws, t.c.name == name)).first()
        if found is None:
            raise NotFound("email template", name)
        return self._public(found._mapping)

    def list(self, *, workspace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every stored template of the workspace, by name."""
        ws = self._ws(workspace)
        t = self.table
        self.crm.db.check_schema()
        with self.crm.db.read() as conn:
            rows = conn.execute(sa.select(t).where(t.c.workspace_id == ws).order_by(t.c.name)).all()
        return [self._public(r._mapping) for r in rows]

    def delete(self, name: str, *, workspace: str | None = None) -> None:
        """Delete the stored template ``name`` (:class:`NotFound` if there is none)."""
        name = _check_name(name)
        ws = self._ws(workspace)
        t = self.table
        self.crm.db.check_schema()
        with self.crm.db.write() as conn:
            gone = conn.execute(sa.delete(t).where(t.c.workspace_id == ws, t.c.name == name)).rowcount
        self._forget(ws, name)
        if not gone:
            raise NotFound("email template", name)

    # -- environments ------------------------------------------------------
    def _env(self, workspace: str) -> _Sandbox:
        env = self._envs.get(workspace)
        if env is not None:
            return env
        with self._lock:
            env = self._envs.get(workspace)
            if env is None:
                loaders: builtins.list[BaseLoader] = [_StoredLoader(self, workspace)]
                if self.directory is not None:
                    loaders.append(_Shadowed(FileSystemLoader(self.directory), self, workspace))
                builtin = PrefixLoader({"layouts": FileSystemLoader(LAYOUTS_DIR)})
                loaders.append(_Shadowed(builtin, self, workspace))
                env = _Sandbox(ChoiceLoader(loaders), self.max_output)
                self._envs[workspace] = env
        return env

    def _compile_inline(self, env: _Sandbox, workspace: str, part: str, source: str) -> Template:
        key = (workspace, part, source)
        with self._lock:
            hit = self._inline.get(key)
            if hit is not None:
                self._inline.move_to_end(key)
                return hit
        try:
            code = env.compile(source, name=f"<inline>{_SUFFIX[part]}", filename=f"<{part}>")
        except TemplateSyntaxError as exc:
            raise _syntax_error(part, exc, source) from None
        compiled = env.template_class.from_code(env, code, env.make_globals(None), None)
        with self._lock:
            self._inline[key] = compiled
            while len(self._inline) > 256:
                self._inline.popitem(last=False)
        return compiled

    def _resolve(self, env: _Sandbox, workspace: str, template: Any) -> dict[str, Template]:
        if isinstance(template, Mapping):
            unknown = set(template) - set(PARTS)
            if unknown:
                raise TemplateError(
                    "template", sorted(unknown), "unknown template parts", "use the keys subject, html and text"
                )
            found = {}
            for part in PARTS:
                source = template.get(part)
                if source is None:
                    continue
                if not isinstance(source, str) or len(source) > _MAX_SOURCE:
                    raise TemplateError(
                        f"template.{part}", source, "not a template string", "send the part's Jinja2 source as text"
                    )
                found[part] = self._compile_inline(env, workspace, part, source)
        elif isinstance(template, str):
            name = _check_name(template, "template")
            row = self._row(workspace, name)
            wanted = [p for p in PARTS if row is None or row[p] is not None]
            found = {}
            for part in wanted:
                try:
                    found[part] = env.get_template(f"{name}{_SUFFIX[part]}")
                except TemplateNotFound as exc:
                    if exc.name != f"{name}{_SUFFIX[part]}":
                        raise _render_error(part, exc, {}, {}, None, self._db_source) from None
                except TemplateSyntaxError as exc:
                    raise _syntax_error(part, exc, exc.source or "") from None
            if not found:
                where = f" or in {str(self.directory)!r}" if self.directory else ""
                raise TemplateError(
                    "template",
                    name,
                    f"no such template in workspace {workspace!r}{where}",
                    f"save it with templates.save({name!r}, subject=..., html=...)"
                    + (f" or add {name}.subject and {name}.html/.txt to the templates directory" if where else ""),
                )
        else:
            raise TemplateError(
                "template", template, "not a template", "pass a template name or a mapping of subject/html/text sources"
            )
        if "subject" not in found:
            raise TemplateError("template.subject", template, "no subject", "give the template a subject part")
        if "html" not in found and "text" not in found:
            raise TemplateError("template", template, "no body", "give the template an html or a text part")
        return found

    # -- rendering ---------------------------------------------------------
    def render(
        self, template: str | Mapping[str, str], context: Mapping[str, Any], *, workspace: str | None = None
    ) -> Rendered:
        """Render a stored/directory/built-in template by name, or an inline
        ``{"subject": ..., "html": ..., "text": ...}`` with plain-data ``context``."""
        ws = self._ws(workspace)
        if not isinstance(context, Mapping):
            raise TemplateError("context", context, "not a mapping", "pass a dict of plain data")
        env = self._env(ws)
        parts = self._resolve(env, ws, template)
        inline = template if isinstance(template, Mapping) else {}
        budget = _Budget(self.max_seconds, 10 * self.max_output)
        outer = _budget()
        _local.budget = budget
        try:
            ctx = dict(context)
            subject = self._run(parts["subject"], "subject", ctx, budget, inline)
            subject = subject.strip()
            if any(c in subject for c in _LINE_BREAKS):
                raise TemplateError(
                    "template.subject",
                    subject[:200],
                    "the rendered subject has a line break",
                    "keep the subject on one line: no newlines in the template, "
                    "and strip them from values, e.g. {{ value | replace('\\n', ' ') }}",
                )
            ctx.setdefault("subject", subject)
            html = None
            if "html" in parts:
                raw = self._run(parts["html"], "html", ctx, budget, inline)
                try:
                    html = self._inliner.inline(raw)
                except Exception as exc:  # css_inline.InlineError and friends
                    raise TemplateError(
                        "template.html", None, f"CSS could not be inlined: {exc}", "fix the <style> rules"
                    ) from None
                env._too_big(len(html.encode("utf-8", "surrogatepass")))
            if "text" in parts:
                text = self._run(parts["text"], "text", ctx, budget, inline)
            else:
                text = html_to_text(html or "")
        except _Limit as exc:  # from css inlining size check
            raise TemplateError("template.html", None, str(exc), _LIMIT_FIX) from None
        finally:
            _local.budget = outer
        return Rendered(subject=subject, html=html, text=text)

    def _run(
        self, template: Template, part: str, ctx: dict[str, Any], budget: _Budget, inline: Mapping[str, Any]
    ) -> str:
        out: builtins.list[str] = []
        size = 0
        chunks: Any = template.generate(ctx)
        try:
            for chunk in chunks:
                size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
                if size > self.max_output:
                    raise _Limit(f"output larger than {self.max_output} bytes (max_output)")
                budget.tick()
                out.append(chunk)
        except TemplateError:
            raise
        except Exception as exc:  # RecursionError, MemoryError, OverflowError, SecurityError...
            raise _render_error(part, exc, inline, ctx, template.filename, self._db_source) from None
        finally:
            chunks.close()
        return "".join(out)

    def preview(
        self,
        template: str | Mapping[str, str],
        sample: Mapping[str, Any] | None = None,
        *,
        workspace: str | None = None,
    ) -> Rendered:
        """Render with built-in sample data (:func:`sample_context`), deep-merged with ``sample``."""
        ctx = sample_context()
        if sample is not None:
            if not isinstance(sample, Mapping):
                raise TemplateError("sample", sample, "not a mapping", "pass a dict of plain data")
            ctx = _merge(ctx, sample)
        return self.render(template, ctx, workspace=workspace)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_LIMIT_FIX = "render less: fewer or shorter loops and values (a template may produce at most max_output bytes)"


def _check_name(name: Any, field: str = "name") -> str:
    if (
        not isinstance(name, str)
        or len(name) > 200
        or not _NAME.match(name)
        or _split(name) is not None
        or any(seg in (".", "..") for seg in name.split("/"))
    ):
        raise TemplateError(
            field,
            name,
            "not a valid template name",
            "use letters, digits, '_', '-', '.' and '/' between parts (max 200), "
            "without a .html/.txt/.subject extension, e.g. 'welcome' or 'layouts/brand'",
        )
    return name


def _syntax_error(part: str, exc: TemplateSyntaxError, source: str) -> TemplateError:
    where = ""
    if exc.name and not exc.name.startswith("<inline>") and exc.filename not in (f"<{part}>",):
        where = f" of {exc.name}"
    return TemplateError(
        f"template.{part}",
        _snippet(source, exc.lineno),
        f"line {exc.lineno}{where}: {exc.message}",
        f"fix the template syntax ({_JINJA_DOCS})",
    )


def _snippet(source: str, lineno: int | None) -> str:
    lines = source.splitlines()
    if lineno and 0 < lineno <= len(lines):
        return lines[lineno - 1][:200]
    return source[:200]


def _template_frame(exc: BaseException) -> tuple[str, int] | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename and not frame.filename.endswith((".py", ".pyc")) and frame.lineno:
            return frame.filename, frame.lineno
    return None


def _source_line(filename: str, lineno: int, inline: Mapping[str, Any], db_source: Callable[[str], str | None]) -> str:
    source: Any = None
    if filename.startswith("<") and filename.endswith(">"):
        source = inline.get(filename[1:-1])
    elif filename.startswith("db:"):
        source = db_source(filename)
    else:
        try:
            source = Path(filename).read_text(encoding="utf-8")
        except OSError:
            source = None
    if not isinstance(source, str):
        return ""
    lines = source.splitlines()
    return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


def _lookup(ctx: Mapping[str, Any], path: str) -> Any:
    value: Any = ctx
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _undefined_message(message: str, line: str, ctx: Mapping[str, Any]) -> tuple[str, str]:
    fallback = "check the spelling, or give a fallback: {{ value | default('...') }}"
    attr = re.search(r"has no attribute '([^']+)'", message)
    if attr:
        name = attr.group(1)
        pattern = (
            r"([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*(?:\.\s*" + re.escape(name) + r"\b|\[\s*['\"]"
            rf"{re.escape(name)}['\"]\s*\])"
        )
        found = re.search(pattern, line)
        if found:
            path = re.sub(r"\s+", "", found.group(1))
            message = f"'{path}' has no attribute '{name}'"
            owner = _lookup(ctx, path)
            if isinstance(owner, Mapping):
                close = difflib.get_close_matches(name, [k for k in owner if isinstance(k, str)], n=1)
                hint = f"did you mean '{path}.{close[0]}'? " if close else ""
                fallback = f"{hint}check the spelling, or give a fallback: {{{{ {path}.{name} | default('...') }}}}"
        return message, fallback
    var = re.match(r"'([A-Za-z_]\w*)' is undefined", message)
    if var:
        close = difflib.get_close_matches(var.group(1), [k for k in ctx if isinstance(k, str)], n=1)
        if close:
            fallback = f"did you mean '{close[0]}'? " + fallback
        else:
            fallback = f"pass '{var.group(1)}' in the context, or " + fallback
    return message, fallback


def _render_error(
    part: str,
    exc: BaseException,
    inline: Mapping[str, Any],
    ctx: Mapping[str, Any],
    own_filename: str | None,
    db_source: Callable[[str], str | None],
) -> TemplateError:
    field = f"template.{part}"
    if isinstance(exc, TemplateSyntaxError):  # in an extended or included template
        return _syntax_error(part, exc, exc.source or "")
    where = _template_frame(exc)
    prefix = ""
    line = ""
    if where is not None:
        filename, lineno = where
        own = filename in (own_filename, f"<{part}>")
        shown = filename.split("/", 1)[-1] if filename.startswith("db:") else Path(filename).name
        prefix = f"line {lineno}: " if own else f"line {lineno} of {shown}: "
        line = _source_line(filename, lineno, inline, db_source)
    if isinstance(exc, _Limit):
        return TemplateError(field, None, f"{prefix}{exc}", _LIMIT_FIX)
    if isinstance(exc, SecurityError):
        return TemplateError(
            field,
            line.strip()[:200] or None,
            f"{prefix}unsafe: {exc}",
            "templates may only read the data they are given (no attributes starting with '_', no internals)",
        )
    if isinstance(exc, UndefinedError):
        message, fix = _undefined_message(str(exc), line, ctx)
        return TemplateError(field, line.strip()[:200] or None, f"{prefix}{message}", fix)
    if isinstance(exc, TemplateNotFound):
        return TemplateError(
            field,
            exc.name,
            f"{prefix}template {exc.name!r} not found",
            "save it, add it to the templates directory, or extend a built-in such as 'layouts/base.html'",
        )
    if isinstance(exc, OverflowError):
        return TemplateError(field, None, f"{prefix}{exc}", _LIMIT_FIX)
    if isinstance(exc, RecursionError):
        return TemplateError(field, None, f"{prefix}recursion too deep", "do not let macros call themselves endlessly")
    if isinstance(exc, MemoryError):
        return TemplateError(field, None, f"{prefix}out of memory", _LIMIT_FIX)
    return TemplateError(
        field, line.strip()[:200] or None, f"{prefix}{type(exc).__name__}: {exc}", f"fix the template ({_JINJA_DOCS})"
    )


# ---------------------------------------------------------------------------
# HTML helpers for the channel
# ---------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` (links shown as ``[text](url)``)."""
    if not html.strip():
        return ""
    from inscriptis import get_text  # type: ignore[import-untyped]
    from inscriptis.model.config import ParserConfig  # type: ignore[import-untyped]

    text = get_text(html, ParserConfig(display_links=True))
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HTML_DOC = re.compile(r"<html[\s>]", re.I)


def _parse(html: str) -> tuple[Any, bool]:
    import lxml.html  # type: ignore[import-untyped]

    if _HTML_DOC.search(html):
        return lxml.html.document_fromstring(html), True
    return lxml.html.fragment_fromstring(html, create_parent="div"), False


def _serialise(root: Any, document: bool) -> str:
    import html as htmllib

    import lxml.html  # type: ignore[import-untyped]

    if document:
        tree = root.getroottree()
        return str(lxml.html.tostring(tree, encoding="unicode", doctype=tree.docinfo.doctype or None))
    head = htmllib.escape(root.text or "", quote=False)
    return head + "".join(lxml.html.tostring(child, encoding="unicode") for child in root)


def rewrite_links(html: str, make_url: Callable[[str], str | None]) -> str:
    """Rewrite every ``<a href>`` with an ``http``/``https`` URL through ``make_url``.

    ``make_url(href)`` returns the new URL, or ``None`` to leave the link
    alone.  ``mailto:``, ``tel:``, ``#anchors``, relative links and links with
    the attribute ``data-ecrm-notrack`` are left unchanged (the attribute is
    removed from the output).  The rest of the document is kept.
    """
    return track_html(html, make_url)


def add_open_pixel(html: str, url: str) -> str:
    """Append a 1x1 tracking ``<img>`` (``alt=""``) at the end of ``<body>``."""
    return track_html(html, pixel_url=url)


def track_html(html: str, make_url: Callable[[str], str | None] | None = None, pixel_url: str | None = None) -> str:
    """:func:`rewrite_links` (when ``make_url`` is given) and :func:`add_open_pixel`
    (when ``pixel_url`` is given) in one parse of the document."""
    root, document = _parse(html)
    if make_url is not None:
        for a in root.iter("a"):
            if "data-ecrm-notrack" in a.attrib:
                del a.attrib["data-ecrm-notrack"]
                continue
            href = a.get("href")
            if href is None:
                continue
            href = href.strip()
            if urlsplit(href).scheme.lower() not in ("http", "https"):
                continue
            new = make_url(href)
            if new is not None:
                a.set("href", new)
    if pixel_url is not None:
        import lxml.html  # type: ignore[import-untyped]

        body = root.find(".//body") if document else root
        if body is None:
            body = root
        img = lxml.html.Element(
            "img",
            src=pixel_url,
            width="1",
            height="1",
            alt="",
            style="display:block;width:1px;height:1px;border:0;margin:0;padding:0",
        )
        body.append(img)
    return _serialise(root, document)
