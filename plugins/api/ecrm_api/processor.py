"""The ingest processor: drains the inbox into customers and interactions.

One call of :func:`process_inbox` (one tick of the job ``ingest.process``)
is **one transaction**: it claims the oldest inbox rows (up to
``max_events`` messages; on PostgreSQL ``FOR UPDATE SKIP LOCKED``, so
several processors drain at once; on SQLite the write lock, ``BEGIN
IMMEDIATE``, makes it serial), runs their messages through the same code as
the synchronous routes (:class:`~ecrm_api.tracking.Tracker`: identity
stitching, ``messageId`` dedupe against the interactions, ``track_many``,
hooks and live segments after the COMMIT), writes what cannot be stored to
``ingest_rejected`` with the reason, deletes the rows and commits.  A
SIGKILL anywhere before the COMMIT rolls all of it back: the rows are still
in the inbox and the next tick does them again; after it, they are gone and
their interactions stored.  So nothing is lost and nothing is stored twice
(and a message sent twice, by an SDK's retry, is stored once by its
``messageId``).

Order: messages are applied in inbox order, per workspace.  Events
(``track``/``page``/``screen``) are stored set-based in large groups; a
customer-changing message (``identify``/``group``/``alias``) is applied one
by one, and when it concerns a user (``userId``/``anonymousId``) that
events waiting in the current group name, those events are stored first.
So one user's ``identify`` is applied before that user's later ``track``
and after the earlier one, as they were sent.

A poison message never blocks the others: a message the core refuses is
rejected alone (the per-row results of ``track_many``); a row whose JSON
cannot be read is rejected whole; an exception (a bug, a value the database
refuses) rolls back a SAVEPOINT around its group, which is split in halves
until the failing message is found (``O(k log n)`` for ``k`` bad messages),
and only that one is rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import sqlalchemy as sa
from ecrm_core.batching import gc_paused

from .config import DEFAULT_EVENT_KINDS
from .erasure import (
    dead_identities,
    forget_tombstones,
    identity_key,
    identity_rows,
    message_identities,
    raw_identities,
)
from .events import store_events
from .fastpath import _decode_any, _decode_head, _decode_raws, map_event, read_event, read_events
from .inbox import INBOX, LOG, REJECTED, REJECTED_IDS
from .messages import _SET_BASED, MESSAGE_MAX_BYTES, MessageError, Parsed, Rejected, _Message, parse_time
from .tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.registry import JobContext, JobResult

__all__ = ["JOB", "ProcessResult", "make_job", "process_inbox"]

log = logging.getLogger(__name__)

#: The job's name (``ecrm worker --jobs ingest.process``).
JOB = "ingest.process"
#: Messages one tick claims at most (a row, i.e. a request, is never split).
MAX_EVENTS = 10_000
#: Rows one tick claims at most.
MAX_ROWS = 2_000
#: ``ingest_log`` keeps this much history (the rate in ``ecrm ingest status``).
LOG_KEEP = timedelta(days=1)


@attrs.frozen
class ProcessResult:
    """What one tick did: inbox ``rows`` and their ``events``, how many were
    ``stored``, ``duplicates`` (already stored by their messageId) and
    ``rejected`` (to ``ingest_rejected``); ``more``: rows are waiting still."""

    rows: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    more: bool = False
    seconds: float = 0.0
    #: messages dropped because their person was deleted meanwhile (``ecrm_api.erasure``'s tombstones)
    erased: int = 0


@attrs.define(eq=False)
class _Row:
    """One claimed inbox row while it is processed."""

    id: int
    workspace: str
    received_at: datetime
    call: str | None
    count: int
    payload: bytes
    messages: list[Any] = attrs.field(factory=list)
    sent_at: str | None = None
    tracker: Tracker | None = None
    stored: int = 0
    duplicates: int = 0
    erased: int = 0
    rejected: list[tuple[int | None, Rejected, str]] = attrs.field(factory=list)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def process_inbox(
    crm: CRM,
    *,
    event_kinds: Mapping[str, str] | None = None,
    future_tolerance: timedelta = timedelta(days=1),
    max_events: int = MAX_EVENTS,
    max_rows: int = MAX_ROWS,
) -> ProcessResult:
    """Process one batch of the inbox (all workspaces) in one transaction; see the module's text."""
    with gc_paused():
        return _process(crm, event_kinds, future_tolerance, max_events, max_rows)


def _process(
    crm: CRM, event_kinds: Mapping[str, str] | None, future_tolerance: timedelta, max_events: int, max_rows: int
) -> ProcessResult:
    started = time.perf_counter()
    kinds = DEFAULT_EVENT_KINDS if event_kinds is None else event_kinds
    t = crm.db.tables[INBOX]
    if crm.db.is_sqlite and not crm.db.joined:
        # SQLite has one writer at a time: read and check the rows before
        # taking the write lock (the gateway's appends wait for it), then,
        # under it, keep those still there (another processor may have done
        # some meanwhile) and store them.
        with crm.db.read() as conn:
            take, more = _claim(conn, t, max_events, max_rows)
            rows = _load(conn, t, take)
            conn.rollback()
        if not rows:
            return ProcessResult()
        batches = _prepare(crm, rows, kinds, future_tolerance)
        with crm.db.write() as conn:
            ids = [r.id for r in rows]
            # Still there and unchanged: a row rewritten meanwhile (a deleted
            # customer's messages taken out, ecrm_api.erasure) has a smaller
            # count and is read again by the next tick, never stored from the old copy.
            counts = {r.id: r.count for r in rows}
            present: set[int] = set()
            for start in range(0, len(ids), 900):
                got = conn.execute(sa.select(t.c.id, t.c.count).where(t.c.id.in_(ids[start : start + 900])))
                present.update(i for i, n in got if counts[i] == n)
            if len(present) < len(rows):
                rows = [r for r in rows if r.id in present]
                batches = [b for b in batches if b.keep(present)]
            rejected = _store(crm, conn, rows, batches, started)
    else:
        with crm.db.write() as conn:
            take, more = _claim(conn, t, max_events, max_rows)
            rows = _load(conn, t, take)
            if not rows:
                return ProcessResult()
            rejected = _store(crm, conn, rows, _prepare(crm, rows, kinds, future_tolerance), started)
    return ProcessResult(
        rows=len(rows),
        events=sum(r.count for r in rows),
        stored=sum(r.stored for r in rows),
        duplicates=sum(r.duplicates for r in rows),
        rejected=rejected,
        more=more,
        seconds=time.perf_counter() - started,
        erased=sum(r.erased for r in rows),
    )


def _load(conn: sa.Connection, t: sa.Table, take: list[Any]) -> list[_Row]:
    ids = [h.id for h in take]
    payloads: dict[int, bytes] = {}
    for start in range(0, len(ids), 900):
        part = ids[start : start + 900]
        payloads.update(conn.execute(sa.select(t.c.id, t.c.payload).where(t.c.id.in_(part))).all())
    return [_Row(h.id, h.workspace_id, _utc(h.received_at), h.call, h.n, bytes(payloads[h.id])) for h in take]


def _prepare(crm: CRM, rows: list[_Row], kinds: Mapping[str, str], tolerance: timedelta) -> list[_Batch]:
    """Read and check the rows' messages (no database access), per workspace."""
    by_workspace: dict[str, list[_Row]] = {}
    for row in rows:
        by_workspace.setdefault(row.workspace, []).append(row)
    out = []
    for workspace, ws_rows in by_workspace.items():
        batch = _Batch(crm.in_workspace(workspace), ws_rows, kinds, tolerance)
        batch.prepare()
        out.append(batch)
    return out


def _store(crm: CRM, conn: sa.Connection, rows: list[_Row], batches: list[_Batch], started: float) -> int:
    """Store the prepared batches, write the rejected, delete the rows, log the tick (in ``conn``'s transaction)."""
    t = crm.db.tables[INBOX]
    for batch in batches:
        batch.drop_erased(conn)
        batch.store(conn)
    now = crm.now()
    rejected = _write_rejected(crm, conn, rows, now)
    ids = [r.id for r in rows]
    for start in range(0, len(ids), 900):
        conn.execute(t.delete().where(t.c.id.in_(ids[start : start + 900])))
    lt = crm.db.tables[LOG]
    conn.execute(
        lt.insert().values(
            finished_at=now,
            rows=len(rows),
            events=sum(r.count for r in rows),
            rejected=rejected,
            seconds=time.perf_counter() - started,
        )
    )
    conn.execute(lt.delete().where(lt.c.finished_at < now - LOG_KEEP))
    forget_tombstones(crm, conn)
    return rejected


def _claim(conn: sa.Connection, t: sa.Table, max_events: int, max_rows: int) -> tuple[list[Any], bool]:
    """The oldest rows, up to about ``max_events`` messages and ``max_rows`` rows;
    and whether more are waiting.

    Claimed in small steps, each ``ORDER BY id LIMIT k`` after the last row
    claimed, so that only the rows this tick processes are locked (on
    PostgreSQL ``FOR UPDATE SKIP LOCKED``: another processor claims the next
    ones meanwhile); ``k`` follows the rows' average size.  A step may pass
    ``max_events`` by part of one step's rows.
    """
    pg = conn.dialect.name == "postgresql"
    take: list[Any] = []
    events, last, step = 0, None, 8
    while events < max_events and len(take) < max_rows:
        q = sa.select(t.c.id, t.c.workspace_id, t.c.received_at, t.c.call, t.c.count.label("n")).order_by(t.c.id)
        if last is not None:
            q = q.where(t.c.id > last)
        q = q.limit(min(step, max_rows - len(take)))
        if pg:
            q = q.with_for_update(skip_locked=True)
        got = conn.execute(q).all()
        if not got:
            return take, False
        take += got
        events += sum(h.n for h in got)
        last = got[-1].id
        average = max(1, events // len(take))
        step = max(1, min(500, (max_events - events) // average))
    return take, True


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Batch:
    """The rows of one workspace in one tick."""

    def __init__(
        self,
        crm: CRM,
        rows: list[_Row],
        kinds: Mapping[str, str],
        tolerance: timedelta,
    ) -> None:
        self.crm = crm
        self.rows = rows
        self.kinds = kinds
        self.tolerance = tolerance
        self.stream: list[tuple[_Row, _Message]] = []
        self.pending: list[tuple[_Row, _Message]] = []
        self.pending_ids: set[tuple[str, str]] = set()

    def prepare(self) -> None:
        """Read and check every row's messages: the stream to store, in order (no database access)."""
        for row in self.rows:
            parsed = self._parse(row)
            if parsed is None:
                continue
            for r in parsed.rejected:
                row.rejected.append((r.index, r, "conflict" if r.conflict else "invalid"))
            self.stream += [(row, m) for m in sorted(parsed.fast + parsed.slow, key=lambda m: m.index)]

    def drop_erased(self, conn: sa.Connection) -> None:
        """Drop the messages (and rejected entries) of people deleted after the
        messages were received (``ecrm_api.erasure``: a deletion while this
        batch was claimed); in ``conn``'s write transaction, right before storing."""
        dead = dead_identities(self.crm, conn, min(r.received_at for r in self.rows))
        if not dead:
            return

        def erased(row: _Row, named: set[tuple[str, str]]) -> bool:  # received before (or as) the deletion
            return any(
                (at := dead.get((kind, identity_key(value)))) is not None and at >= row.received_at
                for kind, value in named
            )

        kept = []
        for row, m in self.stream:
            if erased(row, _identities(m)):
                row.erased += 1
            else:
                kept.append((row, m))
        self.stream = kept
        for row in self.rows:
            left = [e for e in row.rejected if not erased(row, _entry_identities(row, e[0]))]
            row.erased += len(row.rejected) - len(left)
            row.rejected = left

    def keep(self, ids: set[int]) -> bool:
        """Keep only the rows whose ids are in ``ids``; false when none is left."""
        self.rows = [r for r in self.rows if r.id in ids]
        self.stream = [(r, m) for r, m in self.stream if r.id in ids]
        return bool(self.rows)

    def store(self, conn: sa.Connection) -> None:
        """Apply the stream in ``conn``'s transaction."""
        self.conn = conn
        self.crm = self.crm.using(conn)
        for row in self.rows:
            if row.tracker is not None:
                row.tracker.crm = self.crm
        for row, m in self.stream:
            if m.type in _SET_BASED:
                self.pending.append((row, m))
                self.pending_ids.update(_ids(m))
                continue
            if self.pending_ids.intersection(_ids(m)):
                self._flush()
            self._slow(row, m)
        self._flush()

    def _parse(self, row: _Row) -> Parsed | None:
        if row.call is None:
            typed = self._parse_batch(row)
            if typed is not None:
                return typed
        try:
            doc = msgspec.json.decode(row.payload)
            if row.call is not None:
                if type(doc) is not dict:
                    raise ValueError("the message is not a JSON object")
                messages = [doc]
                sent_at = None
            else:
                if type(doc) is not dict or type(doc.get("batch")) is not list:
                    raise ValueError('not a batch document {"batch": [...]}')
                messages = doc["batch"]
                raw_sent = doc.get("sentAt")
                row.sent_at = raw_sent if type(raw_sent) is str else None
                sent_at = parse_time(raw_sent, "body.sentAt")
        except (msgspec.DecodeError, ValueError, MessageError) as exc:
            problem = exc.problem if isinstance(exc, MessageError) else str(exc)
            row.rejected.append(
                (
                    None,
                    Rejected(-1, None, "payload", f"unreadable inbox row: {_cut(problem, 250)}", "replay after a fix"),
                    "unreadable",
                )
            )
            return None
        row.messages = messages
        tracker = self._tracker(row)
        if row.call is not None:
            try:
                m = tracker.prepare(messages[0], 0, "body", call=row.call)
            except MessageError as exc:
                mid = messages[0].get("messageId")
                rej = Rejected(0, mid if type(mid) is str else None, exc.field, exc.problem, exc.fix)
                return Parsed(rejected=[rej])
            return Parsed(fast=[m]) if m.type in _SET_BASED else Parsed(slow=[m])
        return tracker.parse(messages, sent_at=sent_at, body_bytes=len(row.payload))

    def _tracker(self, row: _Row) -> Tracker:
        row.tracker = Tracker(
            self.crm, event_kinds=self.kinds, future_tolerance=self.tolerance, received_at=row.received_at
        )
        return row.tracker

    def _parse_batch(self, row: _Row) -> Parsed | None:
        """A batch row read once: the envelope with its messages raw, each
        ``track``/``page``/``screen`` decoded into a typed struct and mapped
        to its interaction row (:func:`~ecrm_api.fastpath.read_event`); any
        other message through the general path alone.  ``None``: the row is
        not a readable batch (the general path says why)."""
        try:
            head = _decode_head(row.payload)
            raws = _decode_raws(head.batch)
            sent_at = parse_time(head.sentAt, "body.sentAt")
        except (msgspec.DecodeError, msgspec.ValidationError, MessageError):
            return None
        row.sent_at = head.sentAt if type(head.sentAt) is str else None
        row.messages = raws
        tracker = self._tracker(row)
        parsed = Parsed()
        measure = len(row.payload) > MESSAGE_MAX_BYTES
        # The common row (the gateway's: no escape, within one message's
        # size): every message typed in one call.
        typed = None if measure else read_events(head.batch)
        shift = None if sent_at is None else tracker.received_at - sent_at
        for index, data in enumerate(raws):
            path = f"body.batch[{index}]"
            if typed is not None:
                m = map_event(typed[index], index, path, tracker, sent_at, shift)
            elif measure and len(data) * 8 > MESSAGE_MAX_BYTES:
                m = None
            else:
                m = read_event(bytes(data), index, path, tracker, sent_at)
            if m is not None:
                parsed.fast.append(m)
            else:
                tracker.add(parsed, _decode_any(data), index, path, sent_at=sent_at, measure=measure)
        return parsed

    # customer-changing messages, one by one
    def _slow(self, row: _Row, m: _Message) -> None:
        assert row.tracker is not None
        for attempt in (1, 2):
            parsed = Parsed(slow=[m])
            try:
                with self.conn.begin_nested():
                    row.tracker.store_slow(parsed)
            except Exception as exc:
                if attempt == 1 and isinstance(exc, sa.exc.DBAPIError):
                    continue  # a concurrent processor's row (PostgreSQL): once more, it is committed now
                self._error(row, m, exc)
                return
            break
        row.stored += parsed.accepted
        row.duplicates += parsed.duplicates
        for r in parsed.rejected:
            row.rejected.append((r.index, r, "conflict" if r.conflict else "invalid"))

    # events, set-based
    def _flush(self) -> None:
        items, self.pending, self.pending_ids = self.pending, [], set()
        if items:
            self._fast(items)

    def _fast(self, items: list[tuple[_Row, _Message]], *, again: bool = False) -> None:
        parts: dict[int, tuple[_Row, Parsed]] = {}
        for row, m in items:
            parts.setdefault(id(row), (row, Parsed()))[1].fast.append(m)
        try:
            with self.conn.begin_nested():
                store_events(self.crm, [p for _, p in parts.values()])
        except Exception as exc:
            if len(items) == 1:
                if not again and isinstance(exc, sa.exc.DBAPIError):
                    self._fast(items, again=True)
                else:
                    self._error(items[0][0], items[0][1], exc)
                return
            half = len(items) // 2
            self._fast(items[:half])
            self._fast(items[half:])
            return
        for row, p in parts.values():
            row.stored += p.accepted
            row.duplicates += p.duplicates
            for r in p.rejected:
                row.rejected.append((r.index, r, "conflict" if r.conflict else "invalid"))

    def _error(self, row: _Row, m: _Message, exc: BaseException) -> None:
        log.warning("ingest: message %s of inbox row %d rejected after an error: %r", m.index, row.id, exc)
        text = _cut(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 300)
        row.rejected.append(
            (m.index, Rejected(m.index, m.message_id, m.path, text, "fix the cause, then replay"), "error")
        )


def _ids(m: _Message) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    if m.user_id:
        out.add(("u", m.user_id))
    if m.anonymous_id:
        out.add(("a", m.anonymous_id))
    if m.previous_id:
        out.update((("u", m.previous_id), ("a", m.previous_id)))
    return out


def _identities(m: _Message) -> set[tuple[str, str]]:
    """The identities a checked message names (as ``erasure.message_identities`` reads them)."""
    out: set[tuple[str, str]] = set()
    if m.user_id:
        out.add(("external", m.user_id))
    if m.anonymous_id:
        out.add(("anonymous", m.anonymous_id))
    if m.previous_id:
        out.update((("external", m.previous_id), ("anonymous", m.previous_id)))
    if m.type == "identify":
        out |= message_identities({"traits": {k: m.customer[k] for k in ("email", "phone") if k in m.customer}})
    return out


def _entry_identities(row: _Row, index: int | None) -> set[tuple[str, str]]:
    """The identities a rejected entry of ``row`` names (the whole row's for an unreadable one)."""
    raw = standalone_message(row, index)
    message = _decoded(raw)
    return message_identities(message) if type(message) is dict else raw_identities(raw)


def standalone_message(row: _Row, index: int | None) -> bytes:
    """The message as a self-contained JSON document (its call type and the batch's sentAt in it)."""
    if index is None or not 0 <= index < len(row.messages):
        return row.payload
    message = row.messages[index]
    if type(message) is msgspec.Raw:  # a batch row read raw (_Batch._parse_batch)
        message = _decode_any(message)
    if type(message) is not dict:
        return msgspec.json.encode(message)
    message = dict(message)
    if row.call is not None and message.get("type") is None:
        message["type"] = row.call
    if row.sent_at is not None and message.get("sentAt") is None:
        message["sentAt"] = row.sent_at
    return msgspec.json.encode(message)


def _write_rejected(crm: CRM, conn: sa.Connection, rows: list[_Row], now: datetime) -> int:
    out: list[dict[str, Any]] = []
    for row in rows:
        for index, r, reason in row.rejected:
            out.append(
                {
                    "workspace_id": row.workspace,
                    "inbox_id": row.id,
                    "received_at": row.received_at,
                    "rejected_at": now,
                    "reason": reason,
                    "message_id": None if r.message_id is None else _cut(r.message_id, 200),
                    "field": _cut(r.field, 500),
                    "problem": _cut(r.problem, 2000),
                    "fix": _cut(r.fix, 2000),
                    "message": standalone_message(row, index),
                }
            )
    if out:
        rt = crm.db.tables[REJECTED]
        ids = conn.execute(rt.insert().returning(rt.c.id, sort_by_parameter_order=True), out).scalars().all()
        # The identities each names: a customer's deletion finds them (ecrm_api.erasure).
        named = [
            r
            for rid, entry in zip(ids, out, strict=True)
            for r in identity_rows(entry["workspace_id"], rid, _decoded(entry["message"]), entry["message"])
        ]
        if named:
            conn.execute(crm.db.tables[REJECTED_IDS].insert(), named)
    return len(out)


def _decoded(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def batch_events() -> int:
    """Messages a tick claims at most: ``ECRM_INGEST_BATCH`` (default :data:`MAX_EVENTS`)."""
    import os

    raw = os.environ.get("ECRM_INGEST_BATCH", "")
    try:
        value = int(raw)
    except ValueError:
        return MAX_EVENTS
    return value if 1 <= value <= 1_000_000 else MAX_EVENTS


class CommitWatch:
    """Waits for a COMMIT by another connection to the database, instead of sleeping.

    On SQLite: ``PRAGMA data_version`` on a connection of its own, polled
    every ``poll`` seconds (a read of a counter in shared memory: no lock, no
    I/O), changes when any other connection -- the gateway's inbox writer,
    in this process or another -- committed.  Elsewhere (PostgreSQL, a
    host's connection) it waits ``poll * 10`` at a time and reports a change
    each time (the tick's claim query is the check).
    """

    def __init__(self, crm: CRM, *, poll: float = 0.005) -> None:
        self.crm = crm
        self.poll = poll
        self._conn: Any = None
        self._version: int | None = None

    def _read(self) -> int | None:
        if not self.crm.db.is_sqlite or self.crm.db.joined:
            return None
        try:
            if self._conn is None:
                self._conn = self.crm.db.engine.raw_connection()
            cur = self._conn.cursor()
            try:
                cur.execute("PRAGMA data_version")
                return int(cur.fetchone()[0])
            finally:
                cur.close()
        except Exception:  # pragma: no cover - the database went away: wait by time
            self.close()
            return None

    def mark(self) -> None:
        """Remember the database's state now (call after a tick: its own COMMIT is not news)."""
        self._version = self._read()

    def wait(self, timeout: float, stop: Any = None) -> bool:
        """Until a COMMIT since :meth:`mark` (True), ``timeout`` seconds, or ``stop()`` (False)."""
        deadline = time.monotonic() + timeout
        while True:
            version = self._read()
            if version is None:
                left = deadline - time.monotonic()
                time.sleep(max(0.0, min(self.poll * 10, left)))
                return left > 0
            if self._version is not None and version != self._version:
                self._version = version
                return True
            self._version = version
            if time.monotonic() >= deadline or (stop is not None and stop()):
                return False
            time.sleep(self.poll)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass


#: The tick of ``ingest.process`` waits this long at most for new rows when the inbox is empty.
IDLE_WAIT = 0.25
#: Batching by time: once rows arrive (or after a tick that took every row),
#: the processor lets this much more gather before it claims, so that a
#: steady stream of small requests is stored in batches, not request by
#: request (each tick has fixed costs: the claim, the COMMIT, the live
#: segment refresh after it).
GATHER = 0.05
_watches: dict[int, CommitWatch] = {}
#: A tick holds the write lock (SQLite) about this long at most: the
#: gateway's appends wait for it (503 past ``ingest_lock_timeout``, 5 s).
LOCK_BUDGET = 1.0


class Pace:
    """Sizes ticks by time: the messages one tick claims follow the rate
    measured over the last ticks, so that a tick takes about
    :data:`LOCK_BUDGET` seconds (between 200 and ``max_events`` messages).
    A tuning hint kept in the process, not state of the work."""

    def __init__(self, budget: float = LOCK_BUDGET) -> None:
        self.budget = budget
        self.rate: float | None = None

    def size(self, max_events: int) -> int:
        if self.rate is None:
            return max_events
        return max(200, min(max_events, int(self.rate * self.budget)))

    def record(self, result: ProcessResult) -> None:
        if result.events < 100 or result.seconds <= 0:
            return
        rate = result.events / result.seconds
        self.rate = rate if self.rate is None else 0.5 * self.rate + 0.5 * rate


_paces: dict[int, Pace] = {}


def _watch(crm: CRM) -> CommitWatch:
    """One watch per database engine in this process (a connection, not state of the work)."""
    key = id(crm.db.engine)
    watch = _watches.get(key)
    if watch is None or watch.crm.db.engine is not crm.db.engine:
        watch = _watches[key] = CommitWatch(crm)
    return watch


def make_job(
    *,
    event_kinds: Mapping[str, str] | None = None,
    future_tolerance: timedelta = timedelta(days=1),
    every: float = GATHER,
    idle_wait: float = IDLE_WAIT,
    gather: float = GATHER,
) -> Any:
    """The :class:`~ecrm_core.registry.JobSpec` of ``ingest.process`` (a global,
    non-exclusive job: on PostgreSQL several workers drain at once).

    A tick that finds the inbox empty waits up to ``idle_wait`` seconds for
    a COMMIT (:class:`CommitWatch`: on SQLite ``PRAGMA data_version``) and
    processes what it brought after ``gather`` seconds more (batching by
    time), instead of sleeping a fixed interval: when the processor keeps
    up, an event is visible about ``gather`` plus one tick after its 200.
    ``every`` (the pause after a tick that took every row) is ``gather`` too.
    """
    from ecrm_core.registry import JobSpec

    def tick(ctx: JobContext) -> JobResult:
        from ecrm_core.registry import JobResult

        pace = _paces.setdefault(id(ctx.crm.db.engine), Pace())

        def run() -> ProcessResult:
            done = process_inbox(
                ctx.crm,
                event_kinds=event_kinds,
                future_tolerance=future_tolerance,
                max_events=pace.size(batch_events()),
            )
            pace.record(done)
            return done

        watch = _watch(ctx.crm)
        watch.mark()
        result = run()
        if not result.rows and idle_wait > 0 and watch.wait(idle_wait, ctx.stopping):
            if gather > 0 and not ctx.stopping():
                time.sleep(gather)
            result = run()
        return JobResult(
            done=result.events,
            more=result.more,
            message=(
                f"{result.rows} rows, {result.stored} stored, {result.duplicates} duplicates, "
                f"{result.rejected} rejected, {result.erased} erased in {result.seconds:.2f} s"
            ),
        )

    return JobSpec(
        name=JOB,
        tick=tick,
        scope="global",
        every=every,
        exclusive=False,
        description="store the tracking messages of the ingest inbox (all workspaces), up to 10,000 a tick; "
        "an idle tick waits for the next COMMIT",
    )


class ProcessorThread:
    """``ApiConfig(ingest_processor="thread")``: the processor in a thread of the server.

    It ticks while a tick leaves rows behind; after a tick that took every
    row it lets :data:`GATHER` seconds of requests gather (batching by time);
    idle, it waits for this app's next append (:meth:`wake`) or any COMMIT
    to the database (:class:`CommitWatch`), not for a fixed time."""

    def __init__(
        self,
        crm: CRM,
        *,
        event_kinds: Mapping[str, str],
        future_tolerance: timedelta,
        gather: float = GATHER,
    ) -> None:
        import threading

        self.crm = crm
        self.event_kinds = event_kinds
        self.future_tolerance = future_tolerance
        self.gather = gather
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def wake(self) -> None:
        """Something was appended: start (if needed) and tick soon."""
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    import threading

                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, name="ecrm-api-ingest", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        watch = CommitWatch(self.crm)
        try:
            self._loop(watch)
        finally:
            watch.close()

    def _loop(self, watch: CommitWatch) -> None:
        failures = 0
        pace = Pace()
        while not self._stop.is_set():
            watch.mark()
            try:
                result = process_inbox(
                    self.crm,
                    event_kinds=self.event_kinds,
                    future_tolerance=self.future_tolerance,
                    max_events=pace.size(batch_events()),
                )
                pace.record(result)
                failures = 0
            except Exception:
                failures += 1
                log.exception("ecrm-api: the ingest processor thread failed (retrying)")
                self._stop.wait(min(30.0, 0.5 * 2**failures))
                continue
            if result.more:
                continue
            if not result.rows:
                # Idle: wait for this app's next append, or any COMMIT to the
                # database (another server process's appends, a replay).
                deadline = time.monotonic() + 1.0
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if self._wake.wait(0.02) or watch.wait(0.03, self._stop.is_set):
                        break
                self._wake.clear()
            self._stop.wait(self.gather)  # batching by time: let more requests gather

    def close(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
