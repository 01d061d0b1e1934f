"""Routes: the ingest inbox (``/ingest/status``, ``/ingest/rejected``, ``/ingest/replay``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from ..ingest import ingest_status, rejected_entries, replay
from ..problems import problem_responses

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

Reason = Literal["conflict", "invalid", "unreadable", "error"]


class IngestStatusOut(msgspec.Struct):
    """The inbox (all workspaces) and this workspace's part of it."""

    rows: int
    depth: int
    workspace_depth: int
    oldest: str | None
    lag: float
    rate: float
    processed_last_minute: int
    processed_last_hour: int
    rejected: dict[str, int]
    rejected_total: int


class RejectedOut(msgspec.Struct):
    id: int
    reason: str
    message_id: str | None
    field: str
    problem: str
    fix: str
    received_at: str
    rejected_at: str
    replayed_at: str | None
    inbox_id: int | None
    message: Any


class RejectedPage(msgspec.Struct):
    items: list[RejectedOut]
    next_after: int | None


MAX_ID = 2**63 - 1
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]


class ReplayIn(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[Id], msgspec.Meta(max_length=10_000)] | None = None
    reason: Reason | None = None


class ReplayOut(msgspec.Struct):
    replayed: int


@get("/ingest/status", opt={"scope": "read"}, tags=["ingest"], responses=problem_responses(), sync_to_thread=True)
def status(crm: NamedDependency[CRM]) -> IngestStatusOut:
    """The ingest inbox: messages waiting (`depth`), how long the oldest has waited (`lag`, seconds),
    messages processed per second over the last minute (`rate`), rejected messages by reason."""
    return msgspec.convert(ingest_status(crm).as_dict(), IngestStatusOut)


@get("/ingest/rejected", opt={"scope": "read"}, tags=["ingest"], responses=problem_responses(), sync_to_thread=True)
def rejected(
    crm: NamedDependency[CRM],
    reason: Annotated[Reason | None, Parameter(description="only this reason")] = None,
    after: Annotated[int, Parameter(ge=0, le=MAX_ID, description="list the entries with an id above this")] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    include_replayed: Annotated[bool, Parameter(description="also those replayed already")] = False,
) -> RejectedPage:
    """Messages the processor could not store, with the reason (`conflict`: same messageId, another
    payload; `invalid`: refused by the core; `unreadable`: an inbox row that is not JSON; `error`: an
    exception), oldest first; page with `after=next_after`."""
    items = rejected_entries(crm, reason=reason, after=after, limit=limit, include_replayed=include_replayed)
    out = [msgspec.convert(e.as_dict(), RejectedOut) for e in items]
    return RejectedPage(items=out, next_after=items[-1].id if len(items) == limit else None)


@post("/ingest/replay", opt={"scope": "admin"}, tags=["ingest"], responses=problem_responses(), status_code=200)
async def replay_rejected(crm: NamedDependency[CRM], data: JSONBody[ReplayIn]) -> ReplayOut:
    """Put rejected messages back into the inbox after a fix (the given `ids`, else all not replayed
    yet, of one `reason` if given); the processor stores them or rejects them again with the reason of now."""
    n = await anyio.to_thread.run_sync(lambda: replay(crm, ids=data.ids, reason=data.reason))
    return ReplayOut(replayed=n)


HANDLERS: list[Any] = [status, rejected, replay_rejected]
