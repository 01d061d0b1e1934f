"""Market-basket benchmark: association rules over 2,000,000 purchases (issue 17), beside pandas.

Run by hand (not a test)::

    python benchmarks/analytics_basket.py --purchases 50000 --customers 5000     # smoke run (seconds)
    python benchmarks/analytics_basket.py --db /tmp/basket.db --keep              # the reference run (2M / 100k)
    python benchmarks/analytics_basket.py --db /tmp/basket.db --keep              # again: reuses the file

One SQLite file, schema made by ``crm.upgrade()`` (every index in place),
synthetic purchases written set-based into ecrm's interactions table:
``--customers`` customers (default 100,000) and ``--purchases`` purchases
(default 2,000,000), each listing 1-4 items in ``properties.skus`` from
``--products`` products (default 2,000), with planted pairs (product *p* and
*p+1* are often bought together) so that there are rules to find.

What one run measures, on the same file, each with the same thresholds
(``--min-support``, ``--min-confidence``):

* **ecrm**: ``basket_rules(crm, ...)`` end to end — reading the items
  set-based (SQLite ``json_each`` + ``group_concat``, parsed by pandas' C
  reader into integer codes), then the scipy sparse co-occurrence count and
  the rules; the read and the count are also timed apart.  Goal: < 30 s;
* **pandas baseline** — what a user would write instead: ``read_sql`` of
  the purchases' ``properties``, ``json.loads`` per row, ``explode`` the
  items, a self-merge on the purchase for the pairs, ``groupby`` counts and
  the same support/confidence/lift;
* both must find the same rules (checked), and the ratio baseline ÷ ecrm is
  printed;
* optionally (``--fpgrowth``) mlxtend's FP-growth through
  ``basket_rules(method="fpgrowth")`` on the same data.

``--skip-baseline`` leaves the baseline out (it is the slow part).  The file
is read once before the timings (both sides then find it in the OS cache).
Wall and CPU time are printed for each side, with the load average: on a
shared, overloaded machine the wall time mostly measures waiting for a CPU
(everything here is single-threaded, SQLite included), and the CPU time is
what an idle machine's wall time would be.
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # benchmarks/email.py would shadow the standard library's email package

import argparse
import json
import math
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ecrm_core.crm import CRM

console = Console()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_DAYS = 730
WORKSPACE = "default"
CHUNK_ROWS = 250_000
MASK = "9223372036854775807"
META = "bench_basket_meta"
GOAL_SECONDS = 30.0


def open_crm(path: Path) -> CRM:
    from ecrm_analytics import plugin

    crm = CRM(f"sqlite:///{path}", plugins=[plugin], load_entrypoints=False, live_segments=False, clock=lambda: NOW)
    crm.upgrade()
    return crm


def _stamp(epoch: str, micro: str) -> str:
    return f"(datetime({epoch}, 'unixepoch') || printf('.%06d', {micro}))"


def customers_sql(table: str) -> str:
    created = _stamp(f"{int(NOW.timestamp())} - n * 7 % {SPAN_DAYS * 86400}", "n % 1000000")
    return f"""
        WITH RECURSIVE g(n) AS (SELECT :lo UNION ALL SELECT n + 1 FROM g WHERE n < :hi)
        INSERT INTO {table} (id, workspace_id, external_id, attributes, consent, lifecycle_stage, created_at, updated_at)
        SELECT n, '{WORKSPACE}', 'cust-' || n, '{{}}', '{{}}', 'prospect', {created}, {created} FROM g
    """


def purchases_sql(table: str, customers: int, total: int, products: int) -> str:
    """One chunk of purchases; items: a product p, often p+1 (planted pair), sometimes a random third and fourth."""
    now = int(NOW.timestamp())
    t = f"CAST({now} - {SPAN_DAYS * 86400} * (1.0 - (n - 0.5) / {total}) AS INTEGER)"
    stamp = _stamp(t, "(a >> 16) % 1000000")
    p = f"(a % {products})"

    def sku(expr: str) -> str:
        return f"'\"P-' || ({expr}) || '\"'"

    items = (
        f"'[' || {sku(p)}"
        f" || CASE WHEN (a >> 12) % 10 < 6 THEN ', ' || {sku(f'({p} + 1) % {products}')} ELSE '' END"
        f" || CASE WHEN (a >> 20) % 10 < 3 THEN ', ' || {sku(f'(a >> 24) % {products}')} ELSE '' END"
        f" || CASE WHEN (a >> 40) % 10 < 1 THEN ', ' || {sku(f'(a >> 44) % {products}')} ELSE '' END || ']'"
    )
    return f"""
        WITH RECURSIVE g(n, a, b) AS (
            SELECT :lo, random() & {MASK}, random() & {MASK}
            UNION ALL
            SELECT n + 1, random() & {MASK}, random() & {MASK} FROM g WHERE n < :hi
        )
        INSERT INTO {table}
            (workspace_id, customer_id, origin_customer_id, kind, channel, occurred_at, amount, currency,
             properties, idempotency_key, payload_hash, recorded_at)
        SELECT '{WORKSPACE}', 1 + b % {customers}, 1 + b % {customers}, 'purchase',
               CASE WHEN (b >> 8) % 100 < 65 THEN 'web' ELSE 'app' END, {stamp},
               round(5 + 295 * ((a >> 48) % 1000) / 1000.0, 2), 'EUR',
               '{{"order_id": "o' || n || '", "skus": ' || {items} || '}}', NULL, NULL, {stamp}
        FROM g
    """


def generate(path: Path, args: argparse.Namespace) -> float:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    crm = open_crm(path)
    tables = {k: crm.db.tables[k].name for k in ("customers", "interactions")}
    crm.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-524288")
    with console.status("generating") as status:
        for label, sql, total in (
            ("customers", customers_sql(tables["customers"]), args.customers),
            (
                "purchases",
                purchases_sql(tables["interactions"], args.customers, args.purchases, args.products),
                args.purchases,
            ),
        ):
            for lo in range(1, total + 1, CHUNK_ROWS):
                hi = min(total, lo + CHUNK_ROWS - 1)
                conn.execute("BEGIN")
                conn.execute(sql, {"lo": lo, "hi": hi})
                conn.execute("COMMIT")
                status.update(f"generating {label}: {hi:,} / {total:,}")
    conn.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.executemany(f"INSERT INTO {META} VALUES (?, ?)", _meta(args).items())
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def _meta(args: argparse.Namespace) -> dict[str, str]:
    return {"customers": str(args.customers), "purchases": str(args.purchases), "products": str(args.products)}


def _stored_meta(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        with sqlite3.connect(path) as conn:
            return dict(conn.execute(f"SELECT key, value FROM {META}").fetchall())
    except sqlite3.Error:
        return None


def pandas_baseline(path: Path, min_support: float, min_confidence: float) -> tuple[float, dict[tuple[str, str], Any]]:
    """What a pandas user writes: read, json.loads, explode, self-merge, groupby."""
    import pandas as pd

    started = time.perf_counter()
    with sqlite3.connect(path) as conn:
        df = pd.read_sql_query(
            "SELECT id, properties FROM ecrm_interactions WHERE workspace_id = ? AND kind = 'purchase'"
            " AND occurred_at <= ?",
            conn,
            params=(WORKSPACE, NOW.strftime("%Y-%m-%d %H:%M:%S.%f")),
        )
    df["item"] = [json.loads(p).get("skus") for p in df["properties"]]
    df = df[df["item"].map(lambda v: isinstance(v, list) and len(v) > 0)]
    n = len(df)
    items = df[["id", "item"]].explode("item").drop_duplicates()
    counts = items["item"].value_counts()
    min_count = max(1, math.ceil(min_support * n - 1e-9))
    frequent = items[items["item"].isin(counts.index[counts >= min_count])]
    pairs = frequent.merge(frequent, on="id")
    pairs = pairs[pairs["item_x"] != pairs["item_y"]]
    both = pairs.groupby(["item_x", "item_y"]).size()
    both = both[both >= min_count].reset_index(name="both")
    both["confidence"] = both["both"] / counts.reindex(both["item_x"]).to_numpy()
    both["lift"] = both["confidence"] / (counts.reindex(both["item_y"]).to_numpy() / n)
    both = both[(both["confidence"] >= min_confidence) & (both["lift"] >= 1.0)]
    seconds = time.perf_counter() - started
    return seconds, {(r.item_x, r.item_y): (r.both, r.confidence, r.lift) for r in both.itertuples()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=2_000_000)
    parser.add_argument("--products", type=int, default=2_000)
    parser.add_argument("--min-support", type=float, default=0.0002)
    parser.add_argument("--min-confidence", type=float, default=0.1)
    parser.add_argument("--db", type=Path, default=None, help="the SQLite file (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the file for the next run")
    parser.add_argument("--skip-baseline", action="store_true", help="leave the pandas baseline out")
    parser.add_argument("--fpgrowth", action="store_true", help="also time mlxtend FP-growth")
    args = parser.parse_args(argv)

    from ecrm_analytics.basket import basket_rules, mine
    from ecrm_analytics.items import read_baskets

    path = args.db or Path(tempfile.mkdtemp(prefix="ecrm-basket-")) / "basket.db"
    figures: list[tuple[str, str]] = []
    if _stored_meta(path) == _meta(args):
        console.print(f"reusing {path}")
    else:
        seconds = generate(path, args)
        figures.append(("generating the data (not measured against anything)", f"{seconds:.1f} s"))
    try:
        crm = open_crm(path)
        import pandas  # noqa: F401  (imported before timing: both sides use pandas)
        import scipy.sparse  # noqa: F401

        with sqlite3.connect(path) as warm:  # the file in the OS cache for both sides: no cold first read
            warm.execute("SELECT sum(length(properties)) FROM ecrm_interactions").fetchone()
        load = os.getloadavg()
        started, cpu = time.perf_counter(), time.process_time()
        result = basket_rules(crm, min_support=args.min_support, min_confidence=args.min_confidence, max_rules=10_000)
        ecrm_seconds, ecrm_cpu = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        baskets = read_baskets(crm)
        read_seconds = time.perf_counter() - started
        started = time.perf_counter()
        mine(
            baskets.basket,
            baskets.item,
            baskets.items,
            baskets.size,
            min_support=args.min_support,
            min_confidence=args.min_confidence,
            max_rules=10_000,
        )
        mine_seconds = time.perf_counter() - started
        figures += [
            ("purchases with items (baskets) / distinct products", f"{result.baskets:,} / {result.items:,}"),
            ("rules found (support, confidence, lift >= 1)", f"{len(result.rules):,}"),
            ("ecrm basket_rules, end to end", f"{ecrm_seconds:.2f} s (goal < {GOAL_SECONDS:.0f} s)"),
            ("  the same, CPU time of the process (SQLite runs in it)", f"{ecrm_cpu:.2f} s"),
            ("  of which: reading the items set-based (json_each + group_concat)", f"{read_seconds:.2f} s"),
            ("  of which: scipy sparse pair count and rules", f"{mine_seconds:.2f} s"),
        ]
        if not args.skip_baseline:
            cpu = time.process_time()
            base_seconds, base_rules = pandas_baseline(path, args.min_support, args.min_confidence)
            base_cpu = time.process_time() - cpu
            ours = {(r.antecedent[0], r.consequent[0]): (r.count, r.confidence, r.lift) for r in result.rules}
            same = ours.keys() == base_rules.keys() and all(
                ours[k][0] == base_rules[k][0] and math.isclose(ours[k][2], base_rules[k][2], rel_tol=1e-9)
                for k in ours
            )
            figures += [
                ("pandas baseline (read_sql, json.loads, explode, self-merge, groupby)", f"{base_seconds:.2f} s"),
                ("  the same, CPU time of the process", f"{base_cpu:.2f} s"),
                (
                    "ratio baseline / ecrm (wall; CPU)",
                    f"{base_seconds / ecrm_seconds:.1f}x; {base_cpu / ecrm_cpu:.1f}x",
                ),
                ("same rules as the baseline", "yes" if same else "NO"),
            ]
            if not same:
                console.print(f"[red]rules differ: ecrm {len(ours)}, baseline {len(base_rules)}[/red]")
        if args.fpgrowth:
            started, cpu = time.perf_counter(), time.process_time()
            fp = basket_rules(
                crm,
                min_support=args.min_support,
                min_confidence=args.min_confidence,
                method="fpgrowth",
                max_len=3,
                max_rules=10_000,
            )
            figures.append(
                (
                    "mlxtend FP-growth (max_len 3), end to end: wall; CPU",
                    f"{time.perf_counter() - started:.2f} s; {time.process_time() - cpu:.2f} s ({len(fp.rules):,} rules)",
                )
            )
        crm.close()
        figures.append(("load average (1, 5, 15 min) at the start", " ".join(f"{v:.2f}" for v in load)))
        figures.append(("load average (1, 5, 15 min) at the end", " ".join(f"{v:.2f}" for v in os.getloadavg())))
        table = Table(title=f"Market basket: {args.purchases:,} purchases, {args.customers:,} customers")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for name, value in figures:
            table.add_row(name, value)
        console.print(table)
        return 0
    finally:
        if not args.keep and args.db is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        elif not args.keep:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
