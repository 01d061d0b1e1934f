"""Benchmark of the REST API (ecrm-api) beside a bare Litestar app doing the same JSON work.

Run by hand (not a test)::

    python benchmarks/api.py                          # reference run
    python benchmarks/api.py --customers 2000 --events 20000 --requests 3000   # quick

Two measurements, each against the ecrm app and against a bare Litestar app,
one server at a time, each served by uvicorn in its OWN process (one worker)
and loaded from THIS process over loopback (a second process, as a client
would be):

* ingest accepted: ``POST /v1/batch`` with 100 Segment ``track`` events per
  request (each with a ``messageId``; Basic auth with an ``ingest`` write
  key, as the SDKs send it) for ``--ingest-seconds`` (30), the processor not
  running: a 200 means the messages are durably in the inbox.  The bare
  endpoint decodes the same JSON body, walks its events and answers the same
  small JSON document: no validation, no database.  Figure: events/s
  (goal >= 50,000).
* end to end (``--e2e-events``, 100,000 new events): the same server, and
  ``ecrm worker --jobs ingest.process`` in its own process; events/s from the
  first request to the last event visible in the interactions table, printed
  beside ``track_many``'s rate on the same rows (mapped the same way, in the
  processor's batch size) on a copy of the same database (goal >= 0.5x);
  then a paced load at half the accepted rate for ``--latency-seconds``
  (20): the time from each request's 200 to its events being visible
  (goal p99 <= 1 s).
* read: ``GET /customers/{id}`` (Bearer key with ``read``) on a SQLite file
  with ``--customers`` customers, random ids.  The bare endpoint returns the
  very JSON the ecrm app answered for that id (fetched first) from a dict:
  no auth, no database.  Figures: p50/p99 latency under ``--concurrency``
  keep-alive connections (goal: ecrm <= 1.5x bare).

The load generator is a minimal asyncio HTTP/1.1 client (pre-built request
bytes, Content-Length responses) so that the client costs little CPU; on a
2-core machine the server and the client each get about one core.
"""

from __future__ import annotations

import os
import sys

# benchmarks/email.py would shadow the standard library's ``email`` package
# (this script's folder comes first on sys.path): drop the folder first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import asyncio
import base64
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

EVENTS_PER_REQUEST = 100
INGEST_GOAL = 50_000
GET_GOAL = 1.5
DEFAULT_GET = "/customers/{id}"
FALLBACK_GET = "/customers/{id}/view?recent=0"
EVENT_NAMES = ("Product Viewed", "Product Added", "Order Completed", "Signed In", "Video Played")


# ---------------------------------------------------------------------------
# the servers (run in their own process: python benchmarks/api.py --serve ...)
# ---------------------------------------------------------------------------


def bare_app(bodies_file: Path) -> Any:
    """Litestar with the two endpoints and nothing else (no auth, no middleware, no database)."""
    import msgspec
    from litestar import Litestar, Request, get, post

    answers: dict[str, Any] = json.loads(bodies_file.read_text())

    @post("/v1/batch", status_code=200)
    async def batch(request: Request[Any, Any, Any]) -> dict[str, Any]:
        doc = msgspec.json.decode(await request.body())
        accepted = 0
        for message in doc["batch"]:
            if message.get("type") == "track" and message.get("messageId"):
                accepted += 1
        return {"success": True, "accepted": accepted, "duplicates": 0, "rejected": [], "notes": []}

    @get("/customers/{rest:path}")
    async def customer(request: Request[Any, Any, Any], rest: str) -> Any:
        query = request.scope["query_string"]
        return answers[request.scope["path"] + ("?" + query.decode() if query else "")]

    return Litestar(route_handlers=[batch, customer], debug=False)


MODES: dict[str, Any] = {"background": "background", "commit": True, "off": False}


def serve(kind: str, db: str, bodies: str | None, entrypoints: bool, live_segments: str = "background") -> None:
    import socket

    import uvicorn

    if kind == "ecrm":
        import ecrm_api.plugin
        from ecrm_api import create_app

        from ecrm_core import CRM

        crm = CRM(db, plugins=[ecrm_api.plugin], load_entrypoints=entrypoints, live_segments=MODES[live_segments])
        # The inbox is processed by `ecrm worker` in its own process (or not at
        # all while the accepted rate is measured); no backpressure limits.
        app = create_app(
            crm,
            rate_limit=None,
            docs=False,
            secret=b"b" * 32,
            ingest_processor="worker",
            ingest_max_depth=0,
            ingest_max_lag=0,
        )
    else:
        assert bodies is not None
        app = bare_app(Path(bodies))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[str]
    port: int

    @classmethod
    def start(
        cls, kind: str, db: str, bodies: Path | None, entrypoints: bool, live_segments: str = "background"
    ) -> Server:
        args = [sys.executable, __file__, "--serve", kind, "--db", db]
        if bodies is not None:
            args += ["--bodies", str(bodies)]
        if entrypoints:
            args.append("--entrypoints")
        args += ["--live-segments", live_segments]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            raise SystemExit(f"the {kind} server did not start")
        server = cls(kind, proc, int(line.split()[1]))
        server.wait_listening()
        return server

    def wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {self.kind} server did not start listening") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------
# the load generator: keep-alive HTTP/1.1 over asyncio streams
# ---------------------------------------------------------------------------


@dataclass
class Result:
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ns)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _load(
    port: int, requests: list[bytes], concurrency: int, *, keep_bodies: bool = False, warmup: int = 0
) -> Result:
    timed = requests[warmup:]
    queue = list(reversed(timed))
    warm = list(reversed(requests[:warmup]))
    result = Result(0.0)
    if keep_bodies:
        result.bodies = [b""] * len(timed)

    async def worker(jobs: list[bytes], record: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while jobs:
                index = len(jobs) - 1
                req = jobs.pop()
                t0 = time.perf_counter_ns()
                writer.write(req)
                status, body = await _read_response(reader)
                if record:
                    result.latencies_ns.append(time.perf_counter_ns() - t0)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if keep_bodies:
                        result.bodies[len(timed) - 1 - index] = body
        finally:
            writer.close()

    if warm:
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(queue, True) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def load(port: int, requests: list[bytes], concurrency: int, **kw: Any) -> Result:
    return asyncio.run(_load(port, requests, concurrency, **kw))


async def _load_for(port: int, requests: list[bytes], concurrency: int, seconds: float) -> tuple[Result, int]:
    """Send ``requests`` round and round for ``seconds``; (result, requests answered 200)."""
    result = Result(0.0)
    next_index = 0
    ok = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal next_index, ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                req = requests[next_index % len(requests)]
                next_index += 1
                t0 = time.perf_counter_ns()
                writer.write(req)
                status, _body = await _read_response(reader)
                result.latencies_ns.append(time.perf_counter_ns() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                ok += status == 200
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result, ok


async def _paced(port: int, requests: list[bytes], rate: float, concurrency: int) -> tuple[list[float], Result]:
    """Send request i at ``start + i / rate`` (requests per second); the time.time() of each 200."""
    result = Result(0.0)
    answered = [0.0] * len(requests)
    start = time.perf_counter()
    queue = list(range(len(requests) - 1, -1, -1))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                i = queue.pop()
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = time.perf_counter_ns()
                writer.write(requests[i])
                status, _body = await _read_response(reader)
                result.latencies_ns.append(time.perf_counter_ns() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    answered[i] = time.time()
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return answered, result


# ---------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------


def prepare(db: str, customers: int, entrypoints: bool) -> tuple[str, str]:
    """Customers ``user-1`` … on a fresh SQLite file; return (ingest token, read token)."""
    import ecrm_api.plugin
    from ecrm_api import Keys

    from ecrm_core import CRM

    with CRM(db, plugins=[ecrm_api.plugin], load_entrypoints=entrypoints) as crm:
        crm.upgrade()
        rows = (
            {"external_id": f"user-{i}", "email": f"user{i}@example.com", "name": f"User {i}"} for i in range(customers)
        )
        crm.customers.upsert_many(rows, batch_size=5000)
        keys = Keys(crm)
        return keys.create("bench-ingest", scopes=["ingest"]).token, keys.create("bench-read", scopes=["read"]).token


def batches(n_events: int, customers: int, seed: int) -> list[bytes]:
    """Segment batch bodies of 100 ``track`` events, each with its own messageId."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for start in range(0, n_events, EVENTS_PER_REQUEST):
        events = []
        for _ in range(min(EVENTS_PER_REQUEST, n_events - start)):
            name = rng.choice(EVENT_NAMES)
            props: dict[str, Any] = {
                "product_id": f"sku-{rng.randrange(5000)}",
                "price": rng.randrange(100, 10000) / 100,
            }
            if name == "Order Completed":
                props.update(order_id=uuid.UUID(int=rng.getrandbits(128)).hex, revenue=props["price"], currency="EUR")
            events.append(
                {
                    "type": "track",
                    "event": name,
                    "userId": f"user-{rng.randrange(customers)}",
                    "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                    "timestamp": (now - timedelta(seconds=rng.randrange(86400 * 30))).isoformat(),
                    "properties": props,
                    "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
                }
            )
        out.append(json.dumps({"batch": events, "sentAt": now.isoformat()}, separators=(",", ":")).encode())
    return out


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


@dataclass
class Figures:
    ingest: dict[str, Result] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    get: dict[str, Result] = field(default_factory=dict)
    #: CPU seconds the server process used during the timed ingest load.
    cpu: dict[str, float] = field(default_factory=dict)
    #: Size of the SQLite WAL right after the ingest (MB).
    wal_mb: float = 0.0


def _wal_mb(db_file: Path) -> float:
    wal = Path(f"{db_file}-wal")
    return wal.stat().st_size / 1e6 if wal.exists() else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; 0 elsewhere).

    On a loaded machine the wall-clock rates of both servers fall with what
    else runs; the server's CPU per event does not: accepted events per
    server CPU-second is what one core can take."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scalar(db_file: Path, sql: str, *params: Any) -> Any:
    import sqlite3

    conn = sqlite3.connect(db_file, timeout=60)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def _worker(db: str, entrypoints: bool = False) -> subprocess.Popen[bytes]:
    """``ecrm worker --jobs ingest.process`` in its own process, with the plugins
    the server and the ``track_many`` baseline have (the API plugin only, or
    every installed one with ``--entrypoints``): the same listeners on every side."""
    code = (
        "import sys; from ecrm_core.cli import main; main(sys.argv[1:])"
        if entrypoints
        else "import sys; import ecrm_api.plugin; from ecrm_core.cli import main; "
        "main(sys.argv[1:], plugins=[ecrm_api.plugin], entrypoints=False)"
    )
    args = [sys.executable, "-c", code, "--db", db, "worker", "--jobs", "ingest.process", "-q"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _last_keys(bodies: list[bytes]) -> dict[str, int]:
    """The idempotency key of each body's last event -> the body's index (a body is stored whole)."""
    return {"segment:" + json.loads(b)["batch"][-1]["messageId"]: i for i, b in enumerate(bodies)}


def end_to_end(
    console: Any,
    db_file: Path,
    args: argparse.Namespace,
    headers: dict[str, str],
    accepted_rate: float,
    workdir: Path,
    gateway_cpu_rate: float = 0.0,
) -> None:
    """The processor in its own process: events/s from the first request to the last event
    visible, beside track_many on the same rows; then the time from the 200 to visible."""
    import sqlite3
    import threading

    from rich.table import Table

    db = f"sqlite:///{db_file}"
    conn = sqlite3.connect(db_file, timeout=60)
    conn.execute("DELETE FROM ecrm_ingest_inbox")  # the accepted-rate run's (resent) bodies
    conn.commit()
    copy_file = workdir / "api-bench-copy.db"
    copy_file.unlink(missing_ok=True)
    with sqlite3.connect(copy_file) as dst:
        conn.backup(dst)
    floor_file = workdir / "api-bench-floor.db"
    floor_file.unlink(missing_ok=True)
    with sqlite3.connect(floor_file) as dst:
        conn.backup(dst)
    conn.close()
    bodies = batches(args.e2e_events, args.customers, args.seed + 3)
    n = len(bodies) * EVENTS_PER_REQUEST
    reqs = [request_bytes("POST", "/v1/batch", headers, b) for b in bodies]
    server = Server.start("ecrm", db, None, args.entrypoints, args.live_segments)
    worker = _worker(db, args.entrypoints)
    latencies: list[float] = []
    paced: Result | None = None
    try:
        before = _scalar(db_file, "SELECT count(*) FROM ecrm_interactions")
        _settled(worker.pid)  # its start-up (imports) is not the processor's CPU
        cpu0 = cpu_seconds(worker.pid)
        t0 = time.time()
        sent = load(server.port, reqs, args.ingest_concurrency)
        t_accepted = time.time()
        deadline = time.monotonic() + 600
        while _scalar(db_file, "SELECT count(*) FROM ecrm_interactions") < before + n:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the processor did not store every event")
            time.sleep(0.02)
        t_visible = time.time()
        worker_cpu = cpu_seconds(worker.pid) - cpu0
        # -- 200 -> visible, at half the accepted rate ---------------------
        rate = accepted_rate * args.latency_fraction / EVENTS_PER_REQUEST  # requests/s
        lat_bodies = batches(int(rate * args.latency_seconds) * EVENTS_PER_REQUEST, args.customers, args.seed + 4)
        last = _last_keys(lat_bodies)
        visible = [0.0] * len(lat_bodies)
        done = threading.Event()

        def poll() -> None:
            seen = _scalar(db_file, "SELECT coalesce(max(id), 0) FROM ecrm_interactions")
            c = sqlite3.connect(db_file, timeout=60)
            try:
                while not done.is_set():
                    now = time.time()
                    rows = c.execute(
                        "SELECT id, idempotency_key FROM ecrm_interactions WHERE id > ? ORDER BY id", (seen,)
                    ).fetchall()
                    for row_id, key in rows:
                        seen = row_id
                        i = last.get(key)
                        if i is not None:
                            visible[i] = now
                    c.commit()
                    time.sleep(0.01)
            finally:
                c.close()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        lat_reqs = [request_bytes("POST", "/v1/batch", headers, b) for b in lat_bodies]
        answered, paced = asyncio.run(_paced(server.port, lat_reqs, rate, max(4, args.ingest_concurrency)))
        deadline = time.monotonic() + 120
        while not all(visible[i] for i, a in enumerate(answered) if a) and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        poller.join()
        latencies = sorted(v - a for v, a in zip(visible, answered, strict=True) if a and v)
        lost = sum(1 for v, a in zip(visible, answered, strict=True) if a and not v)
    finally:
        _stop(worker)
        server.stop()
    # -- track_many on the same rows, same machine, same run ---------------
    tm_rate, tm_cpu_rate = _track_many_rate(f"sqlite:///{copy_file}", bodies, args)
    floor_rate, floor_cpu_rate = _floor_rate(copy_file, floor_file)
    copy_file.unlink(missing_ok=True)
    floor_file.unlink(missing_ok=True)
    e2e = n / (t_visible - t0)
    t = Table(title=f"end to end: {n:,} events, the processor (`ecrm worker`) in its own process")
    for c in ("figure", "value"):
        t.add_column(c, justify="left" if c == "figure" else "right")
    t.add_row("accepted (200s) in", f"{t_accepted - t0:.1f} s ({n / (t_accepted - t0):,.0f} events/s)")
    t.add_row("first request -> last event visible", f"{t_visible - t0:.1f} s")
    t.add_row("end to end events/s", f"{e2e:,.0f}")
    t.add_row("track_many on the same rows (same run)", f"{tm_rate:,.0f} events/s")
    t.add_row("end to end / track_many", f"{e2e / tm_rate:.2f}x (goal >= 0.5x)")
    t.add_row(
        "floor: raw sqlite3 executemany of the rows track_many stored (same tables and indexes, same batches)",
        f"{floor_rate:,.0f} events/s, {floor_cpu_rate:,.0f} per CPU-second (track_many {tm_rate / floor_rate:.2f}x of it)",
    )
    # What each costs in CPU (the machine's other load changes it much less).
    per_cpu = n / worker_cpu if worker_cpu > 0 else 0.0
    t.add_row(
        "processor events per CPU-second (its process, first request to last visible)",
        f"{per_cpu:,.0f} (track_many {tm_cpu_rate:,.0f}: {per_cpu / tm_cpu_rate:.2f}x)"
        if per_cpu
        else "not measurable (less than a clock tick)",
    )
    half = accepted_rate / 2
    need = f"> {half:,.0f} events/s while the gateway takes as much (floor alone: {floor_rate:,.0f}, " + (
        f"track_many alone: {tm_rate:,.0f})"
    )
    if per_cpu and gateway_cpu_rate:
        # CPU seconds per second the goal's load needs, at the CPU costs measured in this run.
        cores = half / gateway_cpu_rate + half / per_cpu
        floor_cores = half / gateway_cpu_rate + half / floor_cpu_rate
        need += (
            f"; CPU: gateway {half / gateway_cpu_rate:.2f} + processor {half / per_cpu:.2f} = {cores:.2f} cores "
            f"(with the processor at the floor: {floor_cores:.2f}) of {os.cpu_count() or 1}, beside the load generator"
        )
    t.add_row("processor drain rate the 200 -> visible goal needs (above half the accepted rate)", need)
    if paced is not None and latencies:
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        t.add_row(
            f"200 -> visible at {rate * EVENTS_PER_REQUEST:,.0f} events/s "
            f"({args.latency_fraction:g} of the accepted rate; the goal's figure at 0.5), "
            f"{len(latencies):,} requests",
            f"p50 {p(0.5):.3f} s, p99 {p(0.99):.3f} s, max {latencies[-1]:.3f} s (goal p99 <= 1 s)",
        )
        if lost:
            t.add_row("[red]answered 200 but not visible after 120 s[/]", str(lost))
    console.print(t)
    console.print(f"non-200 answers: {sent.statuses} / paced {paced.statuses if paced else {}}")


def _settled(pid: int, timeout: float = 20.0) -> None:
    """Wait until process ``pid`` stops using CPU (its start-up is over)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last < 0.03:
            return
        last = now


def _track_many_rate(db: str, bodies: list[bytes], args: argparse.Namespace) -> tuple[float, float]:
    """``crm.interactions.track_many`` on the rows the processor stores for ``bodies`` (mapped
    the same way), in batches of the processor's size; events/s and events per CPU-second."""
    import ecrm_api.plugin
    from ecrm_api.config import DEFAULT_EVENT_KINDS
    from ecrm_api.processor import MAX_EVENTS
    from ecrm_api.tracking import Tracker

    from ecrm_core import CRM

    with CRM(
        db, plugins=[ecrm_api.plugin], load_entrypoints=args.entrypoints, live_segments=MODES[args.live_segments]
    ) as crm:
        rows: list[dict[str, Any]] = []
        for b in bodies:
            doc = json.loads(b)
            parsed = Tracker(crm, event_kinds=DEFAULT_EVENT_KINDS).parse(doc["batch"])
            rows += [m.row for m in parsed.fast]
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(rows), MAX_EVENTS):
            chunk = rows[start : start + MAX_EVENTS]
            crm.interactions.track_many(chunk, on_error="skip", atomic=True, batch_size=len(chunk))
        return len(rows) / (time.perf_counter() - t0), len(rows) / max(1e-9, time.process_time() - c0)


def _floor_rate(stored_file: Path, floor_file: Path) -> tuple[float, float]:
    """What no Python work can beat: the exact rows ``track_many`` stored in
    ``stored_file``, inserted with the ``sqlite3`` module into ``floor_file``
    (a copy of the same database taken before: the same tables and indexes),
    in the processor's batch size, each batch a ``BEGIN IMMEDIATE`` ...
    ``INSERT ... ON CONFLICT DO NOTHING`` ... ``COMMIT`` as ``track_many``
    runs it; events/s and events per CPU-second."""
    import sqlite3

    from ecrm_api.processor import MAX_EVENTS

    from ecrm_core.services.tracking import _INSERT_COLUMNS

    cols = ", ".join(_INSERT_COLUMNS)
    with sqlite3.connect(stored_file) as src:
        first = src.execute("SELECT coalesce(max(id), 0) FROM ecrm_interactions").fetchone()[0]
    conn = sqlite3.connect(floor_file, isolation_level=None)
    try:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM ecrm_interactions").fetchone()[0]
        src = sqlite3.connect(stored_file)
        rows = src.execute(f"SELECT {cols} FROM ecrm_interactions WHERE id > ? ORDER BY id", (before,)).fetchall()
        src.close()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
        sql = (
            f"INSERT INTO ecrm_interactions ({cols}) VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)}) "
            "ON CONFLICT (workspace_id, idempotency_key) DO NOTHING"
        )
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(rows), MAX_EVENTS):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows[start : start + MAX_EVENTS])
            conn.execute("COMMIT")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        conn.close()
    assert rows and first > before, "track_many stored nothing to replay"
    return len(rows) / wall, len(rows) / max(1e-9, cpu)


def run(args: argparse.Namespace) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ecrm-api-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_file = workdir / "api-bench.db"
    if db_file.exists():
        db_file.unlink()
    db = f"sqlite:///{db_file}"
    cores = os.cpu_count() or 1
    plugins = "installed plugins loaded" if args.entrypoints else "api plugin only"
    live = args.live_segments
    console.print(
        f"[bold]ecrm API benchmark[/]: {cores} cores on this machine; the server (uvicorn, 1 worker) and the "
        "load generator (asyncio, this process) are separate processes sharing them"
    )
    console.print(f"ecrm server: {plugins}, live segments {live}, rate limit off, SQLite file")
    try:
        t0 = time.perf_counter()
        ingest_token, read_token = prepare(db, args.customers, args.entrypoints)
        console.print(f"setup: {args.customers:,} customers in {time.perf_counter() - t0:.1f} s ({db_file})")
        bodies = batches(args.events, args.customers, args.seed)
        warm_bodies = batches(args.warmup_events, args.customers, args.seed + 1)
        basic = "Basic " + base64.b64encode(f"{ingest_token}:".encode()).decode()
        ingest_headers = {"Authorization": basic, "Content-Type": "application/json"}
        rng = random.Random(args.seed + 2)
        ids = rng.sample(range(1, args.customers + 1), min(args.customers, 2000))
        get_ids = [rng.choice(ids) for _ in range(args.requests)]
        warm_ids = [rng.choice(ids) for _ in range(args.warmup)]
        get_template = args.get_path
        get_paths: list[str] = []
        warm_paths: list[str] = []

        figures = Figures()
        # -- ecrm --------------------------------------------------------
        server = Server.start("ecrm", db, None, args.entrypoints, args.live_segments)
        try:
            read_headers = {"Authorization": f"Bearer {read_token}"}
            distinct = sorted(set(ids))

            def fetch(template: str) -> Result:
                reqs = [request_bytes("GET", template.format(id=i), read_headers) for i in distinct]
                return load(server.port, reqs, 4, keep_bodies=True)

            fetched = fetch(get_template)
            if set(fetched.statuses) <= {404, 405} and get_template == DEFAULT_GET:
                get_template = FALLBACK_GET
                console.print(
                    f"[yellow]GET {DEFAULT_GET} is not served by this build: measuring GET {FALLBACK_GET} "
                    "instead (the same customer row, plus its empty summary)[/]"
                )
                fetched = fetch(get_template)
            if fetched.statuses.get(200) != len(distinct):
                raise SystemExit(f"GET {get_template} on the ecrm app answered {fetched.statuses}")
            answers = {get_template.format(id=i): json.loads(b) for i, b in zip(distinct, fetched.bodies, strict=True)}
            (workdir / "customers.json").write_text(json.dumps(answers))
            get_paths = [get_template.format(id=i) for i in get_ids]
            warm_paths = [get_template.format(id=i) for i in warm_ids]
            get_reqs = [request_bytes("GET", p, read_headers) for p in warm_paths + get_paths]
            figures.get["ecrm"] = load(server.port, get_reqs, args.concurrency, warmup=len(warm_paths))
            ingest_reqs = [request_bytes("POST", "/v1/batch", ingest_headers, b) for b in warm_bodies + bodies]
            load(server.port, ingest_reqs[: len(warm_bodies)], args.ingest_concurrency)
            timed = ingest_reqs[len(warm_bodies) :]
            cpu0 = cpu_seconds(server.proc.pid)
            figures.ingest["ecrm"], ok = asyncio.run(
                _load_for(server.port, timed, args.ingest_concurrency, args.ingest_seconds)
            )
            figures.cpu["ecrm"] = cpu_seconds(server.proc.pid) - cpu0
            figures.events["ecrm"] = ok * EVENTS_PER_REQUEST
            # The same GETs right after the ingest (the database just grew by
            # what was accepted; the WAL holds its last part).
            figures.wal_mb = _wal_mb(db_file)
            figures.get["ecrm after ingest"] = load(server.port, get_reqs, args.concurrency, warmup=len(warm_paths))
        finally:
            server.stop()
        accepted = figures.events["ecrm"]
        inbox_events = _scalar(db_file, "SELECT coalesce(sum(count), 0) FROM ecrm_ingest_inbox")
        # -- bare --------------------------------------------------------
        server = Server.start("bare", db, workdir / "customers.json", False)
        try:
            figures.get["bare"] = load(
                server.port,
                [request_bytes("GET", p, {}) for p in warm_paths + get_paths],
                args.concurrency,
                warmup=len(warm_paths),
            )
            bare_reqs = [
                request_bytes("POST", "/v1/batch", {"Content-Type": "application/json"}, b)
                for b in warm_bodies + bodies
            ]
            load(server.port, bare_reqs[: len(warm_bodies)], args.ingest_concurrency)
            cpu0 = cpu_seconds(server.proc.pid)
            figures.ingest["bare"], ok = asyncio.run(
                _load_for(server.port, bare_reqs[len(warm_bodies) :], args.ingest_concurrency, args.ingest_seconds)
            )
            figures.cpu["bare"] = cpu_seconds(server.proc.pid) - cpu0
            figures.events["bare"] = ok * EVENTS_PER_REQUEST
        finally:
            server.stop()

        report(console, figures, args, accepted, cores)
        console.print(f"in the inbox after the accepted-rate run: {inbox_events:,} events (every 200 is there)")
        if args.e2e_events:
            accepted_rate = figures.events["ecrm"] / figures.ingest["ecrm"].seconds
            gateway_cpu_rate = figures.events["ecrm"] / figures.cpu["ecrm"] if figures.cpu.get("ecrm") else 0.0
            end_to_end(console, db_file, args, ingest_headers, accepted_rate, workdir, gateway_cpu_rate)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.keep:
            db_file.unlink(missing_ok=True)


def report(console: Any, f: Figures, args: argparse.Namespace, accepted: int, cores: int) -> None:
    from rich.table import Table

    def bad(r: Result) -> str:
        other = {k: v for k, v in r.statuses.items() if k != 200}
        return f" [red]non-200: {other}[/]" if other else ""

    t = Table(
        title=f"ingest accepted: POST /v1/batch for {args.ingest_seconds:g} s, {EVENTS_PER_REQUEST} track events "
        f"per request ({args.events:,} distinct events sent round), {args.ingest_concurrency} connections"
    )
    for c in ("app", "events/s", "requests/s", "p50 ms", "p99 ms", "vs bare"):
        t.add_column(c, justify="right" if c != "app" else "left")
    e, b = f.ingest["ecrm"], f.ingest["bare"]
    ev = {k: f.events[k] / r.seconds for k, r in f.ingest.items()}
    for name, r in (("ecrm /v1/batch", e), ("bare Litestar", b)):
        key = "ecrm" if name.startswith("ecrm") else "bare"
        t.add_row(
            name + bad(r),
            f"{ev[key]:,.0f}",
            f"{r.requests / r.seconds:,.0f}",
            f"{r.pct(0.5):.2f}",
            f"{r.pct(0.99):.2f}",
            f"{ev['ecrm'] / ev['bare']:.2f}x" if key == "ecrm" else "",
        )
    console.print(t)
    if f.cpu.get("ecrm") and f.cpu.get("bare"):
        per = {k: f.events[k] / f.cpu[k] for k in ("ecrm", "bare")}
        console.print(
            f"server CPU: ecrm {f.cpu['ecrm']:.1f} s for {f.events['ecrm']:,} events "
            f"({per['ecrm']:,.0f} events per CPU-second), bare {f.cpu['bare']:.1f} s for {f.events['bare']:,} "
            f"({per['bare']:,.0f} per CPU-second): ecrm / bare = {per['ecrm'] / per['bare']:.2f}x "
            "(what one core takes, whatever else runs on the machine)"
        )
    goal = "[green]met[/]" if ev["ecrm"] >= INGEST_GOAL else "[yellow]not met[/]"
    console.print(
        f"goal: accepted >= {INGEST_GOAL:,} events/s -> {ev['ecrm']:,.0f} events/s, {goal}; "
        f"{accepted:,} events answered 200 (durably in the inbox)"
    )

    t = Table(
        title=f"read: GET /customers/{{id}}, {args.requests:,} requests, {args.concurrency} connections, "
        f"{args.customers:,} customers"
    )
    for c in ("app", "requests/s", "p50 ms", "p99 ms", "p50 vs bare", "p99 vs bare"):
        t.add_column(c, justify="right" if c != "app" else "left")
    e, b = f.get["ecrm"], f.get["bare"]
    t.add_row(
        "ecrm GET /customers/{id}" + bad(e),
        f"{e.requests / e.seconds:,.0f}",
        f"{e.pct(0.5):.2f}",
        f"{e.pct(0.99):.2f}",
        f"{e.pct(0.5) / b.pct(0.5):.2f}x",
        f"{e.pct(0.99) / b.pct(0.99):.2f}x",
    )
    after = f.get.get("ecrm after ingest")
    if after is not None:
        t.add_row(
            f"ecrm, right after the ingest (WAL {f.wal_mb:.0f} MB)" + bad(after),
            f"{after.requests / after.seconds:,.0f}",
            f"{after.pct(0.5):.2f}",
            f"{after.pct(0.99):.2f}",
            f"{after.pct(0.5) / b.pct(0.5):.2f}x",
            f"{after.pct(0.99) / b.pct(0.99):.2f}x",
        )
    t.add_row(
        "bare Litestar" + bad(b), f"{b.requests / b.seconds:,.0f}", f"{b.pct(0.5):.2f}", f"{b.pct(0.99):.2f}", "", ""
    )
    console.print(t)
    ratio = e.pct(0.5) / b.pct(0.5)
    goal = "[green]met[/]" if ratio <= GET_GOAL else "[yellow]not met[/]"
    line = f"goal: GET overhead <= {GET_GOAL}x bare (p50) -> {ratio:.2f}x, {goal}"
    if after is not None:
        late = after.pct(0.5) / b.pct(0.5)
        line += f"; right after the ingest {late:.2f}x, " + (
            "[green]met[/]" if late <= GET_GOAL else "[yellow]not met[/]"
        )
    console.print(line)
    console.print(
        f"machine: {cores} cores; server and load generator each about one core; figures vary by 10-20 % "
        "between runs on a small VM: compare runs from the same machine"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="ecrm REST API vs bare Litestar: ingest events/s and GET latency")
    p.add_argument("--customers", type=int, default=20_000, help="customers in the SQLite file (20,000)")
    p.add_argument("--events", type=int, default=100_000, help="events sent to /v1/batch (100,000)")
    p.add_argument("--warmup-events", type=int, default=2_000, help="events sent before timing (2,000)")
    p.add_argument("--requests", type=int, default=20_000, help="timed GET requests (20,000)")
    p.add_argument("--warmup", type=int, default=1_000, help="GET requests before timing (1,000)")
    p.add_argument("--concurrency", type=int, default=16, help="connections for the GET load (16)")
    p.add_argument("--ingest-concurrency", type=int, default=4, help="connections for the ingest load (4)")
    p.add_argument(
        "--get-path",
        default=DEFAULT_GET,
        help="the GET to time, {id} is a customer id (default %(default)s; "
        f"{FALLBACK_GET} is used when the build has no GET /customers/{{id}})",
    )
    p.add_argument("--entrypoints", action="store_true", help="load the installed plugins (e.g. ecrm-stats) too")
    p.add_argument(
        "--live-segments",
        choices=list(MODES),
        default="background",
        help="live segment/lifecycle refresh in the ecrm server: in a background thread (default, as in "
        "`ecrm serve`), at commit in the request, or off",
    )
    p.add_argument(
        "--no-live-segments",
        dest="live_segments",
        action="store_const",
        const="off",
        help="the same as --live-segments off",
    )
    p.add_argument("--ingest-seconds", type=float, default=30.0, help="how long the accepted rate is measured (30)")
    p.add_argument(
        "--e2e-events", type=int, default=100_000, help="events for the end-to-end run (100,000; 0: skip it)"
    )
    p.add_argument("--latency-seconds", type=float, default=20.0, help="how long the 200 -> visible load runs (20)")
    p.add_argument(
        "--latency-fraction",
        type=float,
        default=0.5,
        help="the 200 -> visible load, as a fraction of the accepted rate (0.5, the goal's figure; lower shows "
        "the latency when the processor keeps up)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--dir", default=None, help="where the SQLite file goes (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the SQLite file")
    p.add_argument("--serve", choices=["ecrm", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.db, args.bodies, args.entrypoints, args.live_segments)
        return
    if args.customers < 1 or args.events < EVENTS_PER_REQUEST or args.requests < 1:
        p.error("--customers >= 1, --events >= 100 and --requests >= 1")
    run(args)


if __name__ == "__main__":
    main()
