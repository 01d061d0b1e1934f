"""Messages and dead letters (with replay)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecrm_core.errors import ValidationError

from ..app import AdminRequest, Redirect, Route

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp

STATUSES = ("queued", "sending", "sent", "delivered", "failed", "dead", "suppressed", "cancelled")


def messages(request: AdminRequest) -> Any:
    status = request.query.get("status") or None
    channel = request.query.get("channel") or None
    error = None
    items: list[Any] = []
    try:
        items = request.crm.messages.list(status=status, channel=channel, limit=100)
    except ValidationError as exc:
        error = str(exc)
    title = "Dead letters" if status == "dead" else "Messages"
    return request.admin.page(
        request,
        "messages.html",
        title=title,
        items=items,
        status=status or "",
        channel=channel or "",
        channels=sorted(request.crm.registry.channels),
        counts=request.crm.messages.counts(),
        error=error,
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
