"""The admin's pages at scale: every page's p95 from a second process, and the
segment builder's live count.

The data are the segments benchmark's (``benchmarks/segments.py``): customers
with skewed activity (the top 1 % make 15 % of the interactions) over two
years, generated set-based in SQLite and bulk-loaded (the secondary indexes
built after the rows; kept and reused with ``--db``).  The
admin is served by uvicorn in a **separate process** (``--serve``); this
process logs in over loopback and requests each page ``--requests`` times,
one at a time, after ``--warmup`` requests.  Each page's latency is printed
with its ratio to the **same run's baseline**: a bare Litestar route in the
same server process answering a static page of the same size as the
dashboard (what serving a page costs without the admin's work).

The builder's figure: the time from a ``POST /segments/check`` (what htmx
sends 350 ms after the last keystroke) to its answer, for a few rules; the
admin abandons a count that takes more than ``--count-timeout`` seconds (the
config's ``count_timeout``) and says so, so the answer always comes within
it — the table shows whether the count itself made it.

    python benchmarks/admin.py                                  # 1,000,000 customers, 10,000,000 interactions
    python benchmarks/admin.py --customers 100000 --interactions 1000000 --db /tmp/admin-bench.db --keep
"""

from __future__ import annotations

import os
import sys

# benchmarks/email.py would shadow the standard library's ``email`` package
# (this script's folder comes first on sys.path): drop the folder first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import importlib.util
import json
import random
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
HERE = Path(__file__).resolve().parent
PASSWORD = "benchmark passphrase"
RULES = (
    'country == "KR"',
    "purchase.count(90d) >= 3",
    'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country in ("KR", "JP")',
    "purchase.count(90d) >= 3 and",  # a typo: the caret, no count
)


def segments_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_segments", HERE / "segments.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_segments"] = module
    spec.loader.exec_module(module)
    return module


def open_crm(path: Path) -> Any:
    import ecrm_admin.plugin

    from ecrm_core import CRM

    seg = segments_module()
    plugins: list[Any] = [ecrm_admin.plugin, seg.Attributes()]
    try:
        import ecrm_campaigns.plugin

        plugins.append(ecrm_campaigns.plugin)
    except ImportError:
        pass
    crm = CRM(f"sqlite:///{path}", plugins=plugins, load_entrypoints=False, live_segments=False, clock=lambda: seg.NOW)
    crm.upgrade()
    return crm


def prepare(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the data; add the admin user, a segment, an offer."""
    from ecrm_core.storage.schema import CORE_TABLES, Naming

    seg = segments_module()
    gen_args = argparse.Namespace(customers=args.customers, interactions=args.interactions, seed=args.seed)
    tables = {name: Naming().table(name) for name in CORE_TABLES}
    took = None
    if seg.stored_meta(path) != seg.wanted_meta(gen_args):
        took = seg.generate(path, gen_args, tables)
    crm = open_crm(path)
    from ecrm_admin import Users

    try:
        Users(crm).create("bench", PASSWORD, role="admin")
    except Exception:
        pass
    if "bench-kr" not in [s.slug for s in crm.segments.list()]:
        crm.segments.create("bench-kr", 'country == "KR"', name="Korea", refresh=False)
    if not crm.offers.list():
        crm.offers.create("welcome10", "Welcome 10 %")
    # The attribute the builder's rules filter on, indexed as a user with this many
    # customers would (`ecrm customers index country`); --no-attribute-index leaves it out.
    index_took = None
    if args.attribute_index and "country" not in crm.customers.indexes.list():
        t0 = time.perf_counter()
        crm.customers.indexes.create("country")
        index_took = time.perf_counter() - t0
    elif not args.attribute_index:
        crm.customers.indexes.drop("country")
    # customers to open: heavy ones (the top tier) and ordinary ones, at random
    rng = random.Random(args.seed)
    ids = [rng.randint(1, args.customers) for _ in range(50)]
    with crm.db.read() as conn:
        import sqlalchemy as sa

        i = crm.db.tables["interactions"]
        heavy = [
            r[0]
            for r in conn.execute(sa.select(i.c.customer_id).where(i.c.id > args.interactions - 20000).limit(200)).all()
        ][:50]
    crm.close()
    return {"generated": took, "customer_ids": ids + heavy, "index": index_took}


# ---------------------------------------------------------------------------
# the server process
# ---------------------------------------------------------------------------


def serve(db: str, port_file: str, count_timeout: float) -> None:
    import uvicorn
    from ecrm_admin import create_admin
    from litestar import Litestar, asgi, get
    from litestar.types import Receive, Scope, Send

    crm = open_crm(Path(db))
    admin = create_admin(crm, path="/admin", secret="bench", secure_cookies=False, count_timeout=count_timeout)
    bare_body = "<!DOCTYPE html>" + "x" * 12000

    @get("/bare", media_type="text/html", sync_to_thread=False)
    def bare() -> str:
        return bare_body

    @asgi("/admin", is_mount=True, copy_scope=True)
    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        await admin({**scope, "path": "/admin" + scope["path"], "root_path": ""}, receive, send)

    host = Litestar(route_handlers=[bare, mounted])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(host, log_level="warning", lifespan="off")).run(sockets=[sock])


# ---------------------------------------------------------------------------
# the client (this process)
# ---------------------------------------------------------------------------


def login(client: Any) -> str:
    import re

    page = client.get("/admin/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/admin/login", data={"_csrf": token, "username": "bench", "password": PASSWORD})
    assert r.status_code == 303, r.text
    home = client.get("/admin/")
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure(client: Any, path: str | list[str], n: int, warmup: int) -> tuple[list[float], int]:
    paths = path if isinstance(path, list) else [path]
    for k in range(warmup):
        client.get(paths[k % len(paths)])
    times, size = [], 0
    for k in range(n):
        started = time.perf_counter()
        r = client.get(paths[k % len(paths)])
        times.append(time.perf_counter() - started)
        if r.status_code != 200:
            raise RuntimeError(f"{paths[k % len(paths)]}: {r.status_code} {r.text[:300]}")
        size = len(r.content)
    return times, size


def run(args: argparse.Namespace) -> None:
    import httpx

    workdir = Path(tempfile.mkdtemp(prefix="ecrm-admin-bench-"))
    db = Path(args.db) if args.db else workdir / "admin.db"
    started = time.perf_counter()
    info = prepare(db, args)
    console.print(
        f"data: {args.customers:,} customers, {args.interactions:,} interactions in {db}"
        + (f" (generated in {info['generated']:.0f} s)" if info["generated"] else " (reused)")
    )
    console.print(
        "attribute index on country (crm.customers.indexes): "
        + ("off (--no-attribute-index)" if not args.attribute_index else "")
        + (f"built in {info['index']:.1f} s, not timed" if info["index"] is not None else "")
        + ("present (reused)" if args.attribute_index and info["index"] is None else "")
    )
    port_file = workdir / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--db",
            str(db),
            "--port-file",
            str(port_file),
            "--count-timeout",
            str(args.count_timeout),
        ],
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the admin server did not start")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(100):
                try:
                    client.get("/bare")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            csrf = login(client)
            cids = info["customer_ids"]
            pages: list[tuple[str, Any]] = [
                ("baseline: bare Litestar page, same server", "/bare"),
                ("dashboard /", "/admin/"),
                ("customers (first page)", "/admin/customers"),
                ("customers ?q=e-mail", [f"/admin/customers?q=customer{c}%40example.com" for c in cids]),
                ("customers ?segment=", "/admin/customers?segment=bench-kr"),
                ("360° view /customers/{id}", [f"/admin/customers/{c}" for c in cids]),
                ("segments", "/admin/segments"),
                ("segment builder /segments/new", "/admin/segments/new"),
                ("offers", "/admin/offers"),
                ("messages", "/admin/messages"),
                ("dead letters", "/admin/messages?status=dead"),
                ("plugins", "/admin/plugins"),
                ("users", "/admin/users"),
            ]
            probe = client.get("/admin/campaigns")
            if probe.status_code == 200:
                pages.append(("campaigns", "/admin/campaigns"))
            rows = []
            for label, path in pages:
                times, size = measure(client, path, args.requests, args.warmup)
                rows.append((label, times, size))
            builder = []
            for rule in RULES:
                answers = []
                for _ in range(args.builder_repeat):
                    t0 = time.perf_counter()
                    r = client.post(
                        "/admin/segments/check",
                        data={"rule": rule},
                        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
                    )
                    answers.append(time.perf_counter() - t0)
                text = r.text
                outcome = (
                    "error + caret"
                    if "rule-caret" in text
                    else "count abandoned (slow)"
                    if "Counting takes more" in text
                    else "count " + text.split('data-count="')[1].split('"')[0]
                    if 'data-count="' in text
                    else "?"
                )
                builder.append((rule, statistics.median(answers), max(answers), outcome))
    finally:
        server.terminate()
        server.wait(timeout=30)
    report(rows, builder, args, time.perf_counter() - started)
    if not args.keep and not args.db:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


def report(rows: list[Any], builder: list[Any], args: argparse.Namespace, total: float) -> None:
    base_p95 = pct(rows[0][1], 0.95)
    t = Table(title=f"admin pages: {args.requests} sequential requests each over loopback (p95 goal < 100 ms)")
    for col in ("page", "p50 ms", "p95 ms", "max ms", "p95 / baseline", "bytes", "goal"):
        t.add_column(col, justify="left" if col == "page" else "right")
    worst = 0.0
    for label, times, size in rows:
        p95 = pct(times, 0.95)
        if not label.startswith("baseline"):
            worst = max(worst, p95)
        t.add_row(
            label,
            f"{pct(times, 0.5) * 1000:.1f}",
            f"{p95 * 1000:.1f}",
            f"{max(times) * 1000:.1f}",
            f"{p95 / base_p95:.1f}",
            f"{size:,}",
            "" if label.startswith("baseline") else ("ok" if p95 < 0.1 else "MISSED"),
        )
    console.print(t)
    b = Table(title=f"segment builder: POST /segments/check, count_timeout {args.count_timeout} s (goal < 1 s)")
    for col in ("rule", "median s", "max s", "answer"):
        b.add_column(col)
    for rule, med, mx, outcome in builder:
        b.add_row(rule, f"{med:.3f}", f"{mx:.3f}", outcome)
    console.print(b)
    load = os.getloadavg()
    console.print(
        f"worst page p95: {worst * 1000:.1f} ms; baseline p95 {base_p95 * 1000:.2f} ms; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; {total:.0f} s in all"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "pages": {label: pct(times, 0.95) for label, times, _ in rows},
                    "builder": {rule: med for rule, med, _, _ in builder},
                }
            )
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="ecrm admin: page p95 from a second process, builder count latency")
    p.add_argument("--customers", type=int, default=1_000_000, help="customers (default 1,000,000)")
    p.add_argument("--interactions", type=int, default=10_000_000, help="interactions (default 10,000,000)")
    p.add_argument("--requests", type=int, default=200, help="timed requests per page (200)")
    p.add_argument("--warmup", type=int, default=20, help="requests per page before timing (20)")
    p.add_argument("--builder-repeat", type=int, default=5, help="checks per builder rule (5)")
    p.add_argument("--count-timeout", type=float, default=1.0, help="the admin's count_timeout (1.0 s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--db", default=None, help="the SQLite file (reused when it holds the same data)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument(
        "--no-attribute-index",
        dest="attribute_index",
        action="store_false",
        help="do not index attributes.country (the builder's country rules then read every customer)",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.db, args.port_file, args.count_timeout)
        return
    run(args)


if __name__ == "__main__":
    main()
