"""Customer search and the 360° view."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ecrm_core.errors import NotFound, ValidationError

from ..app import AdminRequest, Redirect, Route
from ..render import error_box, to_html

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp

PAGE = 50
TIMELINE = 30


def _search(request: AdminRequest) -> tuple[list[Any], Any, str | None]:
    crm = request.crm
    q = request.query.get("q", "").strip()
    stage = request.query.get("stage") or None
    segment = request.query.get("segment") or None
    after_raw = request.query.get("after")
    after = None
    if after_raw:
        if not after_raw.isdigit() or len(after_raw) > 19:
            raise ValidationError("after", after_raw, "not a position", "follow the 'next page' link")
        after = (int(after_raw), int(after_raw))
    filters: dict[str, Any] = {"lifecycle_stage": stage, "segment": segment}
    if q:
        if q.isdigit() and len(q) <= 19:
            try:
                return [crm.customers.get(int(q), follow_merged=True)], None, None
            except NotFound:
                filters["external_id"] = q
        elif "@" in q:
            filters["email"] = q
        elif q.startswith("+"):
            filters["phone"] = q
        else:
            filters["external_id"] = q
    page = crm.customers.search(**{k: v for k, v in filters.items() if v is not None}, after=after, limit=PAGE)
    nxt = page.next_after[1] if page.next_after else None
    return list(page.items), nxt, q


def customers(request: AdminRequest) -> Any:
    error = None
    items: list[Any] = []
    nxt = None
    try:
        items, nxt, _q = _search(request)
    except ValidationError as exc:
        error = str(exc)
    stages = sorted(request.crm.registry.lifecycle_stages)
    segments = [s.slug for s in request.crm.segments.list()][:500]
    return request.admin.page(
        request,
        "customers.html",
        title="Customers",
        items=items,
        next_after=nxt,
        error=error,
        q=request.query.get("q", ""),
        stage=request.query.get("stage", ""),
        segment=request.query.get("segment", ""),
        stages=stages,
        segments=segments,
    )


def _before(raw: str | None) -> tuple[datetime, int] | None:
    if not raw:
        return None
    at, _, last = raw.rpartition("~")
    try:
        return datetime.fromisoformat(at), int(last)
    except ValueError:
        raise ValidationError("before", raw, "not a timeline position", "follow the 'older' link") from None


def widgets(request: AdminRequest, customer: Any) -> list[tuple[str, Any]]:
    """``(title, html)`` of every plugin widget the user may see; one that raises becomes an error box."""
    out = []
    specs = sorted(request.crm.registry.admin_widgets.values(), key=lambda w: (w.order, w.name))
    for w in specs:
        if not request.user.at_least(w.role):
            continue
        try:
            html = to_html(w.render(request.crm, customer))
        except Exception as exc:
            request.crm.plugins.record_failure(w.plugin or "?", f"admin widget {w.name}", exc)
            html = error_box("This widget failed.", f"{type(exc).__name__}; recorded on the plugins page.")
        if html:
            out.append((w.title, html))
    return out


def customer(request: AdminRequest) -> Any:
    crm = request.crm
    cid = request.path_params["customer_id"]
    found = crm.customers.get(cid, follow_merged=False)
    if found.merged_into is not None:
        return Redirect(request.url(f"/customers/{found.merged_into}"))
    before = _before(request.query.get("before"))
    view = crm.interactions.view(cid, recent=TIMELINE)
    timeline = list(view.recent) if before is None else crm.interactions.timeline(cid, limit=TIMELINE, before=before)
    older = None
    if len(timeline) == TIMELINE:
        last = timeline[-1]
        older = f"{last.occurred_at.isoformat()}~{last.id}"
    purposes = sorted(crm.registry.purposes)
    channels = sorted(crm.registry.channels)
    consent_rows = []
    for ch in sorted(set(channels) | {k.split(":", 1)[0] for k in found.consent}):
        row = {
            "channel": ch,
            "all": found.consent.get(ch),
            "purposes": {p: found.consent.get(f"{ch}:{p}") for p in purposes},
        }
        consent_rows.append(row)
    history = crm.customers.consent_history(cid)[-20:]
    stage = crm.registry.lifecycle_stages.get(found.lifecycle_stage)
    return request.admin.page(
        request,
        "customer.html",
        title=found.name or found.email or f"Customer {found.id}",
        c=found,
        aliases=view.aliases,
        summary=view.summary,
        timeline=timeline,
        older=older,
        segments=crm.segments.of(cid),
        stage=stage,
        consent_rows=consent_rows,
        purposes=purposes,
        history=list(reversed(history)),
        messages=crm.messages.list(customer_id=cid, limit=20),
        widgets=widgets(request, found),
    )


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/customers", methods=("GET",), view=customers, role="agent", name="Customers"),
        Route(path="/customers/{customer_id:int}", methods=("GET",), view=customer, role="agent", name="Customer"),
    ]
