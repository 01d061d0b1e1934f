"""``ecrm messages …``: the delivery pipeline from the shell (worker, dead letters, suppressions)."""

from __future__ import annotations

import json
import signal
import threading
from typing import TYPE_CHECKING, Any

import click

from .base import CONTEXT_SETTINGS, State, _progress, pass_state

if TYPE_CHECKING:  # pragma: no cover
    from ..services.messages import MessageRecord

__all__ = ["messages_group"]


def _row(m: MessageRecord) -> dict[str, Any]:
    return {
        "id": m.id,
        "channel": m.channel,
        "customer_id": m.customer_id,
        "address": m.address,
        "purpose": m.purpose,
        "status": m.status,
        "reason": m.reason,
        "attempts": m.attempts,
        "next_attempt_at": m.next_attempt_at.isoformat() if m.next_attempt_at else None,
        "sent_at": m.sent_at.isoformat() if m.sent_at else None,
        "created_at": m.created_at.isoformat(),
    }


def _table(state: State, rows: list[MessageRecord], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("id", "channel", "customer", "purpose", "status", "attempts", "reason"):
        table.add_column(col)
    for m in rows:
        table.add_row(m.id, m.channel, str(m.customer_id), m.purpose, m.status, str(m.attempts), m.reason or "")
    state.out.print(table)


def messages_group() -> click.Group:
    group = click.Group(
        "messages",
        context_settings=CONTEXT_SETTINGS,
        help="""The outbox of every channel: send what is due, look at what happened, replay dead letters.

\b
Messages are decided by the host (crm.messages.send / send_many) and written to the
outbox; a worker sends them:
  ecrm --config ecrm.toml messages work          run the worker (Ctrl-C stops it)
  ecrm messages dispatch                         send what is due now, then exit (cron)
  ecrm messages list --status dead               look at the dead letters
  ecrm messages show 3f2a…                       one message and its delivery log
  ecrm messages replay 3f2a…                     try a dead letter again
  ecrm messages suppress email bob@example.com   never mail this address again
""",
    )
    for cmd in (list_cmd, show_cmd, dispatch_cmd, work_cmd, replay_cmd, cancel_cmd, suppress_cmd, unsuppress_cmd):
        group.add_command(cmd)
    return group


@click.command("list", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--status",
    type=click.Choice(["queued", "sending", "sent", "blocked", "dead", "cancelled"]),
    help="Only messages in this status, e.g. --status dead for the dead letters.",
)
@click.option("--channel", help="Only this channel, e.g. --channel email.")
@click.option("--customer", "customer_id", type=int, help="Only this customer's messages (ecrm id).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@pass_state
def list_cmd(
    state: State, status: str | None, channel: str | None, customer_id: int | None, limit: int, as_json: bool
) -> None:
    """List messages, newest first."""
    rows = state.crm().messages.list(status=status, channel=channel, customer_id=customer_id, limit=limit)
    if as_json:
        for m in rows:
            click.echo(json.dumps(_row(m)))
        return
    counts = state.crm().messages.counts(channel=channel)
    _table(state, rows, "messages — " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


@click.command("show", context_settings=CONTEXT_SETTINGS)
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show_cmd(state: State, message_id: str, as_json: bool) -> None:
    """Show one message (MESSAGE_ID from `ecrm messages list`) and its delivery log."""
    crm = state.crm()
    m = crm.messages.get(message_id)
    attempts = crm.messages.attempts(message_id)
    doc = {
        **_row(m),
        "subject": m.content.subject,
        "attempt_log": [
            {
                "attempt_id": a.attempt_id,
                "number": a.number,
                "status": a.status,
                "code": a.code,
                "reason": a.reason,
                "started_at": a.started_at.isoformat(),
            }
            for a in attempts
        ],
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        if key != "attempt_log":
            state.out.print(f"[bold]{key}[/]: {value}")
    for a in doc["attempt_log"]:
        state.out.print(f"  #{a['number']} {a['status']} {a['code'] or ''} {a['reason'] or ''} ({a['attempt_id']})")


@click.command("dispatch", context_settings=CONTEXT_SETTINGS)
@click.option("--channel", help="Only this channel.")
@click.option("--limit", type=click.IntRange(1), help="Stop after this many messages.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_state
def dispatch_cmd(state: State, channel: str | None, limit: int | None, batch_size: int) -> None:
    """Send every message that is due now, with a progress bar, then exit (for cron)."""
    crm = state.crm()
    due = crm.messages.counts(channel=channel).get("queued", 0)
    with _progress(state) as progress:
        task = progress.add_task("sending", total=min(due, limit) if limit else due)
        report = crm.messages.dispatch(
            channel=channel, limit=limit, batch_size=batch_size, progress=lambda n: progress.advance(task, n)
        )
    state.out.print(
        f"sent {report.sent}, retrying {report.retrying}, dead {report.dead}, blocked {report.blocked}"
        + (f", recovered {report.recovered} from a crashed worker" if report.recovered else "")
    )


@click.command("work", context_settings=CONTEXT_SETTINGS)
@click.option("--channel", help="Only this channel.")
@click.option(
    "--poll", type=click.FloatRange(0.05, 3600), default=1.0, show_default=True, help="Seconds between polls."
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_state
def work_cmd(state: State, channel: str | None, poll: float, batch_size: int) -> None:
    """Run the delivery loop alone until Ctrl-C or SIGTERM (several may run at once).

    `ecrm worker --jobs messages.deliver` does the same work as a job of the one
    worker; `ecrm worker` runs it together with every other job.
    """
    crm = state.crm()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state.err.print(f"worker started on {state.where()}; Ctrl-C stops it")
    crm.messages.work(
        stop=stop,
        poll=poll,
        channel=channel,
        batch_size=batch_size,
        on_batch=lambda r: state.err.print(f"sent {r.sent}, retrying {r.retrying}, dead {r.dead}, blocked {r.blocked}"),
    )
    state.err.print("worker stopped")


@click.command("replay", context_settings=CONTEXT_SETTINGS)
@click.argument("message_ids", nargs=-1, required=True)
@pass_state
def replay_cmd(state: State, message_ids: tuple[str, ...]) -> None:
    """Put dead letters back in the queue for a fresh round of attempts."""
    for mid in message_ids:
        state.crm().messages.replay(mid, actor="cli")
        state.out.print(f"{mid}: queued again")


@click.command("cancel", context_settings=CONTEXT_SETTINGS)
@click.argument("message_ids", nargs=-1, required=True)
@pass_state
def cancel_cmd(state: State, message_ids: tuple[str, ...]) -> None:
    """Cancel queued messages (they will not be sent)."""
    for mid in message_ids:
        state.crm().messages.cancel(mid)
        state.out.print(f"{mid}: cancelled")


@click.command("suppress", context_settings=CONTEXT_SETTINGS)
@click.argument("channel")
@click.argument("address")
@click.option(
    "--scope",
    type=click.Choice(["all", "marketing"]),
    default="all",
    show_default=True,
    help="all: nothing is sent; marketing: only transactional messages are.",
)
@click.option("--reason", default="manual", show_default=True)
@pass_state
def suppress_cmd(state: State, channel: str, address: str, scope: str, reason: str) -> None:
    """Never send to ADDRESS on CHANNEL again (e.g. `ecrm messages suppress email bob@example.com`)."""
    state.crm().messages.suppress(channel, address, scope=scope, reason=reason)  # type: ignore[arg-type]
    state.out.print(f"{channel} {address}: suppressed ({scope})")


@click.command("unsuppress", context_settings=CONTEXT_SETTINGS)
@click.argument("channel")
@click.argument("address")
@pass_state
def unsuppress_cmd(state: State, channel: str, address: str) -> None:
    """Remove ADDRESS from CHANNEL's suppression list."""
    if not state.crm().messages.unsuppress(channel, address):
        raise click.ClickException(f"{channel} {address} was not suppressed")
    state.out.print(f"{channel} {address}: no longer suppressed")
