"""``ecrm init`` and ``ecrm db``: create the tables, upgrade, show the migration status."""

from __future__ import annotations

import json

import click

from .base import CONTEXT_SETTINGS, State, pass_state

__all__ = ["db_group", "init_command"]


def _upgrade(state: State, revision: str) -> None:
    crm = state.crm()
    crm.upgrade(revision)
    status = crm.schema_status()
    state.out.print(
        f"ecrm schema is up to date ({', '.join(sorted(status['heads']))}) in {state.where()}", soft_wrap=True
    )


@click.command(
    "init",
    context_settings=CONTEXT_SETTINGS,
    help="""Create ecrm's tables, or bring them up to date.

Safe to run again: only missing migrations are applied (core and every
plugin's migration branch).

\b
Examples:
  ecrm init
  ecrm --db sqlite:///shop.db init
  ecrm --db postgresql+psycopg://crm@localhost/shop --prefix crm_ init
""",
)
@pass_state
def init_command(state: State) -> None:
    _upgrade(state, "heads")


def db_group() -> click.Group:
    group = click.Group(
        "db",
        context_settings=CONTEXT_SETTINGS,
        help="""Database schema: upgrade it or show its migration status.

\b
Examples:
  ecrm db upgrade
  ecrm db status --check
""",
    )
    group.add_command(db_upgrade)
    group.add_command(db_status)
    return group


@click.command(
    "upgrade",
    context_settings=CONTEXT_SETTINGS,
    help="""Apply pending migrations (core and plugin branches).

\b
Examples:
  ecrm db upgrade
  ecrm --db sqlite:///shop.db db upgrade --revision heads
""",
)
@click.option(
    "--revision", default="heads", show_default=True, help="Alembic revision to upgrade to, e.g. --revision 0001_core."
)
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    _upgrade(state, revision)


@click.command(
    "status",
    context_settings=CONTEXT_SETTINGS,
    help="""Show the schema's current and latest migration revisions.

With --check the exit code is 1 when the schema is missing or out of
date (for deploy scripts).

\b
Examples:
  ecrm db status
  ecrm --db sqlite:///shop.db db status --check && echo up to date
""",
)
@click.option("--check", is_flag=True, help="Exit with code 1 unless the schema is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, e.g. for scripts.")
@pass_state
def db_status(state: State, check: bool, as_json: bool) -> None:
    status = state.crm().schema_status()
    current, heads, ok = sorted(status["current"]), sorted(status["heads"]), bool(status["up_to_date"])
    pending = sorted(status.get("pending", set(heads) - set(current)))
    if as_json:
        doc = {"database": state.where(), "current": current, "heads": heads, "pending": pending, "up_to_date": ok}
        click.echo(json.dumps(doc))
    else:
        from rich.table import Table

        state.out.print(f"Database: {state.where()}", soft_wrap=True)
        table = Table(show_header=False)
        table.add_row("current", ", ".join(current) or "(none: not initialised)")
        table.add_row("latest", ", ".join(heads))
        if pending:
            table.add_row("pending", ", ".join(pending))
        table.add_row("status", "[green]up to date[/]" if ok else "[yellow]out of date[/]")
        state.out.print(table)
        if not ok:
            state.out.print("Run `ecrm db upgrade` (or `ecrm init`) to bring it up to date.")
    if check and not ok:
        raise click.exceptions.Exit(1)
