"""Operating the ingest inbox: status, rejected messages, replay.

What ``ecrm ingest status|rejected|replay`` and the routes ``GET
/ingest/status``, ``GET /ingest/rejected`` and ``POST /ingest/replay``
share.  See ``docs/http/ingest.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import sqlalchemy as sa

from .inbox import INBOX, LOG, REJECTED, inbox_stats

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["IngestStatus", "RejectedEntry", "ingest_status", "rejected_entries", "replay"]

#: The reasons a message lands in ``ingest_rejected``.
REASONS = ("conflict", "invalid", "unreadable", "error")


@attrs.frozen
class IngestStatus:
    """The inbox and the processor now.

    ``depth``/``rows``: messages/rows waiting (all workspaces: one processor
    drains them all) and ``workspace_depth`` those of the asked workspace;
    ``lag``: seconds the oldest waiting row has waited; ``rate``: messages
    processed per second over the last minute; ``processed_last_hour``;
    ``rejected``: rejected messages not replayed yet, by reason.
    """

    rows: int
    depth: int
    workspace_depth: int
    oldest: datetime | None
    lag: float
    rate: float
    processed_last_minute: int
    processed_last_hour: int
    rejected: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["oldest"] = None if self.oldest is None else self.oldest.isoformat()
        d["rejected_total"] = sum(self.rejected.values())
        return d


def ingest_status(crm: CRM, workspace: str | None = None) -> IngestStatus:
    """Depth, lag, rate and rejected counts (``workspace``: default the CRM's)."""
    ws = workspace or crm.workspace
    now = crm.now()
    t, lt, rt = crm.db.tables[INBOX], crm.db.tables[LOG], crm.db.tables[REJECTED]
    with crm.db.read() as conn:
        st = inbox_stats(crm, conn)
        mine = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.count), 0)).where(t.c.workspace_id == ws))
        ws_depth = int(mine.scalar() or 0)
        minute = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(lt.c.events), 0)).where(
                lt.c.finished_at >= now - timedelta(minutes=1)
            )
        ).scalar()
        hour = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(lt.c.events), 0)).where(lt.c.finished_at >= now - timedelta(hours=1))
        ).scalar()
        by_reason: dict[str, int] = dict(
            conn.execute(
                sa.select(rt.c.reason, sa.func.count())
                .where(rt.c.workspace_id == ws, rt.c.replayed_at.is_(None))
                .group_by(rt.c.reason)
            ).all()
        )
    return IngestStatus(
        rows=st.rows,
        depth=st.depth,
        workspace_depth=ws_depth,
        oldest=st.oldest,
        lag=round(st.lag, 3),
        rate=round(int(minute or 0) / 60.0, 1),
        processed_last_minute=int(minute or 0),
        processed_last_hour=int(hour or 0),
        rejected={r: int(by_reason.get(r, 0)) for r in REASONS},
    )


@attrs.frozen
class RejectedEntry:
    """One rejected message: why (``reason``, ``field``, ``problem``, ``fix``) and the message itself."""

    id: int
    reason: str
    message_id: str | None
    field: str
    problem: str
    fix: str
    received_at: datetime
    rejected_at: datetime
    replayed_at: datetime | None
    inbox_id: int | None
    message: Any

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        for k in ("received_at", "rejected_at", "replayed_at"):
            d[k] = None if d[k] is None else d[k].isoformat()
        return d


def _utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v


def _decoded(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return bytes(raw).decode("utf-8", "replace")[:2000]


def rejected_entries(
    crm: CRM,
    *,
    reason: str | None = None,
    include_replayed: bool = False,
    after: int = 0,
    limit: int = 100,
    workspace: str | None = None,
) -> list[RejectedEntry]:
    """Rejected messages of the workspace, oldest first, ``id > after``."""
    rt = crm.db.tables[REJECTED]
    q = sa.select(rt).where(rt.c.workspace_id == (workspace or crm.workspace), rt.c.id > after)
    if reason is not None:
        q = q.where(rt.c.reason == reason)
    if not include_replayed:
        q = q.where(rt.c.replayed_at.is_(None))
    q = q.order_by(rt.c.id).limit(limit)
    with crm.db.read() as conn:
        rows = conn.execute(q).all()
    return [
        RejectedEntry(
            id=r.id,
            reason=r.reason,
            message_id=r.message_id,
            field=r.field,
            problem=r.problem,
            fix=r.fix,
            received_at=_utc(r.received_at),  # type: ignore[arg-type]
            rejected_at=_utc(r.rejected_at),  # type: ignore[arg-type]
            replayed_at=_utc(r.replayed_at),
            inbox_id=r.inbox_id,
            message=_decoded(r.message),
        )
        for r in rows
    ]


def replay(
    crm: CRM,
    *,
    ids: Sequence[int] | None = None,
    reason: str | None = None,
    workspace: str | None = None,
    limit: int = 10_000,
) -> int:
    """Put rejected messages back into the inbox (after a fix); returns how many.

    Each goes back as a batch of one with its original ``received_at`` (so
    its time is corrected as it was) and is marked replayed, in one
    transaction.  The processor then stores it -- or rejects it again, as a
    new entry, with the reason of now.  ``ids`` (else every one not
    replayed yet, optionally of one ``reason``).
    """
    ws = workspace or crm.workspace
    rt, t = crm.db.tables[REJECTED], crm.db.tables[INBOX]
    q = sa.select(rt.c.id, rt.c.received_at, rt.c.message).where(rt.c.workspace_id == ws, rt.c.replayed_at.is_(None))
    if ids is not None:
        if not ids:
            return 0
        q = q.where(rt.c.id.in_(list(ids)))
    if reason is not None:
        q = q.where(rt.c.reason == reason)
    q = q.order_by(rt.c.id).limit(limit)
    now = crm.now()
    with crm.db.write() as conn:
        rows = conn.execute(q).all()
        if not rows:
            return 0
        inbox: list[dict[str, Any]] = []
        for r in rows:
            message = _decoded(r.message)
            if isinstance(message, dict):
                payload = msgspec.json.encode({"batch": [message]})
            else:
                payload = bytes(r.message)  # an unreadable row goes back as it was
            inbox.append(
                {"workspace_id": ws, "received_at": _utc(r.received_at), "call": None, "count": 1, "payload": payload}
            )
        conn.execute(t.insert(), inbox)
        done = [r.id for r in rows]
        for start in range(0, len(done), 900):
            conn.execute(rt.update().where(rt.c.id.in_(done[start : start + 900])).values(replayed_at=now))
    return len(rows)
