"""The write path of ``crm.interactions``: one ``track``/``track_many`` call's
state — validating and normalising rows, resolving their customers (creating
the missing ones), and inserting set-based with idempotency keys.

Split from :mod:`.interactions` (which owns the service and its records).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import blake2b as _blake2b
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..domain import Alias, Interaction, InteractionBatch
from ..errors import EcrmError, IdempotencyConflict, NotFound, RowError, ValidationError
from ..validation import (
    _MAX_YEAR,
    _MIN_YEAR,
    aware_datetime,
    check_amount,
    check_currency,
    check_key,
    check_slug,
    properties_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from .interactions import Interactions

#: Keys a row given to ``track_many`` may have.
ROW_KEYS = (
    "kind",
    "occurred_at",
    "customer_id",
    "external_id",
    "email",
    "phone",
    "anonymous_id",
    "channel",
    "amount",
    "currency",
    "properties",
    "idempotency_key",
)
_ROW_KEY_SET = frozenset(ROW_KEYS)
_REF_KEYS = (("external_id", "external"), ("email", "email"), ("phone", "phone"), ("anonymous_id", "anonymous"))
_INSERT_COLUMNS = (
    "workspace_id",
    "customer_id",
    "origin_customer_id",
    "kind",
    "channel",
    "occurred_at",
    "amount",
    "currency",
    "properties",
    "idempotency_key",
    "payload_hash",
    "recorded_at",
)


# A validated row, ready to insert once its customer is resolved, is one
# tuple (the cheapest object per row).  Its first eight items are the insert's
# columns after workspace_id, customer_id and origin_customer_id; then the
# typed values listeners see, the customer reference and the row's index.
_KIND, _CHANNEL, _AT_DB, _AMOUNT_DB, _CURRENCY, _PROPS, _KEY, _HASH, _AT, _AMOUNT, _REF, _INDEX = range(12)
#: Where InteractionBatch finds each field in a prepared tuple.
_BATCH_POSITIONS = {
    "kind": _KIND,
    "occurred_at": _AT,
    "channel": _CHANNEL,
    "amount": _AMOUNT,
    "currency": _CURRENCY,
    "properties": _PROPS,
    "idempotency_key": _KEY,
}
_Prepared = tuple[Any, ...]
_HASHER = _blake2b(digest_size=16)  # copied per keyed row, never updated itself
_ALIAS_ROW_KEYS = frozenset(k for k, _ in _REF_KEYS)
_MAX_ID = 2**63


#: The aliases rows named by identity strings, built and checked once
#: (``(external_id, email, phone, anonymous_id)`` -> the Alias and its text);
#: emptied when it holds :data:`_REFS_MAX` (a few MB).
_REFS: dict[tuple[str | None, ...], tuple[Alias, str]] = {}
_REFS_MAX = 20_000


def _sqlite_dt(d: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime uses (UTC, always with micros).
    return d.strftime("%Y-%m-%d %H:%M:%S.%f")


class _TrackState:
    """Per-call state of one ``track``/``track_many``: caches and counters."""

    def __init__(self, svc: Interactions, create_missing: bool, keep: bool) -> None:
        self.svc = svc
        self.crm = svc.crm
        self.ws = svc.workspace
        self.create_missing = create_missing
        self.keep = keep
        self.kinds = self.crm.registry.interaction_kinds
        # Values already checked in this call (checked once, then a set lookup).
        self.channels: set[str] = set()
        self.currencies: set[str] = set()
        self.errors: list[RowError] = []
        self.batches: list[InteractionBatch] = []
        self.kept: list[Interaction] = []
        self.stored = 0
        self.duplicates = 0
        self.created = 0
        self.seen_keys: dict[str, str] = {}
        self.sqlite = svc.db.is_sqlite
        now = self.crm.now().astimezone(UTC)
        self.now = now
        self.now_db: Any = _sqlite_dt(now.replace(tzinfo=None)) if self.sqlite else now
        self._positional = True

    # -- per row -----------------------------------------------------------
    def prepare(self, index: int, row: Mapping[str, Any] | Interaction) -> _Prepared | None:
        """Validate and normalise one row: its prepared tuple, or ``None``
        (a duplicate of an earlier row of this call, or a bad row, recorded
        in :attr:`errors`)."""
        try:
            if type(row) is dict:  # the common case, without ABC checks
                return self._prepare(index, row)
            if isinstance(row, Interaction):
                return self._prepare_interaction(index, row)
            if not isinstance(row, Mapping):
                raise ValidationError("row", row, "not an object", "send one mapping per interaction")
            return self._prepare(index, row)
        except _Duplicate:
            return None
        except EcrmError as exc:
            self.errors.append(RowError(index, exc))
            return None

    def _prepare(self, index: int, row: Mapping[str, Any]) -> _Prepared:
        # The bulk path: every row is checked, but the common case (known
        # kind, aware UTC datetime, known channel, customer_id) costs a few
        # dict and set lookups; anything else goes through the validation
        # functions, which give the errors.
        if not _ROW_KEY_SET.issuperset(row):
            _unknown_field(row)
        get = row.get
        kind = get("kind")
        if type(kind) is not str or kind not in self.kinds:
            kind = self.crm.check_kind(kind)
        at = get("occurred_at")
        if at is None:
            occurred_at = self.now
        elif type(at) is datetime and at.tzinfo is UTC and _MIN_YEAR <= at.year <= _MAX_YEAR:
            occurred_at = at  # aware_datetime's own fast path, without the call
        else:
            occurred_at = aware_datetime(at, "occurred_at")
        channel = get("channel")
        if channel is not None and (type(channel) is not str or channel not in self.channels):
            self.channels.add(check_slug(channel, "channel", "channel name"))
        amount = get("amount")
        currency = get("currency")
        if amount is not None:
            amount = check_amount(amount)
        if currency is not None and (type(currency) is not str or currency not in self.currencies):
            currency = check_currency(currency)
            self.currencies.add(currency)
        if (amount is None) != (currency is None):
            missing = "currency" if currency is None else "amount"
            raise ValidationError(missing, None, "amount and currency go together", f"send {missing} too, or neither")
        props = get("properties")
        props = "{}" if props is None else properties_json(props)
        key = get("idempotency_key")
        if key is not None and (type(key) is not str or not 0 < len(key) <= 200 or not key.isprintable()):
            check_key(key)
        ref = get("customer_id")
        shown: str | None = None
        if type(ref) is not int or not 0 < ref < _MAX_ID or not _ALIAS_ROW_KEYS.isdisjoint(row):
            # An alias (checked and normalised by Alias) is built once for
            # each distinct identity, and kept across calls: events come from
            # the same people again and again, an Alias is immutable and its
            # checks depend on the strings alone.  (Only rows naming the
            # customer by strings: 1 == True == 1.0.)  Its text in the payload
            # hash (the attrs repr) is kept with it.
            who = (get("external_id"), get("email"), get("phone"), get("anonymous_id"))
            cacheable = ref is None and all(v is None or type(v) is str for v in who)
            cached = _REFS.get(who) if cacheable else None
            if cached is None:
                ref = self._ref(row)
                if cacheable:
                    shown = str(ref)
                    if len(_REFS) >= _REFS_MAX:
                        _REFS.clear()
                    _REFS[who] = (ref, shown)
            else:
                ref, shown = cached
        # The stored text form on SQLite (UTC, always with microseconds):
        # isoformat of an aware UTC datetime, without its "+00:00".
        text_at = occurred_at.isoformat(" ", "microseconds")[:26]
        if key is not None:
            hasher = _HASHER.copy()  # blake2b, 16 bytes: cheaper than a new one with options
            # A time ecrm filled in (no occurred_at sent) is not part of the
            # payload: a retry of the same event must match.  The format is
            # what stored payload hashes were made with: keep it.
            hasher.update(
                f"{ref if shown is None else shown}|{kind}|{channel}|{'' if at is None else text_at}|{amount}|{currency}|{props}".encode()
            )
            h = hasher.hexdigest()
            seen = self.seen_keys
            prev = seen.get(key)
            if prev is not None:
                if prev != h:
                    raise IdempotencyConflict(key, " earlier in this call")
                self.duplicates += 1
                raise _Duplicate()
            seen[key] = h
        else:
            h = None
        if self.sqlite:
            amount_db = None if amount is None else str(amount)
            return (kind, channel, text_at, amount_db, currency, props, key, h, occurred_at, amount, ref, index)
        return (kind, channel, occurred_at, amount, currency, props, key, h, occurred_at, amount, ref, index)

    def _prepare_interaction(self, index: int, row: Interaction) -> _Prepared:
        # An Interaction is already valid: the mapping path re-checks it (the
        # kind must be registered) and stores it the same way.
        if row.customer_id is None:
            raise ValidationError("customer_id", None, "no customer", "set customer_id on the Interaction")
        fields = {
            "kind": row.kind,
            "occurred_at": row.occurred_at,
            "customer_id": row.customer_id,
            "channel": row.channel,
            "amount": row.amount,
            "currency": row.currency,
            "properties": row.properties,
            "idempotency_key": row.idempotency_key,
        }
        return self._prepare(index, fields)

    @staticmethod
    def _ref(row: Mapping[str, Any]) -> Any:
        cid = row.get("customer_id")
        refs = [(kind, row[k]) for k, kind in _REF_KEYS if row.get(k) is not None]
        if cid is not None:
            if isinstance(cid, bool) or not isinstance(cid, int) or not 0 < cid < _MAX_ID:
                raise ValidationError("customer_id", cid, "not a valid id", "send the integer id ecrm assigned")
            if refs:
                raise ValidationError(
                    "customer_id", cid, "customer_id and an alias both given", "identify the customer one way per row"
                )
            return cid
        if not refs:
            raise ValidationError(
                "customer_id", None, "no customer", "send customer_id, external_id, email, phone or anonymous_id"
            )
        if len(refs) > 1:
            raise ValidationError(
                refs[1][0],
                refs[1][1],
                "more than one identity",
                "send one of external_id/email/phone/anonymous_id per row",
            )
        return Alias(*refs[0])

    # -- per batch ---------------------------------------------------------
    def _compiled(self, conn: sa.Connection) -> dict[str, Any]:
        """The statements of the bulk path, compiled once per table and dialect
        (kept in the table's ``info``: a ``track()`` call does not compile)."""
        table = self.svc.t("interactions")
        cache: dict[str, dict[str, Any]] = table.info.setdefault("ecrm.track_sql", {})
        dialect = conn.dialect
        found = cache.get(_dialect_key(dialect))
        if found is None:
            if dialect.name == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            elif dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
            else:  # pragma: no cover - other backends: plain insert, unique index still guards
                insert = sa.insert  # type: ignore[assignment]
            stmt = insert(table)
            if hasattr(stmt, "on_conflict_do_nothing"):
                stmt = stmt.on_conflict_do_nothing(index_elements=["workspace_id", "idempotency_key"])
            compiled = stmt.compile(dialect=dialect, column_keys=list(_INSERT_COLUMNS))
            if compiled.positional:
                order = [p for p in (compiled.positiontup or [])]
                assert tuple(order) == _INSERT_COLUMNS, order
            max_id = sa.select(sa.func.coalesce(sa.func.max(table.c.id), sa.literal_column("0"))).compile(
                dialect=dialect
            )
            found = cache[_dialect_key(dialect)] = {
                "insert": compiled.string,
                "positional": bool(compiled.positional),
                "max_id": max_id.string,
            }
        return found

    def _statement(self, conn: sa.Connection) -> str:
        compiled = self._compiled(conn)
        self._positional = compiled["positional"]
        return str(compiled["insert"])

    def _unusual_ids_sqlite(self, conn: sa.Connection, ids: set[int]) -> dict[Any, int | None]:
        """SQLite: the batch's customer ids that are not live customers of this
        workspace: ``{id: survivor}`` for merged ones, ``{id: None}`` for
        unknown ones; every other id is its own live customer.

        One query, with one JSON parameter instead of thousands of bound ids,
        driven by the ids (a primary-key lookup each: its cost does not grow
        with the number of customers), returning only the exceptions.
        """
        cache: dict[str, str] = self.svc.t("interactions").info.setdefault("ecrm.track_ids_sql", {})
        sql = cache.get(_dialect_key(conn.dialect))
        if sql is None:
            c = self.svc.t("customers")
            j = sa.func.json_each(sa.bindparam("ids", type_=sa.String)).table_valued("value").alias("j")
            on = sa.and_(c.c.id == j.c.value, c.c.workspace_id == sa.bindparam("ws", type_=sa.String))
            q = (
                sa.select(j.c.value, c.c.id, c.c.merged_into)
                .select_from(j.outerjoin(c, on))
                .where(sa.or_(c.c.id.is_(None), c.c.merged_into.is_not(None)))
            )
            compiled = q.compile(dialect=conn.dialect)
            assert compiled.positiontup == ["ids", "ws"], compiled.positiontup
            sql = cache[_dialect_key(conn.dialect)] = compiled.string

        rows = conn.exec_driver_sql(sql, (json.dumps(sorted(ids)), self.ws)).all()
        return {value: (None if cid is None else merged) for value, cid, merged in rows}

    def _customers(self, conn: sa.Connection, refs: set[Any]) -> dict[Any, int | None]:
        """Resolve the batch's customer references (ids and aliases), set-based.

        Returns the exceptions only: ``{reference: live customer id or None}``
        for every alias, for merged ids (to the survivor) and for unknown ids
        (``None``); an id missing from the result is a live customer.
        Unknown aliases become new prospects (``create_missing``), created on
        this connection so they commit or roll back with the interactions.
        """
        aliases = {r for r in refs if type(r) is not int}
        ids = refs - aliases if aliases else refs
        out: dict[Any, int | None] = {}
        if ids:
            if self.sqlite:
                out = self._unusual_ids_sqlite(conn, ids)
            else:
                c = self.svc.t("customers")
                vals = sorted(ids)
                live: dict[int, int] = {}
                for i in range(0, len(vals), 30000):
                    q = sa.select(c.c.id, sa.func.coalesce(c.c.merged_into, c.c.id)).where(
                        c.c.workspace_id == self.ws, c.c.id.in_(vals[i : i + 30000])
                    )
                    live.update((r[0], r[1]) for r in conn.execute(q).all())
                out = {i: live.get(i) for i in vals if live.get(i) != i}
        if aliases:
            view = self.crm.using(conn)
            found = view.customers._resolve(conn, aliases)
            missing = [al for al in aliases if al not in found]
            if missing and self.create_missing:
                result = view.customers.upsert_many(
                    [
                        {IDENTITY_KEY[al.kind]: al.value} if al.kind in IDENTITY_KEY else {"aliases": [al]}
                        for al in missing
                    ]
                )
                self.created += len(result.created)
                found.update(view.customers._resolve(conn, missing))
            out.update({al: found.get(al) for al in aliases})
        return out

    def _max_id(self, conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql(self._compiled(conn)["max_id"]).scalar_one())

    def insert(self, conn: sa.Connection, batch: list[_Prepared]) -> None:
        refs = list(map(_ref_of, batch))
        exceptions = self._customers(conn, set(refs))
        ws, now_db = self.ws, self.now_db
        found = [exceptions.get(r, r) for r in refs] if exceptions else refs
        if None not in found:
            cids: list[int] = found  # type: ignore[assignment]
        else:
            good: list[_Prepared] = []
            for p, cid in zip(batch, found, strict=True):
                if cid is None:
                    ref = p[_REF]
                    what = "customer" if isinstance(ref, int) else f"customer with {ref.kind}"
                    self.errors.append(RowError(p[_INDEX], NotFound(what, ref if isinstance(ref, int) else ref.value)))
                else:
                    good.append(p)
            batch = good
            cids = [c for c in found if c is not None]
            if not batch:
                return
        # The insert's rows: (workspace, customer, origin customer, *the first
        # eight items of the prepared tuple, recorded_at).
        rows: list[Any] = [
            (ws, cid, cid, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], now_db)
            for p, cid in zip(batch, cids, strict=True)
        ]
        if not self.sqlite:
            self._insert_returning(conn, batch, cids, rows)
            return
        sql = self._statement(conn)  # first: it learns the driver's parameter style
        if not self._positional:
            rows = [dict(zip(_INSERT_COLUMNS, r, strict=True)) for r in rows]
        keyed = any(p[_KEY] is not None for p in batch)
        # On SQLite ecrm holds the write lock: the rows it inserts get the ids
        # right after the largest one, so max(id) before and after bound them.
        before = self._max_id(conn) if keyed or self.keep or self.sqlite else 0
        inserted = conn.exec_driver_sql(sql, rows).rowcount  # type: ignore[arg-type]
        if inserted == len(rows):
            stored, stored_cids = batch, cids
        else:
            # Some keyed rows hit an existing key: same payload = duplicate
            # (fine, idempotent), different payload = conflict.
            i = self.svc.t("interactions")
            existing: dict[str, tuple[str, int]] = {}
            keys = [p[_KEY] for p in batch if p[_KEY] is not None]
            for j in range(0, len(keys), 900):
                q = sa.select(i.c.idempotency_key, i.c.payload_hash, i.c.id).where(
                    i.c.workspace_id == self.ws, i.c.idempotency_key.in_(keys[j : j + 900])
                )
                existing.update({k: (h, rid) for k, h, rid in conn.execute(q)})
            stored, stored_cids = [], []
            for p, cid in zip(batch, cids, strict=True):
                key = p[_KEY]
                if key is not None:
                    h, rid = existing[key]
                    if rid <= before:
                        if h == p[_HASH]:
                            self.duplicates += 1
                        else:
                            self.errors.append(RowError(p[_INDEX], IdempotencyConflict(key)))
                        continue
                stored.append(p)
                stored_cids.append(cid)
        self.stored += len(stored)
        if stored:
            ids = None
            if self.sqlite:
                after = self._max_id(conn)
                if after - before == len(stored):
                    ids = range(before + 1, after + 1)
            self.batches.append(InteractionBatch.from_tuples(self.ws, stored_cids, stored, _BATCH_POSITIONS, ids=ids))
            if self.keep:
                i = self.svc.t("interactions")
                q = sa.select(i).where(i.c.workspace_id == self.ws, i.c.id > before).order_by(i.c.id)
                self.kept.extend(self.svc._from_row(r._mapping) for r in conn.execute(q))

    def _insert_returning(self, conn: sa.Connection, batch: list[_Prepared], cids: list[int], rows: list[Any]) -> None:
        """The insert on a server database (PostgreSQL): ``INSERT … ON CONFLICT
        DO NOTHING RETURNING``, so the rows this call stored are exactly the
        rows the server returns.  (The SQLite path bounds them by ``max(id)``
        under its write lock; on a server other transactions commit rows
        meanwhile, so bounds would take their rows for this call's.)"""
        table = self.svc.t("interactions")
        cache: dict[str, Any] = table.info.setdefault("ecrm.track_returning", {})
        stmt = cache.get(_dialect_key(conn.dialect) + str(self.keep))
        if stmt is None:
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:  # pragma: no cover - other backends: the unique index still guards
                insert = sa.insert  # type: ignore[assignment]
            stmt = insert(table)
            if hasattr(stmt, "on_conflict_do_nothing"):
                stmt = stmt.on_conflict_do_nothing(index_elements=["workspace_id", "idempotency_key"])
            returned = list(table.c) if self.keep else [table.c.id, table.c.idempotency_key]
            stmt = cache[_dialect_key(conn.dialect) + str(self.keep)] = stmt.returning(*returned)
        # Through the Core (the driver does not return rows of an executemany
        # otherwise): the properties column takes the mapping, not its JSON text.
        loads = json.loads
        params = [dict(zip(_INSERT_COLUMNS, r, strict=True)) for r in rows]
        for d in params:
            d["properties"] = loads(d["properties"])
        got = conn.execute(stmt, params).all()
        stored, stored_cids = batch, cids
        if len(got) != len(rows):
            # Some keyed rows hit a key stored before (by an earlier call or a
            # concurrent transaction, which ON CONFLICT waited for): same
            # payload = duplicate (idempotent), different payload = conflict.
            mine = {r.idempotency_key for r in got if r.idempotency_key is not None}
            lost = [p[_KEY] for p in batch if p[_KEY] is not None and p[_KEY] not in mine]
            i = table
            existing: dict[str, str | None] = {}
            for j in range(0, len(lost), 900):
                q = sa.select(i.c.idempotency_key, i.c.payload_hash).where(
                    i.c.workspace_id == self.ws, i.c.idempotency_key.in_(lost[j : j + 900])
                )
                existing.update({k: h for k, h in conn.execute(q)})
            stored, stored_cids = [], []
            for p, cid in zip(batch, cids, strict=True):
                key = p[_KEY]
                if key is not None and key not in mine:
                    if existing.get(key) == p[_HASH]:
                        self.duplicates += 1
                    else:
                        self.errors.append(RowError(p[_INDEX], IdempotencyConflict(key)))
                    continue
                stored.append(p)
                stored_cids.append(cid)
        self.stored += len(stored)
        if stored:
            self.batches.append(InteractionBatch.from_tuples(self.ws, stored_cids, stored, _BATCH_POSITIONS, ids=None))
            if self.keep:
                self.kept.extend(self.svc._from_row(r._mapping) for r in sorted(got, key=lambda r: r.id))


def _dialect_key(dialect: sa.Dialect) -> str:
    """What compiled SQL depends on: the database and the driver's parameter style."""
    return f"{dialect.name}+{dialect.driver}:{dialect.paramstyle}"


def _ref_of(p: _Prepared) -> Any:
    return p[_REF]


def _unknown_field(row: Mapping[str, Any]) -> None:
    """Raise the error for the first key of ``row`` that is not a field."""
    import difflib

    for k in row:
        if k in _ROW_KEY_SET:
            continue
        close = difflib.get_close_matches(str(k), ROW_KEYS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValidationError(str(k), row[k], "unknown field", f"{hint}fields: {', '.join(ROW_KEYS)}")


class _Duplicate(EcrmError):
    """Internal: a row repeating an earlier row's key and payload in the same call."""


IDENTITY_KEY = {"external": "external_id", "email": "email", "phone": "phone"}
