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
                self._processors = [
                    c.c[name].type.dialect_impl(dialect).result_processor(dialect, None) for name in _COLUMNS
                ]
                self._db.check_schema()
                self._sql = compiled.string
            return self._sql

    def row(self, workspace: str, customer_id: int) -> list[Any] | None:
        """The decoded columns of :data:`_COLUMNS` for the id (or its survivor), ``None`` if not found."""
        sql = self._sql or self._compile()
        conn = self._engine.raw_connection()
        try:
            found = conn.driver_connection.execute(sql, (workspace, customer_id)).fetchone()  # type: ignore[union-attr]
        finally:
            conn.close()
        if found is None:
            return None
        return [v if p is None or v is None else p(v) for p, v in zip(self._processors, found, strict=True)]

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
