"""Segments benchmark: a behavioural segment over 1,000,000 customers and 10,000,000 interactions.

Run by hand (not a test)::

    python benchmarks/segments.py --customers 20000 --interactions 200000   # smoke run (seconds)
    python benchmarks/segments.py --db /tmp/seg-bench.db --keep              # the reference run (1M / 10M)
    python benchmarks/segments.py --db /tmp/seg-bench.db --keep              # again: reuses the file

What one run measures, on one SQLite file (schema made by ``crm.upgrade()``,
synthetic data written set-based into ecrm's tables, bulk-loaded with the
migration's secondary indexes built after the rows, no ``ANALYZE``), with a fixed clock so that every query uses the same "now":

* full evaluation of the representative rule ``purchase.count(90d) >= 3 and
  purchase.sum(90d) > 100 and country in ("KR", "JP")``: ``SELECT count(*)``
  over the statement ecrm compiles it to, against the baseline, a query an
  expert writes by hand for the same rule on the same indexes (raw
  ``sqlite3``, same file), median of ``--repeat`` warm runs; both must
  return the same count.  Goal: compiled ÷ hand-written ≤ 1.2;
* the stored segment: the first fill and a full refresh with nothing
  changed, then an incremental refresh after ``--new-interactions``
  (10,000) new purchases touching half as many customers (5,000), as a
  fraction of the full refresh (goal ≤ 2 %), for the segment alone and for
  the whole ``crm.segments.refresh`` (lifecycle stages + segment).  The full
  refreshes are medians of warm runs, and so is the incremental one: the
  cold first run, then ``--repeat-first`` more, each after undoing the
  previous (the new purchases deleted, their customers refreshed back) and
  inserting the purchases again, so that every run makes the same stage
  changes and segment entries.  On this VM single runs of it vary by ±30 %
  (the OS keeps little of the 2.8 GB file cached); the cold one is printed
  too;
* the in-memory evaluator: decisions per second for one customer with 100
  interactions, with a fresh ``EvalContext`` per decision and with one reused.
"""

from __future__ import annotations

import os
import sys

# benchmarks/email.py would shadow the standard library's ``email`` package
# (this script's folder comes first on sys.path): drop the folder first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import gc
import math
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecrm_core.crm import CRM
from ecrm_core.domain import Customer, Interaction
from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import AttributeDef
from ecrm_core.rules import EvalContext, Rule
from ecrm_core.storage.schema import CORE_TABLES, Naming

console = Console()

#: The fixed "now" of every query (data spread over the two years before it).
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_DAYS = 730
RULE = 'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country in ("KR", "JP")'
SLUG = "bench-vip"
GOAL_RATIO = 1.2
GOAL_INCREMENTAL = 0.02
CHUNK_ROWS = 1_000_000
META = "bench_meta"
WORKSPACE = "default"

#: Customer activity tiers: (share of customers, share of interactions).  The
#: top 1 % make 15 % of the interactions (~150 each at 10 per customer on
#: average), the bottom half under 2 each (many none at all).
TIERS = ((0.01, 0.15), (0.09, 0.315), (0.40, 0.44), (0.50, 0.095))
COUNTRIES = (("KR", 15), ("JP", 15), ("US", 35), ("DE", 20), ("FR", 15))
CATEGORIES = ("shoes", "bags", "books", "electronics", "garden", "toys")
MASK = "9223372036854775807"  # random() & MASK: a non-negative 63-bit integer


class Attributes:
    """Declares the ``country`` attribute the rule uses."""

    ECRM_PLUGIN_NAME = "bench-attributes"

    @hookimpl
    def ecrm_register_attributes(self) -> list[AttributeDef]:
        return [AttributeDef(name="country", type="string")]


def open_crm(path: Path) -> CRM:
    crm = CRM(
        f"sqlite:///{path}", plugins=[Attributes()], load_entrypoints=False, live_segments=False, clock=lambda: NOW
    )
    crm.upgrade()
    return crm


def raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _stamp(epoch: str, micro: str) -> str:
    """SQL for SQLAlchemy's SQLite DateTime text: ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC)."""
    return f"(datetime({epoch}, 'unixepoch') || printf('.%06d', {micro}))"


def _pick(value: str, choices: Sequence[tuple[str, int]]) -> str:
    """SQL choosing among weighted string ``choices`` by ``value % 100``."""
    parts, cum = [], 0
    for name, weight in choices[:-1]:
        cum += weight
        parts.append(f"WHEN {value} % 100 < {cum} THEN '{name}'")
    return f"CASE {' '.join(parts)} ELSE '{choices[-1][0]}' END"


def _customer_expr(customers: int, b: str) -> str:
    """SQL mapping the random ``b`` to a customer id, skewed by :data:`TIERS`.

    A tier is picked by its share of interactions, a rank uniformly inside it,
    and ranks are scattered over the ids by a multiplicative permutation, so
    heavy customers are not all at the start of the table.
    """
    mult = int(customers * 0.6180339887) | 1
    while math.gcd(mult, customers) != 1:
        mult += 2
    parts, lo, cum = [], 0, 0.0
    for n, (cust_share, event_share) in enumerate(TIERS):
        size = customers - lo if n == len(TIERS) - 1 else max(1, round(customers * cust_share))
        cum += event_share
        pick = f"{lo} + ({b} >> 20) % {size}"
        if n == len(TIERS) - 1:
            parts.append(f"ELSE {pick}")
        else:
            parts.append(f"WHEN {b} % 1000000 < {round(cum * 1_000_000)} THEN {pick}")
        lo += size
    return f"((CASE {' '.join(parts)} END) * {mult}) % {customers} + 1"


def customers_sql(tables: dict[str, str]) -> str:
    now = int(NOW.timestamp())
    created = f"{now} - (s >> 8) % {SPAN_DAYS * 86400}"
    stamp = _stamp(created, "s % 1000000")
    consent = '{"email": {"status": "granted", "at": null, "source": null}}'
    return f"""
        WITH RECURSIVE g(n, r, s) AS (
            SELECT :lo, random() & {MASK}, random() & {MASK}
            UNION ALL
            SELECT n + 1, random() & {MASK}, random() & {MASK} FROM g WHERE n < :hi
        )
        INSERT INTO {tables["customers"]}
            (id, workspace_id, external_id, email, attributes, consent, lifecycle_stage, created_at, updated_at)
        SELECT n, '{WORKSPACE}', 'cust-' || n, 'customer' || n || '@example.com',
               '{{"country": "' || {_pick("r", COUNTRIES)} || '"}}',
               CASE WHEN (r >> 8) % 100 < 40 THEN '{consent}' ELSE '{{}}' END,
               'prospect', {stamp}, {stamp}
        FROM g
    """


def interactions_sql(tables: dict[str, str], customers: int, total: int) -> str:
    """One chunk of interactions, ``n`` in [:lo, :hi], in time order (ids follow time, as in a live log).

    ``occurred_at`` grows with ``n`` over the last two years, denser towards
    now (a quarter of the interactions in the last 90 days); kinds: 50 %
    page_view, 28 % product_view, 15 % purchase (5-300 EUR), 7 % email_open.
    """
    now = int(NOW.timestamp())
    t = f"CAST({now} - {SPAN_DAYS * 86400} * pow(1.0 - (n - 0.5) / {total}, 1.5) AS INTEGER)"
    stamp = _stamp(t, "(a >> 16) % 1000000")
    purchase = "a % 100 BETWEEN 78 AND 92"
    category = "CASE (a >> 32) % 6 " + " ".join(f"WHEN {i} THEN '{c}'" for i, c in enumerate(CATEGORIES)) + " END"
    return f"""
        WITH RECURSIVE g(n, a, b) AS (
            SELECT :lo, random() & {MASK}, random() & {MASK}
            UNION ALL
            SELECT n + 1, random() & {MASK}, random() & {MASK} FROM g WHERE n < :hi
        ),
        e AS (SELECT n, a, {_customer_expr(customers, "b")} AS cid, {stamp} AS ts FROM g)
        INSERT INTO {tables["interactions"]}
            (workspace_id, customer_id, origin_customer_id, kind, channel, occurred_at, amount, currency,
             properties, idempotency_key, payload_hash, recorded_at)
        SELECT '{WORKSPACE}', cid, cid,
               CASE WHEN a % 100 < 50 THEN 'page_view' WHEN a % 100 < 78 THEN 'product_view'
                    WHEN a % 100 < 93 THEN 'purchase' ELSE 'email_open' END,
               CASE WHEN a % 100 >= 93 THEN 'email' WHEN (a >> 8) % 100 < 65 THEN 'web' ELSE 'app' END,
               ts,
               CASE WHEN {purchase} THEN round(5 + 295 * pow(((a >> 40) % 1000000) / 1000000.0, 2), 2) END,
               CASE WHEN {purchase} THEN 'EUR' END,
               CASE WHEN a % 100 BETWEEN 50 AND 92 AND (a >> 36) % 10 < 7
                    THEN '{{"category": "' || {category} || '"}}' ELSE '{{}}' END,
               NULL, NULL, ts
        FROM e
    """


def wanted_meta(args: argparse.Namespace) -> dict[str, str]:
    return {
        "customers": str(args.customers),
        "interactions": str(args.interactions),
        "seed": str(args.seed),
        "now": NOW.isoformat(),
    }


def stored_meta(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    conn = raw(path)
    try:
        return dict(conn.execute(f"SELECT key, value FROM {META}").fetchall())
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def secondary_indexes(conn: sqlite3.Connection, tables: dict[str, str]) -> list[tuple[str, str]]:
    """The explicit indexes of the customers and interactions tables, ``(name, CREATE INDEX …)``.

    Read from the schema the migration made (``sqlite_master``), so that the
    generator recreates exactly those definitions; the implicit indexes of
    primary keys and UNIQUE constraints (no ``sql``) stay in place.
    """
    return conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN (?, ?) ORDER BY name",
        (tables["customers"], tables["interactions"]),
    ).fetchall()


def generate(path: Path, args: argparse.Namespace, tables: dict[str, str]) -> float:
    """Fill a fresh file; return the seconds it took.

    A bulk load: the secondary indexes of the two tables are dropped, the rows
    written in large chunks with no rollback journal and no syncs, then the
    indexes recreated from the definitions the migration wrote (each built by
    one sort instead of ten million random B-tree inserts) and the file put
    back in WAL mode.  No ``ANALYZE``: ecrm does not run it, so the planner
    sees what it sees in a real install.  The same rows as a load with the
    indexes live; the only physical difference is that bulk-built indexes are
    packed full where live-grown ones have half-full pages here and there.
    """
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    open_crm(path).close()  # the schema and its indexes, from the migration
    conn = raw(path)
    # random() has no seed in SQLite: the data are random but not repeatable;
    # --seed drives the Python side (new interactions, evaluator data).
    indexes = secondary_indexes(conn, tables)
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.execute("PRAGMA journal_mode=OFF")  # during the load only (back to WAL below)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the index sorts stay in memory as far as they can
    conn.execute("PRAGMA threads=2")  # SQLite's sorter may use a helper thread for CREATE INDEX
    c_sql = customers_sql(tables)
    i_sql = interactions_sql(tables, args.customers, args.interactions)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for label, sql, total in (("customers", c_sql, args.customers), ("interactions", i_sql, args.interactions)):
            task = progress.add_task(f"generating {label}", total=total)
            for lo in range(1, total + 1, CHUNK_ROWS):
                hi = min(total, lo + CHUNK_ROWS - 1)
                conn.execute("BEGIN")
                conn.execute(sql, {"lo": lo, "hi": hi})
                conn.execute("COMMIT")
                progress.update(task, completed=hi)
        task = progress.add_task("building the indexes", total=len(indexes))
        for n, (_, create) in enumerate(indexes, 1):
            conn.execute(create)
            progress.update(task, completed=n)
    conn.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.executemany(f"INSERT INTO {META} VALUES (?, ?)", wanted_meta(args).items())
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rebuilt = secondary_indexes(conn, tables)
    conn.close()
    if rebuilt != indexes:
        raise RuntimeError(f"the recreated indexes differ from the migration's: {rebuilt} != {indexes}")
    return time.perf_counter() - started


def reset(path: Path, args: argparse.Namespace, tables: dict[str, str]) -> None:
    """Undo a previous run's changes (a reused file): its new interactions, segment and stages."""
    conn = raw(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM {tables['interactions']} WHERE id > ?", (args.interactions,))
        seg = conn.execute(f"SELECT id FROM {tables['segments']} WHERE slug = ?", (SLUG,)).fetchone()
        if seg is not None:
            conn.execute(f"DELETE FROM {tables['segment_members']} WHERE segment_id = ?", seg)
            conn.execute(f"DELETE FROM {tables['segments']} WHERE id = ?", seg)
        conn.execute(
            f"UPDATE {tables['customers']} SET lifecycle_stage = 'prospect' "
            f"WHERE workspace_id = ? AND lifecycle_stage != 'prospect'",
            (WORKSPACE,),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (nc,) = conn.execute(f"SELECT count(*) FROM {tables['customers']}").fetchone()
        (ni,) = conn.execute(f"SELECT count(*) FROM {tables['interactions']}").fetchone()
    finally:
        conn.close()
    if (nc, ni) != (args.customers, args.interactions):
        raise SystemExit(f"{path} holds {nc:,} customers and {ni:,} interactions, not the sizes asked for")


def describe(path: Path, tables: dict[str, str]) -> str:
    conn = raw(path)
    try:
        i = tables["interactions"]
        purchases, buyers = conn.execute(
            f"SELECT count(*), count(DISTINCT customer_id) FROM {i} WHERE workspace_id = ? AND kind = 'purchase'",
            (WORKSPACE,),
        ).fetchone()
        recent = conn.execute(
            f"SELECT count(*) FROM {i} WHERE workspace_id = ? AND kind = 'purchase' AND occurred_at >= ?",
            (WORKSPACE, _text(NOW - timedelta(days=90))),
        ).fetchone()[0]
        active, top = conn.execute(
            f"SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM {i} GROUP BY customer_id)"
        ).fetchone()
    finally:
        conn.close()
    size = path.stat().st_size / 2**30
    return (
        f"{purchases:,} purchases by {buyers:,} customers ({recent:,} in the last 90 days); "
        f"{active:,} customers have interactions (the busiest {top:,}); file {size:.2f} GiB"
    )


def _text(dt: datetime) -> str:
    """A datetime as SQLAlchemy stores it in SQLite."""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# ---------------------------------------------------------------------------
# (1) full evaluation: compiled statement against the hand-written query
# ---------------------------------------------------------------------------

#: What an expert writes for the rule, by hand, on ecrm's indexes.  Without
#: statistics SQLite would walk the (workspace, stage) index for
#: ``workspace_id = ?`` (or the merged_into index for ``IS NULL``), reading
#: every customer; the unary ``+`` takes those indexes out, so SQLite looks up
#: the few customers the purchase subquery returns by primary key.
#: ``INDEXED BY`` keeps the subquery on the (workspace, kind, time) index
#: rather than grouping along the (workspace, customer) index.
HAND_WRITTEN = """
SELECT count(*) FROM {customers} AS c
WHERE c.id IN (
        SELECT customer_id FROM {interactions} INDEXED BY ix_{interactions}_ws_kind_time
        WHERE workspace_id = :ws AND kind = 'purchase' AND occurred_at >= :since
        GROUP BY customer_id
        HAVING count(*) >= 3 AND sum(amount) > 100)
  AND +c.workspace_id = :ws
  AND +c.merged_into IS NULL
  AND json_extract(c.attributes, '$.country') IN ('KR', 'JP')
"""


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any, list[float]]:
    """Median seconds of ``repeat`` calls after one warm-up call, the last result, all times."""
    result = fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, times


def plan(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[str]:
    """EXPLAIN QUERY PLAN as indented lines."""
    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines


@dataclass
class Figure:
    name: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None


def driver_statement(crm: CRM, fn: Callable[[], Any]) -> tuple[str, Sequence[Any]]:
    """The last SQL and parameters SQLAlchemy handed to ``sqlite3`` while ``fn`` ran (captured, not re-rendered)."""
    seen: list[tuple[str, Sequence[Any]]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, tuple(parameters)))

    sa.event.listen(crm.db.engine, "before_cursor_execute", grab)
    try:
        fn()
    finally:
        sa.event.remove(crm.db.engine, "before_cursor_execute", grab)
    return seen[-1]


def inline(sql: str, params: Sequence[Any]) -> str:
    """``sql`` with its ``?`` parameters written in, for reading."""
    parts = sql.split("?")
    assert len(parts) == len(params) + 1, "a '?' outside a parameter"
    out = [parts[0]]
    for value, part in zip(params, parts[1:], strict=True):
        out.append(repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'")
        out.append(part)
    return "".join(out)


def full_evaluation(crm: CRM, path: Path, rule: Rule, repeat: int, figures: list[Figure]) -> None:
    tables = {k: t.name for k, t in crm.db.tables.items()}
    with crm.db.read() as conn:
        stmt = rule.select(crm.segments._sql_context(conn))
    count_stmt = sa.select(sa.func.count()).select_from(stmt.subquery())
    hand = HAND_WRITTEN.format(**tables)
    params = {"ws": WORKSPACE, "since": _text(NOW - timedelta(days=90))}

    def compiled() -> int:
        with crm.db.read() as conn:
            return int(conn.execute(count_stmt).scalar_one())

    # the very statement the compiled count sends, to run it through sqlite3 too
    stmt_sql, stmt_params = driver_statement(crm, compiled)

    rconn = raw(path)
    try:

        def by_hand() -> int:
            return int(rconn.execute(hand, params).fetchone()[0])

        def compiled_raw() -> int:
            return int(rconn.execute(stmt_sql, stmt_params).fetchone()[0])

        with console.status("full evaluation: compiled statement"):
            t_compiled, n_compiled, all_compiled = median_time(compiled, repeat)
        with console.status("full evaluation: hand-written query"):
            t_hand, n_hand, all_hand = median_time(by_hand, repeat)
        with console.status("full evaluation: compiled SQL through sqlite3"):
            t_text, n_text, _ = median_time(compiled_raw, repeat)
        with console.status("preview(rule, sample=0)"):
            t_preview, preview, _ = median_time(lambda: crm.segments.preview(rule, sample=0), repeat)
        assert n_compiled == n_hand == n_text == preview.count, (n_compiled, n_hand, n_text, preview.count)
        console.rule("[bold]EXPLAIN QUERY PLAN")
        console.print(
            "[bold]compiled statement[/] (count(*) over rule.select(ctx), parameters written in):", highlight=False
        )
        console.print(inline(stmt_sql, stmt_params), markup=False, highlight=False)
        console.print("\n".join(plan(rconn, stmt_sql, stmt_params)), markup=False, highlight=False)
        console.print("[bold]hand-written query[/]:", highlight=False)
        console.print(hand.strip(), markup=False, highlight=False)
        console.print("\n".join(plan(rconn, hand, params)), markup=False, highlight=False)
        if preview.warnings:
            console.print(f"preview warnings: {'; '.join(preview.warnings)}", markup=False, highlight=False)
    finally:
        rconn.close()
    console.print(
        f"  {n_compiled:,} customers match; compiled {_ms(t_compiled)} (runs {_runs(all_compiled)}), "
        f"hand-written {_ms(t_hand)} (runs {_runs(all_hand)})",
        highlight=False,
    )
    ratio = t_compiled / t_hand
    figures += [
        Figure(
            "full evaluation: compiled statement, count(*)",
            _ms(t_compiled),
            f"{_ms(t_hand)} hand-written",
            f"{ratio:.2f}x",
            f"≤ {GOAL_RATIO}",
            ratio <= GOAL_RATIO,
        ),
        Figure(
            "full evaluation: compiled SQL through sqlite3",
            _ms(t_text),
            f"{_ms(t_hand)} hand-written",
            f"{t_text / t_hand:.2f}x",
        ),
        Figure(
            "preview(rule, sample=0)", _ms(t_preview), f"{_ms(t_compiled)} compiled", f"{t_preview / t_compiled:.2f}x"
        ),
    ]


# ---------------------------------------------------------------------------
# (2) full and incremental refresh
# ---------------------------------------------------------------------------


class LifecycleClock:
    """Wraps ``crm.lifecycle.refresh`` to time the lifecycle part of ``crm.segments.refresh``."""

    def __init__(self, crm: CRM) -> None:
        self.seconds = 0.0
        original = crm.lifecycle.refresh

        def timed(*args: Any, **kwargs: Any) -> int:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        crm.lifecycle.refresh = timed  # type: ignore[method-assign]

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def touched_customers(path: Path, args: argparse.Namespace, tables: dict[str, str]) -> list[int]:
    """Distinct customers for the new purchases: weighted by activity (buyers are the active ones), or uniform."""
    want = max(1, min(args.new_interactions // 2, args.customers // 4))
    rng = random.Random(args.seed)
    chosen: dict[int, None] = {}
    conn = raw(path)
    try:
        for _ in range(50 if args.touched == "active" else 0):
            ids = [rng.randint(1, args.interactions) for _ in range(2 * (want - len(chosen)) + 100)]
            q = f"SELECT customer_id FROM {tables['interactions']} WHERE id IN ({','.join(map(str, ids))})"
            for (cid,) in conn.execute(q):
                if len(chosen) < want:
                    chosen[cid] = None
            if len(chosen) >= want:
                break
    finally:
        conn.close()
    while len(chosen) < want:  # tiny data sets (or --touched uniform): fill up uniformly
        chosen[rng.randint(1, args.customers)] = None
    return list(chosen)


def insert_purchases(path: Path, customers: list[int], n: int, seed: int, tables: dict[str, str]) -> float:
    """``n`` purchases in the last day, spread round-robin over ``customers``, inserted set-based."""
    rng = random.Random(seed + 1)
    rows = []
    for k in range(n):
        cid = customers[k % len(customers)]
        at = _text(NOW - timedelta(seconds=rng.randrange(1, 86_400), microseconds=rng.randrange(1_000_000)))
        amount = round(5 + 295 * rng.random() ** 2, 2)
        rows.append((WORKSPACE, cid, cid, "purchase", "web", at, amount, "EUR", "{}", at))
    rows.sort(key=lambda r: r[5])
    conn = raw(path)
    try:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO {tables['interactions']} (workspace_id, customer_id, origin_customer_id, kind, channel, "
            "occurred_at, amount, currency, properties, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def runs(fn: Callable[[], Any], repeat: int, clock: LifecycleClock) -> tuple[list[float], list[float], Any]:
    """Times of ``repeat`` calls after a warm-up, the lifecycle part of each, and the last result."""
    result = fn()
    clock.lap()
    totals, lifecycle = [], []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        totals.append(time.perf_counter() - start)
        lifecycle.append(clock.lap())
    return totals, lifecycle, result


def refreshes(crm: CRM, path: Path, rule: Rule, args: argparse.Namespace, figures: list[Figure]) -> None:
    tables = {k: t.name for k, t in crm.db.tables.items()}
    clock = LifecycleClock(crm)
    crm.segments.create(SLUG, rule.tree, name="VIP customers in Korea and Japan", refresh=False)
    med = statistics.median

    with console.status("segment: first fill"):
        start = time.perf_counter()
        first = crm.segments.refresh(SLUG)
        t_fill = time.perf_counter() - start
    console.print(f"  first fill of {SLUG}: {first.entered:,} entered in {_ms(t_fill)}", highlight=False)
    with console.status("segment: full refresh, nothing changed"):
        seg_runs, _, again = runs(lambda: crm.segments.refresh(SLUG), args.repeat_refresh, clock)
    assert again.entered == again.exited == 0
    t_seg_full = med(seg_runs)

    with console.status("lifecycle stages: first fill (every customer starts as prospect)"):
        start = time.perf_counter()
        moved = crm.lifecycle.refresh()
        t_lc_fill = time.perf_counter() - start
        clock.lap()
    console.print(f"  lifecycle first fill: {moved:,} customers moved in {_ms(t_lc_fill)}", highlight=False)
    counts = crm.lifecycle.counts()
    console.print("  stages: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v), highlight=False)

    with console.status("refresh() of everything (lifecycle + segment), nothing changed"):
        all_runs, all_lc, _ = runs(crm.segments.refresh, args.repeat_refresh, clock)
    t_all_full, t_lc_full = med(all_runs), med(all_lc)

    ids = touched_customers(path, args, tables)

    def first_run() -> tuple[float, float, Any]:
        """Insert the new purchases, then time the incremental refresh that takes them in."""
        insert_purchases(path, ids, args.new_interactions, args.seed, tables)
        gc.collect()
        start = time.perf_counter()
        report = crm.segments.refresh(customer_ids=ids, kinds={"purchase"}, customers_changed=False)
        return time.perf_counter() - start, clock.lap(), report

    def undo() -> None:
        """Delete the new purchases and refresh their customers back (stages and membership as before)."""
        conn = raw(path)
        try:
            conn.execute(f"DELETE FROM {tables['interactions']} WHERE id > ?", (args.interactions,))
        finally:
            conn.close()
        crm.segments.refresh(customer_ids=ids)
        clock.lap()

    firsts: list[tuple[float, float, Any]] = []
    with console.status(f"incremental refresh after {args.new_interactions:,} purchases for {len(ids):,} customers"):
        firsts.append(first_run())
    for k in range(args.repeat_first):
        with console.status(f"incremental refresh, first run again ({k + 1}/{args.repeat_first}): undone, redone"):
            undo()
            firsts.append(first_run())
    t_cold, t_lc_cold, inc = firsts[0]
    if len({(r.stage_changes, r.entered, r.exited) for _, _, r in firsts}) != 1:
        raise SystemExit("the repeated first runs did not make the same changes: the undo is broken")
    t_inc = med([t for t, _, _ in firsts])
    t_lc_inc = med([lc for _, lc, _ in firsts])
    t_seg_inc = med([t - lc for t, lc, _ in firsts])
    t_seg_cold = t_cold - t_lc_cold
    with console.status("incremental refresh again, nothing changed"):
        inc_runs, inc_lc, _ = runs(
            lambda: crm.segments.refresh(customer_ids=ids, kinds={"purchase"}, customers_changed=False),
            args.repeat_refresh,
            clock,
        )
    t_inc_again = med(inc_runs)
    t_seg_inc_again = med([a - b for a, b in zip(inc_runs, inc_lc, strict=True)])
    console.print(
        f"  incremental refresh of {len(ids):,} customers: {inc.entered:,} entered, {inc.exited:,} exited "
        f"{SLUG}, {inc.stage_changes:,} changed stage; first runs {_runs([t for t, _, _ in firsts])} "
        f"(lifecycle {_runs([lc for _, lc, _ in firsts])}), the first of them cold",
        highlight=False,
    )
    console.print(
        f"  full refresh runs: segment {_runs(seg_runs)}; everything {_runs(all_runs)} "
        f"(lifecycle {_runs(all_lc)}); incremental again {_runs(inc_runs)} (lifecycle {_runs(inc_lc)}); "
        f"members now {crm.segments.count(SLUG):,}",
        highlight=False,
    )
    with console.status("hand-written: the same customers against everyone"):
        t_hand_inc, t_hand_full, rows = hand_written_incremental(path, ids, tables, args.repeat)
    console.print(
        f"  hand-written, these {len(ids):,} customers: {_ms(t_hand_inc)}; everyone: {_ms(t_hand_full)} "
        f"({rows[0]:,} of their interactions in the 90 days, {rows[1]:,} purchases; "
        f"{rows[2]:,} purchases in the 90 days in all)",
        highlight=False,
    )
    seg_ratio, all_ratio = t_seg_inc / t_seg_full, t_inc / t_all_full
    figures += [
        Figure(f"segment first fill: refresh({SLUG!r})", _ms(t_fill), f"{first.entered:,} entered"),
        Figure(f"full refresh of the segment: refresh({SLUG!r})", _ms(t_seg_full), "nothing changed"),
        Figure(
            f"incremental refresh, segment part (median of {len(firsts)} first runs)",
            _ms(t_seg_inc),
            f"{_ms(t_seg_full)} full",
            f"{seg_ratio:.2%}",
            f"≤ {GOAL_INCREMENTAL:.0%}",
            seg_ratio <= GOAL_INCREMENTAL,
        ),
        Figure(
            "incremental refresh, segment part, the cold first run alone",
            _ms(t_seg_cold),
            f"{_ms(t_seg_full)} full",
            f"{t_seg_cold / t_seg_full:.2%}",
        ),
        Figure(
            "incremental refresh, segment part, again (nothing changed)",
            _ms(t_seg_inc_again),
            f"{_ms(t_seg_full)} full",
            f"{t_seg_inc_again / t_seg_full:.2%}",
        ),
        Figure(
            "hand-written: these customers ÷ everyone (floor)",
            _ms(t_hand_inc),
            f"{_ms(t_hand_full)} everyone",
            f"{t_hand_inc / t_hand_full:.2%}",
        ),
        Figure("lifecycle first fill: lifecycle.refresh()", _ms(t_lc_fill), f"{moved:,} moved"),
        Figure("full refresh(): lifecycle + segment", _ms(t_all_full), f"lifecycle {_ms(t_lc_full)}"),
        Figure(
            f"incremental refresh(customer_ids=…): lifecycle + segment (median of {len(firsts)} first runs)",
            _ms(t_inc),
            f"{_ms(t_all_full)} full",
            f"{all_ratio:.2%}",
            f"≤ {GOAL_INCREMENTAL:.0%}",
            all_ratio <= GOAL_INCREMENTAL,
        ),
        Figure(
            "incremental refresh(customer_ids=…): lifecycle + segment, the cold first run alone",
            _ms(t_cold),
            f"{_ms(t_all_full)} full",
            f"{t_cold / t_all_full:.2%}",
        ),
        Figure(
            "incremental refresh(customer_ids=…) again (nothing changed)",
            _ms(t_inc_again),
            f"{_ms(t_all_full)} full",
            f"{t_inc_again / t_all_full:.2%}",
        ),
        Figure(
            "incremental lifecycle part",
            _ms(t_lc_inc),
            f"{_ms(t_lc_full)} full",
            f"{t_lc_inc / t_lc_full:.2%}" if t_lc_full else "",
        ),
    ]


#: The hand-written rule for some customers only (incremental): their
#: interactions of the 90 days through the (workspace, customer, time) index.
HAND_WRITTEN_SOME = """
SELECT count(*) FROM {customers} AS c
WHERE c.id IN ({ids}) AND c.id IN (
        SELECT customer_id FROM {interactions}
        WHERE workspace_id = :ws AND customer_id IN ({ids}) AND occurred_at >= :since AND +kind = 'purchase'
        GROUP BY customer_id
        HAVING count(*) >= 3 AND sum(amount) > 100)
  AND +c.workspace_id = :ws
  AND +c.merged_into IS NULL
  AND json_extract(c.attributes, '$.country') IN ('KR', 'JP')
"""


def hand_written_incremental(
    path: Path, ids: list[int], tables: dict[str, str], repeat: int
) -> tuple[float, float, tuple[int, int, int]]:
    """Hand-written evaluation for ``ids`` and for everyone (medians), and the rows each reads."""
    params = {"ws": WORKSPACE, "since": _text(NOW - timedelta(days=90))}
    some = HAND_WRITTEN_SOME.format(ids=",".join(map(str, ids)), **tables)
    everyone = HAND_WRITTEN.format(**tables)
    conn = raw(path)
    try:
        t_some, _, _ = median_time(lambda: conn.execute(some, params).fetchone(), repeat)
        t_all, _, _ = median_time(lambda: conn.execute(everyone, params).fetchone(), repeat)
        i = tables["interactions"]
        theirs = conn.execute(
            f"SELECT count(*), sum(kind = 'purchase') FROM {i} WHERE workspace_id = :ws "
            f"AND customer_id IN ({','.join(map(str, ids))}) AND occurred_at >= :since",
            params,
        ).fetchone()
        (window,) = conn.execute(
            f"SELECT count(*) FROM {i} WHERE workspace_id = :ws AND kind = 'purchase' AND occurred_at >= :since",
            params,
        ).fetchone()
    finally:
        conn.close()
    return t_some, t_all, (theirs[0], theirs[1] or 0, window)


# ---------------------------------------------------------------------------
# (3) the in-memory evaluator
# ---------------------------------------------------------------------------


def evaluator(crm: CRM, rule: Rule, seed: int, seconds: float, figures: list[Figure]) -> None:
    rng = random.Random(seed)
    customer = Customer(id=1, attributes={"country": "KR"}, email="ada@example.com")
    kinds = ["page_view"] * 50 + ["product_view"] * 28 + ["purchase"] * 15 + ["email_open"] * 7
    interactions = []
    for n, kind in enumerate(kinds):
        # four recent purchases, so the rule holds and all three conditions run
        age = timedelta(days=rng.randrange(1, 60)) if kind == "purchase" and n % 15 < 4 else None
        at = NOW - (age or timedelta(seconds=rng.randrange(SPAN_DAYS * 86400)))
        buy = kind == "purchase"
        interactions.append(
            Interaction(
                kind=kind,
                occurred_at=at,
                customer_id=1,
                channel="email" if kind == "email_open" else rng.choice(("web", "app")),
                amount=Decimal(rng.randrange(2000, 8000)) / 100 if buy else None,
                currency="EUR" if buy else None,
                properties={"category": rng.choice(CATEGORIES)} if kind in ("purchase", "product_view") else {},
            )
        )
    rng.shuffle(interactions)
    assert rule.evaluate(EvalContext(customer, interactions, NOW)) is True
    reused = EvalContext(customer, interactions, NOW)

    def rate(fn: Callable[[], bool], share: float = 1.0) -> float:
        n, batch, start = 0, 50, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds * share:
            for _ in range(batch):
                fn()
            n += batch
        return n / elapsed

    with console.status("in-memory evaluator"):
        fresh = statistics.median(
            rate(lambda: rule.evaluate(EvalContext(customer, interactions, NOW))) for _ in range(3)
        )
        warm = statistics.median(rate(lambda: rule.evaluate(reused)) for _ in range(3))
        facade = statistics.median(
            rate(lambda: crm.segments.evaluate(rule, customer, interactions=interactions, at=NOW), 0.5)
            for _ in range(3)
        )
    figures += [
        Figure("in-memory evaluator, fresh EvalContext per decision", f"{fresh:,.0f} decisions/s", "100 interactions"),
        Figure("in-memory evaluator, one EvalContext reused", f"{warm:,.0f} decisions/s", "by-kind index cached"),
        Figure("crm.segments.evaluate(rule, customer, interactions=…)", f"{facade:,.0f} decisions/s", "facade"),
    ]


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def _runs(times: Sequence[float]) -> str:
    return "/".join(f"{t * 1000:.0f}" for t in times) + " ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers (default 1,000,000)")
    parser.add_argument("--interactions", type=int, default=10_000_000, help="interactions (default 10,000,000)")
    parser.add_argument(
        "--new-interactions",
        type=int,
        default=10_000,
        help="purchases added before the incremental refresh, two per customer (default 10,000)",
    )
    parser.add_argument(
        "--touched",
        choices=("active", "uniform"),
        default="active",
        help="who the new purchases are for: customers picked in proportion to their interactions "
        "(default), or uniformly",
    )
    parser.add_argument("--db", type=Path, default=None, help="the SQLite file (default: a temporary file)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the file, and reuse it when it already holds data of the same sizes (skips generation)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each query, after a warm-up (median)")
    parser.add_argument("--repeat-refresh", type=int, default=3, help="timed full refreshes, after a warm-up (median)")
    parser.add_argument(
        "--repeat-first",
        type=int,
        default=4,
        help="first incremental runs after the cold one, each after undoing the previous (delete the new "
        "purchases, refresh their customers back) and inserting them again; the figure is the median of all "
        "(default 4)",
    )
    parser.add_argument(
        "--eval-seconds", type=float, default=1.0, help="length of each evaluator timing loop (median of 3)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the Python-side random data")
    args = parser.parse_args(argv)
    if args.customers < 100 or args.interactions < args.customers:
        parser.error("use at least 100 customers and at least as many interactions as customers")

    path: Path = args.db or Path(tempfile.mkdtemp(prefix="ecrm-seg-bench-")) / "segments.db"
    console.print(
        f"[bold]ecrm segments benchmark[/]: {args.customers:,} customers, {args.interactions:,} interactions, "
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {path}",
        highlight=False,
    )
    try:
        return _run(args, path)
    finally:
        if not args.keep:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            if args.db is None:
                os.rmdir(path.parent)


def _run(args: argparse.Namespace, path: Path) -> int:
    tables = {name: Naming().table(name) for name in CORE_TABLES}
    reuse = args.keep and stored_meta(path) == wanted_meta(args)
    if reuse:
        console.print(f"reusing {path} (same sizes); generation skipped", highlight=False)
        start = time.perf_counter()
        reset(path, args, tables)
        console.print(f"  reset of the previous run's changes: {_ms(time.perf_counter() - start)}", highlight=False)
        t_gen = None
    else:
        t_gen = generate(path, args, tables)
        console.print(f"generated in {t_gen:,.1f} s", highlight=False)
    console.print("  " + describe(path, tables), highlight=False)

    crm = open_crm(path)
    figures: list[Figure] = []
    if t_gen is not None:
        figures.append(Figure("data generation (customers + interactions, indexed)", f"{t_gen:,.1f} s"))
    try:
        rule = crm.segments.compile(RULE)
        full_evaluation(crm, path, rule, args.repeat, figures)
        refreshes(crm, path, rule, args, figures)
        evaluator(crm, rule, args.seed, args.eval_seconds, figures)
    finally:
        crm.close()

    table = Table(
        title=f"segments on {args.customers:,} customers / {args.interactions:,} interactions (SQLite file)",
        title_justify="left",
    )
    for col, justify in (("figure", "left"), ("value", "right"), ("baseline", "right"), ("ratio", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("goal", justify="right")
    table.add_column("met?")
    for f in figures:
        met = "" if f.met is None else ("[green]yes[/]" if f.met else "[red]no[/]")
        table.add_row(f.name, f.value, f.baseline, f.ratio, f.goal, met)
    console.print(table)
    console.print(f"rule: {RULE}", markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
