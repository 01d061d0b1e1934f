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
left open), each column decoded as its type reads SQLite's text (times by
``fromisoformat``, JSON by msgspec), the consent decoded straight into the
response's structs when it has the form the core writes (any other stored
form goes through the core's ``Customer`` conversion, so both answer the
same: ``tests/api/test_customer_reads.py``), and the row put straight into
the response struct (~25 µs in process; 80 µs before the consent and JSON
were decoded this way).
The workspace is a bound parameter of the statement, as in the core: an id of
another workspace is not found.  Any other database (or a CRM joined to a
host's connection) takes the core's path.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import sqlalchemy as sa
from ecrm_core.domain import Customer
from ecrm_core.errors import NotFound, ValidationError
from ecrm_core.storage import UTCDateTime
from ecrm_core.validation import MAX_SLUG_LENGTH, SLUG_PATTERN, check_text

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["CustomerReader"]

_decode = msgspec.json.Decoder().decode
#: A channel name as the core checks it (``check_slug``); anything else goes the core's way.
_SLUG = re.compile(SLUG_PATTERN).match

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
    """The column type's result processor, specialised where the generic one
    costs more than the statement: ecrm's ``UTCDateTime`` by its own
    conversion (``fromisoformat`` of SQLite's text, not SQLAlchemy's regular
    expression), a JSON column on SQLite by msgspec (``json.loads`` where
    msgspec refuses the text, e.g. an integer beyond 64 bits)."""
    if isinstance(type_, UTCDateTime):
        convert = type_.process_result_value
        return lambda value: convert(value, dialect)
    if isinstance(type_, sa.JSON) and dialect.name == "sqlite":
        return _json
    return type_.dialect_impl(dialect).result_processor(dialect, None)  # type: ignore[no-any-return]


def _json(value: Any) -> Any:
    if type(value) is not str:
        return json.loads(value)
    try:
        return _decode(value)
    except msgspec.DecodeError:
        return json.loads(value)


class _StoredConsent(msgspec.Struct, forbid_unknown_fields=True):
    """The stored form of one channel's consent, exactly as the core writes it."""

    status: Literal["granted", "denied"]
    at: datetime | None
    source: str | None


_decode_consent = msgspec.json.Decoder(dict[str, _StoredConsent]).decode


def _text_ok(value: str) -> bool:
    try:
        check_text(value, "consent.source")
    except ValidationError:
        return False
    return True


_STRUCTS: list[Any] = []


def _structs() -> tuple[Any, Any]:
    """``(CustomerOut, ConsentOut)``, imported once (the routes import this module)."""
    if not _STRUCTS:
        from .routes.customers import ConsentOut, CustomerOut

        _STRUCTS[:] = [CustomerOut, ConsentOut]
    return _STRUCTS[0], _STRUCTS[1]


def _consent(stored: str, general: Callable[[Any], Any]) -> dict[str, Any]:
    """The response's consent from the stored JSON: decoded straight into
    ``ConsentOut`` structs (the form the core writes: a status, an aware time
    or null, a source or null); any other stored form goes the core's way
    (``Customer(consent=...)``), so both answer the same."""
    ConsentOut = _structs()[1]
    try:
        found = _decode_consent(stored)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    else:
        if all(
            (c.at is None or c.at.tzinfo is not None) and (c.source is None or _text_ok(c.source))
            for c in found.values()
        ) and all(_SLUG(ch) and len(ch) <= MAX_SLUG_LENGTH for ch in found):
            return {
                ch: ConsentOut(status=c.status, at=None if c.at is None else c.at.astimezone(UTC), source=c.source)
                for ch, c in found.items()
            }
    consent = Customer(consent=general(stored)).consent
    return {ch: ConsentOut(status=s.status, at=s.at, source=s.source) for ch, s in consent.items()}


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
        self._consent_json: Callable[[Any], Any] = lambda value: value
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
                processors = [_processor(c.c[name].type, dialect) for name in _COLUMNS]
                # consent stays text: read() decodes it into the response's structs (see _consent)
                self._consent_json = processors[6] or (lambda value: value)
                processors[6] = None
                self._processors = processors
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
        if not self.fast:
            from .routes.customers import customer_out

            return customer_out(crm.customers.get(customer_id))
        values = self.row(crm.workspace, customer_id)
        if values is None:
            raise NotFound("customer", customer_id)
        # read as the core reads it (stored forms, times as aware UTC)
        values[6] = _consent(values[6], self._consent_json) if values[6] else {}
        return _structs()[0](*values)
