"""Shared by the worker tests on SQLite and PostgreSQL (tests/test_worker*.py)."""

from __future__ import annotations

import threading
from typing import Any

from ecrm_core import CRM, JobContext, JobResult, JobSpec, hookimpl
from ecrm_core.testing.channels import FakeClock
from ecrm_core.worker import JobRunner, load_executor

WAIT = 15  # seconds a held tick waits for the other side before giving up


class HeldJob:
    """A plugin with one exclusive job whose tick waits inside until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[str] = []

    @hookimpl
    def ecrm_register_jobs(self) -> list[JobSpec]:
        return [JobSpec(name="probe.held", tick=self.tick, exclusive=True, every=60)]

    def tick(self, ctx: JobContext) -> JobResult:
        self.calls.append(ctx.workspace or "")
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the tick"
        return JobResult(done=1, message="held and released")


def exclusive_lease_scenario(first: CRM, second: CRM, clock: FakeClock) -> None:
    """Two workers (two engines, two runners) on one database: while the
    first is inside an exclusive tick, the second is refused (even forced);
    afterwards the shared schedule holds until the interval has passed."""
    probe = HeldJob()
    first.register_plugin(probe, name="probe")
    second.register_plugin(probe, name="probe")
    a, b = JobRunner(first), JobRunner(second)
    assert a.owner != b.owner
    outcome: dict[str, Any] = {}
    t = threading.Thread(target=lambda: outcome.setdefault("a", a.tick("probe.held", "default")))
    t.start()
    try:
        assert probe.entered.wait(WAIT)
        busy = b.tick("probe.held", "default")
        forced = b.tick("probe.held", "default", force=True)
        assert (busy.status, forced.status) == ("busy", "busy")
        [state] = b.states()
        assert state.lease_owner == a.owner and state.leased(second.now())
    finally:
        probe.release.set()
        t.join(WAIT)
    assert outcome["a"].status == "ran" and outcome["a"].result.done == 1
    assert probe.calls == ["default"]
    later = b.tick("probe.held", "default")
    assert later.status == "not_due" and 59 <= later.next_in <= 60  # the schedule is shared
    clock.advance(seconds=61)
    probe.release.set()
    assert b.tick("probe.held", "default").status == "ran"
    assert probe.calls == ["default", "default"]
    [state] = a.states()
    assert state.runs == 2 and state.lease_owner is None and state.failures == 0


class CountingExclusive:
    """An exclusive job that records how many of its ticks ever overlapped."""

    def __init__(self, target: int) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.ticks = 0
        self.target = target
        self.done = threading.Event()

    @hookimpl
    def ecrm_register_jobs(self) -> list[JobSpec]:
        return [JobSpec(name="probe.counting", tick=self.tick, exclusive=True, every=0.01)]

    def tick(self, ctx: JobContext) -> JobResult:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        threading.Event().wait(0.002)  # widen the window for an overlap
        with self.lock:
            self.active -= 1
            self.ticks += 1
            if self.ticks >= self.target:
                self.done.set()
        return JobResult(done=1)


def exclusive_stress(first: CRM, second: CRM, target: int = 25) -> CountingExclusive:
    """Two in-process executors of two threads each, on two engines, race for
    one exclusive job until it ran ``target`` times: never two ticks at once."""
    probe = CountingExclusive(target)
    first.register_plugin(probe, name="probe")
    second.register_plugin(probe, name="probe")
    cls = load_executor("inprocess")
    executors = [cls(JobRunner(crm, jobs=["probe.*"]), threads=2) for crm in (first, second)]
    threads = [threading.Thread(target=ex.run) for ex in executors]
    for t in threads:
        t.start()
    try:
        assert probe.done.wait(120), f"only {probe.ticks} ticks"
    finally:
        for ex in executors:
            ex.stop()
        for t in threads:
            t.join(30)
    assert probe.max_active == 1
    return probe
