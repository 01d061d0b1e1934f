"""The core's jobs for ``ecrm worker`` (plugin ``core.jobs``).

* ``messages.deliver`` — one batch of the outbox per tick
  (``crm.messages.dispatch``); safe to run in many workers at once, since
  messages are claimed under a lease (``SKIP LOCKED`` on PostgreSQL).
* ``segments.refresh`` — a full refresh of the workspace's segments and
  lifecycle stages (``crm.segments.refresh()``), so that rules with time
  windows follow the clock; exclusive, every :data:`REFRESH_EVERY` seconds
  (``ecrm worker --every segments.refresh=300`` changes it).
"""

from __future__ import annotations

from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import JobContext, JobResult, JobSpec

#: Messages per ``messages.deliver`` tick.
DELIVER_BATCH = 100
#: Seconds between full refreshes of a workspace's segments and stages.
REFRESH_EVERY = 900.0


def deliver(ctx: JobContext) -> JobResult:
    report = ctx.crm.messages.dispatch(limit=DELIVER_BATCH, batch_size=DELIVER_BATCH)
    handled = report.attempted + report.blocked
    parts = [f"sent {report.sent}", f"retrying {report.retrying}", f"dead {report.dead}", f"blocked {report.blocked}"]
    if report.recovered:
        parts.append(f"recovered {report.recovered}")
    return JobResult(done=handled, more=handled >= DELIVER_BATCH, message=", ".join(parts) if handled else None)


def refresh(ctx: JobContext) -> JobResult:
    report = ctx.crm.segments.refresh()
    return JobResult(
        done=report.entered + report.exited + report.stage_changes,
        message=(
            f"{len(report.changes)} segment(s): {report.entered} entered, {report.exited} exited; "
            f"{report.stage_changes} stage change(s) in {report.seconds:.1f} s"
        ),
    )


JOBS = (
    JobSpec(
        name="messages.deliver",
        tick=deliver,
        every=1.0,
        description=f"send what is due in the outbox, {DELIVER_BATCH} messages a tick (crm.messages.dispatch)",
    ),
    JobSpec(
        name="segments.refresh",
        tick=refresh,
        every=REFRESH_EVERY,
        exclusive=True,
        lease=600.0,
        description="full refresh of the segments and lifecycle stages (crm.segments.refresh)",
    ),
)


@hookimpl
def ecrm_register_jobs() -> tuple[JobSpec, ...]:
    return JOBS
