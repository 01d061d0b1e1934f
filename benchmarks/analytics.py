"""Benchmark of ecrm-analytics: RFM for every customer, beside what a user would do instead; the CLV fit.

Run by hand (not a test)::

    python benchmarks/analytics.py                                    # 100,000 customers, 2,000,000 purchases
    python benchmarks/analytics.py --customers 20000 --purchases 400000   # quick (a fifth)
    python benchmarks/analytics.py --index-cost                       # plus the ingest cost of the plugin's index

Setup (before any clock): a SQLite CRM (the plugin's schema, ``crm.upgrade()``)
with ``--customers`` customers and ``--purchases`` purchases over three
years (5 % of them followed by a refund, 10 % in USD with a rate), inserted
with ``sqlite3`` — the data a shop has when it installs analytics.

Timed on the same data, in the same run:

* **ecrm, full build**: ``analytics(crm).refresh(full=True)`` — the RFM rows
  of every customer (the aggregate ``GROUP BY`` over the plugin's covering
  index — first and last purchase by index seeks — read by one reader
  connection per CPU, at most 4, each a range of customers), quintile cut
  points, scores and groups, the rows written (the first build: every row,
  one ``executemany``; a later one: only the rows that differ from the
  stored ones — none when nothing changed), the CLV predictions (none: no
  model is fitted yet) and the refresh of the segments using
  ``rfm()``/``clv()``/``churn()`` of the customers whose row changed.  The
  results are **not** copied into ``customers.attributes`` (the default:
  rules and code read the plugin's table).  Then, in the same (warm)
  process: the same build again (nothing changed: nothing written); the
  same with every row written (the RFM table emptied before the clock),
  with the default readers and with one (``workers=1``); and, printed apart,
  the cost of copying the results (``set_copy(crm, True)``: every
  customer's four attributes written, ``ecrm_customers_updated`` fired);
* **ecrm, after new purchases**: 1 % of the customers buy again (through
  ``crm.interactions.track_many``, which marks them); then
  ``analytics(crm).refresh()`` — every customer's RFM is current again
  (the marked customers recomputed, every score checked against the new
  cut points).  This is what the worker job does as purchases arrive;
* **hand-written SQLite**: one statement — the aggregate per customer and
  ``NTILE(5)`` scores — on the same file with its best covering index
  ``(workspace_id, kind, customer_id, occurred_at, amount, currency)``
  (created before the clock; its build time is printed);
* **DuckDB**: load the rows (``sqlite_scan`` of the file, or through pandas
  if the extension is not available offline) plus the same query;
* **pandas**: ``read_sql`` of the rows plus ``groupby`` and ``qcut`` scores.

Each line prints wall seconds, the process's CPU seconds (every thread;
a shared machine's wall time includes waiting for a core) and the ratio of
wall times to the fastest of the three baselines (goal: ecrm ≤ 1.0), and the
ratio of CPU seconds to that baseline's (steadier on a shared machine).
``--no-copy`` leaves out the ``set_copy`` line.  Then the CLV figures: the BG/NBD +
Gamma-Gamma fit alone on every customer (goal < 10 s), and
``clv.fit(crm)`` end to end (summary from the RFM rows, fit, 100,000
predictions written), then a full build with that model (the RFM rows
unchanged, every customer's predictions rewritten).  The machine's load (``os.getloadavg``) is printed
with the figures: on a shared machine they vary.

``--index-cost``: the plugin's partial covering index on purchases and
refunds (migration ``analytics_0001``) costs on every ingested sale: the
same ``track_many`` of 50,000 interactions (20 % sales) with and without it.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path and its email.py would
# shadow the standard library's ``email`` package: drop it before any import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import random
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RATE_USD = 0.92


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def build(db: Path, customers: int, purchases: int, seed: int) -> None:
    from ecrm_analytics import plugin, set_rates

    from ecrm_core import CRM
    from ecrm_core.testing import FakeClock

    crm = CRM(f"sqlite:///{db}", plugins=[plugin], load_entrypoints=False, clock=FakeClock(NOW))
    crm.upgrade()
    set_rates(crm, "EUR", {"USD": RATE_USD})
    crm.close()
    rng = random.Random(seed)
    con = sqlite3.connect(db)
    created = _ts(NOW - timedelta(days=1200))
    con.executemany(
        "INSERT INTO ecrm_customers (id, workspace_id, email, name, attributes, consent, lifecycle_stage, "
        "created_at, updated_at) VALUES (?, 'default', ?, ?, '{}', '{}', 'prospect', ?, ?)",
        [(i, f"c{i}@example.com", f"Customer {i}", created, created) for i in range(1, customers + 1)],
    )
    # a skewed number of purchases per customer: a few heavy buyers, many one-off
    weights = [rng.paretovariate(1.3) for _ in range(customers)]
    scale = purchases / sum(weights)
    rows = []
    start = NOW - timedelta(days=3 * 365)
    for cid, w in enumerate(weights, start=1):
        n = max(1, round(w * scale))
        first = rng.uniform(0, 3 * 365 - 1)
        # six in ten customers stop buying at some point (they churn); the others buy until now
        end = rng.uniform(first, 3 * 365) if rng.random() < 0.6 else 3 * 365
        for _ in range(n):
            at = start + timedelta(days=rng.uniform(first, end))
            usd = rng.random() < 0.1
            amount = round(rng.lognormvariate(3.5, 0.8), 2)
            rows.append((cid, "purchase", at, amount, "USD" if usd else "EUR"))
            if rng.random() < 0.05:
                rows.append((cid, "refund", at + timedelta(days=3), round(amount * 0.5, 2), "USD" if usd else "EUR"))
            if len(rows) >= purchases * 1.05:
                break
        if len(rows) >= purchases * 1.05:
            break
    rows.sort(key=lambda r: r[2])
    recorded = _ts(NOW)
    con.executemany(
        "INSERT INTO ecrm_interactions (workspace_id, customer_id, origin_customer_id, kind, channel, occurred_at, "
        "amount, currency, properties, recorded_at) VALUES ('default', ?, ?, ?, 'web', ?, ?, ?, '{}', ?)",
        ((c, c, k, _ts(at), a, cur, recorded) for c, k, at, a, cur in rows),
    )
    con.commit()
    con.execute("ANALYZE")
    con.close()


HAND_SQL = f"""
WITH agg AS (
  SELECT customer_id,
         max(CASE WHEN kind = 'purchase' THEN occurred_at END) AS last_at,
         sum(kind = 'purchase') AS orders,
         max(0, coalesce(sum(CASE WHEN kind = 'purchase' AND amount > 0
                                  THEN amount * (CASE WHEN currency = 'USD' THEN {RATE_USD} ELSE 1.0 END) END), 0)
              - coalesce(sum(CASE WHEN kind = 'refund'
                                  THEN abs(amount) * (CASE WHEN currency = 'USD' THEN {RATE_USD} ELSE 1.0 END) END), 0))
           AS monetary
  FROM ecrm_interactions
  WHERE workspace_id = 'default' AND kind IN ('purchase', 'refund') AND occurred_at <= ?
  GROUP BY customer_id
  HAVING orders > 0
)
SELECT customer_id, ntile(5) OVER (ORDER BY last_at), ntile(5) OVER (ORDER BY orders),
       ntile(5) OVER (ORDER BY monetary)
FROM agg
"""


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def hand_sql(db: Path) -> tuple[tuple[float, float], float, int]:
    con = sqlite3.connect(db)
    t = time.perf_counter()
    con.execute(
        "CREATE INDEX IF NOT EXISTS bench_hand_cover ON ecrm_interactions "
        "(workspace_id, kind, customer_id, occurred_at, amount, currency)"
    )
    con.execute("ANALYZE")
    index_s = time.perf_counter() - t
    t = _clock()
    n = len(con.execute(HAND_SQL, (_ts(NOW),)).fetchall())
    took = _since(t)
    con.execute("DROP INDEX bench_hand_cover")
    con.close()
    return took, index_s, n


DUCK_SQL = f"""
WITH agg AS (
  SELECT customer_id,
         max(CASE WHEN kind = 'purchase' THEN occurred_at END) AS last_at,
         sum(CASE WHEN kind = 'purchase' THEN 1 ELSE 0 END) AS orders,
         greatest(0, coalesce(sum(CASE WHEN kind = 'purchase' AND amount > 0
                                  THEN amount * (CASE WHEN currency = 'USD' THEN {RATE_USD} ELSE 1.0 END) END), 0)
              - coalesce(sum(CASE WHEN kind = 'refund'
                                  THEN abs(amount) * (CASE WHEN currency = 'USD' THEN {RATE_USD} ELSE 1.0 END) END), 0))
           AS monetary
  FROM sales GROUP BY customer_id HAVING orders > 0
)
SELECT customer_id, ntile(5) OVER (ORDER BY last_at), ntile(5) OVER (ORDER BY orders),
       ntile(5) OVER (ORDER BY monetary)
FROM agg
"""

READ_SQL = (
    "SELECT customer_id, kind, occurred_at, CAST(amount AS REAL) AS amount, currency FROM ecrm_interactions "
    "WHERE workspace_id = 'default' AND kind IN ('purchase', 'refund') AND occurred_at <= ?"
)


def duckdb_run(db: Path) -> tuple[tuple[float, float], str, int] | None:
    try:
        import duckdb
    except ImportError:
        return None
    t = _clock()
    con = duckdb.connect()
    how = "sqlite_scan"
    try:
        con.execute("INSTALL sqlite; LOAD sqlite;")
        con.execute(
            "CREATE TABLE sales AS SELECT customer_id, kind, occurred_at, CAST(amount AS DOUBLE) AS amount, currency "
            f"FROM sqlite_scan('{db}', 'ecrm_interactions') WHERE workspace_id = 'default' "
            f"AND kind IN ('purchase', 'refund') AND occurred_at <= '{_ts(NOW)}'"
        )
    except Exception:
        import pandas as pd

        how = "pandas → duckdb (sqlite extension not available)"
        src = sqlite3.connect(db)
        frame = pd.read_sql_query(READ_SQL, src, params=(_ts(NOW),))
        src.close()
        con.register("frame", frame)
        con.execute("CREATE TABLE sales AS SELECT * FROM frame")
    n = len(con.execute(DUCK_SQL).fetchall())
    con.close()
    return _since(t), how, n


def pandas_run(db: Path) -> tuple[tuple[float, float], int] | None:
    try:
        import numpy as np
        import pandas as pd
    except ImportError:
        return None
    t = _clock()
    src = sqlite3.connect(db)
    df = pd.read_sql_query(READ_SQL, src, params=(_ts(NOW),))
    src.close()
    rate = np.where(df["currency"].to_numpy() == "USD", RATE_USD, 1.0)
    value = df["amount"].to_numpy() * rate
    is_p = df["kind"].to_numpy() == "purchase"
    df["rev"] = np.where(is_p & (value > 0), value, 0.0)
    df["ref"] = np.where(~is_p, np.abs(value), 0.0)
    df["p"] = is_p.astype(int)
    df["last"] = df["occurred_at"].where(is_p)
    g = df.groupby("customer_id").agg(
        last_at=("last", "max"), orders=("p", "sum"), rev=("rev", "sum"), ref=("ref", "sum")
    )
    g = g[g["orders"] > 0]
    g["monetary"] = (g["rev"] - g["ref"]).clip(lower=0)
    for col in ("last_at", "orders", "monetary"):
        g[f"{col}_score"] = pd.qcut(g[col].rank(method="first"), 5, labels=False) + 1
    return _since(t), len(g)


def open_crm(db: Path):
    from ecrm_analytics import plugin

    from ecrm_core import CRM
    from ecrm_core.testing import FakeClock

    return CRM(f"sqlite:///{db}", plugins=[plugin], load_entrypoints=False, clock=FakeClock(NOW))


def _empty_rfm(crm) -> None:
    from ecrm_analytics.schema import RFM

    with crm.db.write() as conn:
        conn.execute(crm.db.tables[RFM].delete())


def ecrm_runs(db: Path, customers: int, seed: int, copy: bool = True) -> dict[str, tuple[float, float]]:
    from ecrm_analytics import analytics
    from ecrm_analytics.attributes import set_copy

    out: dict[str, tuple[float, float]] = {}
    crm = open_crm(db)
    try:
        t = _clock()
        result = analytics(crm).refresh(full=True)
        out["full"] = _since(t)
        out["customers"] = (result.customers, 0.0)
        # the same full build again, in a warm process (the core's rule compilation and SQLAlchemy's
        # statement caches are per process: a worker pays them once); nothing changed, so nothing is written
        t = _clock()
        result = analytics(crm).refresh(full=True)
        out["full_warm"] = _since(t)
        out["full_warm_changed"] = (result.changed, 0.0)
        # the same in a warm process with every row written (the RFM table emptied before the clock), with the
        # default readers and with one
        for key, workers in (("full_rewrite", None), ("full_one", 1)):
            _empty_rfm(crm)
            t = _clock()
            analytics(crm).refresh(full=True, workers=workers)
            out[key] = _since(t)
        rng = random.Random(seed + 1)
        buyers = rng.sample(range(1, customers + 1), max(1, customers // 100))
        crm.interactions.track_many(
            [
                {"kind": "purchase", "customer_id": c, "amount": "25", "currency": "EUR",
                 "occurred_at": (NOW - timedelta(hours=1)).isoformat()}
                for c in buyers
            ]
        )  # fmt: skip
        t = _clock()
        result = analytics(crm).refresh()
        out["incremental"] = _since(t)
        out["incremental_customers"] = (result.customers, 0.0)
        if not copy:
            return out
        t = _clock()
        copied = set_copy(crm, True)
        out["copy"] = _since(t)
        out["copied"] = (copied, 0.0)
    finally:
        crm.close()
    return out


def clv_runs(db: Path) -> dict[str, float]:
    from ecrm_analytics import clv
    from ecrm_analytics.models import fit_bgnbd, fit_gamma_gamma

    crm = open_crm(db)
    try:
        with crm.db.read() as conn:
            t = time.perf_counter()
            _ids, x, t_x, T, m = clv.summary(crm, conn)
            summary_s = time.perf_counter() - t
        t = time.perf_counter()
        bg = fit_bgnbd(x, t_x, T)
        bg_s = time.perf_counter() - t
        t = time.perf_counter()
        gg = fit_gamma_gamma(x, m)
        gg_s = time.perf_counter() - t
        t = time.perf_counter()
        clv.fit(crm)
        total_s = time.perf_counter() - t
        # a full RFM build once a model is fitted: every customer's predictions rewritten too
        from ecrm_analytics import analytics

        t = _clock()
        analytics(crm).refresh(full=True)
        with_model = _since(t)
    finally:
        crm.close()
    print(f"  BG/NBD r={bg.r:.3f} alpha={bg.alpha:.3f} a={bg.a:.3f} b={bg.b:.3f}; "
          f"Gamma-Gamma p={gg.p:.3f} q={gg.q:.3f} v={gg.v:.3f}")  # fmt: skip
    return {"summary": summary_s, "bgnbd": bg_s, "gg": gg_s, "total": total_s, "customers": float(len(x)),
            "with_model": with_model[0], "with_model_cpu": with_model[1]}  # fmt: skip


def index_cost(workdir: Path, seed: int, n: int = 50_000) -> tuple[float, float]:
    """track_many of ``n`` interactions (20 % sales) with and without the plugin's partial index."""
    from ecrm_analytics.schema import SALES_INDEX

    rng = random.Random(seed)
    timings = []
    for keep in (True, False):
        db = workdir / f"index-{keep}.db"
        crm = open_crm(db)
        crm.upgrade()
        ids = [crm.customers.create(email=f"i{i}@example.com").id for i in range(500)]
        if not keep:
            with crm.db.write() as conn:
                conn.exec_driver_sql(f"DROP INDEX {SALES_INDEX.format(prefix='ecrm_')}")
        rows = [
            {"kind": "purchase" if rng.random() < 0.2 else "page_view", "customer_id": rng.choice(ids),
             "amount": "12.5", "currency": "EUR", "occurred_at": (NOW - timedelta(days=rng.uniform(0, 300))).isoformat()}
            for _ in range(n)
        ]  # fmt: skip
        for r in rows:
            if r["kind"] != "purchase":
                del r["amount"], r["currency"]
        t = time.perf_counter()
        crm.interactions.track_many(rows, batch_size=5000)
        timings.append(time.perf_counter() - t)
        crm.close()
    return timings[0], timings[1]


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument(
        "--reuse", action="store_true",
        help="use the shop.db already in --dir as the data (a copy of one built by this script with the same "
        "sizes and seed, not yet benchmarked: the runs change it)",
    )  # fmt: skip
    parser.add_argument("--index-cost", action="store_true", help="measure the ingest cost of the plugin's index")
    parser.add_argument("--no-clv", action="store_true")
    parser.add_argument("--no-copy", action="store_true", help="skip the opt-in set_copy(crm, True) line")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="ecrm-analytics-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "shop.db"
    try:
        t = time.perf_counter()
        if not (args.reuse and db.exists()):
            build(db, args.customers, args.purchases, args.seed)
        con = sqlite3.connect(db)
        n_rows = con.execute("SELECT count(*) FROM ecrm_interactions").fetchone()[0]
        con.close()
        print(f"data: {args.customers:,} customers, {n_rows:,} purchases and refunds "
              f"(built in {time.perf_counter() - t:.1f} s); load {_load()} on {os.cpu_count()} CPUs")  # fmt: skip
        baselines: dict[str, tuple[float, float]] = {}
        took, index_s, n = hand_sql(db)
        baselines["hand-written SQLite + covering index"] = took
        print(f"  (covering index for the hand-written SQL built in {index_s:.2f} s, not counted; {n:,} customers)")
        duck = duckdb_run(db)
        if duck is not None:
            baselines[f"DuckDB load + query ({duck[1]})"] = duck[0]
        pan = pandas_run(db)
        if pan is not None:
            baselines["pandas read_sql + groupby"] = pan[0]
        ours = ecrm_runs(db, args.customers, args.seed, copy=not args.no_copy)
        fastest = min(wall for wall, _ in baselines.values())
        # the CPU seconds of the same fastest baseline: steadier than wall seconds on a shared machine
        fastest_cpu = min(baselines.values())[1]
        print(f"\nRFM for every customer (load {_load()}):")
        print(f"  {'what':<66} {'wall s':>7} {'CPU s':>7} {'ratio':>6} {'CPU ratio':>9}")

        def line(label: str, figure: tuple[float, float]) -> None:
            print(f"  {label:<66} {figure[0]:7.2f} {figure[1]:7.2f} {figure[0] / fastest:6.2f} "
                  f"{figure[1] / fastest_cpu:9.2f}")  # fmt: skip

        line("ecrm full build (refresh(full=True)), cold process", ours["full"])
        line(f"ecrm full build again, warm process ({int(ours['full_warm_changed'][0]):,} rows changed)",
             ours["full_warm"])  # fmt: skip
        line("ecrm full build, warm process, every row written (table emptied)", ours["full_rewrite"])
        line("ecrm full build, every row written, one reader (workers=1)", ours["full_one"])
        line(f"ecrm after 1 % of customers bought again (refresh(), {int(ours['incremental_customers'][0]):,} recomputed)",
             ours["incremental"])  # fmt: skip
        for name, fig in baselines.items():
            line(name, fig)
        print("  (ratio: wall seconds / the fastest baseline's; CPU ratio: CPU seconds / that baseline's CPU seconds;\n"
              "  goal for ecrm <= 1.0)")  # fmt: skip
        print("  ecrm's figure includes: the aggregate per customer over the plugin's covering index, scores, groups,\n"
              "  the RFM rows that changed written and committed, CLV predictions (none before a fit), the refresh of\n"
              "  segments using rfm()/clv()/churn(). Not included: copying into customers.attributes, which is off by\n"
              "  default" + ("; turning it on costs, once:" if "copy" in ours else "."))  # fmt: skip
        if "copy" in ours:
            line(f"  set_copy(crm, True): {int(ours['copied'][0]):,} customers' attributes + ecrm_customers_updated",
                 ours["copy"])  # fmt: skip
        if not args.no_clv:
            c = clv_runs(db)
            print(f"\nCLV on {int(c['customers']):,} customers (load {_load()}):")
            print(f"  summary from the RFM rows {c['summary']:.2f} s; BG/NBD fit {c['bgnbd']:.2f} s; "
                  f"Gamma-Gamma fit {c['gg']:.2f} s; fit total {c['bgnbd'] + c['gg']:.2f} s (goal < 10 s)")  # fmt: skip
            print(f"  clv.fit(crm) end to end (summary, fits, {int(c['customers']):,} predictions written): "
                  f"{c['total']:.2f} s")  # fmt: skip
            print(f"  then refresh(full=True) with the model (RFM unchanged, every prediction rewritten): "
                  f"{c['with_model']:.2f} s wall, {c['with_model_cpu']:.2f} s CPU")  # fmt: skip
        if args.index_cost:
            with_i, without = index_cost(workdir, args.seed)
            print(f"\ningest of 50,000 interactions (20 % sales): with the plugin's partial index {with_i:.2f} s, "
                  f"without {without:.2f} s ({with_i / without:.2f}x)")  # fmt: skip
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
