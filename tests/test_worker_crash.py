"""Crash safety of ``ecrm worker`` with a real SIGKILL.

A worker process delivers a few hundred messages through a channel that
appends every send it performs to a file (fsync'ed before the send is
reported back), so the file is the provider's durable record of what went
out.  The test SIGKILLs the worker in the middle of a batch, starts a new
one, lets it finish, stops it with SIGTERM and checks the pipeline's
documented guarantee (docs/worker.md, "Crash behaviour"):

* every message is delivered (status ``sent``; at least one send in the file);
* a message is sent more than once only if an attempt of it was in flight at
  the kill: that attempt is recorded as ``lost`` (its lease expired) and the
  resend carries the *same message id* (the provider's idempotency key);
* no attempt is ever performed twice, and every message has exactly one
  ``accepted`` attempt;
* only the one batch in flight can be affected (at most ``DELIVER_BATCH``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecrm_core.default_plugins.jobs import DELIVER_BATCH
from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import MemoryChannel

N = 300
LEASE = 2  # seconds: how long the restarted worker waits for the killed worker's batch

WORKER = textwrap.dedent(
    """
    import os, sys, time

    from ecrm_core.channels import DeliveryResult
    from ecrm_core.cli import main
    from ecrm_core.testing.channels import MemoryChannel

    LOG = os.environ["SENT_LOG"]

    class FileChannel(MemoryChannel):
        def send(self, message):
            fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{message.id} {message.attempt_id}\\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            time.sleep(0.004)
            return DeliveryResult.accepted(f"file-{message.id}")

    main(sys.argv[1:], plugins=[FileChannel(name="memory").plugin()], entrypoints=False)
    """
)


def _lines(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_delivers_everything_at_least_once_and_never_an_attempt_twice(tmp_path):
    db_path = tmp_path / "crash.db"
    crm = make_crm(db_path, plugins=[MemoryChannel(name="memory").plugin()])
    for n in range(N):
        c = crm.customers.create(email=f"c{n}@example.com", consent={"memory": "granted"})
        crm.messages.send("memory", c.id, {"body": f"hello {n}"}, purpose="transactional")
    uids = {m.id for m in crm.messages.list(limit=N)}
    assert len(uids) == N
    crm.close()

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    config = tmp_path / "ecrm.toml"
    config.write_text(f"[channels.memory.policy]\nlease = {LEASE}\nbackoff = 0\nmax_backoff = 0\n")
    log = tmp_path / "sent.log"
    env = {**os.environ, "SENT_LOG": str(log), "ECRM_DEBUG": "1"}
    args = [sys.executable, str(script), "--db", f"sqlite:///{db_path}", "--config", str(config), "worker"]
    args += ["--jobs", "messages.deliver"]

    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Kill in the middle of the second batch: some of its sends performed,
        # none of them recorded (the batch is recorded when it is complete).
        _wait(lambda: len(_lines(log)) >= DELIVER_BATCH + 30, 120, "the first worker to get going")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    at_kill = len(_lines(log))
    assert at_kill < N, "the worker finished before it was killed"

    second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:

        def settled() -> bool:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT count(*) FROM ecrm_messages WHERE status != 'sent'").scalar() == 0

        _wait(settled, 180, "the restarted worker to deliver the rest")
    finally:
        second.send_signal(signal.SIGTERM)  # a graceful stop this time
        _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert b"stopping after the current ticks" in err and b"worker stopped" in err

    sends = _lines(log)
    per_message = Counter(uid for uid, _ in sends)
    per_attempt = Counter(attempt for _, attempt in sends)
    with engine.connect() as conn:
        attempts = conn.exec_driver_sql(
            "SELECT m.uid, a.attempt_id, a.status FROM ecrm_delivery_attempts a "
            "JOIN ecrm_messages m ON m.id = a.message_id"
        ).all()
        statuses = Counter(r[0] for r in conn.exec_driver_sql("SELECT status FROM ecrm_messages"))
    engine.dispose()

    assert statuses == {"sent": N}
    assert set(per_message) == uids  # every message reached the provider
    assert max(per_attempt.values()) == 1  # no attempt was ever performed twice
    known_attempts = {a for _, a, _ in attempts}
    assert set(per_attempt) <= known_attempts  # every send belongs to a logged attempt
    accepted = Counter(uid for uid, _, status in attempts if status == "accepted")
    assert accepted == dict.fromkeys(uids, 1)  # exactly one accepted attempt per message
    lost = {uid for uid, _, status in attempts if status == "lost"}
    resent = {uid for uid, n in per_message.items() if n > 1}
    assert resent <= lost  # a duplicate only where an attempt was in flight at the kill
    assert all(n <= 2 for n in per_message.values())
    assert 0 < len(lost) <= DELIVER_BATCH  # one batch was in flight, no more
    assert len(sends) == N + len(resent)
