"""One render job: templates + a chunk of contexts -> rendered parts or errors.

:class:`Renderer` is what the sandbox process runs (and what
``isolation="inline"`` runs in the calling process).  A job is plain data
(see :func:`make_job`): the workspace, the root parts (a template name or an
inline source each), the sources the caller already knows the parts need
(``bundle``), the limits, the tracking request and the contexts.  A template
the bundle lacks (an ``{% include %}`` with a computed name) is asked of the
caller through ``fetch``.  Compiled templates are cached per workspace and
recompiled when the caller ships a different source.
"""

from __future__ import annotations

import builtins
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jinja2 import BaseLoader, Template, TemplateNotFound, TemplateSyntaxError

from .html import HTMLTooDeep, check_html, html_to_text, track_placeholders
from .sandbox import LIMIT_FIX, Limit, RenderError, Sandbox, budget, render_error, syntax_error

__all__ = ["PARTS", "SUFFIX", "Renderer", "make_job"]

#: The parts of a template, in rendering order.
PARTS = ("subject", "html", "text")
SUFFIX = {"subject": ".subject", "html": ".html", "text": ".txt"}
LINE_BREAKS = ("\r", "\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
#: How many different templates one job may load through ``fetch``.
MAX_FETCHES = 100

Source = tuple[str, str]  # (source, filename)
Fetch = Callable[[str, str], "Source | None"]  # (workspace, name) -> source


def make_job(
    workspace: str,
    roots: Mapping[str, tuple[str, str]],
    bundle: Mapping[str, Source | None],
    items: list[Any],
    *,
    max_output: int,
    max_seconds: float,
    track: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A render job.  ``roots`` maps each part to ``("name", template_name)``
    or ``("inline", source)``; ``items`` are the contexts."""
    return {
        "kind": "render",
        "workspace": workspace,
        "roots": dict(roots),
        "bundle": dict(bundle),
        "items": items,
        "max_output": max_output,
        "max_seconds": max_seconds,
        "track": dict(track) if track else None,
    }


class _Loader(BaseLoader):
    """The templates of one workspace: the job's bundle, then ``fetch``."""

    def __init__(self, renderer: Renderer, workspace: str) -> None:
        self.renderer = renderer
        self.workspace = workspace

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        found = self.renderer.source(self.workspace, template)
        if found is None:
            raise TemplateNotFound(template)

        def uptodate() -> bool:
            return self.renderer.source(self.workspace, template) == found

        return found[0], found[1], uptodate


class Renderer:
    """Renders jobs; keeps compiled templates between them."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self._envs: OrderedDict[str, Sandbox] = OrderedDict()
        self._inline: OrderedDict[tuple[str, str, str], Template] = OrderedDict()
        self._bundle: dict[str, Source | None] = {}
        self._workspace = ""
        self._fetched = 0
        #: Set when a failure may have left this process in a bad state (out of memory).
        self.recycle = False
        self._current: tuple[str, str | None, Mapping[str, str]] = ("", None, {})

    # -- sources ---------------------------------------------------------
    def source(self, workspace: str, name: str) -> Source | None:
        if workspace != self._workspace:
            return None
        try:
            return self._bundle[name]
        except KeyError:
            pass
        self._fetched += 1
        if self._fetched > MAX_FETCHES:
            raise Limit(f"the template loads more than {MAX_FETCHES} different templates")
        found = self.fetch(workspace, name)
        self._bundle[name] = found
        return found

    def _source_of(self, filename: str, inline: Mapping[str, str]) -> str | None:
        if filename.startswith("<") and filename.endswith(">"):
            return inline.get(filename[1:-1])
        for found in self._bundle.values():
            if found is not None and found[1] == filename:
                return found[0]
        return None

    def env(self, workspace: str, max_output: int) -> Sandbox:
        env = self._envs.get(workspace)
        if env is None:
            env = Sandbox(_Loader(self, workspace), max_output)
            self._envs[workspace] = env
            while len(self._envs) > 32:
                self._envs.popitem(last=False)
        else:
            self._envs.move_to_end(workspace)
        env.max_output = max_output
        return env

    def _compile_inline(self, env: Sandbox, workspace: str, part: str, source: str) -> Template:
        key = (workspace, part, source)
        hit = self._inline.get(key)
        if hit is not None:
            self._inline.move_to_end(key)
            return hit
        code = env.compile(source, name=f"<inline>{SUFFIX[part]}", filename=f"<{part}>")
        compiled = env.template_class.from_code(env, code, env.make_globals(None), None)
        self._inline[key] = compiled
        while len(self._inline) > 256:
            self._inline.popitem(last=False)
        return compiled

    # -- jobs ----------------------------------------------------------------
    def start(self, job: Mapping[str, Any]) -> None:
        """Take the job's workspace and sources (before its first item)."""
        self._workspace = job["workspace"]
        self._bundle = dict(job.get("bundle") or {})
        self._fetched = 0

    def check(self, job: Mapping[str, Any]) -> dict[str, Any] | None:
        """Compile each part of ``job["parts"]`` (``{part: (name, source)}``): the first syntax error, or None."""
        env = self.env(job["workspace"], 1)
        for part, (name, source) in job["parts"].items():
            try:
                env.compile(source, name=f"{name}{SUFFIX[part]}", filename=f"<{part}>")
            except TemplateSyntaxError as exc:
                return syntax_error(part, exc, source).as_dict()
            except RecursionError:
                return RenderError(
                    f"template.{part}", None, "nested too deeply to compile", "nest fewer brackets and blocks"
                ).as_dict()
        return None

    def item(self, job: Mapping[str, Any], context: Any) -> tuple[str, Any]:
        """``("ok", (subject, html, text, links))`` or ``("error", dict)``."""
        self._current = ("", None, {})
        return self._item(job, context)

    def items(self, job: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        """``("ok", (subject, html, text, links))`` or ``("error", dict)`` per context."""
        self.start(job)
        for ctx in job["items"]:
            yield self.item(job, ctx)

    def _item(self, job: Mapping[str, Any], context: Any) -> tuple[str, Any]:
        try:
            return "ok", self._render(job, context)
        except RenderError as exc:
            return "error", exc.as_dict()
        except MemoryError:
            self.recycle = True
            return "error", RenderError("template", None, "out of memory (max_memory)", LIMIT_FIX).as_dict()

    def _render(self, job: Mapping[str, Any], context: Any) -> tuple[str, str | None, str, list[str]]:
        ws = job["workspace"]
        max_output = job["max_output"]
        env = self.env(ws, max_output)
        inline = {part: ref[1] for part, ref in job["roots"].items() if ref[0] == "inline"}
        parts: dict[str, Template] = {}
        for part, (kind, ref) in job["roots"].items():
            try:
                if kind == "inline":
                    parts[part] = self._compile_inline(env, ws, part, ref)
                else:
                    parts[part] = env.get_template(ref)
            except TemplateSyntaxError as exc:
                raise syntax_error(part, exc, exc.source or (ref if kind == "inline" else "")) from None
            except Exception as exc:
                raise render_error(part, exc, {}, None, lambda f: self._source_of(f, inline)) from None
        if not isinstance(context, Mapping):
            raise RenderError("context", None, "not a mapping", "pass a dict of plain data")
        ctx = dict(context)
        with budget(job["max_seconds"], 10 * max_output) as b:
            run = functools.partial(self._run, ctx=ctx, max_output=max_output, inline=inline, tick=b.tick)
            subject = run(parts["subject"], "subject").strip()
            if any(c in subject for c in LINE_BREAKS):
                raise RenderError(
                    "template.subject",
                    subject[:200],
                    "the rendered subject has a line break",
                    "keep the subject on one line: no newlines in the template, "
                    "and strip them from values, e.g. {{ value | replace('\\n', ' ') }}",
                )
            ctx.setdefault("subject", subject)
            html = None
            if "html" in parts:
                raw = run(parts["html"], "html")
                self._current = ("html", None, inline)
                html = self._post_html(raw, max_output)
            if "text" in parts:
                text = run(parts["text"], "text")
            else:
                self._current = ("html", None, inline)
                text = self._derive_text(html or "")
        links: list[str] = []
        track = job.get("track")
        if html is not None and track:
            try:
                html, links = track_placeholders(
                    html, track["nonce"], clicks=track["clicks"], pixel=track["pixel"], skip_prefix=track["skip"]
                )
            except HTMLTooDeep as exc:  # pragma: no cover - checked before inlining
                raise RenderError("template.html", None, str(exc), _DEPTH_FIX) from None
        return subject, html, text, links

    def interrupted(self, exc: BaseException, problem: str) -> dict[str, Any]:
        """The error for a render stopped by ``exc`` (the process's timer): the part and line it was at."""
        part, filename, _inline = self._current
        if not part:
            return RenderError("template", None, problem, LIMIT_FIX).as_dict()
        where = ""
        tb = exc.__traceback__
        while tb is not None:  # the innermost template frame, mapped to its template line
            template = tb.tb_frame.f_globals.get("__jinja_template__")
            if template is not None:
                line = template.get_corresponding_lineno(tb.tb_lineno)
                own = template.filename in (filename, f"<{part}>")
                where = f"line {line}: " if own else f"line {line} of {(template.name or '?').split('/')[-1]}: "
            tb = tb.tb_next
        return RenderError(f"template.{part}", None, f"{where}{problem}", LIMIT_FIX).as_dict()

    @staticmethod
    def _post_html(raw: str, max_output: int) -> str:
        try:
            check_html(raw)
        except HTMLTooDeep as exc:
            raise RenderError("template.html", None, f"{exc} (max depth)", _DEPTH_FIX) from None
        try:
            html: str = _inliner().inline(raw)
        except Exception as exc:  # css_inline.InlineError and friends
            raise RenderError(
                "template.html", None, f"CSS could not be inlined: {exc}", "fix the <style> rules"
            ) from None
        if len(html.encode("utf-8", "surrogatepass")) > max_output:
            raise RenderError(
                "template.html",
                None,
                f"output larger than {max_output} bytes (max_output) once CSS is inlined",
                LIMIT_FIX,
            )
        return html

    @staticmethod
    def _derive_text(html: str) -> str:
        try:
            return html_to_text(html)
        except HTMLTooDeep as exc:  # pragma: no cover - checked before inlining
            raise RenderError("template.html", None, str(exc), _DEPTH_FIX) from None

    def _run(
        self,
        template: Template,
        part: str,
        *,
        ctx: dict[str, Any],
        max_output: int,
        inline: Mapping[str, str],
        tick: Callable[[], None],
    ) -> str:
        out: builtins.list[str] = []
        size = 0
        self._current = (part, template.filename, inline)
        chunks: Any = template.generate(ctx)
        try:
            for chunk in chunks:
                size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
                if size > max_output:
                    raise Limit(f"output larger than {max_output} bytes (max_output)")
                tick()
                out.append(chunk)
        except RenderError:
            raise
        except Exception as exc:  # RecursionError, MemoryError, OverflowError, SecurityError...
            if isinstance(exc, MemoryError):
                self.recycle = True
            raise render_error(part, exc, ctx, template.filename, lambda f: self._source_of(f, inline)) from None
        finally:
            chunks.close()
        return "".join(out)


_DEPTH_FIX = "close the elements a loop or macro opens; keep layouts under a few dozen levels of nesting"


_INLINER: Any = None


def _inliner() -> Any:
    global _INLINER
    if _INLINER is None:
        import css_inline

        _INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    return _INLINER
