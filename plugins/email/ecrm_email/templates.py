"""E-mail templates: marketer-authored Jinja2, stored per workspace, rendered in a sandbox.

A template has a ``subject``, an ``html`` and/or a ``text`` part.  Parts are
Jinja2 source rendered in a sandbox (:mod:`ecrm_email.sandbox`) with
:class:`~jinja2.StrictUndefined`: autoescaping is on for the HTML part and
off for the subject and the text part; the rendered subject must be one
line.  The HTML is passed through ``css_inline`` (``@media`` rules stay in a
``<style>`` block); a missing text part is derived from the HTML with
``inscriptis``.

Templates come from three places, searched in order (so ``{% extends %}``/
``{% include %}`` work across them):

1. stored templates of the workspace (table ``email_templates``,
   :meth:`Templates.save`); the part of a stored template ``NAME`` is
   addressed as ``NAME.subject``, ``NAME.html`` or ``NAME.txt``;
2. the ``directory`` given to :class:`Templates` (files ``NAME.subject``,
   ``NAME.html``, ``NAME.txt``);
3. the built-in layouts of this package (``layouts/base.html``).

Rendering is bounded.  With ``isolation="process"`` (the default) templates
are rendered, and their HTML post-processed, in sandbox processes
(:mod:`ecrm_email.render_process`) under operating-system limits: a render
costs at most ``max_seconds`` (plus a short grace to stop the process) and
``max_memory``, and whatever a template does, the calling process only ever
sees a :class:`ecrm_core.channels.TemplateError` naming the limit.
``isolation="inline"`` renders in the calling process with the sandbox's
own checks only: for trusted templates.
"""

from __future__ import annotations

import builtins
import pickle
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen
from ecrm_core.channels import ChannelConfigError, TemplateError
from ecrm_core.errors import NotFound
from ecrm_core.validation import check_slug, check_text
from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PrefixLoader, TemplateNotFound

from . import render_process
from .html import add_open_pixel, html_to_text, rewrite_links, track_html
from .renderer import PARTS, SUFFIX, Renderer, make_job
from .schema import TABLE

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "PARTS",
    "LAYOUTS_DIR",
    "ISOLATION",
    "Rendered",
    "Templates",
    "sample_context",
    "rewrite_links",
    "add_open_pixel",
    "track_html",
    "html_to_text",
]

#: The built-in layouts (``{% extends "layouts/base.html" %}``).
LAYOUTS_DIR = Path(__file__).resolve().parent / "layouts"
#: The isolation modes: ``process`` (default: sandbox processes with OS
#: limits) and ``inline`` (in the calling process: trusted templates only).
ISOLATION = ("process", "inline")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")
_MAX_SOURCE = 500_000
_MiB = 1 << 20


@frozen
class Rendered:
    """A rendered template: one-line ``subject``, inlined ``html`` (or ``None``), ``text``.

    ``links`` (internal) are the tracked links when the channel asked for
    placeholders.
    """

    subject: str
    html: str | None
    text: str
    links: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# Loaders (in this process: the sandbox asks for sources by name)
# ---------------------------------------------------------------------------


def _split(template: str) -> tuple[str, str] | None:
    for part, suffix in SUFFIX.items():
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

_Result = tuple[str, Any]


class Templates:
    """Store, load and render e-mail templates for a CRM.

    ``directory`` adds file templates (``NAME.subject``, ``NAME.html``,
    ``NAME.txt``) after the stored ones.  Limits of one render (one
    context): ``max_output`` bytes of UTF-8 per rendered part,
    ``max_seconds`` of wall-clock time and, with process isolation,
    ``max_memory`` bytes of memory.  ``isolation`` is ``"process"`` (default:
    sandbox processes, at most ``workers`` at once in this process) or
    ``"inline"`` (trusted templates only).  Stored rows are cached for
    ``cache_seconds`` (a save or delete through this object is seen at once;
    one made by another process within ``cache_seconds``).  One object
    serves every workspace and every thread.
    """

    def __init__(
        self,
        crm: CRM,
        *,
        directory: str | Path | None = None,
        max_output: int = 1_000_000,
        max_seconds: float = 2.0,
        max_memory: int = 512 * _MiB,
        isolation: str = "process",
        workers: int | None = None,
        cache_seconds: float = 2.0,
    ) -> None:
        self.crm = crm
        self.directory = Path(directory).resolve() if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            raise ChannelConfigError(f"templates_dir: {str(self.directory)!r} is not a directory")
        self.max_output = _positive_int("max_output", max_output, "bytes", minimum=1)
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not 0 < max_seconds <= 3600:
            raise ChannelConfigError(f"max_seconds must be a number of seconds in (0, 3600], got {max_seconds!r}")
        self.max_seconds = float(max_seconds)
        self.max_memory = _positive_int("max_memory", max_memory, "bytes", minimum=32 * _MiB)
        if isolation not in ISOLATION:
            raise ChannelConfigError(
                f"isolation must be 'process' (untrusted templates: sandbox processes with OS limits) or "
                f"'inline' (trusted templates only), got {isolation!r}"
            )
        if isolation == "process":
            try:
                import resource  # noqa: F401
            except ImportError:  # pragma: no cover - not POSIX
                raise ChannelConfigError(
                    "isolation='process' needs a POSIX system (the resource module); "
                    "use isolation='inline' for trusted templates"
                ) from None
        self.isolation = isolation
        self.workers = None if workers is None else _positive_int("workers", workers, "processes", minimum=1)
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._loaders: dict[str, BaseLoader] = {}
        self._rows: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._sources: dict[tuple[str, str], tuple[tuple[str, str] | None, Callable[[], bool] | float | None]] = {}
        self._deps: OrderedDict[Any, set[str]] = OrderedDict()
        self._local = threading.local()

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
            for suffix in SUFFIX.values():
                self._sources.pop((workspace, f"{name}{suffix}"), None)

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
        self._check_syntax(ws, name, {p: s for p, s in parts.items() if s is not None})
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

    # -- sources (what the sandbox asks for) --------------------------------------
    def _loader(self, workspace: str) -> BaseLoader:
        loader = self._loaders.get(workspace)
        if loader is None:
            loaders: builtins.list[BaseLoader] = [_StoredLoader(self, workspace)]
            if self.directory is not None:
                loaders.append(_Shadowed(FileSystemLoader(self.directory), self, workspace))
            builtin = PrefixLoader({"layouts": FileSystemLoader(LAYOUTS_DIR)})
            loaders.append(_Shadowed(builtin, self, workspace))
            loader = self._loaders[workspace] = ChoiceLoader(loaders)
        return loader

    def _source(self, workspace: str, name: str) -> tuple[str, str] | None:
        """``(source, filename)`` of the template ``name`` (a part such as
        ``welcome.html``, or a layout), or None.  Cached while up to date."""
        if not isinstance(name, str) or len(name) > 500:
            return None
        key = (workspace, name)
        hit = self._sources.get(key)
        if hit is not None:
            found, fresh = hit
            if (
                fresh is None
                or (callable(fresh) and fresh())
                or (isinstance(fresh, float) and fresh > time.monotonic())
            ):
                return found
        try:
            source, filename, uptodate = self._loader(workspace).get_source(None, name)  # type: ignore[arg-type]
        except TemplateNotFound:
            self._sources[key] = (None, time.monotonic() + self.cache_seconds)
            return None
        except (OSError, ValueError):  # unreadable file, bad path
            return None
        found = (source, filename or f"<{name}>")
        if len(self._sources) > 10_000:
            self._sources.clear()
        self._sources[key] = (found, uptodate)
        return found

    def _roots(self, workspace: str, template: Any) -> tuple[dict[str, tuple[str, str]], Any]:
        """The parts to render (``{part: ("name", n) | ("inline", source)}``) and the cache key of their deps."""
        if isinstance(template, Mapping):
            unknown = set(template) - set(PARTS)
            if unknown:
                raise TemplateError(
                    "template", sorted(unknown), "unknown template parts", "use the keys subject, html and text"
                )
            roots = {}
            for part in PARTS:
                source = template.get(part)
                if source is None:
                    continue
                if not isinstance(source, str) or len(source) > _MAX_SOURCE:
                    raise TemplateError(
                        f"template.{part}", source, "not a template string", "send the part's Jinja2 source as text"
                    )
                roots[part] = ("inline", source)
            key: Any = (workspace, tuple(roots.get(p, ("", ""))[1] for p in PARTS))
        elif isinstance(template, str):
            name = _check_name(template, "template")
            row = self._row(workspace, name)
            roots = {}
            for part in PARTS:
                if row is not None and row[part] is None:
                    continue
                if self._source(workspace, f"{name}{SUFFIX[part]}") is not None:
                    roots[part] = ("name", f"{name}{SUFFIX[part]}")
            if not roots:
                where = f" or in {str(self.directory)!r}" if self.directory else ""
                raise TemplateError(
                    "template",
                    name,
                    f"no such template in workspace {workspace!r}{where}",
                    f"save it with templates.save({name!r}, subject=..., html=...)"
                    + (f" or add {name}.subject and {name}.html/.txt to the templates directory" if where else ""),
                )
            key = (workspace, name)
        else:
            raise TemplateError(
                "template", template, "not a template", "pass a template name or a mapping of subject/html/text sources"
            )
        if "subject" not in roots:
            raise TemplateError("template.subject", template, "no subject", "give the template a subject part")
        if "html" not in roots and "text" not in roots:
            raise TemplateError("template", template, "no body", "give the template an html or a text part")
        return roots, key

    def _bundle(self, workspace: str, roots: Mapping[str, tuple[str, str]], key: Any) -> dict[str, Any]:
        names = [ref for kind, ref in roots.values() if kind == "name"]
        names.extend(self._deps.get(key, ()))
        return {n: self._source(workspace, n) for n in names}

    def _fetcher(self, key: Any) -> Callable[[str, str], tuple[str, str] | None]:
        def fetch(workspace: str, name: str) -> tuple[str, str] | None:
            found = self._source(workspace, name)
            with self._lock:
                deps = self._deps.get(key)
                if deps is None:
                    deps = self._deps[key] = set()
                    while len(self._deps) > 1000:
                        self._deps.popitem(last=False)
                if len(deps) < 100:
                    deps.add(name)
            return found

        return fetch

    def _check_syntax(self, workspace: str, name: str, parts: Mapping[str, str]) -> None:
        job = {
            "kind": "check",
            "workspace": workspace,
            "parts": {p: (name, s) for p, s in parts.items()},
            "max_seconds": self.max_seconds,
        }
        if self.isolation == "process":
            error = render_process.check_job(job, max_memory=self.max_memory, workers=self.workers)
        else:
            error = self._renderer().check(job)
        if error is not None:
            raise TemplateError(**error)

    def _renderer(self) -> Renderer:
        renderer: Renderer | None = getattr(self._local, "renderer", None)
        if renderer is None:
            renderer = self._local.renderer = Renderer(self._source)
        return renderer

    # -- rendering ---------------------------------------------------------
    def _render(
        self,
        template: str | Mapping[str, str],
        contexts: Sequence[Any],
        workspace: str | None,
        track: Mapping[str, Any] | None = None,
    ) -> builtins.list[Rendered | TemplateError]:
        ws = self._ws(workspace)
        roots, key = self._roots(ws, template)
        out: builtins.list[Rendered | TemplateError | None] = [None] * len(contexts)
        todo: builtins.list[int] = []
        blobs: builtins.list[Any] = []
        process = self.isolation == "process"
        for i, ctx in enumerate(contexts):
            if not isinstance(ctx, Mapping):
                out[i] = TemplateError("context", type(ctx).__name__, "not a mapping", "pass a dict of plain data")
                continue
            if process:
                try:
                    blobs.append(render_process.dumps_context(dict(ctx)))
                except (render_process.NotPlain, TypeError, ValueError, RecursionError, pickle.PicklingError) as exc:
                    out[i] = TemplateError(
                        "context",
                        None,
                        f"cannot be rendered: {exc}",
                        "pass plain data: str, numbers, dates, lists, dicts",
                    )
                    continue
            else:
                blobs.append(ctx)
            todo.append(i)
        if todo:
            job = make_job(
                ws,
                roots,
                self._bundle(ws, roots, key),
                [],
                max_output=self.max_output,
                max_seconds=self.max_seconds,
                track=track,
            )
            fetch = self._fetcher(key)
            if process:
                results = render_process.render_jobs(
                    job, blobs, fetch, max_memory=self.max_memory, workers=self.workers
                )
            else:
                renderer = self._renderer()
                renderer.fetch = fetch
                renderer.start(job)
                results = [renderer.item(job, ctx) for ctx in blobs]
            for i, (status, value) in zip(todo, results, strict=True):
                if status == "ok":
                    subject, html, text, links = value
                    out[i] = Rendered(subject=subject, html=html, text=text, links=tuple(links))
                else:
                    out[i] = TemplateError(**value)
        return [r for r in out if r is not None]

    def render(
        self, template: str | Mapping[str, str], context: Mapping[str, Any], *, workspace: str | None = None
    ) -> Rendered:
        """Render a stored/directory/built-in template by name, or an inline
        ``{"subject": ..., "html": ..., "text": ...}`` with plain-data ``context``.

        Raises :class:`TemplateError` (naming the part and line, or the limit).
        """
        if not isinstance(context, Mapping):
            raise TemplateError("context", context, "not a mapping", "pass a dict of plain data")
        result = self._render(template, [context], workspace)[0]
        if isinstance(result, TemplateError):
            raise result
        return result

    def render_many(
        self,
        template: str | Mapping[str, str],
        contexts: Sequence[Mapping[str, Any]],
        *,
        workspace: str | None = None,
    ) -> builtins.list[Rendered | TemplateError]:
        """Render ``template`` once per context, in one round trip to a sandbox
        process: a :class:`Rendered` or the :class:`TemplateError` of that
        context, in order.  A bad template (unknown name, missing part)
        raises for the whole call; a context that fails (bad data, a limit,
        even a crash of the sandbox) fails alone."""
        return self._render(template, contexts, workspace)

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


def new_nonce() -> str:
    """A placeholder prefix no template can guess (see :func:`ecrm_email.html.track_placeholders`)."""
    return "ecrm" + secrets.token_hex(12)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _positive_int(name: str, value: Any, unit: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ChannelConfigError(f"{name} must be a whole number of {unit}, at least {minimum}; got {value!r}")
    return value


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
