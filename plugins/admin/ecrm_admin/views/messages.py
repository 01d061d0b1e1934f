"""Messages and dead letters (with replay)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError
from ecrm_core.services.messages.records import STATUSES
from ecrm_core.storage import UTCDateTime

from ..app import AdminRequest, Redirect, Route

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp


PAGE = 50


def page_of(crm: Any, status: str | None, channel: str | None, before: int | None) -> list[dict[str, Any]]:
    """One page of messages, newest first, by keyset on the id (``before``): O(page)."""
    t = crm.db.tables["messages"]
    conv = UTCDateTime().process_result_value
    q = sa.select(
        t.c.id,
        t.c.uid,
        t.c.channel,
        t.c.customer_id,
        t.c.template,
        t.c.status,
        t.c.reason,
        t.c.attempts,
        t.c.max_attempts,
        t.c.created_at,
    ).where(t.c.workspace_id == crm.workspace)
    if status:
        q = q.where(t.c.status == status)
    if channel:
        q = q.where(t.c.channel == channel)
    if before is not None:
        q = q.where(t.c.id < before)
    with crm.db.read() as conn:
        rows = conn.execute(q.order_by(t.c.id.desc()).limit(PAGE)).all()
        dialect = conn.dialect
    return [{**r._mapping, "created_at": conv(r.created_at, dialect)} for r in rows]


def messages(request: AdminRequest) -> Any:
    crm = request.crm
    status = request.query.get("status") or None
    channel = request.query.get("channel") or None
    raw_before = request.query.get("before") or None
    if status is not None and status not in STATUSES:
        raise ValidationError("status", status, "unknown message status", f"use one of {', '.join(STATUSES)}")
    if channel is not None and channel not in crm.registry.channels:
        raise ValidationError("channel", channel, "unknown channel", "pick a channel from the list")
    if raw_before is not None and (not raw_before.isdigit() or len(raw_before) > 19):
        raise ValidationError("before", raw_before, "not a position", "follow the 'older' link")
    items = page_of(crm, status, channel, int(raw_before) if raw_before else None)
    older = items[-1]["id"] if len(items) == PAGE else None
    title = "Dead letters" if status == "dead" else "Messages"
    return request.admin.page(
        request,
        "messages.html",
        title=title,
        items=items,
        status=status or "",
        channel=channel or "",
        channels=sorted(crm.registry.channels),
        counts=request.admin.cached(request.workspace, "message-counts", lambda: crm.messages.counts()),
        older=older,
        may_replay=request.user.at_least("marketer"),
    )


def message(request: AdminRequest) -> Any:
    mid = request.path_params["message_id"]
    record = request.crm.messages.get(mid)
    return request.admin.page(
        request,
        "message.html",
        title=f"Message {mid}",
        m=record,
        attempts=request.crm.messages.attempts(mid),
        may_replay=request.user.at_least("marketer"),
        replayed=request.query.get("replayed"),
    )


def replay(request: AdminRequest) -> Any:
    mid = request.path_params["message_id"]
    request.crm.messages.replay(mid, actor=f"admin:{request.user.username}")
    return Redirect(request.url(f"/messages/{mid}", replayed=1))


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/messages", methods=("GET",), view=messages, role="agent", name="Messages"),
        Route(path="/messages/{message_id:str}", methods=("GET",), view=message, role="agent", name="Message"),
        Route(path="/messages/{message_id:str}/replay", methods=("POST",), view=replay, role="marketer", name="Replay"),
    ]
