"""The executor interface and its driver loading (stevedore, ``ecrm.executors``)."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .runner import JobRunner, TickOutcome

__all__ = ["EXECUTOR_NAMESPACE", "BUILTIN_EXECUTORS", "Executor", "executor_names", "load_executor"]

#: The entry-point group executors are published under.
EXECUTOR_NAMESPACE = "ecrm.executors"

#: Executors the core ships (also declared as entry points in its pyproject);
#: used when the installed distribution's metadata predates them.
BUILTIN_EXECUTORS = {"inprocess": "ecrm_core.worker.inprocess:InProcessExecutor"}


class Executor(abc.ABC):
    """Decides when and where the ticks of the registered jobs run.

    An executor is built with a :class:`~ecrm_core.worker.JobRunner` (which
    knows the selected jobs and workspaces and runs *one* tick with
    :meth:`~ecrm_core.worker.JobRunner.tick`) and options from the command
    line.  It must:

    * call ``runner.tick(job, workspace, stopping=...)`` for every pair of
      ``runner.targets()``, again after ``outcome.next_in`` seconds (at once
      when a tick reported more work), never twice at the same time for one
      pair *in its own process* (the runner's lease covers exclusive jobs
      across processes);
    * :meth:`run` until :meth:`stop` is called (or, with ``once=True``, until
      every pair is idle), letting the current ticks finish.

    A tick depends only on its :class:`~ecrm_core.registry.JobContext` and the
    database, so a distributed executor is a thin layer: a task
    ``tick(job, workspace)`` that builds a CRM and a runner in the worker
    process and calls ``runner.tick``, and a scheduler (``run``) that enqueues
    those tasks when they are due (``ecrm worker status`` reads the same
    table whoever ran them).  Publish it as an entry point::

        [project.entry-points."ecrm.executors"]
        celery = "ecrm_celery:CeleryExecutor"

    and select it with ``ecrm worker --executor celery``.
    """

    #: The entry-point name (``--executor NAME``).
    name: ClassVar[str] = ""

    def __init__(
        self,
        runner: JobRunner,
        *,
        threads: int = 1,
        on_tick: Callable[[TickOutcome], None] | None = None,
        **options: Any,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
            raise ValidationError("threads", threads, "out of range", "use 1..64")
        self.runner = runner
        self.threads = threads
        self.on_tick = on_tick
        self.options = options
        self._stop = threading.Event()

    @abc.abstractmethod
    def run(self, *, once: bool = False) -> None:
        """Run ticks until :meth:`stop` (or, with ``once``, until every job is idle)."""

    def stop(self) -> None:
        """Ask :meth:`run` to return once the ticks in progress finish (thread- and signal-safe)."""
        self._stop.set()

    def stopping(self) -> bool:
        """True once :meth:`stop` was called (passed to ticks as ``ctx.stopping``)."""
        return self._stop.is_set()


def executor_names() -> list[str]:
    """Names of the installed executors (entry points; nothing is imported)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=EXECUTOR_NAMESPACE)} | set(BUILTIN_EXECUTORS))


def load_executor(name: str) -> type[Executor]:
    """The executor class published as ``name`` in ``ecrm.executors``.

    The name is checked against the installed entry points *before* anything
    is imported; an unknown name raises :class:`~ecrm_core.errors.ValidationError`
    listing the installed ones.  Only the chosen driver is imported (stevedore
    ``DriverManager``).
    """
    import difflib
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group=EXECUTOR_NAMESPACE)}
    if name not in installed and name not in BUILTIN_EXECUTORS:
        known = executor_names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValidationError(
            "executor",
            name,
            "unknown executor",
            f"{hint}installed: {', '.join(known)} (an executor is an entry point in {EXECUTOR_NAMESPACE!r})",
        )
    if name in installed:
        from stevedore import DriverManager

        manager: Any = DriverManager(EXECUTOR_NAMESPACE, name, invoke_on_load=False)
        cls: Any = manager.driver
    else:
        import importlib

        module, _, attr = BUILTIN_EXECUTORS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ValidationError(
            "executor", name, "not an Executor", f"the entry point must name a subclass of {Executor.__qualname__}"
        )
    return cls  # type: ignore[no-any-return]
