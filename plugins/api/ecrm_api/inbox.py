"""The ingest inbox: where the tracking routes put what they accepted.

A request to ``/v1/*`` (or an analytics.js route) is read, decoded and
checked message by message on the event loop; the *accepted* messages go to
the app's :class:`InboxWriter` as one payload (a JSON document: the body as
it came when nothing was rejected, else ``{"batch": [accepted], "sentAt"}``),
and the request waits.  The writer is one thread: it takes every payload
waiting for it and appends them as rows of ``ingest_inbox`` in **one**
transaction (one row per request: a few rows per commit, not one per event),
then answers each request.  The processor (:mod:`ecrm_api.processor`) drains
the inbox into customers and interactions later, in bulk.

**Durable** means the COMMIT of that transaction returned.  Under the
SQLite settings ecrm uses (WAL, ``synchronous=NORMAL``) a committed row
survives a crash of the process (the WAL is in the OS's page cache) but not
an OS crash or a power loss before the next checkpoint's ``fsync``; on
PostgreSQL it is the server's COMMIT (with ``synchronous_commit=on``, its
default, flushed to its WAL).

The tables (``ingest_inbox``, ``ingest_rejected``, ``ingest_log``) are the
migration ``api_0002``, ``ingest_rejected_ids`` (the identities each
rejected message names, for erasure) ``api_0003``, ``ingest_tombstones``
(deleted identities, :mod:`ecrm_api.erasure`) ``api_0004``; a test checks
that they agree.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

from .groupcommit import GroupCommit

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "INBOX",
    "LOG",
    "REJECTED",
    "REJECTED_IDS",
    "TOMBSTONES",
    "InboxStats",
    "InboxWriter",
    "Overloaded",
    "define_tables",
    "inbox_stats",
]

log = logging.getLogger(__name__)

INBOX = "ingest_inbox"
REJECTED = "ingest_rejected"
#: The identities each rejected message names (so that a customer's deletion finds them).
REJECTED_IDS = "ingest_rejected_ids"
#: Deleted identities, and when: the processor drops the messages received
#: before that which name one (a deletion while it holds a claimed batch).
TOMBSTONES = "ingest_tombstones"
LOG = "ingest_log"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _table(metadata: sa.MetaData, naming: Naming, short: str, *columns: Any) -> sa.Table:
    name = naming.table(short)
    key = f"{naming.schema}.{name}" if naming.schema else name
    existing = metadata.tables.get(key)
    if existing is not None:
        return existing
    return sa.Table(name, metadata, *columns, schema=naming.schema)


def define_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the inbox, rejected, rejected identities, tombstones and log
    tables (as the migrations ``api_0002`` to ``api_0004`` create them)."""
    _table(
        metadata,
        naming,
        INBOX,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("call", sa.String(16)),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    _table(
        metadata,
        naming,
        REJECTED,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False, index=True),
        sa.Column("inbox_id", sa.BigInteger),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("rejected_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(200)),
        sa.Column("field", sa.String(500), nullable=False),
        sa.Column("problem", sa.Text, nullable=False),
        sa.Column("fix", sa.Text, nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("replayed_at", UTCDateTime()),
    )
    _table(
        metadata,
        naming,
        REJECTED_IDS,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("rejected_id", sa.BigInteger, nullable=False, index=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Index(f"ix_{naming.table(REJECTED_IDS)}_identity", "workspace_id", "kind", "value"),
    )
    _table(
        metadata,
        naming,
        TOMBSTONES,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False, index=True),
        sa.Index(f"ix_{naming.table(TOMBSTONES)}_identity", "workspace_id", "kind", "value"),
    )
    _table(
        metadata,
        naming,
        LOG,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("finished_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )


@attrs.frozen
class InboxStats:
    """The inbox now: ``rows``, ``depth`` (messages waiting), ``oldest`` (when the
    oldest waiting row was received), ``lag`` (its age in seconds)."""

    rows: int
    depth: int
    oldest: datetime | None
    lag: float


def inbox_stats(crm: CRM, conn: sa.Connection | None = None) -> InboxStats:
    """Depth and lag of the inbox (all workspaces: one processor drains them all)."""
    t = crm.db.tables[INBOX]

    def read(c: sa.Connection) -> InboxStats:
        rows, depth = c.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.count), 0))).one()
        oldest = c.execute(sa.select(t.c.received_at).order_by(t.c.id).limit(1)).scalar()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        lag = max(0.0, (crm.now() - oldest).total_seconds()) if oldest is not None else 0.0
        return InboxStats(int(rows), int(depth), oldest, lag)

    if conn is not None:
        return read(conn)
    with crm.db.read() as c:
        return read(c)


class Overloaded(Exception):
    """The inbox cannot take the request now (too deep, too old, or the database
    refused the write): answer 503 with ``Retry-After``."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@attrs.define(eq=False)
class _Entry:
    workspace: str
    received_at: datetime
    call: str | None
    count: int
    payload: bytes


@attrs.define
class InboxWriterStats:
    """What an :class:`InboxWriter` did (tests, benchmarks, monitoring)."""

    groups: int = 0
    rows: int = 0
    events: int = 0
    failed_groups: int = 0


class InboxWriter(GroupCommit[_Entry]):
    """Appends accepted payloads to ``ingest_inbox``: one transaction per group
    (the app's :class:`~ecrm_api.groupcommit.GroupCommit` for the inbox).

    :param max_depth: messages waiting in the inbox past which requests get
        503 (0: no limit).
    :param max_lag: seconds the oldest waiting row may be old before
        requests get 503 (0: no limit).
    :param lock_timeout: how long (seconds) a group's write waits for the
        database (SQLite's write lock, PostgreSQL's locks) before its
        requests get 503.
    :param retry_after: the ``Retry-After`` sent with the 503.
    :param refresh: how often (seconds) depth and lag are read again.
    :param max_group_rows: rows (requests) in one transaction at most.
    """

    thread_name = "ecrm-api-inbox"

    def __init__(
        self,
        crm: CRM,
        *,
        max_depth: int = 0,
        max_lag: float = 0.0,
        lock_timeout: float = 5.0,
        retry_after: int = 5,
        refresh: float = 0.5,
        max_group_rows: int = 1000,
    ) -> None:
        super().__init__(max_group=max_group_rows)
        self.crm = crm
        self.max_depth = max_depth
        self.max_lag = max_lag
        self.lock_timeout = lock_timeout
        self.retry_after = retry_after
        self.refresh = refresh
        self.stats = InboxWriterStats()
        self.last: InboxStats | None = None

    # -- the request's side -------------------------------------------------
    def check(self) -> None:
        """Raise :class:`Overloaded` when the inbox is past its limits (last reading)."""
        if not (self.max_depth or self.max_lag):
            return
        self.ensure_thread()
        st = self.last
        if st is None:
            return
        if self.max_depth and st.depth >= self.max_depth:
            raise Overloaded(
                f"the ingest inbox holds {st.depth} messages (limit {self.max_depth}); retry later",
                self.retry_after,
            )
        if self.max_lag and st.lag >= self.max_lag:
            raise Overloaded(
                f"the oldest message in the ingest inbox waits for {st.lag:.0f} s (limit {self.max_lag:g} s); "
                "retry later",
                self.retry_after,
            )

    async def append(self, workspace: str, received_at: datetime, call: str | None, count: int, payload: bytes) -> None:
        """Append one payload; returns once its row is committed (raises :class:`Overloaded` if it could not be)."""
        await self.submit(_Entry(workspace, received_at, call, count, payload))

    # -- the writer thread ----------------------------------------------------
    def _idle_every(self) -> float | None:
        return self.refresh if (self.max_depth or self.max_lag) else None

    def _idle(self) -> None:
        self._read_stats()

    def _stopped(self) -> None:
        self._drop_connection()

    def _commit(self, group: list[_Entry]) -> list[tuple[Any, BaseException | None]]:
        error = self._write(group)
        return [(None, error)] * len(group)

    def _read_stats(self) -> None:
        try:
            self.last = inbox_stats(self.crm)
        except Exception as exc:  # the database is down: keep the last reading, say so once
            log.warning("ecrm-api inbox: cannot read depth and lag (%s)", exc)

    def _write(self, group: list[_Entry]) -> BaseException | None:
        t = self.crm.db.tables[INBOX]
        rows = (
            [
                {
                    "workspace_id": e.workspace,
                    "received_at": e.received_at,
                    "call": e.call,
                    "count": e.count,
                    "payload": e.payload,
                }
                for e in group
            ]
            if self.crm.db.joined or self.crm.db.engine.dialect.name != "sqlite"
            else []
        )
        try:
            if self.crm.db.joined:  # pragma: no cover - an app on a host's connection
                with self.crm.db.write() as conn:
                    conn.execute(t.insert(), rows)
            else:
                conn = self._connection()
                if conn.dialect.name == "sqlite":
                    self._write_sqlite(conn, t, group)
                else:
                    with conn.begin():
                        if conn.dialect.name == "postgresql":
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self.lock_timeout * 1000)}")
                        conn.execute(t.insert(), rows)
        except sa.exc.DBAPIError as exc:
            # Locked past the timeout, disk full, server gone: nothing of the
            # group was committed (one transaction); the clients retry.
            self._drop_connection()
            self.stats.failed_groups += 1
            log.warning("ecrm-api inbox: a group of %d requests was not stored (%s)", len(group), _short(exc))
            return Overloaded(
                f"the database could not take the messages now ({_short(exc)}); retry later", self.retry_after
            )
        except BaseException as exc:  # pragma: no cover - a bug: answer, never hang a request
            self._drop_connection()
            log.exception("ecrm-api inbox: a group failed unexpectedly")
            return exc
        st = self.stats
        st.groups += 1
        st.rows += len(group)
        st.events += sum(e.count for e in group)
        return None

    _insert: tuple[str, Any] | None = None

    def _write_sqlite(self, conn: sa.Connection, t: sa.Table, group: list[_Entry]) -> None:
        """The group's rows in one ``BEGIN IMMEDIATE`` … ``COMMIT`` on the thread's
        SQLite connection, through the driver: one prepared INSERT, the rows as
        tuples (the thread holds the GIL for less of each group: the requests'
        checks run meanwhile).  A failure rolls back and raises as SQLAlchemy
        would (:class:`sqlalchemy.exc.DBAPIError`): nothing of the group stays."""
        if self._insert is None:
            dialect = conn.dialect
            quote = dialect.identifier_preparer.format_table
            sql = f"INSERT INTO {quote(t)} (workspace_id, received_at, call, count, payload) VALUES (?, ?, ?, ?, ?)"
            self._insert = (sql, t.c.received_at.type.bind_processor(dialect))
        sql, stamp = self._insert
        rows = [
            (e.workspace, e.received_at if stamp is None else stamp(e.received_at), e.call, e.count, e.payload)
            for e in group
        ]
        raw: Any = conn.connection.driver_connection
        try:
            raw.execute("BEGIN IMMEDIATE")
            try:
                raw.executemany(sql, rows)
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
        except raw_errors() as exc:
            raise sa.exc.DBAPIError.instance(sql, None, exc, type(exc)) from exc

    _conn: sa.Connection | None = None

    def _connection(self) -> sa.Connection:
        """The writer thread's own connection (kept: no pool checkout per group);
        on SQLite it waits ``lock_timeout`` at most for the write lock."""
        if self._conn is None:
            conn = self.crm.db.engine.connect()
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(self.lock_timeout * 1000)}")
                conn.commit()
                conn = conn.execution_options(ecrm_sqlite_begin="IMMEDIATE")
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # pragma: no cover - already broken
                pass


def raw_errors() -> type[Exception]:
    """The errors of the SQLite driver (what SQLAlchemy wraps as DBAPIError)."""
    import sqlite3

    return sqlite3.Error


def _short(exc: sa.exc.DBAPIError) -> str:
    text = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    return text[:200]
