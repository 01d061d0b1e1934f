"""The SQL side of ecrm-stats: incremental upserts, merge folding, rebuild, reads.

Everything here is set-based: a committed batch of interactions becomes one
``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`` over the batch's
id range when the core reports one (SQLite), else one ``INSERT ... ON
CONFLICT DO UPDATE`` executed with ``executemany`` over the batch's
(customer, kind) groups, aggregated in Python from the batch's columns; a
merge is one ``INSERT ... SELECT ... ON CONFLICT`` plus one ``DELETE``; a
rebuild is one ``DELETE`` plus one ``INSERT ... SELECT ... GROUP BY``.

Amounts: sums are exact on PostgreSQL (``NUMERIC``).  SQLite has no decimal
arithmetic, so there the sums are kept in double precision and rounded to
the column's 6 decimal places when read — exact for any realistic total,
but do not use them for accounting.  Amounts of different currencies are
added together: the table assumes one currency per workspace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import sqlalchemy as sa

from .schema import TABLE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM
    from ecrm_core.domain import InteractionBatch, MergeRecord

__all__ = [
    "KindStats",
    "CustomerStats",
    "stats_table",
    "aggregate",
    "aggregate_columns",
    "apply_batch",
    "fold_merge",
    "rebuild",
    "stats_for",
]

_SCALE = Decimal("0.000001")  # the scale of the amount_sum column (NUMERIC(20, 6))


@attrs.frozen
class KindStats:
    """A customer's aggregate for one interaction kind."""

    kind: str
    count: int
    amount_sum: Decimal | None
    first_at: datetime
    last_at: datetime


@attrs.frozen
class CustomerStats:
    """Every aggregate of one customer, by kind — the raw material of RFM.

    ``recency``/``frequency``/``monetary`` read the sale kinds you name
    (default ``purchase``).
    """

    customer_id: int
    by_kind: Mapping[str, KindStats]

    def __getitem__(self, kind: str) -> KindStats:
        return self.by_kind[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self.by_kind

    @property
    def count(self) -> int:
        """Interactions of every kind."""
        return sum(s.count for s in self.by_kind.values())

    @property
    def first_at(self) -> datetime | None:
        return min((s.first_at for s in self.by_kind.values()), default=None)

    @property
    def last_at(self) -> datetime | None:
        return max((s.last_at for s in self.by_kind.values()), default=None)

    def recency(self, kinds: Iterable[str] = ("purchase",)) -> datetime | None:
        """When the customer last did one of ``kinds`` (``None``: never)."""
        return max((self.by_kind[k].last_at for k in kinds if k in self.by_kind), default=None)

    def frequency(self, kinds: Iterable[str] = ("purchase",)) -> int:
        """How many times the customer did one of ``kinds``."""
        return sum(self.by_kind[k].count for k in kinds if k in self.by_kind)

    def monetary(self, kinds: Iterable[str] = ("purchase",)) -> Decimal:
        """The total amount of the customer's ``kinds`` interactions."""
        total = Decimal(0)
        for k in kinds:
            s = self.by_kind.get(k)
            if s is not None and s.amount_sum is not None:
                total += s.amount_sum
        return total


def stats_table(crm: CRM) -> sa.Table:
    """The ``customer_stats`` table of ``crm`` (with the host's prefix)."""
    try:
        return crm.db.tables[TABLE]
    except KeyError:
        raise LookupError(
            "the customer_stats table is not registered on this CRM: the ecrm_stats plugin is not loaded "
            "(install ecrm-stats or pass CRM(plugins=[ecrm_stats.plugin]))"
        ) from None


def _insert(conn: sa.Connection) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    raise NotImplementedError(
        f"ecrm-stats supports SQLite and PostgreSQL, not {name!r}: it needs INSERT ... ON CONFLICT DO UPDATE"
    )


def _upsert(conn: sa.Connection, table: sa.Table, source: Any = None) -> Any:
    """``INSERT INTO customer_stats [source] ON CONFLICT (pk) DO UPDATE`` adding the new aggregate."""
    ins = _insert(conn)(table)
    if source is not None:
        ins = ins.from_select([c.name for c in table.c], source)
    new = ins.excluded
    c = table.c
    least, greatest = (sa.func.min, sa.func.max) if conn.dialect.name == "sqlite" else (sa.func.least, sa.func.greatest)
    return ins.on_conflict_do_update(
        index_elements=[c.workspace_id, c.customer_id, c.kind],
        set_={
            "count": c["count"] + new["count"],
            "amount_sum": sa.case(
                (new.amount_sum.is_(None), c.amount_sum),
                else_=sa.func.coalesce(c.amount_sum, sa.literal_column("0")) + new.amount_sum,
            ),
            "first_at": least(c.first_at, new.first_at),
            "last_at": greatest(c.last_at, new.last_at),
        },
    )


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[int, str], list[Any]]:
    """Group interaction rows by (customer_id, kind): ``[count, amount_sum, first_at, last_at]``.

    ``rows`` are mappings like those of :attr:`ecrm_core.InteractionBatch.rows`
    (``customer_id``, ``kind``, aware ``occurred_at``, ``amount`` or ``None``).
    """
    rows = list(rows)
    return aggregate_columns(
        [r["customer_id"] for r in rows],
        [r["kind"] for r in rows],
        [r["occurred_at"] for r in rows],
        [r["amount"] for r in rows],
    )


def aggregate_columns(
    customer_ids: Iterable[int], kinds: Iterable[str], occurred: Iterable[datetime], amounts: Iterable[Any]
) -> dict[tuple[int, str], list[Any]]:
    """:func:`aggregate` over columns, as in :attr:`ecrm_core.InteractionBatch.columns`."""
    groups: dict[tuple[int, str], list[Any]] = {}
    get = groups.get
    for cid, kind, at, amount in zip(customer_ids, kinds, occurred, amounts, strict=True):
        key = (cid, kind)
        g = get(key)
        if g is None:
            groups[key] = [1, amount, at, at]
            continue
        g[0] += 1
        if amount is not None:
            g[1] = amount if g[1] is None else g[1] + amount
        if at < g[2]:
            g[2] = at
        elif at > g[3]:
            g[3] = at
    return groups


def _sqlite_datetime(value: datetime, utc: Any = UTC) -> str:
    """What :class:`~ecrm_core.storage.UTCDateTime` stores on SQLite (UTC text with microseconds), fast."""
    if value.tzinfo is not utc:
        value = value.astimezone(utc)
    return value.isoformat(" ", "microseconds")[:26]


def _prepared_upsert(conn: sa.Connection, table: sa.Table) -> tuple[str, tuple[str, ...] | None]:
    """The upsert compiled for ``conn``'s dialect (cached on the table): SQL and positional order."""
    cache: dict[str, tuple[str, tuple[str, ...] | None]] = table.info.setdefault("ecrm_stats.upsert", {})
    key = f"{conn.dialect.name}+{conn.dialect.driver}:{conn.dialect.paramstyle}"
    found = cache.get(key)
    if found is None:
        compiled = _upsert(conn, table).compile(dialect=conn.dialect, column_keys=[c.name for c in table.c])
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        found = cache[key] = (compiled.string, order)
    return found


def _prepared_range_upsert(conn: sa.Connection, table: sa.Table, interactions: sa.Table) -> str:
    """SQLite: the upsert of one id range of the interactions, grouped in SQL (cached on the table)."""
    cache: dict[str, str] = table.info.setdefault("ecrm_stats.range_upsert", {})
    key = f"{conn.dialect.name}+{conn.dialect.driver}:{conn.dialect.paramstyle}"
    found = cache.get(key)
    if found is None:
        i = interactions.c
        source = (
            sa.select(
                i.workspace_id,
                i.customer_id,
                i.kind,
                sa.func.count(),
                sa.func.sum(i.amount),
                sa.func.min(i.occurred_at),
                sa.func.max(i.occurred_at),
            )
            # Only the id range: a batch's rows are all of its workspace, and a
            # condition on workspace_id would tempt SQLite (no ANALYZE) into
            # scanning the workspace's index instead of the rowid range.
            .where(i.id >= sa.bindparam("lo", type_=sa.Integer), i.id < sa.bindparam("hi", type_=sa.Integer))
            .group_by(i.workspace_id, i.customer_id, i.kind)
        )
        compiled = _upsert(conn, table, source).compile(dialect=conn.dialect)
        if compiled.positional and list(compiled.positiontup or ()) != ["lo", "hi"]:  # pragma: no cover
            raise AssertionError(f"unexpected parameter order {compiled.positiontup}")
        found = cache[key] = compiled.string
    return found


def apply_batch(crm: CRM, batch: InteractionBatch, conn: sa.Connection | None = None) -> int:
    """Add a batch of interactions to the stats; return the number of groups upserted.

    One statement, in ``conn``'s transaction when given (the plugin's
    ``ecrm_interactions_inserted`` hook passes the core's: the stats commit
    with the interactions), else in a transaction of its own.  On SQLite the
    core reports the batch's id range (:attr:`~ecrm_core.InteractionBatch.ids`), and the
    stats are grouped and upserted by SQLite itself (``INSERT ... SELECT ...
    GROUP BY ... ON CONFLICT DO UPDATE`` over that range): no Python work
    per row, and the groups reach the table in key order.  Otherwise the
    batch's columns are aggregated in Python and written with one
    ``executemany`` of an upsert compiled once, values converted to the
    driver's representation once per group.  This hook runs for every
    batch of every ingest and must stay cheap next to the core's own insert.
    """
    if not len(batch):
        return 0
    if conn is None:
        with crm.db.write() as own:
            return apply_batch(crm, batch, own)
    table = stats_table(crm)
    ws = batch.workspace
    ids = getattr(batch, "ids", None)
    dialect = conn.dialect
    if ids is not None and dialect.name == "sqlite":
        sql = _prepared_range_upsert(conn, table, crm.db.tables["interactions"])
        return int(conn.exec_driver_sql(sql, (ids.start, ids.stop)).rowcount)
    cols = batch.columns
    groups = aggregate_columns(cols["customer_id"], cols["kind"], cols["occurred_at"], cols["amount"])
    sql, order = _prepared_upsert(conn, table)
    if dialect.name == "sqlite":
        dt: Any = _sqlite_datetime
        amount: Any = str
    else:
        dt = table.c.first_at.type.dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
        amount = table.c.amount_sum.type.dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
    rows: list[Any] = []
    append = rows.append
    for (cid, kind), (n, total, first, last) in groups.items():
        first_db = dt(first)
        append(
            (
                ws,
                cid,
                kind,
                n,
                None if total is None else amount(total),
                first_db,
                first_db if last is first else dt(last),
            )
        )
    if order is not None:
        positions = {name: i for i, name in enumerate(c.name for c in table.c)}
        if order != tuple(positions):
            index = [positions[name] for name in order]
            rows = [tuple(r[i] for i in index) for r in rows]
    else:
        names = [c.name for c in table.c]
        rows = [dict(zip(names, r, strict=True)) for r in rows]
    conn.exec_driver_sql(sql, rows)
    return len(groups)


def fold_merge(crm: CRM, merge: MergeRecord) -> int:
    """Fold the merged customer's stats into the survivor's; return the number of rows moved."""
    table = stats_table(crm)
    c = table.c
    own = sa.and_(c.workspace_id == merge.workspace, c.customer_id == merge.source_id)
    source = sa.select(
        c.workspace_id,
        sa.literal(merge.target_id, sa.Integer).label("customer_id"),
        c.kind,
        c["count"],
        c.amount_sum,
        c.first_at,
        c.last_at,
    ).where(own)
    with crm.db.write() as conn:
        conn.execute(_upsert(conn, table, source))
        return int(conn.execute(sa.delete(table).where(own)).rowcount)


def rebuild(crm: CRM, *, all_workspaces: bool = False) -> int:
    """Recompute the stats from the interactions table; return the number of rows written.

    One transaction: ``DELETE`` then one ``INSERT ... SELECT ... GROUP BY``.
    Only ``crm.workspace`` unless ``all_workspaces``.  Run it while nothing
    else is tracking: a batch committed just before the rebuild whose event
    fires just after it would be counted twice.
    """
    table = stats_table(crm)
    i = crm.db.tables["interactions"]
    select = sa.select(
        i.c.workspace_id,
        i.c.customer_id,
        i.c.kind,
        sa.func.count(),
        sa.func.sum(i.c.amount),
        sa.func.min(i.c.occurred_at),
        sa.func.max(i.c.occurred_at),
    ).group_by(i.c.workspace_id, i.c.customer_id, i.c.kind)
    delete = sa.delete(table)
    if not all_workspaces:
        select = select.where(i.c.workspace_id == crm.workspace)
        delete = delete.where(table.c.workspace_id == crm.workspace)
    crm.db.check_schema()
    with crm.db.write() as conn:
        conn.execute(delete)
        return int(conn.execute(sa.insert(table).from_select([c.name for c in table.c], select)).rowcount)


def stats_for(crm: CRM, customer_id: int) -> CustomerStats:
    """The stats of one customer of ``crm.workspace``.

    A merged customer's id resolves to the survivor (like
    ``crm.customers.get``); an unknown id raises
    :class:`~ecrm_core.errors.NotFound`.
    """
    customer = crm.customers.get(customer_id)
    assert customer.id is not None
    table = stats_table(crm)
    c = table.c
    q = sa.select(c.kind, c["count"], c.amount_sum, c.first_at, c.last_at).where(
        c.workspace_id == crm.workspace, c.customer_id == customer.id
    )
    with crm.db.read() as conn:
        rows = conn.execute(q.order_by(c.kind)).all()
    by_kind = {
        kind: KindStats(
            kind=kind,
            count=int(count),
            amount_sum=None if amount_sum is None else amount_sum.quantize(_SCALE),
            first_at=first_at,
            last_at=last_at,
        )
        for kind, count, amount_sum, first_at, last_at in rows
    }
    return CustomerStats(customer_id=customer.id, by_kind=by_kind)
