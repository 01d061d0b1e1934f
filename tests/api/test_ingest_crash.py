"""Exactly once through the inbox, with real SIGKILLs: of ``ecrm worker`` running
the processor mid-batch, and of the server under load (then the SDKs' resends)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ecrm_api import plugin as api_plugin

from ecrm_core.testing import make_crm

NOW = datetime.now(UTC).replace(microsecond=0)

WORKER = textwrap.dedent(
    """
    import sys
    from ecrm_api import plugin
    from ecrm_core.cli import main
    main(sys.argv[1:], plugins=[plugin], entrypoints=False)
    """
)

SERVER = textwrap.dedent(
    """
    import socket, sys
    import uvicorn
    from ecrm_api import plugin, create_app
    from ecrm_core import CRM

    crm = CRM(sys.argv[1], plugins=[plugin], load_entrypoints=False)
    app = create_app(crm, rate_limit=None, docs=False, secret=b"s" * 32)   # the processor runs in a thread
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[2])))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    """
)


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


def _messages(row: int, size: int) -> list[dict]:
    """A user's anonymous page, identify, then tracks (the identify stitches them)."""
    user = f"user-{row % 37}"
    out: list[dict] = [
        {"type": "page", "anonymousId": f"anon-{row}", "name": "Home", "messageId": f"r{row}-page"},
        {
            "type": "identify",
            "userId": user,
            "anonymousId": f"anon-{row}",
            "traits": {"plan": f"p{row}"},
            "messageId": f"r{row}-identify",
        },
    ]
    out += [
        {
            "type": "track",
            "userId": user,
            "event": "Product Viewed",
            "messageId": f"r{row}-t{i}",
            "timestamp": _iso(NOW - timedelta(minutes=i)),
            "properties": {"i": i},
        }
        for i in range(size - 2)
    ]
    return out


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _counts(engine: sa.Engine) -> tuple[int, int, Counter]:
    with engine.connect() as conn:
        inbox = conn.exec_driver_sql("SELECT count(*) FROM ecrm_ingest_inbox").scalar()
        rejected = conn.exec_driver_sql("SELECT count(*) FROM ecrm_ingest_rejected").scalar()
        keys = Counter(
            k for (k,) in conn.exec_driver_sql("SELECT idempotency_key FROM ecrm_interactions") if k is not None
        )
    return inbox, rejected, keys


@pytest.mark.slow
def test_sigkill_of_the_processor_mid_batch_loses_nothing_and_stores_nothing_twice(tmp_path: Path):
    db_path = tmp_path / "inbox.db"
    crm = make_crm(db_path, plugins=[api_plugin])
    rows, size = 240, 100
    expected: set[str] = set()
    with crm.db.write() as conn:
        for r in range(rows):
            batch = _messages(r, size)
            expected.update(f"segment:{m['messageId']}" for m in batch)
            conn.execute(
                crm.db.tables["ingest_inbox"].insert(),
                {
                    "workspace_id": "default",
                    "received_at": crm.now(),
                    "call": None,
                    "count": size,
                    "payload": json.dumps({"batch": batch, "sentAt": _iso(NOW)}).encode(),
                },
            )
    crm.close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [sys.executable, str(script), "--db", f"sqlite:///{db_path}", "worker", "--jobs", "ingest.process"]
    engine = sa.create_engine(f"sqlite:///{db_path}")
    env = {**os.environ, "ECRM_INGEST_BATCH": "2000"}  # 20 rows a tick: 12 ticks to kill into
    kills = 0
    for round_ in range(3):  # three workers killed at different points
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            start = _counts(engine)[2].total()
            _wait(lambda s=start: _counts(engine)[2].total() > s, 120, "the worker to commit a batch")
            time.sleep(0.05 + 0.15 * round_)  # then somewhere inside the next batch
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        if _counts(engine)[0] == 0:
            break
        kills += 1  # killed while rows were waiting: inside a tick (they follow each other at once)
    assert kills >= 1, "the first worker finished before it was killed"
    # the restarted worker drains the rest
    proc = subprocess.Popen([*args, "--once"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    inbox, rejected, keys = _counts(engine)
    assert (inbox, rejected) == (0, 0)
    assert set(keys) == expected and max(keys.values()) == 1, "an event was lost or stored twice"
    with engine.connect() as conn:
        customers = conn.exec_driver_sql("SELECT count(*) FROM ecrm_customers WHERE merged_into IS NULL").scalar()
    assert customers == 37  # every anonymous visitor stitched to their user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(script: Path, db: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(script), db, str(port)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start") from None
            time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_of_the_server_under_load_then_resends_store_every_event_exactly_once(tmp_path: Path):
    db_path = tmp_path / "server.db"
    crm = make_crm(db_path, plugins=[api_plugin])
    from ecrm_api import Keys

    token = Keys(crm).create("sdk", scopes=["ingest"]).token
    crm.close()
    db = f"sqlite:///{db_path}"
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = _free_port()
    bodies = [
        {
            "batch": [
                {
                    "type": "track",
                    "userId": f"u{(n * 7 + i) % 50}",
                    "event": "Product Viewed",
                    "messageId": f"{n}-{i}-{uuid.uuid4().hex[:6]}",
                    "properties": {"n": n},
                }
                for i in range(50)
            ]
        }
        for n in range(600)
    ]
    answered: dict[int, int] = {}
    lock = threading.Lock()
    next_body = iter(range(len(bodies)))

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(token, ""), timeout=10) as c:
            while True:
                with lock:
                    n = next(next_body, None)
                if n is None:
                    return
                try:
                    status = c.post("/v1/batch", json=bodies[n]).status_code
                except httpx.HTTPError:
                    status = 0  # the connection died with the server: the SDK retries it later
                with lock:
                    answered[n] = status

    server = _serve(script, db, port)
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: sum(1 for s in answered.values() if s == 200) >= 60, 120, "load to get going")
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
    for t in threads:
        t.join()
    ok = {n for n, s in answered.items() if s == 200}
    assert 0 < len(ok) < len(bodies), "the kill landed before or after the load"
    # restart; the SDKs resend what got no 200 -- and, to be hard, some that did
    server = _serve(script, db, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(token, ""), timeout=30) as c:
            for n in range(len(bodies)):
                if n not in ok or n % 5 == 0:
                    assert c.post("/v1/batch", json=bodies[n]).status_code == 200
        engine = sa.create_engine(db)
        _wait(lambda: _counts(engine)[0] == 0, 180, "the processor thread to drain the inbox")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    inbox, rejected, keys = _counts(engine)
    expected = {f"segment:{m['messageId']}" for b in bodies for m in b["batch"]}
    assert (inbox, rejected) == (0, 0)
    assert set(keys) == expected, f"{len(expected - set(keys))} events lost"
    assert max(keys.values()) == 1, "an event was stored twice"
    assert os.path.exists(db_path)
