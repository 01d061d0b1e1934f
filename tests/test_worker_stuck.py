"""A tick that never returns does not stop the other jobs (review, round 25).

With the default ``--threads 1``, one plugin's tick that hangs (a network
call without a timeout, a loop that never ends) held the executor's only
thread: every other job of every plugin and workspace stopped, and nothing
said why.  Each case of the corpus is a way a handler hangs; with each, the
other jobs must go on, the stuck one be recorded (``last_error``), never be
ticked twice at once, and ``run(once=True)`` return.
"""

from __future__ import annotations

import threading
import time

import pytest

from ecrm_core import JobContext, JobResult, JobSpec, ValidationError, hookimpl
from ecrm_core.worker import JobRunner
from ecrm_core.worker.inprocess import InProcessExecutor


class Queue:
    def __init__(self) -> None:
        self.items = list(range(7))
        self.seen: list[int] = []

    @hookimpl
    def ecrm_register_jobs(self):
        return [JobSpec(name="queue.drain", tick=self.tick, every=30)]

    def tick(self, ctx: JobContext) -> JobResult:
        batch, self.items = self.items[:3], self.items[3:]
        self.seen.extend(batch)
        return JobResult(done=len(batch), more=bool(self.items))


def _waits(release: threading.Event) -> None:
    release.wait(120)


def _spins(release: threading.Event) -> None:
    while not release.is_set():
        sum(range(1000))


def _sleeps_in_steps(release: threading.Event) -> None:
    while not release.wait(0.01):
        time.sleep(0.01)


HANGS = {"blocked on a call": _waits, "a busy loop": _spins, "sleeping in steps": _sleeps_in_steps}


class Hang:
    def __init__(self, how, exclusive: bool) -> None:
        self.how, self.exclusive = how, exclusive
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    @hookimpl
    def ecrm_register_jobs(self):
        # "a.hang" sorts first: it is the first tick the executor takes
        return [JobSpec(name="a.hang", tick=self.tick, every=0.01, exclusive=self.exclusive)]

    def tick(self, ctx: JobContext) -> JobResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.how(self.release)
        finally:
            with self.lock:
                self.running -= 1
        return JobResult(done=1)


@pytest.mark.parametrize("exclusive", [False, True], ids=["plain", "exclusive"])
@pytest.mark.parametrize("how", list(HANGS.values()), ids=list(HANGS))
def test_a_stuck_tick_does_not_stop_the_other_jobs(crm, how, exclusive) -> None:
    hang, queue = Hang(how, exclusive), Queue()
    crm.register_plugin(hang, name="hang")
    crm.register_plugin(queue, name="queue")
    runner = JobRunner(crm, jobs=["a.hang", "queue.drain"])
    executor = InProcessExecutor(runner, threads=1, stall=0.3)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (executor.run(once=True), done.set()), daemon=True)
    try:
        worker.start()
        assert done.wait(60), "run(once=True) waited for the stuck tick"
        assert sorted(queue.seen) == list(range(7)), "the other job did not run while one tick was stuck"
        assert hang.running == 1 and hang.most == 1  # still stuck, never ticked twice at once
        [state] = [s for s in runner.states() if s.job == "a.hang"]
        assert state.last_error and state.last_error.startswith("stuck:"), state.last_error
    finally:
        hang.release.set()
    deadline = time.monotonic() + 30
    while hang.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hang.running == 0


def test_a_stuck_tick_keeps_the_thread_count(crm) -> None:
    """Once the stuck tick returns, its thread ends: the executor does not grow by one per stuck tick."""
    hang, queue = Hang(_waits, False), Queue()
    crm.register_plugin(hang, name="hang")
    crm.register_plugin(queue, name="queue")
    executor = InProcessExecutor(JobRunner(crm, jobs=["a.hang", "queue.drain"]), threads=1, stall=0.2)
    worker = threading.Thread(target=executor.run, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(queue.seen) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(queue.seen) == list(range(7))
        hang.release.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(t.is_alive() for t in executor._threads) > 1:
            time.sleep(0.05)
        assert sum(t.is_alive() for t in executor._threads) == 1
    finally:
        hang.release.set()
        executor.stop()
        worker.join(30)
    assert not worker.is_alive()


@pytest.mark.parametrize("bad", [0, -1, True, "600", float("nan"), float("inf")])
def test_stall_is_checked(crm, bad) -> None:
    with pytest.raises(ValidationError, match="stall"):
        InProcessExecutor(JobRunner(crm), stall=bad)


# -- a tick that raises what is not an Exception ---------------------------------------------------


class Doom(BaseException):
    """A plugin's own BaseException subclass."""


def _exit(ctx):
    import sys

    sys.exit("a library called sys.exit")


def _cancelled(ctx):
    import asyncio

    raise asyncio.CancelledError()


def _generator_exit(ctx):
    raise GeneratorExit()


def _doom(ctx):
    raise Doom("doomed")


POISON = {"SystemExit": _exit, "CancelledError": _cancelled, "GeneratorExit": _generator_exit, "Doom": _doom}


@pytest.mark.parametrize("exclusive", [False, True], ids=["plain", "exclusive"])
@pytest.mark.parametrize("tick", list(POISON.values()), ids=list(POISON))
def test_a_tick_raising_a_base_exception_fails_alone(crm, tick, exclusive) -> None:
    """Before, the exception left the executor's thread: the worker stopped ("the worker loop failed"),
    the other jobs never ran and the job's row said nothing."""
    queue = Queue()

    class Poison:
        @hookimpl
        def ecrm_register_jobs(self):
            return [JobSpec(name="a.poison", tick=tick, every=5, exclusive=exclusive)]

    crm.register_plugin(Poison(), name="poison")
    crm.register_plugin(queue, name="queue")
    runner = JobRunner(crm, jobs=["a.poison", "queue.drain"])
    InProcessExecutor(runner, threads=1).run(once=True)
    assert sorted(queue.seen) == list(range(7))
    [state] = [s for s in runner.states() if s.job == "a.poison"]
    assert state.failures == 1 and state.last_error.startswith(type_name(tick)), state.last_error
    assert state.lease_owner is None  # an exclusive job's lease is given back


def type_name(tick) -> str:
    return next(k for k, v in POISON.items() if v is tick)


def test_ctrl_c_still_interrupts_a_tick(crm) -> None:
    def interrupted(ctx):
        raise KeyboardInterrupt

    class Job:
        @hookimpl
        def ecrm_register_jobs(self):
            return [JobSpec(name="a.interrupted", tick=interrupted, exclusive=True)]

    crm.register_plugin(Job(), name="job")
    runner = JobRunner(crm, jobs=["a.interrupted"])
    with pytest.raises(KeyboardInterrupt):
        runner.tick("a.interrupted", "default")
    [state] = runner.states()
    assert state.failures == 0 and state.lease_owner is None
