"""A real SIGKILL of ``ecrm worker`` running campaign steps, at several points: the restarted worker
finishes every journey with exactly one outbox message per (customer, send step) — none lost, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_campaigns import campaigns, plugin

from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import MemoryChannel

N = 400

WORKER = textwrap.dedent(
    """
    import sys, time

    from ecrm_core.cli import main
    from ecrm_core.testing.channels import MemoryChannel

    import ecrm_campaigns.engine as engine
    from ecrm_campaigns import plugin

    engine.BATCH = 40      # small ticks: many commits to land a kill between
    engine.LEASE = 2.0     # a killed worker's claims come back after 2 s

    class Slow(MemoryChannel):
        def render(self, template, context, *, message_id, purpose):
            time.sleep(0.002)
            return super().render(template, context, message_id=message_id, purpose=purpose)

    main(sys.argv[1:], plugins=[plugin, Slow(name="capture", capabilities=("templates",)).plugin()],
         entrypoints=False)
    """
)

STEPS = [
    {"id": "one", "type": "send", "channel": "capture", "template": {"subject": "1", "body": "1"}, "next": "two"},
    {"id": "two", "type": "send", "channel": "capture", "template": {"subject": "2", "body": "2"}},
]


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(sql).scalar() or 0)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [25, 390, 610])
def test_sigkill_of_a_campaign_worker_loses_nothing_and_sends_nothing_twice(tmp_path: Path, kill_at: int) -> None:
    db = tmp_path / "crash.db"
    chan = MemoryChannel(name="capture", capabilities=("templates",))
    crm = make_crm(db, plugins=[plugin, chan.plugin()])
    svc = campaigns(crm)
    svc.save({"key": "crash", "name": "Crash", "trigger": {"type": "api"}, "holdout": 10, "steps": STEPS})
    svc.start("crash")
    ids = [r.id for r in [crm.customers.create(email=f"c{i}@x.org", consent={"capture": "granted"}) for i in range(N)]]
    report = svc.trigger("crash", ids)
    crm.close()

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [sys.executable, str(script), "--db", f"sqlite:///{db}", "worker", "--jobs", "campaigns.steps"]
    env = {**os.environ, "ECRM_DEBUG": "1"}
    engine = sa.create_engine(f"sqlite:///{db}")
    outbox = "SELECT count(*) FROM ecrm_messages"
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _count(engine, outbox) >= kill_at, 120, "the first worker to get going")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    assert _count(engine, outbox) < 2 * report.entered, "the worker finished before it was killed"

    second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(
            lambda: _count(engine, "SELECT count(*) FROM ecrm_campaign_enrollments WHERE status = 'active'") == 0,
            180,
            "the restarted worker to finish the journeys",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()

    with engine.connect() as conn:
        keys = Counter(r[0] for r in conn.exec_driver_sql("SELECT dedupe_key FROM ecrm_messages"))
        per = Counter(
            (r[0], r[1].split(".")[2])
            for r in conn.exec_driver_sql("SELECT customer_id, dedupe_key FROM ecrm_messages")
        )
        statuses = Counter(r[0] for r in conn.exec_driver_sql("SELECT status FROM ecrm_campaign_enrollments"))
    engine.dispose()
    assert statuses == {"done": report.entered, "holdout": report.held_out}
    assert set(keys.values()) == {1}  # none twice
    assert len(per) == 2 * report.entered and set(per.values()) == {1}  # none lost: both steps, every customer
