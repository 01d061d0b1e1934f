"""Pre-rendered SQL on the DB-API for the pipeline's bulk paths.

``send_many`` and ``dispatch`` move every message through a handful of
statements per batch (read the customers, insert the outbox rows, claim,
log the attempts, settle).  Built as SQLAlchemy expressions, each row's
parameters went through SQLAlchemy's per-row processing (type processors,
``construct_params``), which cost more than the database's own work.  Here
the statements are rendered once, as text in the driver's parameter style,
and run with ``exec_driver_sql`` (``executemany`` with tuples); a list of ids
or keys is ONE parameter (``json_each`` on SQLite, an array on PostgreSQL).
Values are converted the way the columns' types store them (:class:`_Sql`'s
``ts``/``json`` and ``read_ts``/``read_json``), so rows written here read back
through the tables' SQLAlchemy types unchanged, and the other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

import sqlalchemy as sa


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps`` with its default options, its C encoder built once (``json.dumps`` builds
    one per call, which costs more than encoding a message's content)."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - Python without the _json accelerator
        return json.dumps
    plain = json.JSONEncoder()
    chunks = make(
        None,  # markers: no circular check (a dict kept across calls could be left dirty by an error)
        plain.default,
        encoder.encode_basestring_ascii,
        plain.indent,
        plain.key_separator,
        plain.item_separator,
        plain.sort_keys,
        plain.skipkeys,
        plain.allow_nan,
    )
    join = "".join

    def dumps(value: Any) -> str:
        if isinstance(value, str):
            return json.dumps(value)
        try:
            return join(chunks(value, 0))
        except RecursionError:  # a circular (or absurdly deep) value: json.dumps's own error
            return json.dumps(value)

    return dumps


_dumps = _make_dumps()

#: Texts up to this length are decoded once per batch by :meth:`_Sql.read_json_shared`.
_SHARED_MAX = 512
_MISSING = object()


class _Sql:
    """Dialect details for one connection: placeholders, table names, values."""

    __slots__ = ("_prep", "conn", "jph", "ph", "sqlite")

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        if conn.dialect.name not in ("sqlite", "postgresql"):  # pragma: no cover - ecrm supports these two
            raise NotImplementedError(
                f"the delivery pipeline's bulk SQL supports SQLite and PostgreSQL, not {conn.dialect.name}"
            )
        self.ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        #: the placeholder of a JSON value (text cast to json on PostgreSQL)
        self.jph = self.ph if self.sqlite else "CAST(%s AS json)"
        self._prep = conn.dialect.identifier_preparer

    # -- names -------------------------------------------------------------
    def name(self, table: sa.Table) -> str:
        """The table's name as the statement must spell it (schema, quoting)."""
        return str(self._prep.format_table(table))

    def marks(self, n: int) -> str:
        return ", ".join([self.ph] * n)

    # -- values written ----------------------------------------------------
    def ts(self, value: datetime | None) -> Any:
        """A datetime as :class:`~ecrm_core.storage.UTCDateTime` binds it."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer; ecrm stores aware datetimes only")
        value = value.astimezone(UTC)
        if self.sqlite:
            # SQLAlchemy's SQLite DATETIME text: always six digits of microseconds
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def flag(self, value: bool) -> Any:
        return int(bool(value)) if self.sqlite else bool(value)

    @staticmethod
    def json(value: Any) -> str:
        """``json.dumps(value)``: the same text, without setting up an encoder per call."""
        text: str = _dumps(value)
        return text

    # -- values read ---------------------------------------------------------
    @staticmethod
    def read_ts(value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        result: datetime = value
        return result.replace(tzinfo=UTC) if result.tzinfo is None else result.astimezone(UTC)

    @staticmethod
    def read_json(value: Any) -> Any:
        """A JSON column's value (SQLite returns the text; psycopg may decode it already)."""
        if isinstance(value, str | bytes | bytearray):
            return json.loads(value)
        return value

    def read_json_shared(self, value: Any, cache: dict[str, Any]) -> Any:
        """:meth:`read_json`, decoding each distinct short text once per ``cache``
        (a batch's consent, metadata, empty attributes repeat): the value is SHARED
        between the rows that had the same text, so the caller copies what it hands out."""
        if type(value) is str and len(value) <= _SHARED_MAX:
            found = cache.get(value, _MISSING)
            if found is _MISSING:
                found = cache[value] = json.loads(value)
            return found
        return self.read_json(value)

    # -- lists as one parameter ---------------------------------------------
    def any_of(self, column: str, values: Sequence[Any], *, kind: str = "bigint") -> tuple[str, Any]:
        """``column IN values`` with the values as ONE parameter: the SQL and the parameter.

        ``kind`` is the PostgreSQL element type (``bigint``, ``text``)."""
        if self.sqlite:
            return f"{column} IN (SELECT value FROM json_each({self.ph}))", json.dumps(list(values))
        return f"{column} = ANY(CAST({self.ph} AS {kind}[]))", list(values)

    # -- running -------------------------------------------------------------
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.conn.exec_driver_sql(sql, tuple(params)).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.exec_driver_sql(sql, tuple(params)).rowcount)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(r) for r in rows]
        if len(batch) == 1:
            self.conn.exec_driver_sql(sql, batch[0])
        elif batch:
            self.conn.exec_driver_sql(sql, batch)


def _uids(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as 32 hex digits (what ``uuid.uuid4().hex`` gives),
    from one ``os.urandom`` call: message and attempt ids for a whole batch."""
    raw = bytearray(os.urandom(16 * n))
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return [text[j : j + 32] for j in range(0, 32 * n, 32)]


def _attempt_id(row_id: int, message_uid: str, number: int) -> str:
    """The id of attempt ``number`` of a message, 32 hex digits: the message's row id and the number
    (so attempt rows are appended in the order of their unique index, not scattered through it),
    then 16 digits derived from the message id and the number.  Each attempt of a message has its
    own, and a claim need not store it: the attempt's row is written once, when it settles (or
    when its lease is found expired)."""
    tail = blake2b(f"{message_uid}/{number}".encode(), digest_size=8).hexdigest()
    return f"{row_id:012x}{number:04x}{tail}"
