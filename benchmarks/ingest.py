"""Ingest benchmark: ``crm.interactions.track_many`` against raw ``sqlite3.executemany``.

Run by hand (not a test)::

    python benchmarks/ingest.py --rows 100000      # quick check
    python benchmarks/ingest.py                    # the reference run: 1,000,000 rows
    python benchmarks/ingest.py --rows 200000 --profile

What one run measures (every ingest on a fresh SQLite file in ``--dir``):

* ``track_many`` through the facade, rows as dicts (customer_id of customers
  pre-created with ``upsert_many``, kind, aware ``occurred_at``, channel,
  amount/currency on purchases, small properties, an idempotency key on
  every row), with one listener on ``ecrm_interactions_recorded``: the
  ecrm-stats plugin, or a trivial counting listener; in the streaming mode
  (``atomic=False``) and in the default mode (``atomic=True``); live
  segments (the default plugin ``core.segments``) off, as for any bulk
  load, unless ``--live-segments``;
* the baseline: ``sqlite3.executemany`` of the *same* rows, as the exact
  tuples ecrm stored (read back from the first run's file), into the same
  table with the same indexes (schema made by ``crm.upgrade()``), same
  pragmas (WAL, synchronous=NORMAL, foreign_keys=ON), in batches inside one
  transaction;
* the time of ``python -c "import ecrm_core"`` (best of 5) and of building a
  ``CRM`` with every installed plugin (entry points loaded).
* with ``--sql-floor``: the streaming facade's SQL alone (per batch: BEGIN
  IMMEDIATE, max(id), the facade's INSERT ... ON CONFLICT DO NOTHING, COMMIT;
  then the stats plugin's upsert in its own transaction), in raw ``sqlite3``
  on the same tuples: the ratio no Python work can beat.

The figure of merit is the ratio facade rows/s ÷ baseline rows/s (goal ≥ 0.5).
"""

from __future__ import annotations

import os
import sys

# benchmarks/email.py would shadow the standard library's ``email`` package
# (this script's folder comes first on sys.path): drop the folder first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import cProfile
import gc
import io
import pstats
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ecrm_core.crm import CRM
from ecrm_core.domain import InteractionBatch
from ecrm_core.hookspecs import hookimpl

console = Console()

GOAL_RATIO = 0.5
GOAL_IMPORT_MS = 150.0
INSERT_COLUMNS = (
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


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def make_rows(n: int, customer_ids: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """``n`` interaction rows as a host would send them."""
    rng = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    kinds = ["page_view"] * 10 + ["product_view"] * 4 + ["click"] * 3 + ["purchase"] * 2 + ["email_open"]
    channels = ("web", "app", "email")
    rows: list[dict[str, Any]] = []
    for i in range(n):
        kind = rng.choice(kinds)
        row: dict[str, Any] = {
            "customer_id": rng.choice(customer_ids),
            "kind": kind,
            "occurred_at": t0 + timedelta(seconds=i * 3, microseconds=rng.randrange(1_000_000)),
            "channel": "email" if kind == "email_open" else rng.choice(channels[:2]),
            "idempotency_key": f"evt-{seed}-{i:09d}",
        }
        if kind == "purchase":
            row["amount"] = Decimal(rng.randrange(100, 50_000)) / 100
            row["currency"] = "EUR"
            row["properties"] = {"order": f"O{i}", "items": rng.randrange(1, 6)}
        elif kind in ("page_view", "product_view"):
            row["properties"] = {"path": f"/p/{rng.randrange(5000)}"}
        else:
            row["properties"] = {"campaign": f"c{rng.randrange(40)}"}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# listeners
# ---------------------------------------------------------------------------


class CountingListener:
    """The trivial listener: counts rows per committed batch."""

    ECRM_PLUGIN_NAME = "bench-counter"

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0

    @hookimpl
    def ecrm_interactions_recorded(self, batch: InteractionBatch) -> None:
        self.rows += len(batch)
        self.batches += 1


def stats_plugin() -> Any:
    try:
        from ecrm_stats import plugin
    except ImportError:
        console.print("[red]ecrm-stats is not installed:[/] pip install -e plugins/stats")
        raise SystemExit(2) from None
    return plugin


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def fresh_crm(
    path: Path, plugins: Sequence[Any], customers: int, *, live_segments: bool = False
) -> tuple[CRM, list[int]]:
    """A migrated CRM on a new file at ``path`` with ``customers`` customers.

    Live segments (the default plugin ``core.segments``, which re-evaluates
    lifecycle stages and segments after every committed batch) are off unless
    asked for: the benchmark measures the ingest path with *one* listener, and
    bulk loads are where the segments docs say to turn them off.
    """
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    crm = CRM(f"sqlite:///{path}", plugins=plugins, load_entrypoints=False, live_segments=live_segments)
    crm.upgrade()
    created = crm.customers.upsert_many(({"external_id": f"cust-{i}"} for i in range(customers)), batch_size=5000)
    return crm, list(created.created)


def run_facade(
    name: str,
    path: Path,
    rows: list[dict[str, Any]],
    customer_ids: list[int],
    listener: Any,
    *,
    atomic: bool,
    batch_size: int,
    profile: cProfile.Profile | None = None,
    live_segments: bool = False,
) -> Result:
    crm, ids = fresh_crm(path, [listener], len(customer_ids), live_segments=live_segments)
    if ids != customer_ids:
        raise RuntimeError("customer ids differ between runs; the rows would not be the same")
    try:
        gc.collect()
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        result = crm.interactions.track_many(rows, atomic=atomic, batch_size=batch_size)
        if profile is not None:
            profile.disable()
        seconds = time.perf_counter() - start
        failures = list(crm.plugins.failures)
        if failures:
            raise RuntimeError(f"a listener failed: {failures[0].error}\n{failures[0].traceback}")
        if result.stored != len(rows) or result.errors:
            raise RuntimeError(f"stored {result.stored} of {len(rows)} rows; errors: {result.errors[:3]}")
        note = ""
        if isinstance(listener, CountingListener):
            if listener.rows != len(rows):
                raise RuntimeError(f"the listener saw {listener.rows} rows, not {len(rows)}")
            note = f"{listener.batches} events"
        else:
            t = crm.db.tables["customer_stats"]
            import sqlalchemy as sa

            with crm.db.read() as conn:
                total = conn.execute(sa.select(sa.func.sum(t.c["count"]))).scalar_one()
                groups = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            if total != len(rows):
                raise RuntimeError(f"customer_stats counts {total} rows, not {len(rows)}")
            note = f"{groups} stats rows"
        return Result(name, result.stored, seconds, note)
    finally:
        crm.close()


def stored_tuples(path: Path) -> list[tuple[Any, ...]]:
    """The exact tuples ecrm stored, in insertion order (the baseline's input)."""
    with sqlite3.connect(path) as conn:
        cols = ", ".join(INSERT_COLUMNS)
        return conn.execute(f"SELECT {cols} FROM ecrm_interactions ORDER BY id").fetchall()


def run_baseline(path: Path, tuples: list[tuple[Any, ...]], customers: int, batch_size: int) -> Result:
    crm, _ = fresh_crm(path, [], customers)  # the same schema and customers, made by ecrm
    crm.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        sql = (
            f"INSERT INTO ecrm_interactions ({', '.join(INSERT_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
        )
        gc.collect()
        start = time.perf_counter()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        for i in range(0, len(tuples), batch_size):
            cur.executemany(sql, tuples[i : i + batch_size])
        cur.execute("COMMIT")
        seconds = time.perf_counter() - start
        (count,) = conn.execute("SELECT count(*) FROM ecrm_interactions").fetchone()
        if count != len(tuples):
            raise RuntimeError(f"baseline stored {count} of {len(tuples)} rows")
    finally:
        conn.close()
    return Result("sqlite3.executemany (baseline)", len(tuples), seconds, "one transaction")


def run_sql_floor(path: Path, tuples: list[tuple[Any, ...]], customers: int, batch_size: int, *, stats: bool) -> Result:
    """The SQL the streaming facade runs, alone: what no Python work can beat.

    The same tuples, in raw ``sqlite3``, batch by batch as ``track_many(...,
    atomic=False)`` does: ``BEGIN IMMEDIATE``, ``max(id)``, the facade's
    ``INSERT ... ON CONFLICT DO NOTHING``, ``COMMIT``; with ``stats``, the
    ecrm-stats plugin's statement for the batch's id range before the COMMIT,
    in a SAVEPOINT (its ``ecrm_interactions_inserted`` hook).  No validation,
    no hashing, no customer lookup, no events.
    """
    plugin = stats_plugin()
    crm, _ = fresh_crm(path, [plugin], customers)
    from ecrm_stats import store

    with crm.db.engine.connect() as sa_conn:
        stats_sql = store._prepared_range_upsert(
            sa_conn, crm.db.tables["customer_stats"], crm.db.tables["interactions"]
        )
    crm.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        sql = (
            f"INSERT INTO ecrm_interactions ({', '.join(INSERT_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)}) "
            "ON CONFLICT (workspace_id, idempotency_key) DO NOTHING"
        )
        gc.collect()
        start = time.perf_counter()
        cur = conn.cursor()
        for i in range(0, len(tuples), batch_size):
            chunk = tuples[i : i + batch_size]
            cur.execute("BEGIN IMMEDIATE")
            (before,) = cur.execute("SELECT coalesce(max(id), 0) FROM ecrm_interactions").fetchone()
            cur.executemany(sql, chunk)
            if stats:  # in the same transaction, in a savepoint, as the facade runs the plugin
                cur.execute("SAVEPOINT stats")
                cur.execute(stats_sql, (before + 1, before + 1 + len(chunk)))
                cur.execute("RELEASE stats")
            cur.execute("COMMIT")
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    name = "sqlite3, the facade's SQL per batch" + (" + the stats upsert" if stats else "")
    return Result(name, len(tuples), seconds, "floor: SQL only, atomic=False")


def best_of(n: int, argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Best wall time (s) of ``n`` runs of ``argv``, and the last run's stdout."""
    best = float("inf")
    out = ""
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
        best = min(best, time.perf_counter() - start)
        out = proc.stdout
    return best, out


_BUILD_CRM = """
import sys, time, tempfile, os
start = time.perf_counter()
from ecrm_core import CRM
crm = CRM("sqlite:///" + os.path.join(tempfile.mkdtemp(), "x.db"))
cold = time.perf_counter() - start
start = time.perf_counter()
again = CRM("sqlite:///" + os.path.join(tempfile.mkdtemp(), "y.db"))
warm = time.perf_counter() - start
loaded = sorted(i.name for i in crm.plugins.loaded())
failed = sorted(i.name for i in crm.plugins.info.values() if i.status == "failed")
print(cold, warm, ",".join(loaded), ",".join(failed))
"""


def startup_figures() -> list[tuple[str, str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("ECRM_PLUGINS", "ECRM_DISABLE_PLUGINS")}
    python = sys.executable
    bare, _ = best_of(5, [python, "-c", "pass"], env)
    imp, _ = best_of(5, [python, "-c", "import ecrm_core"], env)
    verdict = "[green]ok[/]" if imp * 1000 < GOAL_IMPORT_MS else "[red]over goal[/]"
    lines = [
        ("python -c 'pass' (interpreter start)", f"{bare * 1000:.1f} ms", "best of 5"),
        (
            "python -c 'import ecrm_core'",
            f"{imp * 1000:.1f} ms",
            f"best of 5; goal < {GOAL_IMPORT_MS:.0f} ms: {verdict}",
        ),
    ]
    best_cold = best_warm = float("inf")
    out = ""
    for _ in range(5):
        proc = subprocess.run([python, "-c", _BUILD_CRM], capture_output=True, text=True, check=True, env=env)
        out = proc.stdout
        cold, warm, *_ = out.split(" ")
        best_cold, best_warm = min(best_cold, float(cold)), min(best_warm, float(warm))
    _, _, loaded, failed = [*out.rstrip("\n").split(" "), "", ""][:4]
    plugins = [p for p in loaded.split(",") if p and not p.startswith("core.")]
    note = f"entry-point plugins: {', '.join(plugins) or 'none installed'}"
    if failed:
        note += f"; [red]failed: {failed}[/]"
    lines.append(("CRM(...) in a new process (imports + plugins)", f"{best_cold * 1000:.1f} ms", f"best of 5; {note}"))
    lines.append(("second CRM(...) in the same process", f"{best_warm * 1000:.1f} ms", "best of 5"))
    return lines


def print_profile(profile: cProfile.Profile, top: int = 30) -> None:
    buf = io.StringIO()
    stats = pstats.Stats(profile, stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    console.rule("[bold]cProfile of track_many (stats listener, atomic=False), by own time")
    console.print(buf.getvalue(), markup=False, highlight=False)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    listener: Callable[[], Any]
    atomic: bool


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="interactions to ingest (default 1,000,000)")
    parser.add_argument("--customers", type=int, default=20_000, help="customers to pre-create (default 20,000)")
    parser.add_argument("--batch-size", type=int, default=5000, help="track_many batch_size and baseline batch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    parser.add_argument("--profile", action="store_true", help="also profile track_many (stats, atomic=False)")
    parser.add_argument("--no-startup", action="store_true", help="skip the import/CRM build timings")
    parser.add_argument(
        "--live-segments",
        action="store_true",
        help="keep live segments on in the track_many runs (off by default: bulk loads turn them off)",
    )
    parser.add_argument(
        "--sql-floor",
        action="store_true",
        help="also time the streaming facade's SQL alone in raw sqlite3 (with and without the stats upsert)",
    )
    args = parser.parse_args(argv)

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="ecrm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]ecrm ingest benchmark[/]: {args.rows:,} rows, {args.customers:,} customers, "
        f"batch {args.batch_size:,}, SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, in {workdir}"
    )
    try:
        return _run(args, workdir)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path) -> int:
    plugin = stats_plugin()
    with console.status("creating customers and rows"):
        crm, customer_ids = fresh_crm(workdir / "probe.db", [], args.customers)
        crm.close()
        rows = make_rows(args.rows, customer_ids, args.seed)

    variants = [
        Variant("track_many, stats plugin, atomic=False", lambda: plugin, atomic=False),
        Variant("track_many, counting listener, atomic=False", CountingListener, atomic=False),
        Variant("track_many, stats plugin, atomic=True (default)", lambda: plugin, atomic=True),
        Variant("track_many, counting listener, atomic=True (default)", CountingListener, atomic=True),
    ]
    results: list[Result] = []
    first_file: Path | None = None
    for i, v in enumerate(variants):
        path = workdir / f"facade{i}.db"
        with console.status(v.name):
            results.append(
                run_facade(
                    v.name,
                    path,
                    rows,
                    customer_ids,
                    v.listener(),
                    atomic=v.atomic,
                    batch_size=args.batch_size,
                    live_segments=args.live_segments,
                )
            )
        console.print(f"  {v.name}: {results[-1].rate:,.0f} rows/s")
        first_file = first_file or path

    assert first_file is not None
    with console.status("baseline"):
        tuples = stored_tuples(first_file)
        del rows
        gc.collect()
        baseline = run_baseline(workdir / "baseline.db", tuples, args.customers, args.batch_size)
    console.print(f"  baseline: {baseline.rate:,.0f} rows/s")
    floors: list[Result] = []
    if args.sql_floor:
        for stats in (False, True):
            with console.status("SQL floor"):
                floors.append(
                    run_sql_floor(
                        workdir / f"floor{int(stats)}.db", tuples, args.customers, args.batch_size, stats=stats
                    )
                )
            console.print(f"  {floors[-1].name}: {floors[-1].rate:,.0f} rows/s")
    del tuples

    table = Table(title=f"ingest of {args.rows:,} interactions (SQLite file, WAL, synchronous=NORMAL)")
    table.add_column("path")
    table.add_column("seconds", justify="right")
    table.add_column("rows/s", justify="right")
    table.add_column("÷ baseline", justify="right")
    table.add_column("note")
    for r in [*results, *floors, baseline]:
        ratio = r.rate / baseline.rate
        style = "" if r is baseline else ("green" if ratio >= GOAL_RATIO else "red")
        table.add_row(
            r.name, f"{r.seconds:.2f}", f"{r.rate:,.0f}", f"[{style}]{ratio:.2f}[/]" if style else "1.00", r.note
        )
    console.print(table)
    for r in results:
        ratio = r.rate / baseline.rate
        verdict = "[green]meets[/]" if ratio >= GOAL_RATIO else "[red]misses[/]"
        console.print(f"{r.name} ÷ baseline = {ratio:.2f} ({verdict} goal ≥ {GOAL_RATIO})", highlight=False)

    if not args.no_startup:
        with console.status("startup timings"):
            lines = startup_figures()
        st = Table(title="startup")
        st.add_column("what")
        st.add_column("time", justify="right")
        st.add_column("note")
        for line in lines:
            st.add_row(*line)
        console.print(st)

    if args.profile:
        n = min(args.rows, 200_000)
        prof = cProfile.Profile()
        sample = make_rows(n, customer_ids, args.seed + 1)
        run_facade(
            "profile",
            workdir / "profile.db",
            sample,
            customer_ids,
            plugin,
            atomic=False,
            batch_size=args.batch_size,
            profile=prof,
            live_segments=args.live_segments,
        )
        print_profile(prof)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
