"""One tick of one job: lease, call, record, release (:class:`JobRunner`)."""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from attrs import frozen

from ..errors import ValidationError
from ..registry import JobContext, JobResult, JobSpec, _seconds

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM

__all__ = ["GLOBAL", "JobRunner", "JobState", "TickOutcome", "discover_workspaces"]

log = logging.getLogger("ecrm.worker")

#: The ``workspace_id`` of a global job's row in the ``jobs`` table.
GLOBAL = "*"

#: Seconds to wait before trying a tick again when the runner itself failed
#: (database unreachable…), as opposed to the tick.
RUNNER_RETRY = 5.0


@frozen(kw_only=True)
class TickOutcome:
    """What :meth:`JobRunner.tick` did.

    ``status``: ``ran`` (the tick returned ``result``), ``failed`` (it
    raised; ``error`` says what), ``busy`` (an exclusive job whose lease
    another worker holds) or ``not_due`` (an exclusive job another worker ran
    recently).  ``next_in``: seconds until this job should be tried again
    for this workspace (0: at once).
    """

    job: str
    workspace: str | None
    status: Literal["ran", "failed", "busy", "not_due"]
    next_in: float
    result: JobResult | None = None
    error: str | None = None
    seconds: float = 0.0


@frozen(kw_only=True)
class JobState:
    """One row of the ``jobs`` table (``ecrm worker status``)."""

    job: str
    workspace: str | None
    runs: int
    failures: int
    total_done: int
    last_done: int
    last_more: bool
    last_message: str | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    next_run_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None

    def lag(self, now: datetime) -> float:
        """Seconds the job is overdue (0 when it is not due yet)."""
        if self.next_run_at is None:
            return 0.0
        return max(0.0, (now - self.next_run_at).total_seconds())

    def leased(self, now: datetime) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until >= now


def _owner() -> str:
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def discover_workspaces(crm: CRM) -> list[str]:
    """Every workspace with a row in ``workspaces`` or at least one customer."""
    w, c = crm.db.tables["workspaces"], crm.db.tables["customers"]
    with crm.db.read() as conn:
        rows = conn.execute(sa.union(sa.select(w.c.id), sa.select(c.c.workspace_id).distinct())).scalars()
        return sorted({str(r) for r in rows})


def select_jobs(
    available: Mapping[str, JobSpec], include: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> dict[str, JobSpec]:
    """The jobs named by ``include`` (names or glob patterns such as
    ``messages.*``; default: all) minus ``exclude``; an unknown name is a
    :class:`~ecrm_core.errors.ValidationError` with a suggestion."""
    import difflib

    def match(patterns: Iterable[str], field: str) -> set[str]:
        out: set[str] = set()
        for p in patterns:
            hits = fnmatch.filter(available, p)
            if not hits:
                close = difflib.get_close_matches(p, available, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValidationError(
                    field, p, "no registered job matches", f"{hint}registered: {', '.join(sorted(available)) or 'none'}"
                )
            out.update(hits)
        return out

    names = set(available) if include is None else match(include, "jobs")
    names -= match(exclude, "exclude")
    return {n: available[n] for n in sorted(names)}


class JobRunner:
    """Runs single ticks of the selected jobs of one CRM and records them.

    :param crm: the CRM (its workspace is the default one to serve).
    :param jobs: names or glob patterns of the jobs to run (default: all
        registered); ``exclude``: patterns to leave out.
    :param workspaces: the workspaces to serve: a list, or a callable
        returning the current list (e.g. :func:`discover_workspaces`, called
        again by executors from time to time); default: the CRM's workspace.
    :param every: per-job idle intervals (seconds) replacing the jobs' own.
    :param owner: the lease owner id (default: host, pid and a random part).

    :meth:`tick` is all an executor needs; it is thread-safe and keeps no
    state between ticks that another process would need.
    """

    def __init__(
        self,
        crm: CRM,
        *,
        jobs: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        workspaces: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        every: Mapping[str, float] | None = None,
        owner: str | None = None,
    ) -> None:
        self.crm = crm
        self.jobs = select_jobs(crm.registry.jobs, jobs, exclude)
        unknown = set(every or {}) - set(crm.registry.jobs)
        if unknown:
            raise ValidationError("every", sorted(unknown), "not registered jobs", "see `ecrm worker jobs`")
        self._every = {k: _seconds(f"every[{k}]", 0.01)(v) for k, v in (every or {}).items()}
        self._workspaces = workspaces
        self.owner = owner or _owner()
        self._views: dict[str, CRM] = {}
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- what to run ------------------------------------------------------
    def workspaces(self) -> list[str]:
        ws = self._workspaces
        if ws is None:
            return [self.crm.workspace]
        return list(ws() if callable(ws) else ws)

    def targets(self) -> list[tuple[str, str | None]]:
        """Every (job, workspace) pair to tick; workspace ``None`` for a global job."""
        workspaces = self.workspaces()
        out: list[tuple[str, str | None]] = []
        for name, spec in self.jobs.items():
            if spec.scope == "global":
                out.append((name, None))
            else:
                out.extend((name, w) for w in workspaces)
        return out

    def every(self, spec: JobSpec) -> float:
        return self._every.get(spec.name, spec.every)

    def backoff(self, spec: JobSpec, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure."""
        return max(self.every(spec), min(2.0 ** min(failures, 30), spec.max_backoff))

    def _view(self, workspace: str | None) -> CRM:
        if workspace is None or workspace == self.crm.workspace:
            return self.crm
        with self._lock:
            view = self._views.get(workspace)
            if view is None:
                view = self._views[workspace] = self.crm.in_workspace(workspace)
            return view

    # -- the table --------------------------------------------------------
    @property
    def table(self) -> sa.Table:
        return self.crm.db.tables["jobs"]

    def _key(self, job: str, ws: str) -> Any:
        t = self.table
        return sa.and_(t.c.job == job, t.c.workspace_id == ws)

    def _ensure(self, job: str, ws: str) -> None:
        """Insert the (job, workspace) row if it is missing (idempotent, race-free)."""
        if (job, ws) in self._known:
            return
        t = self.table
        values = {
            "job": job,
            "workspace_id": ws,
            "last_done": 0,
            "last_more": False,
            "failures": 0,
            "runs": 0,
            "total_done": 0,
        }
        db = self.crm.db
        with db.write() as conn:
            if db.dialect in ("sqlite", "postgresql"):
                dialect: Any = __import__(f"sqlalchemy.dialects.{db.dialect}", fromlist=["insert"])
                conn.execute(dialect.insert(t).values(values).on_conflict_do_nothing())
            elif conn.scalar(sa.select(sa.func.count()).where(self._key(job, ws))) == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(t).values(values))
                except sa.exc.IntegrityError:
                    pass
        self._known.add((job, ws))

    def _acquire(self, spec: JobSpec, ws: str, now: datetime, force: bool) -> TickOutcome | None:
        """Take the lease of an exclusive job; ``None`` when taken, else why not."""
        t = self.table
        free = sa.or_(t.c.lease_until.is_(None), t.c.lease_until < now)
        cond = [self._key(spec.name, ws), free]
        if not force:
            cond.append(sa.or_(t.c.next_run_at.is_(None), t.c.next_run_at <= now))
        with self.crm.db.write() as conn:
            got = conn.execute(
                sa.update(t)
                .where(*cond)
                .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=spec.lease), last_started_at=now)
            ).rowcount
            if got == 1:
                return None
            row = conn.execute(sa.select(t.c.lease_until, t.c.next_run_at).where(self._key(spec.name, ws))).one()
        workspace = None if ws == GLOBAL else ws
        if row.lease_until is not None and row.lease_until >= now:
            wait = (row.lease_until - now).total_seconds()
            return TickOutcome(job=spec.name, workspace=workspace, status="busy", next_in=min(wait, self.every(spec)))
        wait = (row.next_run_at - now).total_seconds() if row.next_run_at is not None else 0.0
        return TickOutcome(job=spec.name, workspace=workspace, status="not_due", next_in=max(0.0, wait))

    def _heartbeat(self, spec: JobSpec, ws: str, done: threading.Event) -> None:
        """Renew an exclusive lease every third of its length until ``done``."""
        t = self.table
        while not done.wait(spec.lease / 3):
            try:
                with self.crm.db.write() as conn:
                    conn.execute(
                        sa.update(t)
                        .where(self._key(spec.name, ws), t.c.lease_owner == self.owner)
                        .values(lease_until=self.crm.now() + timedelta(seconds=spec.lease))
                    )
            except Exception:
                log.warning("job %s [%s]: could not renew its lease", spec.name, ws, exc_info=True)

    # -- one tick ---------------------------------------------------------
    def tick(
        self, job: str, workspace: str | None = None, *, stopping: Callable[[], bool] | None = None, force: bool = False
    ) -> TickOutcome:
        """Run one tick of ``job`` for ``workspace`` (``None`` for a global job).

        Exclusive jobs: the lease is taken first with one conditional UPDATE
        (free or expired, and due unless ``force``); when another worker holds
        it (or ran the job recently) nothing runs and the outcome says when
        to try again.  A tick that raises is recorded (``last_error``,
        ``failures``) and backed off; the exception does not propagate —
        whatever it is (``SystemExit`` from a library, asyncio's
        ``CancelledError``…) but ``KeyboardInterrupt``, so that one job cannot
        stop the worker and the others.
        """
        import time

        spec = self.jobs.get(job)
        if spec is None:
            raise ValidationError("job", job, "not a selected job", f"choose from {', '.join(self.jobs) or 'none'}")
        if (spec.scope == "global") != (workspace is None):
            raise ValidationError(
                "workspace", workspace, f"wrong for a {spec.scope} job", "pass None for a global job, else a workspace"
            )
        ws = GLOBAL if workspace is None else workspace
        self._ensure(job, ws)
        started = self.crm.now()
        if spec.exclusive:
            refused = self._acquire(spec, ws, started, force)
            if refused is not None:
                return refused
        beat = threading.Event()
        if spec.exclusive:
            threading.Thread(target=self._heartbeat, args=(spec, ws, beat), daemon=True, name=f"lease-{job}").start()
        ctx = JobContext(crm=self._view(workspace), job=spec, workspace=workspace, stopping=stopping or (lambda: False))
        t0 = time.perf_counter()
        result: JobResult | None = None
        failure: BaseException | None = None
        try:
            out = spec.tick(ctx)
            if out is not None and not isinstance(out, JobResult):
                raise TypeError(f"tick returned {type(out).__name__}, not a JobResult (or None)")
            result = out or JobResult()
        except KeyboardInterrupt:  # Ctrl-C in the thread that ticks: the tick is interrupted, not failed
            beat.set()
            self._release(spec, ws)
            raise
        except BaseException as exc:  # SystemExit, CancelledError…: this job failed, not the worker
            failure = exc
        finally:
            beat.set()
        seconds = time.perf_counter() - t0
        if failure is None:
            assert result is not None
            return self._record_success(spec, ws, workspace, started, result, seconds)
        return self._record_failure(spec, ws, workspace, started, failure, seconds)

    def _record_success(
        self, spec: JobSpec, ws: str, workspace: str | None, started: datetime, result: JobResult, seconds: float
    ) -> TickOutcome:
        t = self.table
        now = self.crm.now()
        if result.more and not result.delay:
            wait = 0.0
        else:
            wait = self.every(spec) if result.delay is None else result.delay
        values: dict[str, Any] = {
            "runs": t.c.runs + 1,
            "total_done": t.c.total_done + result.done,
            "last_done": result.done,
            "last_more": result.more,
            "last_message": _short(result.message, 500) if result.message else None,
            "last_started_at": started,
            "last_finished_at": now,
            "failures": 0,
            "next_run_at": now + timedelta(seconds=wait),
        }
        where = [self._key(spec.name, ws)]
        if spec.exclusive:
            values |= {"lease_owner": None, "lease_until": None}
            where.append(t.c.lease_owner == self.owner)
        with self.crm.db.write() as conn:
            if conn.execute(sa.update(t).where(*where).values(values)).rowcount != 1:
                log.warning(
                    "job %s [%s]: its lease expired during the tick (%.1f s > lease %s s); another worker may have "
                    "run it meanwhile: raise JobSpec.lease",
                    spec.name,
                    ws,
                    seconds,
                    spec.lease,
                )
        return TickOutcome(
            job=spec.name, workspace=workspace, status="ran", next_in=wait, result=result, seconds=seconds
        )

    def _record_failure(
        self, spec: JobSpec, ws: str, workspace: str | None, started: datetime, exc: BaseException, seconds: float
    ) -> TickOutcome:
        t = self.table
        error = _short(f"{type(exc).__name__}: {exc}", 2000)
        now = self.crm.now()
        with self.crm.db.write() as conn:
            q = sa.select(t.c.failures, t.c.last_error).where(self._key(spec.name, ws))
            if not self.crm.db.is_sqlite:
                q = q.with_for_update()
            before = conn.execute(q).one()
            failures = before.failures + 1
            wait = self.backoff(spec, failures)
            values: dict[str, Any] = {
                "runs": t.c.runs + 1,
                "failures": failures,
                "last_error": error,
                "last_error_at": now,
                "last_started_at": started,
                "last_finished_at": now,
                "last_done": 0,
                "last_more": False,
                "last_message": None,
                "next_run_at": now + timedelta(seconds=wait),
            }
            where = [self._key(spec.name, ws)]
            if spec.exclusive:
                values |= {"lease_owner": None, "lease_until": None}
                where.append(t.c.lease_owner == self.owner)
            conn.execute(sa.update(t).where(*where).values(values))
        if failures == 1 or before.last_error != error:
            log.error(
                "job %s [%s] failed (%d in a row); retrying in %.0f s; the other jobs go on:\n%s",
                spec.name,
                ws,
                failures,
                wait,
                "".join(traceback.format_exception(exc)).rstrip(),
            )
        else:
            log.warning("job %s [%s] failed again (%d in a row): %s", spec.name, ws, failures, error)
        return TickOutcome(
            job=spec.name, workspace=workspace, status="failed", next_in=wait, error=error, seconds=seconds
        )

    def record_stuck(self, job: str, workspace: str | None, seconds: float) -> None:
        """Record that a tick of ``job`` has run for ``seconds`` and is still running (``last_error``, shown by
        ``ecrm worker status``); the tick's own outcome is recorded when it returns."""
        spec = self.jobs.get(job)
        if spec is None:
            raise ValidationError("job", job, "not a selected job", f"choose from {', '.join(self.jobs) or 'none'}")
        t = self.table
        ws = GLOBAL if workspace is None else workspace
        error = (
            f"stuck: the tick has run for {seconds:.0f} s and has not returned; the other jobs go on without it "
            "(a tick must return: use timeouts on its calls and check ctx.stopping())"
        )
        with self.crm.db.write() as conn:
            conn.execute(
                sa.update(t).where(self._key(spec.name, ws)).values(last_error=error, last_error_at=self.crm.now())
            )

    def _release(self, spec: JobSpec, ws: str) -> None:
        """Give an exclusive lease back without recording a run (interrupted tick)."""
        if not spec.exclusive:
            return
        t = self.table
        try:
            with self.crm.db.write() as conn:
                conn.execute(
                    sa.update(t)
                    .where(self._key(spec.name, ws), t.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_until=None)
                )
        except Exception:
            log.warning("job %s [%s]: could not release its lease; it expires by itself", spec.name, ws, exc_info=True)

    # -- reading ----------------------------------------------------------
    def states(self) -> list[JobState]:
        """The recorded state of every selected job, by job then workspace."""
        t = self.table
        with self.crm.db.read() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.job.in_(list(self.jobs))).order_by(t.c.job, t.c.workspace_id)
            ).all()
        out = []
        for r in rows:
            m = dict(r._mapping)
            ws = m.pop("workspace_id")
            out.append(JobState(workspace=None if ws == GLOBAL else ws, **m))
        return out
