"""RFM: recency, frequency and monetary value per customer, quintile scores and named groups.

Definitions (one reporting currency, see :mod:`ecrm_analytics.common`):

* **recency**: when the customer last purchased (``last_at``; reported as
  days before now);
* **frequency**: how many purchases (``orders``) — every ``purchase``
  interaction counts, whatever its amount;
* **monetary**: net revenue, ``max(0, revenue - refunds)`` where
  ``revenue`` sums the positive purchase amounts and ``refunds`` the
  absolute refund amounts, each converted to the reporting currency.
  Purchases with a zero, negative or missing amount add nothing; refunds
  larger than the purchases give 0, never a negative value.  Amounts in a
  currency without a rate are left out and counted in ``unconverted``.
* Interactions dated after *now* (future-dated) are ignored until their
  time comes; a customer without a purchase has no RFM row, no scores and
  no group (every ``rfm(...)`` condition is false for them).

**Scores** 1-5 are quintiles of the workspace's customers: the cut points
are the values at 20 %, 40 %, 60 % and 80 % of the sorted values, and a
customer scores 1 plus the number of cut points their value exceeds (a more
recent ``last_at`` scores higher).  Equal values always get equal scores,
so when many customers share a value (one purchase) the groups are uneven
rather than split at random.

**Groups** come from R and FM = ⌈(F + M) / 2⌉ (:data:`GROUP_GRID`):

======  ==================  ==================  =================  =================  =================
R \\ FM  1                   2                   3                  4                  5
======  ==================  ==================  =================  =================  =================
5       new                 potential_loyalists potential_loyalists champions          champions
4       promising           potential_loyalists potential_loyalists loyal              loyal
3       about_to_sleep      about_to_sleep      need_attention     loyal              loyal
2       hibernating         hibernating         at_risk            at_risk            cant_lose_them
1       lost                hibernating         at_risk            at_risk            cant_lose_them
======  ==================  ==================  =================  =================  =================

Computation is set-based.  The aggregate per customer is one ``GROUP BY``
over the plugin's partial covering index (ordered by customer, then time):
sums and counts with ``FILTER`` clauses, and the first and last purchase by
two index seeks per customer rather than ``min()``/``max()`` of the time over
every row.  A full build (:func:`build`) reads it (in parallel ranges of
customers on a SQLite file), computes the quintile scores and groups
column-wise and writes the rows that differ from the stored ones (every row
the first time, none when nothing changed).  An incremental refresh
(:func:`compute` of the marked customers, then :func:`rescore`) aggregates
only those customers, then one ``UPDATE … FROM`` recomputes every customer's
scores over the RFM table's narrow columns and rewrites only the scores and
groups that changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from ecrm_core.storage import UTCDateTime

from .common import Rates, Report, const, get_rates
from .reports import Param, ReportSpec, register
from .schema import RFM

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["GROUPS", "GROUP_GRID", "Built", "build", "compute", "group_of", "rescore", "rfm_report", "score"]

#: The named groups, best first, with what to do about each.
GROUPS: Mapping[str, str] = {
    "champions": "bought recently, buy often and spend the most: reward them, ask for reviews",
    "loyal": "buy regularly and spend well: up-sell, loyalty programme",
    "potential_loyalists": "recent customers with some spend: membership, recommendations",
    "new": "bought for the first time recently: onboarding, a second-purchase offer",
    "promising": "recent, low spend: build the relationship, free shipping",
    "need_attention": "average on everything, slipping: limited-time offer",
    "about_to_sleep": "below average and fading: reactivation content, popular products",
    "at_risk": "spent well but long ago: win-back campaign, personal message",
    "cant_lose_them": "were among the best, gone quiet: win them back, ask what went wrong",
    "hibernating": "low spend, long ago: low-cost reactivation",
    "lost": "lowest recency, frequency and spend: ignore or last-chance offer",
}

#: ``GROUP_GRID[r - 1][fm - 1]``: the group of recency score ``r`` and FM score ``fm``.
GROUP_GRID: tuple[tuple[str, ...], ...] = (
    ("lost", "hibernating", "at_risk", "at_risk", "cant_lose_them"),
    ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"),
    ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    ("promising", "potential_loyalists", "potential_loyalists", "loyal", "loyal"),
    ("new", "potential_loyalists", "potential_loyalists", "champions", "champions"),
)


def group_of(r: int, f: int, m: int) -> str:
    """The named group of scores ``r``, ``f``, ``m`` (each 1-5)."""
    return GROUP_GRID[r - 1][(f + m + 1) // 2 - 1]


def score(value: Any, cuts: Sequence[Any]) -> int:
    """1 plus the number of cut points ``value`` exceeds (the in-memory twin of the SQL)."""
    return 1 + sum(1 for c in cuts if c is not None and value > c)


_WIDTH = max(len(g) for row in GROUP_GRID for g in row)
#: the 25 groups of :data:`GROUP_GRID`, row by row, each padded to the same width: the group is a substring
_PACKED = "".join(g.ljust(_WIDTH) for row in GROUP_GRID for g in row)


def _sql_fm(f: Any, m: Any) -> Any:
    """⌈(f + m) / 2⌉ of two integer scores in SQL: an integer division (``//``).  Not ``CAST((f + m + 1) / 2 AS
    INTEGER)``: SQLAlchemy divides integers as numbers, and PostgreSQL's cast rounds 3.5 up where SQLite's
    truncates it."""
    return (f + m + 1) // 2


def _sql_group(r: Any, fm: Any) -> Any:
    """The group of scores ``r`` and ``fm`` (each 1-5): a slice of :data:`_PACKED`, one expression instead of 25
    ``CASE`` branches."""
    start = ((r - 1) * 5 + (fm - 1)) * _WIDTH + 1
    return sa.func.rtrim(sa.func.substr(sa.literal(_PACKED), start, _WIDTH))


def _aggregate(
    crm: CRM,
    rates: Rates,
    now: datetime | None,
    restrict: Collection[int] | None,
    between: tuple[int, int] | None = None,
) -> sa.Select[Any]:
    """The aggregate per customer; ``now=None`` leaves out the time bound (when no sale is dated after now).

    Each aggregate has a ``FILTER (WHERE …)`` clause rather than a ``CASE``
    inside it: a row the filter refuses costs the aggregate nothing (no call
    with a NULL), and the kind test is not repeated inside each value.
    """
    # Constants are rendered into the SQL (``const``), not sent as parameters: SQLite computes an aggregate that
    # appears several times (``revenue`` in ``monetary``, ``orders`` in HAVING) once only when the occurrences are
    # the same text, and ``?1 … ?9`` never are — with parameters, every row paid for each copy.
    it = crm.db.tables["interactions"]
    purchase = it.c.kind == const("purchase")
    refund = it.c.kind == const("refund")
    converted = rates.sql_convert(it.c.amount, it.c.currency)
    zero = const(0.0, sa.Float())
    revenue = sa.func.coalesce(sa.func.sum(converted).filter(purchase, it.c.amount > const(0)), zero)
    refunds = sa.func.coalesce(sa.func.sum(sa.func.abs(converted)).filter(refund), zero)
    # a non-NULL currency without a rate (NULL is the reporting currency)
    # (``<>`` per known code: cheaper per row than SQLite's ``NOT IN`` list, which probes a temporary index)
    unknown = sa.and_(*(it.c.currency != const(code) for code in sorted({rates.currency, *rates.rates})))
    unconverted = sa.func.count(it.c.amount).filter(unknown)
    orders = sa.func.count().filter(purchase)
    # the kinds as literals (not parameters), so SQLite can prove the plugin's partial index applies
    sales = it.c.kind.in_([sa.literal_column("'purchase'"), sa.literal_column("'refund'")])
    where = [it.c.workspace_id == crm.workspace, sales]
    if now is not None:
        where.append(it.c.occurred_at <= now)
    if restrict is not None:
        from ecrm_core.rules.sql import ids_clause

        where.append(ids_clause(it.c.customer_id, list(restrict), crm.db.dialect))
    if between is not None:
        where.append(it.c.customer_id.between(*between))
    computed_at = crm.now() if now is None else now
    # The first and last purchase: two seeks per customer in the plugin's index (ordered by time within a
    # customer) instead of a min() and a max() of the time text over every row — the most costly part of the
    # aggregate (a text comparison, and for max() a copy, per row).
    sale = it.alias("sale")

    def edge(last: bool) -> Any:
        q = sa.select(sale.c.occurred_at).where(
            sale.c.workspace_id == crm.workspace,
            sale.c.kind.in_([sa.literal_column("'purchase'"), sa.literal_column("'refund'")]),
            sale.c.customer_id == it.c.customer_id,
            sale.c.kind == const("purchase"),
        )
        if now is not None:
            q = q.where(sale.c.occurred_at <= now)
        order = sale.c.occurred_at.desc() if last else sale.c.occurred_at.asc()
        return q.order_by(order).limit(1).scalar_subquery()

    return (
        sa.select(
            sa.literal(crm.workspace).label("workspace_id"),
            it.c.customer_id,
            edge(False).label("first_at"),
            edge(True).label("last_at"),
            orders.label("orders"),
            revenue.label("revenue"),
            refunds.label("refunds"),
            sa.case((revenue > refunds, revenue - refunds), else_=zero).label("monetary"),
            unconverted.label("unconverted"),
            sa.literal(0).label("r_score"),
            sa.literal(0).label("f_score"),
            sa.literal(0).label("m_score"),
            sa.literal("").label("grp"),
            sa.bindparam("computed_at", computed_at, type_=UTCDateTime()).label("computed_at"),
        )
        .where(*where)
        .group_by(it.c.customer_id)
        .having(orders > const(0))
    )


def _time_bound(crm: CRM, conn: sa.Connection, now: datetime) -> datetime | None:
    """``now``, or ``None`` when no sale of the workspace is dated after it (then the aggregate needs no time
    test per row): one seek on the core's ``(workspace_id, kind, occurred_at)`` index per kind."""
    it = crm.db.tables["interactions"]
    for kind in ("purchase", "refund"):
        later = conn.execute(
            sa.select(it.c.id)
            .where(it.c.workspace_id == crm.workspace, it.c.kind == kind, it.c.occurred_at > now)
            .limit(1)
        ).first()
        if later is not None:
            return now
    return None


def _scores(source: Any) -> Any:
    """``source`` (with ``customer_id``, ``last_at``, ``orders``, ``monetary``) and the scores ``r``, ``f``, ``m``.

    ``rank() - 1`` is how many customers have a strictly lower value, and a
    value is above the cut point ``k`` exactly when that count reaches
    ``ceil(k n / 5)``: so the score is computed by window functions in one
    statement, with the same result as :func:`score` over :func:`cut_points`
    (equal values, equal scores).
    """
    n = sa.func.count().over()
    ranked = sa.select(
        *source.c,
        (sa.func.rank().over(order_by=source.c.last_at) - 1).label("lr"),
        (sa.func.rank().over(order_by=source.c.orders) - 1).label("fr"),
        (sa.func.rank().over(order_by=source.c.monetary) - 1).label("mr"),
        n.label("n"),
    ).subquery("ranked")

    def one(rank: Any) -> Any:
        out: Any = sa.literal(1)
        for k in range(1, 5):
            out = out + sa.case((rank * 5 >= ranked.c.n * k, 1), else_=0)  # rank >= ceil(k n / 5)
        return out

    return sa.select(
        *(ranked.c[c.name] for c in source.c),
        one(ranked.c.lr).label("r"),
        one(ranked.c.fr).label("f"),
        one(ranked.c.mr).label("m"),
    ).subquery("scored")


def compute(
    crm: CRM, conn: sa.Connection, *, restrict: Collection[int] | None = None, rates: Rates | None = None
) -> int:
    """Recompute the RFM rows of the customers in ``restrict`` (``None``: every customer) with one
    ``INSERT … SELECT … GROUP BY``; the scores and groups are then set by :func:`rescore`.

    Returns how many rows were written (as the driver reports it).
    """
    table = crm.db.tables[RFM]
    now = crm.now()
    rates = rates or get_rates(crm)
    if restrict is None:
        conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
    else:
        from ecrm_core.rules.sql import ids_clause

        if not restrict:
            return 0
        conn.execute(
            sa.delete(table).where(
                table.c.workspace_id == crm.workspace, ids_clause(table.c.customer_id, list(restrict), crm.db.dialect)
            )
        )
    select = _aggregate(crm, rates, now, restrict)
    result = conn.execute(sa.insert(table).from_select([c.name for c in table.c], select))
    return int(result.rowcount or 0)


#: The RFM columns a full build reads per customer, in the order of :func:`_build_rows`.
_READ = ("customer_id", "first_at", "last_at", "orders", "revenue", "refunds", "monetary", "unconverted")


class Built(NamedTuple):
    """What :func:`build` did: the customers with an RFM row, and those whose row was written or deleted."""

    customers: list[int]
    changed: list[int]


def build(crm: CRM, conn: sa.Connection, *, rates: Rates | None = None, workers: int | None = None) -> Built:
    """Recompute every customer's RFM row, scores and group; write only what changed.

    The aggregate per customer is read (on a SQLite file, by ``workers``
    reader connections in parallel, each a range of customer ids — default:
    one per CPU, at most 4; they see exactly what ``conn``'s write
    transaction sees, as it holds the write lock); when no sale is dated
    after now, the aggregate has no time test per row (:func:`_time_bound`).
    The quintile scores and groups are computed column-wise (numpy) from the
    sorted values (:func:`cut_points`'s rule, the same scores as
    :func:`rescore`'s window functions).  When the workspace has no rows yet,
    every row is written with one ``executemany`` of a pre-rendered
    ``INSERT``; otherwise the stored rows are read and compared, and only the
    rows whose values differ are rewritten (one ``DELETE`` of them and of the
    customers who no longer have a purchase, one ``executemany``): a build
    on unchanged data writes nothing, and an unchanged row keeps its
    ``computed_at`` (the time of the build that last changed it).  The same
    values as :func:`compute` (everyone) followed by :func:`rescore`.
    """
    from ecrm_core.batching import gc_paused

    # 100,000 rows of tuples: the cyclic collector would rescan them again and again as they are built
    with gc_paused():
        return _build(crm, conn, rates or get_rates(crm), workers)


def _build(crm: CRM, conn: sa.Connection, rates: Rates, workers: int | None) -> Built:
    import os

    table = crm.db.tables[RFM]
    now = crm.now()
    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    rows = _read_aggregates(crm, conn, rates, _time_bound(crm, conn, now), max(1, n))
    stored = _stored(crm, conn)
    if not rows:
        if stored:
            conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
        return Built([], [row[0] for row in stored])
    computed_at: Any = now
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:  # the text SQLAlchemy stores (UTC, one format: text order is time order)
        from sqlalchemy.dialects.sqlite import DATETIME

        naive = table.c.computed_at.type.process_bind_param(now, conn.dialect)
        computed_at = DATETIME().bind_processor(conn.dialect)(naive)
    r, f, m = (_quintiles([row[i] for row in rows]) for i in (2, 3, 6))  # last_at, orders, monetary
    groups = _grid()[(r - 1) * 5 + (f + m + 1) // 2 - 1].tolist()
    names = [c.name for c in table.c]
    assert names[1:9] == list(_READ) and names[9:] == ["r_score", "f_score", "m_score", "grp", "computed_at"]
    # (customer_id, the values of _READ, r, f, m, group): what _stored reads, in the same form
    scored = [
        (*row, rs, fs, ms, g)
        for row, rs, fs, ms, g in zip(rows, r.tolist(), f.tolist(), m.tolist(), groups, strict=True)
    ]
    everyone = [row[0] for row in rows]
    if stored == scored:  # the same customers with the same values, in the same order: nothing to write
        return Built(everyone, [])
    if stored:
        same, by_id = _same_values(sqlite), {row[0]: row for row in stored}
        write = [row for row in scored if not same(by_id.get(row[0]), row)]
        gone = by_id.keys() - set(everyone)
        changed = sorted({row[0] for row in write} | gone)
        if 2 * len(changed) > len(stored):
            # most rows differ (new rates, a first build after an upgrade…): every row rewritten, as a first build
            conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
            write, stored = scored, []
        elif changed:
            from ecrm_core.rules.sql import ids_clause

            conn.execute(
                sa.delete(table).where(
                    table.c.workspace_id == crm.workspace, ids_clause(table.c.customer_id, changed, crm.db.dialect)
                )
            )
    else:
        write, changed = scored, everyone
    if not write:
        return Built(everyone, changed)
    prep = conn.dialect.identifier_preparer
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    if sqlite:
        # the workspace and the time, the same on every row, written into the statement (as quoted literals)
        # rather than bound 100,000 times each
        literal = sa.String().literal_processor(conn.dialect)
        assert literal is not None
        head, tail = [literal(crm.workspace)], [literal(computed_at)]
        out = write
    else:
        head, tail = [marker], [marker]
        out = [(crm.workspace, *row, computed_at) for row in write]
    values = [*head, *([marker] * 12), *tail]
    sql = (
        f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in names)}) "
        f"VALUES ({', '.join(values)})"
    )
    # On a table left empty (the first build, or a single workspace), the group index is built once at the end
    # (one sort) rather than kept up to date row by row.
    rebuild = []
    if sqlite and not stored and conn.execute(sa.select(table.c.customer_id).limit(1)).first() is None:
        rebuild = sorted(table.indexes, key=lambda ix: str(ix.name))
    for ix in rebuild:
        ix.drop(conn)
    for start in range(0, len(out), 50_000):
        conn.exec_driver_sql(sql, out[start : start + 50_000])
    for ix in rebuild:
        ix.create(conn)
    return Built(everyone, changed)


def _stored(crm: CRM, conn: sa.Connection) -> list[tuple[Any, ...]]:
    """The workspace's stored RFM rows in customer order, in :func:`_build`'s form (the times as the driver
    returns them; ``computed_at`` left out)."""
    table = crm.db.tables[RFM]
    cols = [*_READ, "r_score", "f_score", "m_score", "grp"]
    stmt = sa.select(
        *(sa.type_coerce(table.c[c], sa.String()) if c.endswith("_at") else table.c[c] for c in cols)
    ).where(table.c.workspace_id == crm.workspace)
    # in the primary key's order (also what SQLite reads fastest: the group index would jump about the table)
    stmt = stmt.order_by(table.c.customer_id)
    if conn.dialect.name == "sqlite":
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        return list(conn.connection.driver_connection.execute(sql).fetchall())  # type: ignore[union-attr]
    return [tuple(row) for row in conn.execute(stmt)]


def _same_values(sqlite: bool) -> Callable[[tuple[Any, ...] | None, tuple[Any, ...]], bool]:
    """Whether a stored row (:func:`_stored`) holds a computed row's values.

    On SQLite both come from the driver in the same types (text times, floats).  Elsewhere the aggregate's sums
    may be ``Decimal`` where the table returns ``float``: compared as the float the column stores.
    """
    if sqlite:
        return lambda old, new: old == new

    def same(old: tuple[Any, ...] | None, new: tuple[Any, ...]) -> bool:
        if old is None or len(old) != len(new):
            return False
        return all(
            (float(a) == float(b)) if isinstance(a, float | Decimal) or isinstance(b, float | Decimal) else a == b
            for a, b in zip(old, new, strict=True)
        )

    return same


@functools.cache
def _grid() -> Any:
    """:data:`GROUP_GRID` flattened (index ``(r - 1) * 5 + fm - 1``) as a numpy array, for fancy indexing."""
    import numpy as np

    return np.array([g for row in GROUP_GRID for g in row], dtype=object)


def _quintiles(values: Sequence[Any]) -> Any:
    """The scores 1-5 of ``values`` (a numpy array): 1 plus how many of the four cut points each value exceeds.

    The cut point ``k`` is the value at rank ``ceil(k n / 5)`` (1-based) of the
    sorted values, as in :func:`cut_points` and :func:`score`; ``searchsorted``
    (left) counts the cut points strictly below a value, which is
    :func:`score`'s count.  Texts (SQLite's times) and datetimes are compared
    as Python compares them.
    """
    import numpy as np

    count = len(values)
    ranks = [-(-k * count // 5) - 1 for k in range(1, 5)]
    if all(isinstance(v, int | float) for v in values[:1]):
        array = np.asarray(values)
        if array.dtype.kind in "iuf":
            cuts = np.sort(array)[ranks]
            return np.searchsorted(cuts, array, side="left") + 1
    ordered = sorted(values)
    array = np.empty(count, dtype=object)
    array[:] = values
    return np.searchsorted(np.asarray([ordered[k] for k in ranks], dtype=object), array, side="left") + 1


def _read_aggregates(
    crm: CRM, conn: sa.Connection, rates: Rates, now: datetime | None, workers: int
) -> list[tuple[Any, ...]]:
    """Every customer's aggregate row (:data:`_READ`; times as the driver returns them), in parallel when it pays."""
    customers = crm.db.tables["customers"]

    def read_on(connection: sa.Connection, between: tuple[int, int] | None) -> list[tuple[Any, ...]]:
        agg = _aggregate(crm, rates, now, None, between)
        # the times as stored (text on SQLite: its order is time order), not parsed into datetimes
        stmt = agg.with_only_columns(
            *(sa.type_coerce(agg.selected_columns[c], sa.String()) if c.endswith("_at") else agg.selected_columns[c]
              for c in _READ)
        )  # fmt: skip
        if connection.dialect.name == "sqlite":
            # plain tuples from the driver, no result rows built on top (the values bound — the workspace, the
            # range, the time — are rendered as quoted literals by SQLAlchemy)
            sql = str(stmt.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
            return list(connection.connection.driver_connection.execute(sql).fetchall())  # type: ignore[union-attr]
        return [tuple(r) for r in connection.execute(stmt)]

    url = crm.db.engine.url
    parallel = (
        workers > 1 and crm.db.is_sqlite and not crm.db.joined and url.database not in (None, "", ":memory:")
        and not str(url.database).startswith("file::memory:")
    )  # fmt: skip
    if not parallel:
        return read_on(conn, None)
    lo, hi = conn.execute(
        sa.select(sa.func.min(customers.c.id), sa.func.max(customers.c.id)).where(
            customers.c.workspace_id == crm.workspace
        )
    ).one()
    if lo is None:
        return []
    step = -(-(hi - lo + 1) // workers)
    ranges = [(a, min(hi, a + step - 1)) for a in range(lo, hi + 1, step)]

    def read(between: tuple[int, int]) -> list[tuple[Any, ...]]:
        with crm.db.engine.connect() as reader:
            return read_on(reader, between)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="ecrm-rfm") as pool:
        parts = list(pool.map(read, ranges))
    return [row for part in parts for row in part]


def cut_points(crm: CRM, conn: sa.Connection) -> dict[str, list[Any]]:
    """The quintile cut points of ``last_at``, ``orders`` and ``monetary`` in the workspace.

    The cut point ``k`` is the value at rank ``ceil(k n / 5)`` (1-based) of
    the ``n`` sorted values; ``score(value, cuts)`` gives the stored score.
    """
    table = crm.db.tables[RFM]
    ws = table.c.workspace_id == crm.workspace
    out: dict[str, list[Any]] = {}
    for name in ("last_at", "orders", "monetary"):
        col = table.c[name]
        values = conn.execute(sa.select(col).where(ws).order_by(col)).scalars().all()
        n = len(values)
        out[name] = [values[max(0, -(-k * n // 5) - 1)] if n else None for k in range(1, 5)]
    return out


def rescore(crm: CRM, conn: sa.Connection) -> list[int]:
    """Rewrite the scores and groups that changed (one ``UPDATE … FROM`` with window functions); return
    those customers."""
    table = crm.db.tables[RFM]
    source = (
        sa.select(table.c.customer_id, table.c.last_at, table.c.orders, table.c.monetary)
        .where(table.c.workspace_id == crm.workspace)
        .subquery("src")
    )
    scored = _scores(source)
    f_plus_m = _sql_fm(scored.c.f, scored.c.m)
    stmt = (
        sa.update(table)
        .where(
            table.c.workspace_id == crm.workspace,
            table.c.customer_id == scored.c.customer_id,
            sa.or_(table.c.r_score != scored.c.r, table.c.f_score != scored.c.f, table.c.m_score != scored.c.m),
        )
        .values(r_score=scored.c.r, f_score=scored.c.f, m_score=scored.c.m, grp=_sql_group(scored.c.r, f_plus_m))
        .returning(table.c.customer_id)
    )
    return [int(row[0]) for row in conn.execute(stmt)]


def _fmt_days(now: datetime, at: datetime | None) -> float | None:
    return None if at is None else round((now - at).total_seconds() / 86400, 1)


def rfm_report(crm: CRM, top: int = 10, group: str = "") -> Report:
    """The RFM report: customers and money per group (or, with ``group``, that group's top customers)."""
    from ecrm_core.charts import Chart, Series

    table = crm.db.tables[RFM]
    customers = crm.db.tables["customers"]
    ws = table.c.workspace_id == crm.workspace
    now = crm.now()
    rates = get_rates(crm)
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(
                table.c.grp,
                sa.func.count(),
                sa.func.sum(table.c.monetary),
                sa.func.avg(table.c.orders),
                sa.func.max(table.c.last_at),
                sa.func.min(table.c.last_at),
            )
            .where(ws)
            .group_by(table.c.grp)
        ).all()
        by_group = {g: row for g, *row in rows}
        total = sum(int(r[0]) for r in by_group.values())
        money = sum(float(r[1] or 0) for r in by_group.values())
        summary: dict[str, Any] = {"customers": total, "monetary": money, "currency": rates.currency}
        if group:
            picked = conn.execute(
                sa.select(
                    table.c.customer_id,
                    customers.c.name,
                    customers.c.email,
                    table.c.r_score,
                    table.c.f_score,
                    table.c.m_score,
                    table.c.orders,
                    table.c.monetary,
                    table.c.last_at,
                )
                .join(customers, customers.c.id == table.c.customer_id)
                .where(ws, table.c.grp == group)
                .order_by(table.c.monetary.desc(), table.c.customer_id)
                .limit(top)
            ).all()
            out_rows = [
                (r.customer_id, r.name, r.email, f"{r.r_score}{r.f_score}{r.m_score}", r.orders, r.monetary,
                 _fmt_days(now, r.last_at))
                for r in picked
            ]  # fmt: skip
            return Report(
                name="rfm",
                title=f"RFM group {group}: top {len(out_rows)} by monetary value",
                columns=("customer_id", "name", "email", "rfm", "orders", f"monetary ({rates.currency})", "days since last"),
                rows=out_rows,
                summary={**summary, "group": group, "in_group": int(by_group.get(group, (0,))[0] or 0)},
                caption=GROUPS.get(group, ""),
            )  # fmt: skip
    out = []
    for name in GROUPS:
        count, monetary, avg_orders, newest, oldest = by_group.get(name, (0, 0.0, None, None, None))
        out.append(
            (name, int(count), (count / total) if total else 0.0, float(monetary or 0), avg_orders,
             _fmt_days(now, newest), _fmt_days(now, oldest), GROUPS[name])
        )  # fmt: skip
    chart = Chart(
        kind="bar",
        title="Customers by RFM group",
        categories=[r[0] for r in out],
        series=[Series(name="customers", values=[r[1] for r in out])],
        y_label="customers",
        caption=(
            f"{total:,} customers with purchases; champions: {out[0][1]:,}, at risk or can't lose: "
            f"{out[7][1] + out[8][1]:,}."
        ),
    )
    return Report(
        name="rfm",
        title="RFM groups",
        columns=("group", "customers", "share", f"monetary ({rates.currency})", "avg orders", "newest (days)",
                 "oldest (days)", "what to do"),
        rows=out,
        summary=summary,
        chart=chart,
        caption=chart.caption,
    )  # fmt: skip


register(
    ReportSpec(
        name="rfm",
        title="RFM groups",
        build=rfm_report,
        params=(
            Param(name="group", type=str, default="", help="list this group's top customers", choices=("", *GROUPS)),
            Param(name="top", type=int, default=10, help="how many customers with --group", min=1, max=1000),
        ),
        description="Customers per RFM group (recency, frequency, monetary quintiles), or one group's top customers.",
    )
)
