"""``ecrm ingest status|rejected|replay``: the tracking inbox from the command line."""

from __future__ import annotations

import json

import click

from .cli import CONTEXT_SETTINGS, _crm, _require_schema

__all__ = ["ingest"]


@click.group(
    "ingest",
    context_settings=CONTEXT_SETTINGS,
    help="""The tracking inbox: what waits, what was rejected, replay after a fix.

The tracking routes (/v1/*, analytics.js) answer 200 once the accepted
messages are in the inbox; the job `ingest.process` (run by `ecrm worker`,
or by a thread of `ecrm serve`) stores them.  See docs/http/ingest.md.

\b
Examples:
  ecrm ingest status
  ecrm ingest rejected --reason conflict
  ecrm ingest replay --reason error
""",
)
def ingest() -> None:
    pass


@ingest.command("status", context_settings=CONTEXT_SETTINGS, help="Depth, lag, rate and rejected counts.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from .ingest import ingest_status

    crm = _crm(ctx)
    _require_schema(ctx, crm)
    st = ingest_status(crm).as_dict()
    if as_json:
        click.echo(json.dumps(st))
        return
    table = Table(title=f"ingest inbox (workspace {crm.workspace!r})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("depth (messages waiting, all workspaces)", str(st["depth"]))
    table.add_row("rows waiting", str(st["rows"]))
    table.add_row("this workspace", str(st["workspace_depth"]))
    table.add_row("lag (oldest waits, s)", f"{st['lag']:.1f}")
    table.add_row("rate (messages/s, last minute)", f"{st['rate']:.1f}")
    table.add_row("processed, last hour", str(st["processed_last_hour"]))
    for reason, n in st["rejected"].items():
        table.add_row(f"rejected: {reason}", str(n))
    Console(highlight=False).print(table)


@ingest.command("rejected", context_settings=CONTEXT_SETTINGS, help="Messages the processor could not store, and why.")
@click.option("--reason", type=click.Choice(["conflict", "invalid", "unreadable", "error"]), default=None)
@click.option("--all", "include_replayed", is_flag=True, help="Include the replayed ones.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (with the messages) instead of a table.")
@click.pass_context
def rejected_command(ctx: click.Context, reason: str | None, include_replayed: bool, limit: int, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from .ingest import rejected_entries

    crm = _crm(ctx)
    _require_schema(ctx, crm)
    found = rejected_entries(crm, reason=reason, include_replayed=include_replayed, limit=limit)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in found]))
        return
    out = Console(highlight=False)
    if not found:
        out.print("no rejected messages")
        return
    table = Table(title=f"rejected messages (workspace {crm.workspace!r})")
    for column in ("id", "reason", "messageId", "field", "problem", "received", "replayed"):
        table.add_column(column)
    for e in found:
        table.add_row(
            str(e.id),
            e.reason,
            e.message_id or "",
            e.field,
            e.problem,
            e.received_at.isoformat(timespec="seconds"),
            "" if e.replayed_at is None else e.replayed_at.isoformat(timespec="seconds"),
        )
    out.print(table)


@ingest.command(
    "replay",
    context_settings=CONTEXT_SETTINGS,
    help="Put rejected messages back into the inbox (after a fix): IDS, or --reason, or --all.",
)
@click.argument("ids", nargs=-1, type=int)
@click.option("--reason", type=click.Choice(["conflict", "invalid", "unreadable", "error"]), default=None)
@click.option("--all", "replay_all", is_flag=True, help="Every rejected message not replayed yet.")
@click.pass_context
def replay_command(ctx: click.Context, ids: tuple[int, ...], reason: str | None, replay_all: bool) -> None:
    from .ingest import replay

    if not ids and reason is None and not replay_all:
        raise click.UsageError("give the ids to replay, --reason REASON or --all")
    crm = _crm(ctx)
    _require_schema(ctx, crm)
    n = replay(crm, ids=list(ids) or None, reason=reason)
    click.echo(f"{n} messages put back into the inbox")
