"""``ecrm worker …``: the one worker (delivery, refreshes and every plugin's jobs)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from .base import CONTEXT_SETTINGS, State

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM
    from ..worker import Executor, JobRunner, JobState, TickOutcome

__all__ = ["worker_group"]

WORKER_HELP = """Run the jobs of the core and of every plugin: delivery, refreshes, campaign steps, ingest…

\b
One worker, many jobs: each plugin registers kinds of job (`ecrm worker jobs` lists them);
the worker ticks each job for each workspace, again at once while it reports more work,
else after its interval.  Run as many workers as you like: exclusive jobs take a lease in
the database, the others claim their rows.  Ctrl-C or SIGTERM stops it after the current
ticks (a second Ctrl-C kills it).
\b
Examples:
  ecrm worker                                   run every job until stopped
  ecrm worker --once                            run what is due until idle, then exit (cron, tests)
  ecrm worker --jobs 'messages.*'               only the delivery jobs
  ecrm worker --exclude segments.refresh        everything but the scheduled refresh
  ecrm worker --every segments.refresh=300      refresh segments every 5 minutes
  ecrm worker --all-workspaces --threads 4      every tenant, four ticks at a time
  ecrm --workspace shop_kr worker               one tenant (the global --workspace)
  ecrm worker status                            last run, lag, errors and leases per job
  ecrm worker jobs                              what is registered, by which plugin
"""


def _patterns(values: Sequence[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _intervals(values: Sequence[str], config: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    conf = (config.get("worker") or {}).get("every") or {}
    if not isinstance(conf, dict):
        raise click.BadParameter("[worker.every] in the config file must be a table of job = seconds")
    out.update({str(k): v for k, v in conf.items()})
    for item in values:
        job, sep, seconds = item.partition("=")
        try:
            out[job.strip()] = float(seconds)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{item!r}: use JOB=SECONDS, e.g. segments.refresh=300", param_hint="--every")
    return out


def _workspaces(state: State, crm: CRM, all_workspaces: bool) -> Any:
    if not all_workspaces:
        return [state.workspace]
    from ..worker import discover_workspaces

    def current() -> list[str]:
        return sorted(set(discover_workspaces(crm)) | {state.workspace})

    return current


def _check_tables(crm: CRM) -> None:
    import sqlalchemy as sa

    crm.db.check_schema()
    with crm.db.read() as conn:
        present = sa.inspect(conn).has_table(crm.db.tables["jobs"].name, schema=crm.db.naming.schema)
    if not present:
        raise click.ClickException("the worker's table is missing: run `ecrm db upgrade` first")


def _runner(
    state: State,
    jobs: Sequence[str],
    exclude: Sequence[str],
    every: Sequence[str],
    all_workspaces: bool,
) -> JobRunner:
    from ..worker import JobRunner

    crm = state.crm()
    _check_tables(crm)
    include = _patterns(jobs) or None
    return JobRunner(
        crm,
        jobs=include,
        exclude=_patterns(exclude),
        workspaces=_workspaces(state, crm, all_workspaces),
        every=_intervals(every, state.config),
    )


@contextmanager
def _stop_on_signals(executor: Executor, state: State) -> Iterator[None]:
    """SIGINT/SIGTERM stop the executor gracefully; a second one acts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        executor.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
        state.err.print(f"{signal.Signals(signum).name}: stopping after the current ticks")

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _line(outcome: TickOutcome) -> str | None:
    from rich.markup import escape

    where = escape(f"[{outcome.workspace}]" if outcome.workspace else "[global]")
    clock = datetime.now().strftime("%H:%M:%S")
    if outcome.status == "failed":
        return f"{clock} [red]{outcome.job}[/] {where} failed: {escape(outcome.error or '')} (retry in {outcome.next_in:.0f} s)"
    result = outcome.result
    if outcome.status != "ran" or result is None or not (result.done or (result.message and result.more)):
        return None
    more = " (more)" if result.more else ""
    detail = f": {escape(result.message)}" if result.message else ""
    return f"{clock} {outcome.job} {where} {result.done} done in {outcome.seconds:.2f} s{more}{detail}"


@click.group("worker", context_settings=CONTEXT_SETTINGS, help=WORKER_HELP, invoke_without_command=True)
@click.option(
    "--jobs",
    "jobs",
    multiple=True,
    metavar="PATTERNS",
    help="Only these jobs: names or patterns, comma-separated or repeated, e.g. --jobs 'messages.*'.",
)
@click.option(
    "--exclude", multiple=True, metavar="PATTERNS", help="Leave these jobs out, e.g. --exclude segments.refresh."
)
@click.option(
    "--once", is_flag=True, help="Run every due job until it is idle, then exit (exit code 1 if a tick failed)."
)
@click.option(
    "--executor",
    default="inprocess",
    show_default=True,
    help="The executor driver (entry points 'ecrm.executors'), e.g. a distributed one.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="Ticks run at the same time.")
@click.option(
    "--every",
    multiple=True,
    metavar="JOB=SECONDS",
    help="Idle interval of a job, e.g. --every segments.refresh=300 (also [worker.every] in --config).",
)
@click.option(
    "--all-workspaces",
    is_flag=True,
    help="Serve every workspace that has customers (re-read every minute), not only --workspace.",
)
@click.option(
    "--stall",
    type=click.FloatRange(0.01, 366 * 86400),
    default=600.0,
    show_default=True,
    help="Seconds after which a running tick is stuck: recorded, and the other jobs go on in a new thread.",
)
@click.option("--quiet", "-q", is_flag=True, help="No line per tick; only start, stop and failures.")
@click.pass_context
def worker_cmd(
    ctx: click.Context,
    jobs: tuple[str, ...],
    exclude: tuple[str, ...],
    once: bool,
    executor: str,
    threads: int,
    every: tuple[str, ...],
    all_workspaces: bool,
    stall: float,
    quiet: bool,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    from ..worker import load_executor

    cls = load_executor(executor)
    runner = _runner(state, jobs, exclude, every, all_workspaces)
    if not runner.jobs:
        raise click.ClickException("no job selected (see `ecrm worker jobs`)")
    totals = {"ticks": 0, "done": 0, "failed": 0}
    lock = threading.Lock()

    def on_tick(outcome: TickOutcome) -> None:
        with lock:
            if outcome.status in ("ran", "failed"):
                totals["ticks"] += 1
            if outcome.result is not None:
                totals["done"] += outcome.result.done
            if outcome.status == "failed":
                totals["failed"] += 1
        line = _line(outcome)
        if line and (not quiet or outcome.status == "failed"):
            state.err.print(line)

    ex = cls(runner, threads=threads, on_tick=on_tick, stall=stall)
    names = ", ".join(runner.jobs)
    scope = "every workspace" if all_workspaces else f"workspace {state.workspace!r}"
    state.err.print(
        f"worker {runner.owner} ({cls.name or executor}, {threads} thread(s)) on {state.where()}: "
        f"{names} for {scope}" + ("" if once else "; Ctrl-C stops it")
    )
    with _stop_on_signals(ex, state):
        ex.run(once=once)
    state.err.print(
        f"worker stopped: {totals['ticks']} tick(s), {totals['done']} item(s) done, {totals['failed']} failure(s)"
    )
    if once and totals["failed"]:
        ctx.exit(1)


def worker_group() -> click.Group:
    """The ``ecrm worker`` group (run, ``status``, ``jobs``)."""
    return worker_cmd


def _ago(now: datetime, when: datetime | None) -> str:
    if when is None:
        return "never"
    return f"{_duration((now - when).total_seconds())} ago"


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _state_doc(s: JobState, now: datetime) -> dict[str, Any]:
    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    return {
        "job": s.job,
        "workspace": s.workspace,
        "runs": s.runs,
        "failures": s.failures,
        "total_done": s.total_done,
        "last_done": s.last_done,
        "last_more": s.last_more,
        "last_message": s.last_message,
        "last_started_at": iso(s.last_started_at),
        "last_finished_at": iso(s.last_finished_at),
        "next_run_at": iso(s.next_run_at),
        "lag_seconds": round(s.lag(now), 3),
        "last_error": s.last_error,
        "last_error_at": iso(s.last_error_at),
        "lease_owner": s.lease_owner if s.leased(now) else None,
        "lease_until": iso(s.lease_until) if s.leased(now) else None,
    }


@click.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per job and workspace.")
@click.option("--jobs", "jobs", multiple=True, metavar="PATTERNS", help="Only these jobs, e.g. --jobs 'segments.*'.")
@click.pass_obj
def status_cmd(state: State, as_json: bool, jobs: tuple[str, ...]) -> None:
    """Per job and workspace: runs, last run, lag, last result and error, lease holder.

    \b
    Examples:
      ecrm worker status
      ecrm worker status --json | jq 'select(.failures > 0)'
    Lag is how long a job is overdue (its next run was due that long ago):
    a growing lag means no worker runs it, or the workers cannot keep up.
    """
    from ..worker import JobRunner

    crm = state.crm()
    _check_tables(crm)
    runner = JobRunner(crm, jobs=_patterns(jobs) or None)
    states = runner.states()
    now = crm.now()
    if as_json:
        for s in states:
            click.echo(json.dumps(_state_doc(s, now)))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"worker jobs — {state.where()}")
    for col in ("job", "workspace", "runs", "last run", "result", "next / lag", "failures", "last error", "lease"):
        table.add_column(col)
    for s in states:
        lag = s.lag(now)
        if s.next_run_at is None:
            due = "now"
        elif lag > 0:
            due = f"[yellow]late {_duration(lag)}[/]" if lag > 60 else "due"
        else:
            due = f"in {_duration((s.next_run_at - now).total_seconds())}"
        result = f"{s.last_done}{' (more)' if s.last_more else ''}"
        if s.last_message:
            result += f": {escape(s.last_message)}"
        error = ""
        if s.last_error:
            error = f"[red]{escape(s.last_error)}[/] ({_ago(now, s.last_error_at)})"
        lease = f"{s.lease_owner} (until {s.lease_until:%H:%M:%S})" if s.leased(now) and s.lease_until else ""
        table.add_row(
            s.job,
            s.workspace or "(global)",
            str(s.runs),
            _ago(now, s.last_finished_at),
            result,
            due,
            f"[red]{s.failures}[/]" if s.failures else "0",
            error,
            lease,
        )
    state.out.print(table)
    if not states:
        state.out.print("no job has run yet; start one with `ecrm worker`")


@click.command("jobs", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per job.")
@click.pass_obj
def jobs_cmd(state: State, as_json: bool) -> None:
    """The registered jobs: name, plugin, scope, interval, exclusivity.

    \b
    Examples:
      ecrm worker jobs
      ecrm worker jobs --json
    """
    specs = state.crm().registry.jobs
    docs: list[dict[str, Any]] = [
        {
            "name": s.name,
            "plugin": s.plugin,
            "scope": s.scope,
            "every": s.every,
            "exclusive": s.exclusive,
            "lease": s.lease if s.exclusive else None,
            "description": s.description,
        }
        for s in sorted(specs.values(), key=lambda s: s.name)
    ]
    if as_json:
        for d in docs:
            click.echo(json.dumps(d))
        return
    from rich.table import Table

    table = Table(title="jobs")
    for col in ("job", "plugin", "scope", "every", "exclusive", "description"):
        table.add_column(col)
    for d in docs:
        table.add_row(
            d["name"],
            str(d["plugin"]),
            d["scope"],
            _duration(d["every"]),
            "yes" if d["exclusive"] else "no",
            d["description"],
        )
    state.out.print(table)


worker_cmd.add_command(status_cmd)
worker_cmd.add_command(jobs_cmd)
