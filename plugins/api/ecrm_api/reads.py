"""The hot read of the API, ``GET /customers/{id}``, without the general path's overhead.

``crm.customers.get`` is the general read: it builds the SELECT, checks a
connection out through SQLAlchemy's ``Connection`` (``BEGIN`` … ``ROLLBACK``
around one statement), and turns the row into a validated
:class:`~ecrm_core.domain.Customer` (its e-mail and phone are parsed
again), which the route then turns into the response struct.  Measured in
process on SQLite that is ~300 µs per request, several times the whole of a
bare Litestar endpoint.

On a SQLite database ecrm opened itself this module does the same read with
what SQLAlchemy compiled once: the SELECT (one statement for the id *and* its
merge survivor, so it reads one snapshot), run on a pooled DBAPI connection
(SQLite's autocommit: the statement is its own read transaction, nothing is
left open), each column decoded by the column type's own SQLAlchemy result
processor, and the row put straight into the response struct (~30 µs).
The workspace is a bound parameter of the statement, as in the core: an id of
another workspace is not found.  Any other database (or a CRM joined to a
host's connection) takes the core's path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.domain import Customer
from ecrm_core.errors import NotFound
from ecrm_core.storage import UTCDateTime

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["CustomerReader"]

#: The columns in the order of the response struct (then ``merged_into``
#: is not needed: the statement already followed it).
_COLUMNS = (
    "id",
    "external_id",
    "email",
    "phone",
    "name",
    "attributes",
    "consent",
    "lifecycle_stage",
    "timezone",
    "locale",
    "created_at",
    "updated_at",
)


def _processor(type_: Any, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """The column type's result processor; for ecrm's ``UTCDateTime`` its own
    conversion, which reads SQLite's text directly (``fromisoformat``)
    instead of SQLAlchemy's generic, regular-expression one first."""
    if isinstance(type_, UTCDateTime):
        convert = type_.process_result_value
        return lambda value: convert(value, dialect)
    return type_.dialect_impl(dialect).result_processor(dialect, None)  # type: ignore[no-any-return]


class CustomerReader:
    """Reads one customer as a ``CustomerOut`` (see the module's text).

    ``read(crm, customer_id)`` returns the struct; raises
    :class:`~ecrm_core.errors.NotFound` like ``crm.customers.get``.
    ``fast`` tells whether the compiled path applies (SQLite, ecrm's own
    engine); otherwise callers use the core (and should not run it on the
    event loop: it may be a network round trip).
    """

    def __init__(self, crm: CRM) -> None:
        db = crm.db
        self.fast = db.is_sqlite and not db.joined
        self._engine = db.engine
        self._db = db
        self._lock = threading.Lock()
        self._sql: str | None = None
        self._processors: list[Callable[[Any], Any] | None] = []
        self._local = threading.local()
        self._held: list[Any] = []
        self._generation = 0

    def _compile(self) -> str:
        with self._lock:
            if self._sql is None:
                c = self._db.tables["customers"]
                asked = c.alias("asked")
                survivor = sa.and_(
                    c.c.workspace_id == asked.c.workspace_id,
                    c.c.id == sa.func.coalesce(asked.c.merged_into, asked.c.id),
                )
                q = (
                    sa.select(*(c.c[name] for name in _COLUMNS))
                    .select_from(asked.join(c, survivor))
                    .where(asked.c.workspace_id == sa.bindparam("ws"), asked.c.id == sa.bindparam("id"))
                )
                dialect = self._engine.dialect
                compiled = q.compile(dialect=dialect)
                assert compiled.positiontup == ["ws", "id"], compiled.positiontup
                self._processors = [_processor(c.c[name].type, dialect) for name in _COLUMNS]
                self._db.check_schema()
                self._sql = compiled.string
            return self._sql

    def _connection(self) -> Any:
        """This thread's DBAPI connection, checked out of the engine's pool once
        (a checkout and its reset per request cost more than the read)."""
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            conn = self._engine.raw_connection()
            with self._lock:
                self._held.append(conn)
            local.conn, local.generation = conn, self._generation
        return local.conn

    def row(self, workspace: str, customer_id: int) -> list[Any] | None:
        """The decoded columns of :data:`_COLUMNS` for the id (or its survivor), ``None`` if not found."""
        sql = self._sql or self._compile()
        conn = self._connection()
        try:
            # fetchall: the statement runs to its end, so no read transaction
            # (and WAL snapshot) stays open on the held connection.
            found = conn.driver_connection.execute(sql, (workspace, customer_id)).fetchall()
        except Exception:
            self._drop(conn)
            raise
        if not found:
            return None
        return [v if p is None or v is None else p(v) for p, v in zip(self._processors, found[0], strict=True)]

    def _drop(self, conn: Any) -> None:
        self._local.generation = None
        with self._lock:
            if conn in self._held:
                self._held.remove(conn)
        conn.invalidate()

    def close(self) -> None:
        """Give the held connections back to the pool (the app's shutdown); a later read takes one again."""
        with self._lock:
            held, self._held = self._held, []
            self._generation += 1
        for conn in held:
            conn.close()

    def read(self, crm: CRM, customer_id: int) -> Any:
        """The ``CustomerOut`` of ``customer_id`` in ``crm``'s workspace."""
        from .routes.customers import ConsentOut, CustomerOut, customer_out

        if not self.fast:
            return customer_out(crm.customers.get(customer_id))
        values = self.row(crm.workspace, customer_id)
        if values is None:
            raise NotFound("customer", customer_id)
        if values[6]:  # read as the core reads it (stored forms, times as aware UTC)
            consent = Customer(consent=values[6]).consent
            values[6] = {ch: ConsentOut(status=s.status, at=s.at, source=s.source) for ch, s in consent.items()}
        return CustomerOut(*values)
