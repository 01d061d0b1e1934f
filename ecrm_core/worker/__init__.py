"""The one worker: jobs that plugins register, ticked by an executor driver.

* A **job** is a :class:`~ecrm_core.registry.JobSpec` returned by the
  ``ecrm_register_jobs`` hook: a name, a ``tick(ctx)`` callable doing one
  bounded, crash-safe unit of work, a scope, an idle interval and a
  concurrency contract (``exclusive``).
* The :class:`JobRunner` runs *one* tick of one job for one workspace: it
  takes the job's lease (exclusive jobs), calls the tick, records the outcome
  in the ``jobs`` table and releases the lease.  It keeps nothing between
  ticks that another process would need: any process can run the next one.
* An :class:`Executor` decides *when and where* ticks run.  The default,
  ``inprocess``, loops in this process with ``threads`` threads; a
  distributed executor (e.g. Celery) turns "tick job X for workspace W" into
  a task that calls :meth:`JobRunner.tick`.  Executors are stevedore drivers
  in the ``ecrm.executors`` namespace (:func:`load_executor`).

Everything here is imported on first use only (``ecrm worker``), never by
``import ecrm_core``.
"""

from __future__ import annotations

from .executor import EXECUTOR_NAMESPACE, Executor, executor_names, load_executor
from .runner import GLOBAL, JobRunner, JobState, TickOutcome, discover_workspaces

__all__ = [
    "EXECUTOR_NAMESPACE",
    "GLOBAL",
    "Executor",
    "JobRunner",
    "JobState",
    "TickOutcome",
    "discover_workspaces",
    "executor_names",
    "load_executor",
]
