"""The one worker: the job hook, the runner (leases, failures), executors, ``ecrm worker``."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from worker_kit import exclusive_lease_scenario, exclusive_stress

from ecrm_core import CRM, JobContext, JobResult, JobSpec, PluginError, ValidationError, hookimpl
from ecrm_core.cli import make_cli
from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import FakeClock, MemoryChannel
from ecrm_core.worker import Executor, JobRunner, executor_names, load_executor
from ecrm_core.worker.inprocess import InProcessExecutor


class Queue:
    """A plugin job draining a list, three items a tick (a stand-in for an inbox)."""

    def __init__(self, items: int = 7) -> None:
        self.items = list(range(items))
        self.seen: list[tuple[str | None, int]] = []

    @hookimpl
    def ecrm_register_jobs(self):
        return [JobSpec(name="queue.drain", tick=self.tick, every=30, description="drain the test queue")]

    def tick(self, ctx: JobContext) -> JobResult:
        batch, self.items = self.items[:3], self.items[3:]
        self.seen.extend((ctx.workspace, i) for i in batch)
        return JobResult(done=len(batch), more=bool(self.items), message=f"{len(self.items)} left")


class Broken:
    @hookimpl
    def ecrm_register_jobs(self):
        def tick(ctx):
            raise RuntimeError("the provider is down")

        return [JobSpec(name="broken.always", tick=tick, every=5, max_backoff=60)]


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def test_ecrm_register_jobs(crm):
    assert {"messages.deliver", "segments.refresh"} <= set(crm.registry.jobs)
    assert (
        crm.registry.jobs["segments.refresh"].exclusive and crm.registry.jobs["segments.refresh"].plugin == "core.jobs"
    )
    assert not crm.registry.jobs["messages.deliver"].exclusive
    crm.register_plugin(Queue(), name="queue")
    spec = crm.registry.jobs["queue.drain"]
    assert (spec.plugin, spec.scope, spec.every, spec.exclusive) == ("queue", "workspace", 30.0, False)


def test_a_job_registered_twice_is_refused_naming_both_plugins(crm):
    crm.register_plugin(Queue(), name="queue")
    with pytest.raises(PluginError, match=r"job 'queue.drain' is registered twice: by plugins 'queue' and 'queue2'"):
        crm.register_plugin(Queue(), name="queue2")
    assert "queue2" not in crm.plugins.info  # nothing changed
    assert crm.registry.jobs["queue.drain"].plugin == "queue"


def test_a_plugin_cannot_replace_a_core_job(tmp_path):
    class Impostor:
        @hookimpl
        def ecrm_register_jobs(self):
            return [JobSpec(name="messages.deliver", tick=lambda ctx: None)]

    with pytest.raises(PluginError, match=r"by plugins 'core.jobs' and '.*Impostor'"):
        CRM(f"sqlite:///{tmp_path / 'x.db'}", load_entrypoints=False, plugins=[Impostor()])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "deliver"}, "name"),  # not dotted
        ({"name": "Messages.Deliver"}, "name"),
        ({"name": "a." + "b" * 70}, "name"),
        ({"name": "a.b", "every": 0}, "every"),
        ({"name": "a.b", "every": -1}, "every"),
        ({"name": "a.b", "every": True}, "every"),
        ({"name": "a.b", "lease": 0.5}, "lease"),
        ({"name": "a.b", "scope": "tenant"}, "scope"),
        ({"name": "a.b", "tick": "not callable"}, "tick"),
    ],
)
def test_bad_job_specs_name_the_field(kwargs, field):
    kwargs = {"tick": lambda ctx: None, **kwargs}
    with pytest.raises(ValidationError) as info:
        JobSpec(**kwargs)
    assert info.value.field == field


def test_bad_job_results_are_refused():
    with pytest.raises(ValidationError, match="done"):
        JobResult(done=-1)
    with pytest.raises(ValidationError, match="delay"):
        JobResult(delay=-5)


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------


def test_more_pending_ticks_again_at_once_and_idle_waits_its_interval(crm):
    queue = Queue(items=7)
    crm.register_plugin(queue, name="queue")
    runner = JobRunner(crm, jobs=["queue.*"])
    first = runner.tick("queue.drain", "default")
    assert (first.status, first.result.done, first.result.more, first.next_in) == ("ran", 3, True, 0.0)
    runner.tick("queue.drain", "default")
    last = runner.tick("queue.drain", "default")
    assert (last.result.done, last.result.more, last.next_in) == (1, False, 30.0)
    [state] = runner.states()
    assert (state.runs, state.total_done, state.last_done, state.last_message) == (3, 7, 1, "0 left")
    assert state.next_run_at == state.last_finished_at + timedelta(seconds=30)


def test_once_runs_every_job_for_every_workspace_until_idle(crm):
    queue = Queue(items=7)
    crm.register_plugin(queue, name="queue")
    runner = JobRunner(crm, jobs=["queue.drain"], workspaces=["default", "shop_kr"])
    ticks = []
    InProcessExecutor(runner, on_tick=ticks.append).run(once=True)
    # the list is shared, so both workspaces drain it between them: every item once
    assert sorted(i for _, i in queue.seen) == list(range(7))
    assert {o.workspace for o in ticks} == {"default", "shop_kr"}
    assert all(o.status == "ran" for o in ticks)


def test_a_failing_job_is_isolated_recorded_and_backed_off(crm_factory, caplog):
    clock = FakeClock()
    crm = crm_factory(clock=clock, plugins=[Broken()])
    queue = Queue(items=4)
    crm.register_plugin(queue, name="queue")
    runner = JobRunner(crm, jobs=["queue.*", "broken.*"])
    with caplog.at_level(logging.WARNING, logger="ecrm.worker"):
        InProcessExecutor(runner, threads=2).run(once=True)
    assert sorted(i for _, i in queue.seen) == [0, 1, 2, 3]  # the others went on
    states = {s.job: s for s in runner.states()}
    broken = states["broken.always"]
    assert (broken.runs, broken.failures) == (1, 1)
    assert broken.last_error == "RuntimeError: the provider is down" and broken.last_error_at == clock()
    assert broken.next_run_at == clock() + timedelta(seconds=5)  # max(every, 2 s)
    assert states["queue.drain"].failures == 0 and states["queue.drain"].last_error is None
    first_logs = [r for r in caplog.records if "broken.always" in r.getMessage()]
    assert len(first_logs) == 1 and "Traceback" in first_logs[0].getMessage()
    # again and again: the backoff grows to max_backoff, the log line gets short
    caplog.clear()
    waits = [runner.tick("broken.always", "default").next_in for _ in range(8)]
    assert waits == [5, 8, 16, 32, 60, 60, 60, 60]
    assert all("Traceback" not in r.getMessage() for r in caplog.records)
    [broken] = [s for s in runner.states() if s.job == "broken.always"]
    assert (broken.runs, broken.failures) == (9, 9)
    # a success resets the streak but keeps the last error for the record
    crm.unregister_plugin(next(n for n in crm.plugins.info if "Broken" in n))
    crm.register_plugin(
        type(
            "Fixed",
            (),
            {"ecrm_register_jobs": hookimpl(lambda self: [JobSpec(name="broken.always", tick=lambda ctx: None)])},
        )(),
        name="fixed",
    )
    runner = JobRunner(crm, jobs=["broken.*"])
    assert runner.tick("broken.always", "default").status == "ran"
    [broken] = runner.states()
    assert broken.failures == 0 and broken.last_error == "RuntimeError: the provider is down"


def test_a_tick_returning_garbage_is_a_recorded_failure(crm):
    class Garbage:
        @hookimpl
        def ecrm_register_jobs(self):
            return [JobSpec(name="garbage.job", tick=lambda ctx: 42)]

    crm.register_plugin(Garbage(), name="garbage")
    out = JobRunner(crm, jobs=["garbage.*"]).tick("garbage.job", "default")
    assert out.status == "failed" and "not a JobResult" in out.error


def test_exclusive_lease_between_two_workers_on_sqlite(tmp_path):
    clock = FakeClock()
    first = make_crm(tmp_path / "a.db", clock=clock)
    second = CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, clock=clock)
    try:
        assert first.db.engine is not second.db.engine
        exclusive_lease_scenario(first, second, clock)
    finally:
        first.close()
        second.close()


def test_exclusive_job_never_overlaps_under_two_concurrent_workers_on_sqlite(tmp_path):
    first = make_crm(tmp_path / "a.db")
    second = CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False)
    try:
        exclusive_stress(first, second)
    finally:
        first.close()
        second.close()


def test_a_lease_left_by_a_crashed_worker_expires(crm_factory):
    clock = FakeClock()
    crm = crm_factory(clock=clock)
    runner = JobRunner(crm, jobs=["segments.refresh"])
    spec = crm.registry.jobs["segments.refresh"]
    runner._ensure("segments.refresh", "default")
    assert runner._acquire(spec, "default", clock(), False) is None  # ...and the process dies here
    survivor = JobRunner(crm, jobs=["segments.refresh"])
    busy = survivor.tick("segments.refresh", "default")
    assert busy.status == "busy" and 0 < busy.next_in <= spec.lease
    clock.advance(seconds=spec.lease - 1)
    assert survivor.tick("segments.refresh", "default").status == "busy"
    clock.advance(seconds=2)
    took = survivor.tick("segments.refresh", "default")
    assert took.status == "ran"
    [state] = survivor.states()
    assert state.runs == 1 and state.lease_owner is None


def test_an_exclusive_lease_is_renewed_while_its_tick_runs(crm_factory):
    clock = FakeClock()
    crm = crm_factory(clock=clock)
    held = threading.Event()
    go = threading.Event()

    class Slow:
        @hookimpl
        def ecrm_register_jobs(self):
            def tick(ctx):
                held.set()
                assert go.wait(15)

            return [JobSpec(name="slow.job", tick=tick, exclusive=True, lease=3)]

    crm.register_plugin(Slow(), name="slow")
    runner = JobRunner(crm, jobs=["slow.*"])
    t = threading.Thread(target=runner.tick, args=("slow.job", "default"))
    t.start()
    try:
        assert held.wait(15)
        [before] = runner.states()
        clock.advance(seconds=2)
        deadline = threading.Event()
        for _ in range(100):  # the heartbeat renews every lease/3 = 1 s of real time
            [now] = runner.states()
            if now.lease_until > before.lease_until:
                break
            deadline.wait(0.1)
        assert now.lease_until == clock() + timedelta(seconds=3)
    finally:
        go.set()
        t.join(15)


def test_stop_lets_the_current_tick_finish_and_releases_the_lease(crm):
    inside = threading.Event()
    seen_stop = []

    class Long:
        @hookimpl
        def ecrm_register_jobs(self):
            def tick(ctx):
                inside.set()
                while not ctx.stopping():
                    threading.Event().wait(0.01)
                seen_stop.append(True)
                return JobResult(done=1, more=True)

            return [JobSpec(name="long.job", tick=tick, exclusive=True)]

    crm.register_plugin(Long(), name="long")
    runner = JobRunner(crm, jobs=["long.*"])
    ex = InProcessExecutor(runner)
    t = threading.Thread(target=ex.run)
    t.start()
    assert inside.wait(15)
    ex.stop()
    t.join(15)
    assert not t.is_alive() and seen_stop == [True]
    [state] = runner.states()
    assert state.runs == 1 and state.lease_owner is None and state.total_done == 1


def test_unknown_jobs_and_wrong_workspaces_are_clear_errors(crm):
    with pytest.raises(ValidationError, match=r"did you mean 'messages\.deliver'"):
        JobRunner(crm, jobs=["messages.deliverr"])
    with pytest.raises(ValidationError, match="exclude"):
        JobRunner(crm, exclude=["nope.*"])
    with pytest.raises(ValidationError, match="every"):
        JobRunner(crm, every={"nope.job": 5})
    runner = JobRunner(crm, exclude=["segments.*"])
    assert list(runner.jobs) == ["messages.deliver"]
    with pytest.raises(ValidationError, match="wrong for a workspace job"):
        runner.tick("messages.deliver", None)


def test_a_global_job_runs_once_for_the_database(crm):
    ran = []

    class Global:
        @hookimpl
        def ecrm_register_jobs(self):
            return [JobSpec(name="global.sweep", tick=lambda ctx: ran.append(ctx.workspace), scope="global")]

    crm.register_plugin(Global(), name="global")
    runner = JobRunner(crm, jobs=["global.*"], workspaces=["a", "b", "c"])
    assert runner.targets() == [("global.sweep", None)]
    InProcessExecutor(runner).run(once=True)
    assert ran == [None]
    [state] = runner.states()
    assert state.workspace is None and state.runs == 1


def test_messages_deliver_job_sends_the_outbox_in_batches(crm_factory):
    memory = MemoryChannel(name="memory")
    crm = crm_factory(plugins=[memory.plugin()])
    for n in range(250):
        c = crm.customers.create(email=f"c{n}@example.com", consent={"memory": "granted"})
        crm.messages.send("memory", c.id, {"body": "hi"}, purpose="transactional")
    ticks = []
    InProcessExecutor(JobRunner(crm, jobs=["messages.deliver"]), on_tick=ticks.append).run(once=True)
    assert [t.result.done for t in ticks] == [100, 100, 50]
    assert len(set(memory.delivered_ids)) == 250 == len(memory.delivered_ids)
    assert crm.messages.counts() == {"sent": 250}


def test_segments_refresh_job_follows_the_clock(crm_factory):
    clock = FakeClock()
    crm = crm_factory(clock=clock)
    c = crm.customers.create(email="a@example.com")
    crm.interactions.track("purchase", customer_id=c.id, amount="10", currency="EUR")
    crm.segments.create("recent", rule="purchase.count(30d) >= 1")
    assert crm.segments.count("recent") == 1
    clock.advance(days=31)
    runner = JobRunner(crm, jobs=["segments.refresh"], every={"segments.refresh": 300})
    out = runner.tick("segments.refresh", "default")
    assert out.status == "ran" and out.next_in == 300 and out.result.done >= 1
    assert crm.segments.count("recent") == 0


# ---------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------


def test_load_executor_default_and_unknown():
    assert load_executor("inprocess") is InProcessExecutor
    assert "inprocess" in executor_names()
    with pytest.raises(ValidationError, match="did you mean 'inprocess'"):
        load_executor("inproces")


@pytest.fixture
def installed_executors(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    (site / "fake_executors.py").write_text(
        textwrap.dedent(
            """
            from ecrm_core.worker import Executor

            class Recording(Executor):
                name = "recording"
                def run(self, *, once=False):
                    self.ran = [self.runner.tick(j, w) for j, w in self.runner.targets()]
            """
        )
    )
    (site / "broken_executor.py").write_text("raise ImportError('must never be imported')\n")
    info = site / "fake_executors-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-executors\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[ecrm.executors]\nrecording = fake_executors:Recording\nbroken = broken_executor:Broken\n"
    )
    import importlib

    from stevedore import ExtensionManager

    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    yield
    sys.modules.pop("fake_executors", None)
    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()


def test_an_installed_executor_is_loaded_by_name_only(installed_executors, crm):
    cls = load_executor("recording")
    assert issubclass(cls, Executor) and "broken_executor" not in sys.modules
    assert {"recording", "broken", "inprocess"} <= set(executor_names())
    ex = cls(JobRunner(crm, jobs=["messages.deliver"]))
    ex.run()
    assert [o.status for o in ex.ran] == ["ran"]


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path) -> str:
    make_crm(tmp_path / "cli.db").close()
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_ecrm_worker_once_runs_a_plugin_job(db):
    queue = Queue(items=10)
    cli = make_cli(plugins=[queue], entrypoints=False)
    result = CliRunner().invoke(cli, ["--db", db, "worker", "--once", "--jobs", "queue.*"])
    assert result.exit_code == 0, result.output
    assert sorted(i for _, i in queue.seen) == list(range(10))
    assert "queue.drain [default] 3 done" in result.stderr and "4 tick(s), 10 item(s) done" in result.stderr
    status = CliRunner().invoke(cli, ["--db", db, "worker", "status", "--json"])
    docs = {d["job"]: d for d in map(json.loads, status.stdout.splitlines())}
    assert docs["queue.drain"]["runs"] == 4 and docs["queue.drain"]["total_done"] == 10
    assert docs["queue.drain"]["lease_owner"] is None and docs["queue.drain"]["last_error"] is None


def test_ecrm_worker_once_exits_1_when_a_job_failed_and_status_shows_it(db):
    cli = make_cli(plugins=[Broken()], entrypoints=False)
    result = CliRunner().invoke(cli, ["--db", db, "worker", "--once", "--exclude", "segments.*"])
    assert result.exit_code == 1
    assert "broken.always [default] failed: RuntimeError: the provider is down" in result.stderr
    table = CliRunner().invoke(cli, ["--db", db, "worker", "status"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "the provider is down" in table.output and "messages.deliver" in table.output


def test_ecrm_worker_jobs_lists_what_is_registered_and_by_whom(db):
    cli = make_cli(plugins=[Queue()], entrypoints=False)
    result = CliRunner().invoke(cli, ["--db", db, "worker", "jobs", "--json"])
    docs = {d["name"]: d for d in map(json.loads, result.stdout.splitlines())}
    assert docs["queue.drain"]["plugin"].endswith("Queue") or docs["queue.drain"]["plugin"]
    assert docs["segments.refresh"] == {
        "name": "segments.refresh",
        "plugin": "core.jobs",
        "scope": "workspace",
        "every": 900.0,
        "exclusive": True,
        "lease": 600.0,
        "description": docs["segments.refresh"]["description"],
    }
    table = CliRunner().invoke(cli, ["--db", db, "worker", "jobs"], env={"COLUMNS": "250"})
    assert "messages.deliver" in table.output and "core.jobs" in table.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "mesages.*"], "did you mean 'messages.deliver'"),
        (["--executor", "celry"], "unknown executor"),
        (["--every", "segments.refresh"], "use JOB=SECONDS"),
        (["--every", "segments.refresh=-3"], "every[segments.refresh]"),
        (["--threads", "0"], "0"),
    ],
)
def test_ecrm_worker_bad_options_are_clear(db, args, message):
    result = CliRunner().invoke(make_cli(entrypoints=False), ["--db", db, "worker", "--once", *args])
    assert result.exit_code != 0 and message in result.output


def test_ecrm_worker_needs_the_schema(tmp_path):
    result = CliRunner().invoke(
        make_cli(entrypoints=False), ["--db", f"sqlite:///{tmp_path / 'empty.db'}", "worker", "--once"]
    )
    assert result.exit_code == 1 and "ecrm db upgrade" in result.output


def test_ecrm_worker_help_teaches_with_examples():
    result = CliRunner().invoke(make_cli(entrypoints=False), ["worker", "--help"])
    assert result.exit_code == 0
    for text in ("ecrm worker --once", "--jobs 'messages.*'", "ecrm worker status", "--all-workspaces"):
        assert text in result.output


def test_all_workspaces_serves_every_tenant(db):
    crm = CRM(db, load_entrypoints=False)
    crm.in_workspace("shop_kr").customers.create(email="k@example.com")
    crm.in_workspace("shop_de").customers.create(email="d@example.com")
    crm.close()
    queue = Queue(items=0)
    result = CliRunner().invoke(
        make_cli(plugins=[queue], entrypoints=False),
        ["--db", db, "worker", "--once", "--all-workspaces", "--jobs", "queue.*"],
    )
    assert result.exit_code == 0, result.output
    status = CliRunner().invoke(
        make_cli(plugins=[queue], entrypoints=False), ["--db", db, "worker", "status", "--json"]
    )
    assert {json.loads(line)["workspace"] for line in status.stdout.splitlines()} == {"default", "shop_kr", "shop_de"}


def test_import_of_ecrm_core_stays_light():
    import subprocess

    code = "import sys, ecrm_core; print(sorted(m for m in sys.modules if m.startswith('ecrm_core.worker')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
