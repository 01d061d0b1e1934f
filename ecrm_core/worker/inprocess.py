"""The default executor: ticks run in this process, in ``threads`` threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from .executor import Executor
from .runner import RUNNER_RETRY, TickOutcome

if TYPE_CHECKING:  # pragma: no cover
    from .runner import JobRunner

__all__ = ["InProcessExecutor"]

log = logging.getLogger("ecrm.worker")

Target = tuple[str, str | None]


class InProcessExecutor(Executor):
    """Loops over every (job, workspace) pair and runs the due ticks.

    * A pair is due when its last tick reported more work (at once), or its
      wait (``every``, the tick's ``delay`` hint, or the failure backoff) has
      passed; exclusive jobs are due when the shared ``next_run_at`` in the
      database says so.
    * ``threads`` threads take the earliest due pair each; one pair is never
      run by two threads of this process at once.
    * :meth:`stop` (SIGTERM/SIGINT in ``ecrm worker``) lets the current ticks
      finish — they see ``ctx.stopping()`` — and returns.
    * ``once=True``: every pair is ticked until it reports no more work (or
      is not due, or fails), then :meth:`run` returns: for tests and cron.
    * ``rediscover`` (seconds, default 60): how often the runner's workspace
      list is read again (new tenants are picked up without a restart).
    * ``stall`` (seconds, default 600): a tick still running after this long
      is *stuck* (a handler that hangs: a call without a timeout, a loop that
      never ends).  It is recorded (the job's ``last_error``, shown by ``ecrm
      worker status``; an error in the log) and its thread is replaced, so
      the other jobs go on with ``threads`` threads; the pair is not ticked
      again until that tick returns (its thread then ends).  Python cannot
      stop a thread: the tick itself must return (``ctx.stopping()``).
      ``once=True`` does not wait for a stuck tick.
    """

    name = "inprocess"

    def __init__(
        self,
        runner: JobRunner,
        *,
        threads: int = 1,
        on_tick: Callable[[TickOutcome], None] | None = None,
        rediscover: float = 60.0,
        stall: float = 600.0,
        **options: Any,
    ) -> None:
        super().__init__(runner, threads=threads, on_tick=on_tick, **options)
        if isinstance(stall, bool) or not isinstance(stall, int | float) or not 0.01 <= stall <= 366 * 86400:
            raise ValidationError("stall", stall, "not a number of seconds", "use 0.01 .. one year (default 600)")
        self.rediscover = rediscover
        self.stall = float(stall)
        #: when each running pair's tick started (monotonic), and by which thread
        self._started: dict[Target, tuple[float, threading.Thread]] = {}
        #: the pairs whose tick was found stuck (their thread was replaced)
        self._stuck: set[Target] = set()
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._due: dict[Target, float] = {}
        self._running: set[Target] = set()
        self._finished: set[Target] = set()
        self._once = False
        self._refreshed = 0.0
        self.errors: list[BaseException] = []

    def stop(self) -> None:
        # No lock here: stop() may be called from a signal handler while a
        # thread holds the condition; the loops poll the event.
        super().stop()

    # -- scheduling -------------------------------------------------------
    def _refresh_targets(self) -> None:
        now = time.monotonic()
        try:
            targets = self.runner.targets()
        except Exception:
            log.exception("could not list the workspaces to serve; keeping the current list")
            self._refreshed = now
            return
        self._refreshed = now
        for target in targets:
            self._due.setdefault(target, now)
        for gone in set(self._due) - set(targets) - self._running:
            del self._due[gone]

    def _next(self) -> Target | float | None:
        """The next pair to run, or seconds to wait, or None when done (once)."""
        now = time.monotonic()
        if not self._once and now - self._refreshed >= self.rediscover:
            self._refresh_targets()
        free = [t for t in self._due if t not in self._running and t not in self._finished]
        if not free:
            if self._once and not (self._running - self._stuck):
                return None
            return 0.5
        target = min(free, key=lambda t: self._due[t])
        wait = self._due[target] - now
        if wait > 0:
            if self._once:
                self._finished.add(target)
                return 0.0
            return wait
        return target

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                step = self._next()
                if step is None:
                    self._cond.notify_all()
                    return
                if not isinstance(step, tuple):
                    if step > 0:
                        self._cond.wait(min(step, 0.5))
                    continue
                target = step
                self._running.add(target)
                self._started[target] = (time.monotonic(), threading.current_thread())
            job, workspace = target
            try:
                outcome = self.runner.tick(job, workspace, stopping=self.stopping)
            except Exception:
                log.exception("the worker could not run %s [%s]; trying again in %.0f s", job, workspace, RUNNER_RETRY)
                outcome = TickOutcome(job=job, workspace=workspace, status="failed", next_in=RUNNER_RETRY)
            with self._cond:
                self._running.discard(target)
                self._started.pop(target, None)
                replaced = target in self._stuck
                self._stuck.discard(target)
                self._due[target] = time.monotonic() + outcome.next_in
                if self._once and (outcome.status != "ran" or outcome.next_in > 0):
                    self._finished.add(target)
                self._cond.notify_all()
            if self.on_tick is not None:
                try:
                    self.on_tick(outcome)
                except Exception:
                    log.exception("on_tick callback failed")
            if replaced:  # another thread took this one's place when the tick was found stuck
                return

    def _watch(self) -> None:
        """Record each tick running longer than :attr:`stall` once, and give the others a thread in its place."""
        now = time.monotonic()
        with self._cond:
            stuck = [
                (target, now - t0, thread)
                for target, (t0, thread) in self._started.items()
                if target not in self._stuck and now - t0 > self.stall
            ]
            for target, _, _ in stuck:
                self._stuck.add(target)
        for (job, workspace), seconds, _thread in stuck:
            log.error(
                "job %s [%s] is stuck: its tick has run for %.0f s (stall %.0f s); the other jobs go on in a new "
                "thread, and it is not ticked again until this tick returns",
                job, workspace or "global", seconds, self.stall,
            )  # fmt: skip
            try:
                self.runner.record_stuck(job, workspace, seconds)
            except Exception:
                log.exception("could not record that %s [%s] is stuck", job, workspace)
            self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._thread, name=f"ecrm-worker-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # pragma: no cover - a bug in the loop itself
            self.errors.append(exc)
            self._stop.set()
            raise

    def run(self, *, once: bool = False) -> None:
        self._once = once
        with self._cond:
            self._refresh_targets()
        for _ in range(self.threads):
            self._spawn()
        # The calling (main) thread only waits (so that signal handlers run promptly) and watches for stuck
        # ticks; it does not wait for the threads of stuck ticks (daemons: they cannot be stopped).
        while True:
            with self._cond:
                stuck_threads = {thread for target, (_, thread) in self._started.items() if target in self._stuck}
            alive = [t for t in list(self._threads) if t.is_alive() and t not in stuck_threads]
            if not alive:
                break
            alive[0].join(0.2)
            self._watch()
        if self.errors:
            raise RuntimeError("the worker loop failed") from self.errors[0]
