"""Benchmark of personalization: ``decide`` over HTTP beside a bare Litestar endpoint, and the recommender refresh.

Run by hand (not a test)::

    python benchmarks/decide.py --db /tmp/decide.db --keep   # the issue's scale: 1M customers, 10k products, 10M interactions
    python benchmarks/decide.py --db /tmp/decide.db --keep --no-refresh --rate 100   # reuse data and lists

Figures:

* **refresh**: ``personalize(crm).refresh()`` — popularity, item-to-item
  co-occurrence (sparse ``X^T X``) and TF-IDF content similarity over the whole
  history, written as lists (goal < 60 s at the issue's scale);
* **queries per decide**: SELECT statements counted (SQLite trace callback) for
  customers with short and long histories (must be the same number);
* **decide over HTTP**: ``POST /personalize/decide`` (Bearer key, ``read``)
  for random customers, served by uvicorn (one worker) in its own process
  and loaded from THIS process over loopback with ``--concurrency``
  keep-alive connections; beside a bare Litestar app in the same run that
  decodes the same JSON body and answers a JSON document of the same size
  (no auth, no database).  Goal: p99 <= 20 ms and <= 3x the bare p99.
  **closed loop**: the connections send back to back (saturation: latency
  is concurrency / throughput);
* **open loop**: both apps driven at the same offered rate (``--rate``),
  latency from each request's scheduled send time (no coordinated omission);
  printed beside the closed-loop (saturation) figure, each judged against
  the goal.

The data: products in clusters of 10 (what is bought together), purchases of
1-3 products (Zipf-like popularity), product views; generated set-based
(``INSERT ... SELECT`` over recursive CTEs, secondary indexes rebuilt after
the load; products through ``add_products``); ``--db PATH --keep`` keeps the
file for later runs with the same sizes.
"""

from __future__ import annotations

import os
import sys

# benchmarks/email.py would shadow the standard library's ``email`` package
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "benchmark-secret-0123456789-abcdefghij"
P99_GOAL_MS = 20.0
RATIO_GOAL = 3.0
REFRESH_GOAL_S = 60.0
WORDS = "classic light warm soft bold slim eco sport urban retro premium basic travel city trail studio".split()
CATEGORIES = "shoes hats bags shirts jackets socks watches belts scarves gloves".split()


def _api() -> Any:
    """benchmarks/api.py: its load generator and server helpers (one implementation for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("ecrm_bench_api", Path(__file__).with_name("api.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# the servers (own process: python benchmarks/decide.py --serve ecrm|bare ...)
# ---------------------------------------------------------------------------


def _crm(db: str) -> Any:
    import ecrm_api.plugin
    import ecrm_personalize.plugin

    from ecrm_core import CRM

    return CRM(
        db,
        plugins=[ecrm_api.plugin, ecrm_personalize.plugin],
        load_entrypoints=False,
        secret=SECRET,
        live_segments=False,
    )


def bare_app(body_file: Path) -> Any:
    """Litestar with one endpoint: decode the JSON body, answer a same-size JSON document (no auth, no database)."""
    import msgspec
    from litestar import Litestar, Request, Response, post

    body = body_file.read_bytes()

    @post("/personalize/decide", status_code=200)
    async def decide(request: Request[Any, Any, Any]) -> Response[bytes]:
        doc = msgspec.json.decode(await request.body())
        assert doc["placement"]
        return Response(body, media_type="application/json")

    return Litestar(route_handlers=[decide], debug=False, signature_namespace={"Response": Response})


def serve(kind: str, db: str, body: str | None) -> None:
    import socket

    import uvicorn

    if kind == "ecrm":
        from ecrm_api import create_app

        app = create_app(_crm(db), rate_limit=None, docs=False, secret=b"b" * 32)
    else:
        assert body is not None
        app = bare_app(Path(body))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass


def start(api: Any, kind: str, db: str, body: Path | None) -> Any:
    args = [sys.executable, __file__, "--serve", kind, "--serve-db", db]
    if body is not None:
        args += ["--body", str(body)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the {kind} server did not start")
    server = api.Server(kind, proc, int(line.split()[1]))
    server.wait_listening()
    return server


# ---------------------------------------------------------------------------
# the open-loop load: a fixed offered rate, latency from the scheduled send time
# ---------------------------------------------------------------------------


async def _open_loop(api: Any, port: int, requests: list[bytes], rate: float, connections: int, warmup: int) -> Any:
    """Request i is due at ``start + i / rate``; any of ``connections`` keep-alive connections sends it
    when free.  Latency runs from the **due** time, not the send time: when every connection is busy
    the wait counts (no coordinated omission).  The first ``warmup`` requests are not recorded."""
    import asyncio

    result = api.Result(0.0)
    queue = list(range(len(requests) - 1, -1, -1))
    start = time.perf_counter() + 0.2

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                i = queue.pop()
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(requests[i])
                status, _body = await api._read_response(reader)
                if i >= warmup:
                    result.latencies_ns.append(int((time.perf_counter() - due) * 1e9))
                    result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - (start + warmup / rate)
    return result


def measured(api: Any, server: Any, sent: list[bytes], load: Any) -> Any:
    """``load()``'s result with ``cpu_ms``: the server process's CPU (user + system) per request sent.

    On a shared machine the wall-clock figures of both servers move with
    whatever else runs; the CPU a request costs the server does not, and at
    saturation the closed-loop latency is about concurrency x that."""
    c0 = api.cpu_seconds(server.proc.pid)
    res = load()
    res.cpu_ms = (api.cpu_seconds(server.proc.pid) - c0) / max(len(sent), 1) * 1000
    return res


def open_loop(api: Any, port: int, requests: list[bytes], rate: float, connections: int, warmup: int) -> Any:
    import asyncio

    return asyncio.run(_open_loop(api, port, requests, rate, connections, warmup))


# ---------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------


def products(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cat = CATEGORIES[(i // 10) % len(CATEGORIES)]
        words = rng.sample(WORDS, 2)
        out.append(
            {
                "sku": f"P{i}",
                "title": f"{words[0].title()} {words[1]} {cat[:-1]} {i}",
                "category": cat,
                "attributes": {
                    "brand": f"brand{(i // 10) % 97}",
                    "colour": rng.choice(("red", "blue", "black", "white")),
                },
            }
        )
    return out


MASK = "9223372036854775807"  # random() & MASK: a non-negative 63-bit integer
META = "bench_decide_meta"
CHUNK_ROWS = 250_000
TIMEZONES = ("Europe/Paris", "Asia/Seoul", "America/New_York", "UTC")
NAMES = ("Ada", "Bob", "Chloé", "Dan", "Eun-ji")


def _stamp(epoch: str, micro: str) -> str:
    """SQL for SQLAlchemy's SQLite DateTime text: ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC)."""
    return f"(datetime({epoch}, 'unixepoch') || printf('.%06d', {micro}))"


def customers_sql(table: str, workspace: str, now: int) -> str:
    """Customers ``u<n>`` for n in [:lo, :hi] (one INSERT ... SELECT over a recursive CTE)."""
    stamp = _stamp(f"{now} - (r >> 8) % {86400 * 365}", "r % 1000000")
    name = "CASE r % 5 " + " ".join(f"WHEN {i} THEN '{n} '" for i, n in enumerate(NAMES)) + " END || n"
    tz = "CASE (r >> 4) % 4 " + " ".join(f"WHEN {i} THEN '{z}'" for i, z in enumerate(TIMEZONES)) + " END"
    return f"""
        WITH RECURSIVE g(n, r) AS (
            SELECT :lo, random() & {MASK}
            UNION ALL
            SELECT n + 1, random() & {MASK} FROM g WHERE n < :hi
        )
        INSERT INTO {table}
            (id, workspace_id, external_id, name, attributes, consent, lifecycle_stage, timezone,
             created_at, updated_at)
        SELECT n, '{workspace}', 'u' || n, {name}, '{{}}', '{{}}', 'prospect', {tz}, {stamp}, {stamp}
        FROM g
    """


def interactions_sql(table: str, workspace: str, now: int, customers: int, products: int) -> str:
    """Interactions for n in [:lo, :hi]: 30 % purchases of 1-3 products of one cluster
    (``{"skus": [...]}``), 70 % product views (``{"sku": ...}``), over the last 180 days.

    Products come in clusters of 10 (what is bought together); a cluster is
    drawn with weight ``(1 + c) ** -0.8`` (Zipf-like, by inverting its CDF),
    a customer uniformly.
    """
    clusters = max(products // 10, 1)
    u = "(((b >> 24) % 1000000) / 1000000.0)"
    cluster = f"min({clusters - 1}, CAST(pow(1 + {u} * (pow({clusters + 1}, 0.2) - 1), 5) - 1 AS INTEGER))"
    stamp = _stamp(f"{now} - (a >> 20) % {86400 * 180}", "(a >> 8) % 1000000")
    # three distinct members of the cluster: o, o + k, o + 2k (mod 10) with k in 1..4
    first = "'\"P' || (c * 10 + o) || '\"'"
    second = "CASE WHEN m >= 1 THEN ', \"P' || (c * 10 + (o + k) % 10) || '\"' ELSE '' END"
    third = "CASE WHEN m >= 2 THEN ', \"P' || (c * 10 + (o + 2 * k) % 10) || '\"' ELSE '' END"
    return f"""
        WITH RECURSIVE g(n, a, b) AS (
            SELECT :lo, random() & {MASK}, random() & {MASK}
            UNION ALL
            SELECT n + 1, random() & {MASK}, random() & {MASK} FROM g WHERE n < :hi
        ),
        e AS (
            SELECT a, (b >> 1) % {customers} + 1 AS cid, {cluster} AS c,
                   (a >> 4) % 10 AS o, 1 + (a >> 12) % 4 AS k, (a >> 16) % 3 AS m
            FROM g
        )
        INSERT INTO {table}
            (workspace_id, customer_id, origin_customer_id, kind, channel, occurred_at, amount, currency,
             properties, idempotency_key, payload_hash, recorded_at)
        SELECT '{workspace}', cid, cid,
               CASE WHEN a % 100 < 30 THEN 'purchase' ELSE 'product_view' END, 'web', {stamp}, NULL, NULL,
               CASE WHEN a % 100 < 30 THEN '{{"skus": [' || {first} || {second} || {third} || ']}}'
                    ELSE '{{"sku": ' || {first} || '}}' END,
               NULL, NULL, {stamp}
        FROM e
    """


def wanted_meta(args: argparse.Namespace) -> dict[str, str]:
    return {k: str(getattr(args, k)) for k in ("customers", "products", "interactions", "seed")}


def stored_meta(path: Path) -> dict[str, str] | None:
    import sqlite3

    if not path.exists():
        return None
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute(f"SELECT key, value FROM {META}").fetchall())
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def generate(path: Path, args: argparse.Namespace, console: Any) -> float:
    """A fresh file at the chosen scale, set-based; return the seconds it took.

    The schema comes from ``crm.upgrade()``; products through
    ``add_products`` (the catalogue's own validation); customers and
    interactions by ``INSERT ... SELECT`` over recursive CTEs in chunks, with
    the two tables' secondary indexes dropped during the load and recreated
    after it (one sorted build each instead of millions of random inserts).
    SQLite's ``random()`` has no seed: the data are random, not repeatable.
    """
    import sqlite3

    from ecrm_personalize import personalize
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    crm = _crm(f"sqlite:///{path}")
    try:
        crm.upgrade()
        personalize(crm).add_products(products(args.products, args.seed))
        names = {k: crm.db.tables[k].name for k in ("customers", "interactions")}
        workspace = crm.workspace
    finally:
        crm.close()
    now = int(time.time())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN (?, ?)",
        (names["customers"], names["interactions"]),
    ).fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    jobs = (
        ("customers", customers_sql(names["customers"], workspace, now), args.customers),
        (
            "interactions",
            interactions_sql(names["interactions"], workspace, now, args.customers, args.products),
            args.interactions,
        ),
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        for label, sql, total in jobs:
            task = progress.add_task(f"generating {label}", total=total)
            for lo in range(1, total + 1, CHUNK_ROWS):
                hi = min(total, lo + CHUNK_ROWS - 1)
                conn.execute("BEGIN")
                conn.execute(sql, {"lo": lo, "hi": hi})
                conn.execute("COMMIT")
                progress.update(task, completed=hi)
        task = progress.add_task("indexes", total=len(indexes))
        for _name, sql in indexes:
            conn.execute(sql)
            progress.advance(task)
    conn.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.executemany(f"INSERT INTO {META} VALUES (?, ?)", wanted_meta(args).items())
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def prepare(path: Path, args: argparse.Namespace, console: Any) -> tuple[str, float]:
    """The shop at the chosen scale (reused when ``path`` holds it); return (read token, seconds generating)."""
    from ecrm_api import Keys

    seconds = 0.0
    if stored_meta(path) == wanted_meta(args):
        console.print(f"reusing the data in {path}")
    else:
        seconds = generate(path, args, console)
    crm = _crm(f"sqlite:///{path}")
    try:
        crm.upgrade()
        token = Keys(crm).create("bench-read", scopes=["read"]).token
    finally:
        crm.close()
    return token, seconds


def queries_per_decide(db: str, ids: list[int]) -> tuple[list[int], list[int]]:
    """SELECTs per decide (SQLite's trace callback: the decision runs its statements on the DB-API
    cursor) and history length, for each customer in ``ids``, once its lists are cached."""
    import sqlalchemy as sa
    from ecrm_personalize import personalize

    crm = _crm(db)
    try:
        p = personalize(crm)
        p.decide(ids[0], "home")  # warm the placement, offer and catalogue caches
        seen: list[str] = []
        tracing = [False]

        def trace(statement: str) -> None:
            if tracing[0] and statement.lstrip().upper().startswith("SELECT"):
                seen.append(statement)

        def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            dbapi_conn.set_trace_callback(trace)

        sa.event.listen(crm.db.engine, "checkout", checkout)
        counts, lengths = [], []
        for cid in ids:
            p.decide(cid, "home")  # its lists, read once
            seen.clear()
            tracing[0] = True
            p.decide(cid, "home")
            tracing[0] = False
            counts.append(len(seen))
            t = crm.db.tables["interactions"]
            with crm.db.read() as conn:
                lengths.append(conn.execute(sa.select(sa.func.count()).where(t.c.customer_id == cid)).scalar_one())
        sa.event.remove(crm.db.engine, "checkout", checkout)
        return counts, lengths
    finally:
        crm.close()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    from ecrm_personalize import personalize
    from rich.console import Console
    from rich.table import Table

    api = _api()
    console = Console(highlight=False)
    cores = os.cpu_count() or 1
    if args.db:
        db_file = Path(args.db)
    else:
        db_file = Path(tempfile.gettempdir()) / f"ecrm-decide-{args.customers}-{args.products}-{args.interactions}.db"
    workdir = Path(tempfile.mkdtemp(prefix="ecrm-decide-"))
    db = f"sqlite:///{db_file}"
    full = (args.customers, args.products, args.interactions) == (1_000_000, 10_000, 10_000_000)
    console.print(
        f"[bold]ecrm personalization benchmark[/]: {args.customers:,} customers, {args.products:,} products, "
        f"{args.interactions:,} interactions" + ("" if full else " [yellow](smaller than the issue's scale)[/]")
    )
    console.print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} at start")
    token, setup = prepare(db_file, args, console)
    if setup:
        console.print(f"generated the data (set-based SQL) in {setup:.1f} s ({db_file})")
    if args.generate:
        return

    crm = _crm(db)
    try:
        p = personalize(crm)
        from ecrm_personalize.recommend import last_meta

        meta = last_meta(crm) if args.no_refresh else None
        if meta is not None:
            from ecrm_personalize.recommend import RefreshReport

            report = RefreshReport()
            report.lists = meta["report"]["lists"]
            report.seconds = meta["report"]["seconds"]
            refresh_s = float(report.seconds.get("total", 0.0))
            refresh_cpu = float("nan")
            console.print(
                f"[yellow]--no-refresh: the lists of the refresh at {meta['refreshed_at']:%H:%M} (its figures)[/]"
            )
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            report = p.refresh()
            refresh_s = time.perf_counter() - t0
            refresh_cpu = time.process_time() - c0
        p.define("home", k=args.k, offers=2, control=0.05, alternatives=["grid", "carousel", "list"])
    finally:
        crm.close()
    r = report.to_dict()
    t = Table(title="recommender refresh (personalize.refresh)")
    for c in ("read", "popular", "cooccurrence", "content", "write", "total", "CPU (this process)", "lists"):
        t.add_column(c, justify="right")
    s = r["seconds"]
    t.add_row(
        *(f"{s.get(k, 0):.2f} s" for k in ("read", "popular", "cooccurrence", "content", "write")),
        f"{refresh_s:.2f} s",
        f"{refresh_cpu:.2f} s",
        f"{sum(r['lists'].values()):,}",
    )
    console.print(t)
    ok = "[green]met[/]" if refresh_s < REFRESH_GOAL_S else "[yellow]not met[/]"
    console.print(
        f"goal: refresh < {REFRESH_GOAL_S:.0f} s -> {refresh_s:.1f} s wall ({refresh_cpu:.1f} s of CPU) at this "
        f"scale, {ok} (load average {os.getloadavg()[0]:.2f})"
    )

    rng = random.Random(args.seed + 1)
    sample = rng.sample(range(1, args.customers + 1), min(args.customers, 30))
    counts, lengths = queries_per_decide(db, sample)
    console.print(
        f"queries per decide (lists cached): {min(counts)}..{max(counts)} SELECTs for customers with {min(lengths)}..{max(lengths)} "
        f"interactions ({'constant' if min(counts) == max(counts) else '[red]NOT constant[/]'})"
    )

    ids = [rng.randrange(1, args.customers + 1) for _ in range(args.requests + args.warmup)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [json.dumps({"placement": "home", "customer_id": i}).encode() for i in ids]
    reqs = [api.request_bytes("POST", "/personalize/decide", headers, b) for b in bodies]
    open_n = int(args.rate * args.open_seconds)
    open_warm = int(args.rate)  # the first second is not recorded
    open_ids = [rng.randrange(1, args.customers + 1) for _ in range(open_n + open_warm)]
    open_bodies = [json.dumps({"placement": "home", "customer_id": i}).encode() for i in open_ids]
    server = start(api, "ecrm", db, None)
    try:
        probe = api.load(server.port, reqs[:50], 2, keep_bodies=True)
        if probe.statuses.get(200) != 50:
            raise SystemExit(f"POST /personalize/decide answered {probe.statuses}: {probe.bodies[0][:300]!r}")
        sizes = sorted(len(b) for b in probe.bodies)
        (workdir / "body.json").write_bytes(probe.bodies[[len(b) for b in probe.bodies].index(sizes[len(sizes) // 2])])
        ecrm = measured(api, server, reqs, lambda: api.load(server.port, reqs, args.concurrency, warmup=args.warmup))
        open_reqs = [api.request_bytes("POST", "/personalize/decide", headers, b) for b in open_bodies]
        ecrm_open = measured(
            api,
            server,
            open_reqs,
            lambda: open_loop(api, server.port, open_reqs, args.rate, args.open_connections, open_warm),
        )
    finally:
        server.stop()
    bare_server = start(api, "bare", db, workdir / "body.json")
    try:
        plain = {"Content-Type": "application/json"}
        bare_reqs = [api.request_bytes("POST", "/personalize/decide", plain, b) for b in bodies]
        bare = measured(
            api,
            bare_server,
            bare_reqs,
            lambda: api.load(bare_server.port, bare_reqs, args.concurrency, warmup=args.warmup),
        )
        bare_open_reqs = [api.request_bytes("POST", "/personalize/decide", plain, b) for b in open_bodies]
        bare_open = measured(
            api,
            bare_server,
            bare_open_reqs,
            lambda: open_loop(api, bare_server.port, bare_open_reqs, args.rate, args.open_connections, open_warm),
        )
    finally:
        bare_server.stop()

    size = sizes[len(sizes) // 2]
    for title, pair in (
        (
            f"CLOSED LOOP (saturation): {args.requests:,} requests for random customers, {args.concurrency} "
            f"connections sending back to back, answer ~{size:,} bytes -- latency = concurrency / throughput",
            (ecrm, bare),
        ),
        (
            f"OPEN LOOP: {args.rate:,.0f} requests/s offered for {args.open_seconds:.0f} s from up to "
            f"{args.open_connections} connections, latency from each request's scheduled send time",
            (ecrm_open, bare_open),
        ),
    ):
        t = Table(title=title)
        for c in ("app", "requests/s", "p50 ms", "p99 ms", "p50 vs bare", "p99 vs bare", "server CPU/req", "non-200"):
            t.add_column(c, justify="right" if c != "app" else "left")
        mine, base = pair
        for name, res in (("ecrm decide", mine), ("bare Litestar, same-size JSON", base)):
            other = {k: v for k, v in res.statuses.items() if k != 200}
            t.add_row(
                name,
                f"{res.requests / res.seconds:,.0f}",
                f"{res.pct(0.5):.2f}",
                f"{res.pct(0.99):.2f}",
                f"{res.pct(0.5) / base.pct(0.5):.2f}x" if res is mine else "",
                f"{res.pct(0.99) / base.pct(0.99):.2f}x" if res is mine else "",
                f"{res.cpu_ms:.2f} ms" + (f" ({res.cpu_ms / base.cpu_ms:.1f}x)" if res is mine else ""),
                str(other or ""),
            )
        console.print(t)
    for label, mine, base in (
        ("closed loop (saturation)", ecrm, bare),
        (f"open loop at {args.rate:,.0f} req/s", ecrm_open, bare_open),
    ):
        p99, ratio = mine.pct(0.99), mine.pct(0.99) / base.pct(0.99)
        parts = [
            f"p99 <= {P99_GOAL_MS:.0f} ms: {'[green]met[/]' if p99 <= P99_GOAL_MS else '[yellow]not met[/]'}",
            f"<= {RATIO_GOAL:.0f}x bare: {'[green]met[/]' if ratio <= RATIO_GOAL else '[yellow]not met[/]'}",
        ]
        console.print(f"goal, {label}: {p99:.2f} ms, {ratio:.2f}x the bare p99 -> {'; '.join(parts)}")
    console.print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} at the end")
    shutil.rmtree(workdir, ignore_errors=True)
    if not args.keep:
        db_file.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(db_file) + suffix).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="decide() over HTTP vs bare Litestar, and the recommender refresh")
    p.add_argument("--customers", type=int, default=1_000_000, help="customers (1,000,000)")
    p.add_argument("--products", type=int, default=10_000, help="products (10,000)")
    p.add_argument("--interactions", type=int, default=10_000_000, help="purchases and product views (10,000,000)")
    p.add_argument("--requests", type=int, default=5_000, help="timed decide requests (5,000)")
    p.add_argument("--warmup", type=int, default=300, help="requests before timing (300)")
    p.add_argument("--concurrency", type=int, default=8, help="closed loop: connections sending back to back (8)")
    p.add_argument("--rate", type=float, default=200.0, help="open loop: requests per second offered (200)")
    p.add_argument("--open-seconds", type=float, default=15.0, help="open loop: seconds timed (15)")
    p.add_argument("--open-connections", type=int, default=32, help="open loop: at most this many connections (32)")
    p.add_argument("--k", type=int, default=10, help="items per decision (10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-refresh", action="store_true", help="reuse the stored lists when there are some")
    p.add_argument("--db", metavar="PATH", help="the SQLite file (default: one per scale in the temp dir)")
    p.add_argument(
        "--keep", action="store_true", help="keep the SQLite file; a later run with the same sizes reuses it"
    )
    p.add_argument("--serve", choices=("ecrm", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--generate", action="store_true", help="only generate (or check) the data, then stop")
    p.add_argument("--serve-db", help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.serve_db, args.body)
        return
    run(args)


if __name__ == "__main__":
    main()
