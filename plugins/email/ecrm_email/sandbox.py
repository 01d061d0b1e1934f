"""The Jinja2 sandbox that renders marketer-authored e-mail templates.

This module is what runs inside the sandbox process (:mod:`ecrm_email.render_process`),
or in the calling process with ``isolation="inline"``.  It needs Jinja2 and
MarkupSafe only: no database, no ecrm_core.

The in-process checks here (output and time bounds on operators, filters,
calls, loops and buffers; what may be printed) give early, precise errors
with the template line.  They are not the guarantee: with the default
process isolation the operating system bounds memory and CPU and the parent
process bounds the wall-clock time, whatever the template does.
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
from collections.abc import Callable, Iterator, Mapping
from datetime import date, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    StrictUndefined,
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
from markupsafe import escape

__all__ = ["LIMIT_FIX", "Limit", "RenderError", "Sandbox", "budget", "render_error", "scrub", "syntax_error"]

_MAX_INT_BITS = 4096
JINJA_DOCS = "see https://jinja.palletsprojects.com/en/stable/templates/"
#: The fix shown for every size limit.
LIMIT_FIX = "render less: fewer or shorter loops and values (a template may produce at most max_output bytes)"


class RenderError(Exception):
    """A template failed (the fields of ``ecrm_core.channels.TemplateError``).

    Plain data, so that it crosses the process boundary as a dict.
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}")

    def as_dict(self) -> dict[str, Any]:
        value = self.value if isinstance(self.value, str | int | float | list | type(None)) else str(self.value)
        return {"field": self.field, "value": value, "problem": self.problem, "fix": self.fix}


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def scrub(text: str) -> str:
    """``text`` without heap addresses (``<function f at 0x7f...>``)."""
    return _ADDRESS.sub("", text)


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------


class _Limit(Exception):
    """A bound was hit while rendering (turned into a TemplateError)."""


class _Unprintable(Exception):
    """A value without a text form (a function, a method, an object) was printed."""


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
            raise _Limit(
                f"the template builds more than {self.allowance} bytes of text while rendering (10 x max_output)"
            )


_local = threading.local()


def _budget() -> _Budget | None:
    return getattr(_local, "budget", None)


class budget:
    """``with budget(max_seconds, allowance):`` sets the limits of one render in this thread."""

    def __init__(self, max_seconds: float, allowance: int) -> None:
        self.budget = _Budget(max_seconds, allowance)

    def __enter__(self) -> _Budget:
        self.outer = _budget()
        _local.budget = self.budget
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _local.budget = self.outer


#: Raised by a bound (output size, time); turned into a RenderError by :func:`render_error`.
Limit = _Limit


def _weight(value: Any, limit: int) -> int:
    """Roughly ``len(str(value))``, computed without building it; stops past ``limit``.

    Walks nested lists and dicts once per distinct container (a structure
    that shares itself many times costs what its string would, computed from
    each shared part's weight); a cycle or nesting deeper than 200 counts as
    more than ``limit``.
    """
    over = limit + 1
    memo: dict[int, int] = {}

    def weigh(v: Any, depth: int) -> int:
        t = type(v)
        if t is str:
            return len(v) + 3
        if v is None or t is bool:
            return 5
        if t is int:
            return int(v.bit_length()) // 3 + 2
        if isinstance(v, str):
            return len(v) + 3
        if isinstance(v, int):
            return int(v.bit_length()) // 3 + 2
        mapping = isinstance(v, dict) or (not isinstance(v, _CONTAINERS) and isinstance(v, Mapping))
        if not mapping and not isinstance(v, _CONTAINERS):
            return 40
        key = id(v)
        known = memo.get(key)
        if known is not None:
            return known
        if depth > 200:
            return over
        memo[key] = over  # while on the path: a cycle is too big
        total = 2 + (4 if mapping else 2) * len(v)
        items = [*v.keys(), *v.values()] if mapping else v
        for item in items:
            if total > limit:
                break
            total += weigh(item, depth + 1)
        memo[key] = min(total, over)
        return memo[key]

    return weigh(value, 0)


_SCALARS = frozenset({str, int, float, bool, type(None), Decimal, date, dtime, timedelta, range})
_SCALAR_BASES = (str, int, float, Decimal, date, dtime, timedelta)
_CONTAINERS = (list, tuple, set, frozenset)


def _kind(value: Any) -> str:
    if isinstance(value, types.BuiltinFunctionType | types.BuiltinMethodType | types.MethodType):
        return "a method"
    if isinstance(value, types.FunctionType | functools.partial) or (callable(value) and isinstance(value, type)):
        return "a function or class"
    if isinstance(value, types.GeneratorType) or hasattr(value, "__next__"):
        return "a generator (add '| list' or '| join')"
    return f"an object of type '{type(value).__name__}'"


def _check_printable(value: Any, limit: int = 100_000) -> None:
    """Raise :class:`_Unprintable` unless ``value`` (and everything inside it)
    has a text form that reveals nothing: strings, numbers, dates, ``None``
    and lists/tuples/sets/dicts of them.  Functions, methods, generators and
    other objects would print as ``<... at 0x7f...>``."""
    if type(value) in _SCALARS:
        return
    stack = [value]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _SCALARS or isinstance(v, Undefined) or (isinstance(v, _SCALAR_BASES) and not callable(v)):
            continue  # (an Undefined raises its own error when printed)
        if id(v) in seen:
            continue
        seen.add(id(v))
        if len(seen) > limit:
            return  # the size checks stop it
        if isinstance(v, _CONTAINERS):
            stack.extend(v)
        elif isinstance(v, Mapping) and isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            raise _Unprintable(f"cannot print {_kind(v)}: only text, numbers, dates and lists or dicts of them print")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


# ---------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``~``, ``{% for %}``, buffers (``{% set %}``
    blocks, macros, ``{% call %}``, ``{% filter %}``) and block outputs routed
    through checks."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.ecrm_buffer()")

    def _wrapped_output(self, frame: Frame, node: nodes.Node, write: Callable[[], None]) -> None:
        self.start_write(frame, node)
        self.write("environment.ecrm_output(context.eval_ctx.autoescape, ")
        write()
        self.write(")")
        self.end_write(frame)

    def visit_CallBlock(self, node: nodes.CallBlock, frame: Frame) -> None:
        call_frame, macro_ref = self.macro_body(node, frame)
        self.writeline("caller = ")
        self.macro_def(macro_ref, call_frame)
        self._wrapped_output(frame, node, lambda: self.visit_Call(node.call, frame, forward_caller=True))

    def visit_FilterBlock(self, node: nodes.FilterBlock, frame: Frame) -> None:
        # ``{% filter length %}`` returns a number: printed like ``{{ ... | length }}``
        filter_frame = frame.inner()
        filter_frame.symbols.analyze_node(node)
        self.enter_frame(filter_frame)
        self.buffer(filter_frame)
        self.blockvisit(node.body, filter_frame)
        self._wrapped_output(frame, node, lambda: self.visit_Filter(node.filter, filter_frame))
        self.leave_frame(filter_frame)

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        # Jinja folds constant expressions at compile time, around the
        # sandbox's hooks ('x' ~ 'x'.upper would print a method): only
        # literal text and constants are folded here.
        if not isinstance(node, nodes.TemplateData | nodes.Const):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

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


class _Buffer(list):  # type: ignore[type-arg]
    """The list a ``{% set %}`` block, macro, ``{% call %}`` or ``{% filter %}``
    writes into: bounded like the output itself."""

    __slots__ = ("_env", "_size")

    def __init__(self, env: Sandbox) -> None:
        super().__init__()
        self._env = env
        self._size = 0

    def append(self, s: Any) -> None:
        n = len(s) if isinstance(s, str) else 0
        self._size += n
        env = self._env
        if self._size > env.max_output:
            raise _Limit(f"a block or macro builds more than {env.max_output} bytes (max_output)")
        budget = _budget()
        if budget is not None:
            budget.tick()
            budget.spend(n)
        super().append(s)

    def extend(self, items: Any) -> None:
        for s in items:
            self.append(s)


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """``default``: the fallback when the value is undefined or ``None``
    (or, with ``boolean=true``, any false value)."""
    if isinstance(value, Undefined) or value is None or (boolean and not value):
        return default_value
    return value


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith((".html", ".htm", ".xml"))


class Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with output bounds (one per workspace).

    ``max_output`` may be changed between renders (it is read while rendering).
    """

    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, loader: BaseLoader | None, max_output: int) -> None:
        self.max_output = max_output
        super().__init__(
            loader=loader,
            autoescape=_autoescape,
            undefined=StrictUndefined,
            finalize=self._finalize,
            optimized=False,  # no compile-time folding around the checks below
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
        t = type(value)
        if t is str:
            return value
        if t is int:
            if value.bit_length() > _MAX_INT_BITS:
                raise _Limit("number too large to print")
            return value
        if not isinstance(value, str) and isinstance(value, Mapping | list | tuple | set | frozenset):
            self._check_weight(value)
        _check_printable(value)
        return value

    # -- hooks called by the generated code -------------------------------
    def ecrm_buffer(self) -> _Buffer:
        return _Buffer(self)

    def ecrm_output(self, autoescape: bool, value: Any) -> str:
        """What a ``{% filter %}`` or ``{% call %}`` block prints (a filter may
        return a number: ``{% filter length %}``)."""
        value = self._finalize(value)
        return escape(value) if autoescape else str(value)

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
            _check_printable(part)
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
                _check_printable(right)
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
            _check_printable(items)
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
            _check_printable((args, kwargs))
            result: str = self._produced(wrapper(*args, **kwargs))  # a Markup stays a Markup
            return result

        return bounded

    # -- filters ------------------------------------------------------------
    def _bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
        check = getattr(self, f"_pre_{name}", None)
        prints = name not in _NON_TEXT_FILTERS

        @functools.wraps(func)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            budget = _budget()
            if budget is not None:
                budget.tick()
            if check is not None and len(args) > skip:
                args = (*args[:skip], *check(args[skip:], kwargs))
            if prints:  # the filter turns its arguments into text
                _check_printable((args[skip:], kwargs))
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


#: Filters that do not turn their arguments into text (they may take
#: generators and objects; what they return is checked when printed).
_NON_TEXT_FILTERS = frozenset(
    {
        "abs",
        "attr",
        "batch",
        "bool",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "float",
        "groupby",
        "int",
        "items",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "tojson",
        "unique",
    }
)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def syntax_error(part: str, exc: TemplateSyntaxError, source: str) -> RenderError:
    """The error for a syntax error in ``part`` (or in a template it extends or includes)."""
    where = ""
    if exc.name and not exc.name.startswith("<inline>") and exc.filename not in (f"<{part}>",):
        where = f" of {exc.name}"
    return RenderError(
        f"template.{part}",
        _snippet(source, exc.lineno),
        scrub(f"line {exc.lineno}{where}: {exc.message}"),
        f"fix the template syntax ({JINJA_DOCS})",
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


def render_error(
    part: str,
    exc: BaseException,
    ctx: Mapping[str, Any],
    own_filename: str | None,
    source_of: Callable[[str], str | None],
) -> RenderError:
    """The error for ``exc`` raised while rendering ``part``: the line (of the
    part, or of the template it extends/includes) and a fix.  ``source_of``
    returns the source behind a template file name."""
    field = f"template.{part}"
    if isinstance(exc, RenderError):
        return exc
    if isinstance(exc, TemplateSyntaxError):  # in an extended or included template
        return syntax_error(part, exc, exc.source or "")
    where = _template_frame(exc)
    prefix = ""
    line = ""
    if where is not None:
        filename, lineno = where
        own = filename in (own_filename, f"<{part}>")
        shown = filename.split("/", 1)[-1] if filename.startswith("db:") else Path(filename).name
        prefix = f"line {lineno}: " if own else f"line {lineno} of {shown}: "
        source = source_of(filename)
        if isinstance(source, str):
            lines = source.splitlines()
            line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    snippet = line.strip()[:200] or None
    if isinstance(exc, _Limit):
        return RenderError(field, None, f"{prefix}{exc}", LIMIT_FIX)
    if isinstance(exc, _Unprintable):
        return RenderError(
            field,
            snippet,
            f"{prefix}{exc}",
            "print a value: call the method (name()), pick a field (x.name), or join a list (x | join(', '))",
        )
    if isinstance(exc, SecurityError):
        return RenderError(
            field,
            snippet,
            scrub(f"{prefix}unsafe: {exc}"),
            "templates may only read the data they are given (no attributes starting with '_', no internals)",
        )
    if isinstance(exc, UndefinedError):
        message, fix = _undefined_message(scrub(str(exc)), line, ctx)
        return RenderError(field, snippet, f"{prefix}{message}", fix)
    if isinstance(exc, TemplateNotFound):
        return RenderError(
            field,
            exc.name,
            f"{prefix}template {exc.name!r} not found",
            "save it, add it to the templates directory, or extend a built-in such as 'layouts/base.html'",
        )
    if isinstance(exc, OverflowError):
        return RenderError(field, None, scrub(f"{prefix}{exc}"), LIMIT_FIX)
    if isinstance(exc, RecursionError):
        return RenderError(field, None, f"{prefix}recursion too deep", "do not let macros call themselves endlessly")
    if isinstance(exc, MemoryError):
        return RenderError(field, None, f"{prefix}out of memory (max_memory)", LIMIT_FIX)
    return RenderError(
        field, snippet, scrub(f"{prefix}{type(exc).__name__}: {exc}"), f"fix the template ({JINJA_DOCS})"
    )
