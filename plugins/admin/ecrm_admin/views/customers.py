"""Customer search and the 360° view."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import NotFound, ValidationError
from ecrm_core.rules.sql import unindexed
from ecrm_core.storage import UTCDateTime

from ..app import AdminRequest, Redirect, Route
from ..render import error_box, to_html

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp

PAGE = 50
TIMELINE = 30


def _search(request: AdminRequest) -> tuple[list[Any], Any, str | None]:
    """One page of customers for the list: by id, e-mail, +phone or external id (each
    an indexed lookup), lifecycle stage and segment, keyset on the id (``after``).

    Reads only the listed columns (no domain objects: nothing to re-validate
    per row), one statement, ``PAGE + 1`` rows at most."""
    from ecrm_core.validation import check_text, normalize_email, normalize_phone

    crm = request.crm
    c = crm.db.tables["customers"]
    q = request.query.get("q", "").strip()
    stage = request.query.get("stage") or None
    segment = request.query.get("segment") or None
    after_raw = request.query.get("after")
    conds: list[Any] = [c.c.workspace_id == crm.workspace, c.c.merged_into.is_(None)]
    if after_raw:
        if not after_raw.isdigit() or len(after_raw) > 19:
            raise ValidationError("after", after_raw, "not a position", "follow the 'next page' link")
        conds.append(c.c.id > int(after_raw))
    if q:
        if q.isdigit() and len(q) <= 19:
            conds.append(sa.or_(c.c.id == int(q), c.c.external_id == q))
        elif "@" in q:
            conds.append(c.c.email == normalize_email(q, "q"))
        elif q.startswith("+"):
            conds.append(c.c.phone == normalize_phone(q, "q"))
        else:
            conds.append(c.c.external_id == check_text(q, "q", max_length=200))
    if stage:
        conds.append(c.c.lifecycle_stage == crm.check_stage(stage, "stage"))
    if segment:
        try:
            seg = crm.segments.get(segment)
        except NotFound:
            raise ValidationError("segment", segment, "unknown segment", "pick a segment from the list") from None
        m = crm.db.tables["segment_members"]
        conds.append(c.c.id.in_(sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)))
    cols = (c.c.id, c.c.name, c.c.email, c.c.lifecycle_stage, c.c.created_at)
    with crm.db.read() as conn:
        rows = conn.execute(sa.select(*cols).where(*conds).order_by(c.c.id).limit(PAGE + 1)).all()
        dialect = conn.dialect
    conv = UTCDateTime().process_result_value
    items = [{**r._mapping, "created_at": conv(r.created_at, dialect)} for r in rows[:PAGE]]
    nxt = items[-1]["id"] if len(rows) > PAGE else None
    return items, nxt, q


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
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not last.isdigit() or len(last) > 19:
            raise ValueError
        return when, int(last)
    except ValueError:
        raise ValidationError("before", raw, "not a timeline position", "follow the 'older' link") from None


def conn_is_sqlite(crm: Any) -> bool:
    return bool(crm.db.engine.dialect.name == "sqlite")


def load_360(crm: Any, cid: int, before: tuple[datetime, int] | None) -> dict[str, Any]:
    """Everything the 360° view shows about one customer, in one read transaction,
    each part bounded and read through an index: O(page), whatever the database size.

    aliases (customer index), activity by kind and channel and the timeline
    page (the ``(workspace, customer, time)`` index), segments (members'
    customer index), the last consent changes (``(customer, at)``), the last
    messages (``(workspace, customer, …)``)."""
    t = crm.db.tables
    i, a, m, s, e, msg = (
        t["interactions"],
        t["aliases"],
        t["segment_members"],
        t["segments"],
        t["consent_events"],
        t["messages"],
    )
    ws = crm.workspace
    conv = UTCDateTime().process_result_value
    # SQLite's planner (without ANALYZE) prefers the (workspace, kind, time) index to
    # GROUP BY kind without a sort, and reads the whole workspace: grouping by +kind
    # (no index can order it) leaves it the customer's index, (workspace, customer, …).
    kind = unindexed(i.c.kind) if conn_is_sqlite(crm) else i.c.kind
    with crm.db.read() as conn:
        dialect = conn.dialect

        def when(v: Any) -> Any:
            return conv(v, dialect)

        aliases = conn.execute(
            sa.select(a.c.kind, a.c.value).where(a.c.customer_id == cid).order_by(a.c.kind, a.c.value).limit(100)
        ).all()
        summary = conn.execute(
            sa.select(
                kind.label("kind"),
                i.c.channel,
                sa.func.count().label("count"),
                sa.func.sum(i.c.amount).label("amount"),
                sa.func.min(i.c.occurred_at).label("first_at"),
                sa.func.max(i.c.occurred_at).label("last_at"),
            )
            .where(i.c.workspace_id == ws, i.c.customer_id == cid)
            .group_by(kind, i.c.channel)
            .order_by(sa.func.count().desc())
            .limit(100)
        ).all()
        q = (
            sa.select(i.c.id, i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties)
            .where(i.c.workspace_id == ws, i.c.customer_id == cid)
            .order_by(i.c.occurred_at.desc(), i.c.id.desc())
            .limit(TIMELINE)
        )
        if before is not None:
            at, last = before
            q = q.where(sa.or_(i.c.occurred_at < at, sa.and_(i.c.occurred_at == at, i.c.id < last)))
        timeline = conn.execute(q).all()
        segments = conn.scalars(
            sa.select(s.c.slug)
            .join(m, m.c.segment_id == s.c.id)
            .where(m.c.customer_id == cid)
            .order_by(s.c.slug)
            .limit(200)
        ).all()
        history = conn.execute(
            sa.select(e.c.channel, e.c.status, e.c.source, e.c.at)
            .where(e.c.customer_id == cid, e.c.workspace_id == ws)
            .order_by(e.c.at.desc(), e.c.id.desc())
            .limit(20)
        ).all()
        messages = conn.execute(
            sa.select(msg.c.uid, msg.c.channel, msg.c.purpose, msg.c.template, msg.c.status, msg.c.created_at)
            .where(msg.c.workspace_id == ws, msg.c.customer_id == cid)
            .order_by(msg.c.created_at.desc())
            .limit(20)
        ).all()
    return {
        "aliases": aliases,
        "summary": [{**r._mapping, "first_at": when(r.first_at), "last_at": when(r.last_at)} for r in summary],
        "timeline": [{**r._mapping, "occurred_at": when(r.occurred_at)} for r in timeline],
        "segments": segments,
        "history": [{**r._mapping, "at": when(r.at)} for r in history],
        "messages": [{**r._mapping, "id": r.uid, "created_at": when(r.created_at)} for r in messages],
    }


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
    data = load_360(crm, cid, _before(request.query.get("before")))
    timeline = data["timeline"]
    older = None
    if len(timeline) == TIMELINE:
        last = timeline[-1]
        older = f"{last['occurred_at'].isoformat()}~{last['id']}"
    purposes = sorted(crm.registry.purposes)
    consent_rows = []
    for ch in sorted(set(crm.registry.channels) | {k.split(":", 1)[0] for k in found.consent}):
        row = {
            "channel": ch,
            "all": found.consent.get(ch),
            "purposes": {p: found.consent.get(f"{ch}:{p}") for p in purposes},
        }
        consent_rows.append(row)
    return request.admin.page(
        request,
        "customer.html",
        title=found.name or found.email or f"Customer {found.id}",
        c=found,
        aliases=data["aliases"],
        summary=data["summary"],
        timeline=timeline,
        older=older,
        segments=data["segments"],
        stage=crm.registry.lifecycle_stages.get(found.lifecycle_stage),
        consent_rows=consent_rows,
        purposes=purposes,
        history=data["history"],
        messages=data["messages"],
        widgets=widgets(request, found),
    )


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/customers", methods=("GET",), view=customers, role="agent", name="Customers"),
        Route(path="/customers/{customer_id:int}", methods=("GET",), view=customer, role="agent", name="Customer"),
    ]
