"""Segments (the builder), offers and e-mail templates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecrm_core.errors import Conflict, NotFound, ValidationError

from ..app import AdminRequest, Html, Redirect, Route

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp

MAX_RULE = 20_000


# -- segments ---------------------------------------------------------------------
def segments(request: AdminRequest) -> Any:
    items = request.crm.segments.list()
    return request.admin.page(request, "segments.html", title="Segments", items=items)


def check_rule(request: AdminRequest, rule: str) -> dict[str, Any]:
    """Validate a rule and, when valid, count it (bounded by ``count_timeout``) and sample it.

    Returns what the builder shows: ``error`` and ``caret`` (the line with a
    caret under the culprit), or ``count``, ``sample``, ``sql`` (admins
    only), ``warnings``, ``slow``."""
    import time

    from ecrm_core.services.segments import Cancelled

    started = time.monotonic()
    out: dict[str, Any] = {"rule": rule}
    if not rule.strip():
        out["empty"] = True
        return out
    if len(rule) > MAX_RULE:
        out["error"] = f"the rule is longer than {MAX_RULE} characters"
        return out
    crm = request.crm
    try:
        crm.segments.compile(rule)
    except ValidationError as exc:
        out["error"] = f"{exc.problem}" + (
            f" at line {exc.line}, column {exc.column}" if getattr(exc, "line", None) else ""
        )  # type: ignore[attr-defined]
        out["fix"] = exc.fix
        out["caret"] = getattr(exc, "context", None)
        return out
    try:
        # the whole answer within count_timeout: what compiling took is deducted, and a
        # little is kept for the sample and the page
        left = request.admin.config.count_timeout - (time.monotonic() - started) - 0.1
        preview = crm.segments.preview(rule, sample=10, timeout=max(0.05, left))
    except Cancelled:
        out["slow"] = True
        return out
    except ValidationError as exc:
        out["error"] = str(exc)
        return out
    out.update(count=preview.count, sample=preview.sample, warnings=preview.warnings)
    if request.user.at_least("admin"):
        out["sql"] = preview.sql
    return out


def segment_check(request: AdminRequest) -> Any:
    """htmx: the builder's live answer for the rule typed so far."""
    result = check_rule(request, request.form.get("rule", ""))
    return request.admin.fragment("_segment_check.html", base=request.base, c=result)


def segment_form(request: AdminRequest) -> Any:
    slug = request.path_params.get("slug")
    seg = request.crm.segments.get(slug) if slug else None
    if request.method == "POST":
        request.require("marketer")
        form = request.form
        rule = form.get("rule", "")
        try:
            if seg is None:
                seg = request.crm.segments.create(
                    form.get("slug", ""), rule, name=form.get("name") or None, description=form.get("description", "")
                )
            else:
                seg = request.crm.segments.update(
                    seg.slug, rule=rule, name=form.get("name") or seg.name, description=form.get("description", "")
                )
        except (ValidationError, Conflict) as exc:
            return _segment_page(request, seg, form, str(exc), status=400)
        return Redirect(request.url(f"/segments/{seg.slug}", saved=1))
    values = {"slug": seg.slug, "name": seg.name, "description": seg.description, "rule": seg.text or ""} if seg else {}
    return _segment_page(request, seg, values, None)


def _segment_page(request: AdminRequest, seg: Any, values: dict[str, Any], error: str | None, status: int = 200) -> Any:
    check = check_rule(request, values.get("rule", "")) if values.get("rule") else {"empty": True}
    page = request.admin.page(
        request,
        "segment.html",
        title=f"Segment {seg.slug}" if seg else "New segment",
        seg=seg,
        values=values,
        error=error,
        check=check,
        saved=request.query.get("saved"),
        may_edit=request.user.at_least("marketer"),
        members=request.crm.segments.members(seg.slug, limit=20) if seg else [],
    )
    page.status = status
    return page


# -- offers -------------------------------------------------------------------------
def offers(request: AdminRequest) -> Any:
    error = None
    if request.method == "POST":
        request.require("marketer")
        f = request.form
        try:
            fields: dict[str, Any] = {"kind": f.get("kind") or "content"}
            if f.get("eligibility", "").strip():
                fields["eligibility"] = f["eligibility"]
            if f.get("description"):
                fields["content"] = {"description": f["description"]}
            request.crm.offers.create(f.get("code", ""), f.get("name", ""), **fields)
            return Redirect(request.url("/offers"))
        except (ValidationError, Conflict) as exc:
            error = str(exc)
    items = request.crm.offers.list(limit=500)
    page = request.admin.page(
        request,
        "offers.html",
        title="Offers",
        items=items,
        error=error,
        form=request.form,
        may_edit=request.user.at_least("marketer"),
    )
    if error:
        page.status = 400
    return page


# -- e-mail templates -----------------------------------------------------------------
def _templates(request: AdminRequest) -> Any:
    if "email" not in request.crm.registry.channels:
        raise NotFound("channel", "email (install ecrm-email to edit e-mail templates)")
    return request.crm.channels.get("email").templates(request.workspace)


def templates(request: AdminRequest) -> Any:
    items = _templates(request).list()
    return request.admin.page(request, "templates.html", title="E-mail templates", items=items)


def template_url(request: AdminRequest, name: str, **query: Any) -> str:
    """The edit page of the template ``name`` (any characters: it is one encoded path segment)."""
    from ..render import pathpart

    return request.url(f"/templates/edit/{pathpart(name)}", **query)


def _template_name(request: AdminRequest) -> str | None:
    """The ``{name:path}`` parameter, decoded (the server decodes ``%2F`` and the rest)."""
    name = request.path_params.get("name")
    if name is None:
        return None
    name = str(name)
    return name[1:] if name.startswith("/") else name


def template_form(request: AdminRequest) -> Any:
    store = _templates(request)
    name = _template_name(request)
    error = None
    if request.method == "POST":
        f = request.form
        name = name or f.get("name", "")
        try:
            store.save(
                name,
                subject=f.get("subject", ""),
                html=f.get("html") or None,
                text=f.get("text") or None,
                description=f.get("description", ""),
            )
            return Redirect(template_url(request, name, saved=1))
        except ValidationError as exc:
            error = str(exc)
        values = dict(f)
        values["name"] = name
    elif name:
        values = store.get(name)
    else:
        values = {"name": "", "subject": "", "html": "", "text": "", "description": ""}
    page = request.admin.page(
        request,
        "template.html",
        title=f"Template {name}" if name else "New template",
        values=values,
        error=error,
        saved=request.query.get("saved"),
        existing=bool(_template_name(request)),
    )
    if error:
        page.status = 400
    return page


def template_preview(request: AdminRequest) -> Any:
    """The sandboxed preview: the e-mail plugin's renderer (its sandbox processes)
    renders the sources sent with sample data; the answer has its own CSP
    (``sandbox``, no script) and is shown in an ``<iframe sandbox>``."""
    from html import escape

    from ..app import PREVIEW_CSP

    store = _templates(request)
    f = request.form
    source = {"subject": f.get("subject", ""), "html": f.get("html") or None, "text": f.get("text") or None}
    try:
        rendered = store.preview({k: v for k, v in source.items() if v is not None}, workspace=request.workspace)
        if rendered.html:
            body = rendered.html
        else:
            body = f"<pre>{escape(rendered.text)}</pre>"
        head = f'<p style="font:13px sans-serif;color:#555">Subject: <b>{escape(rendered.subject)}</b></p><hr>'
        html = head + body
        status = 200
    except ValidationError as exc:
        html = f'<pre style="color:#b42318">{escape(str(exc))}</pre>'
        status = 200
    return Html(html, status, headers={"content-security-policy": PREVIEW_CSP, "x-frame-options": "SAMEORIGIN"})


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/segments", methods=("GET",), view=segments, role="agent", name="Segments"),
        Route(path="/segments/new", methods=("GET", "POST"), view=segment_form, role="agent", name="New segment"),
        Route(path="/segments/check", methods=("POST",), view=segment_check, role="agent", name="Check rule"),
        Route(path="/segments/{slug:str}", methods=("GET", "POST"), view=segment_form, role="agent", name="Segment"),
        Route(path="/offers", methods=("GET", "POST"), view=offers, role="agent", name="Offers"),
        Route(path="/templates", methods=("GET",), view=templates, role="marketer", name="E-mail templates"),
        Route(path="/templates/new", methods=("GET", "POST"), view=template_form, role="marketer", name="New template"),
        Route(path="/templates/preview", methods=("POST",), view=template_preview, role="marketer", name="Preview"),
        Route(
            path="/templates/edit/{name:path}",
            methods=("GET", "POST"),
            view=template_form,
            role="marketer",
            name="Template",
        ),
    ]
