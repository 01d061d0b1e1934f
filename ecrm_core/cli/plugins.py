"""``ecrm plugins``: every plugin's source, status, version, hooks and error."""

from __future__ import annotations

import json

import click

from ..errors import EcrmError
from .base import CONTEXT_SETTINGS, State, pass_state

__all__ = ["plugins_command"]


_STATUS_STYLE = {"loaded": "green", "failed": "bold red", "disabled": "dim"}


@click.command(
    "plugins",
    context_settings=CONTEXT_SETTINGS,
    help="""List the plugins: where each came from, its status, version, hooks and error.

Plugins that failed to load are listed with the reason (they never stop
ecrm).  Hook failures (a plugin that raised while registering) are listed
below the table.  Does not open the database.

\b
Examples:
  ecrm plugins
  ecrm plugins --json | jq '.plugins[] | select(.status == "failed")'
  ECRM_DISABLE_PLUGINS=ecrm_stats ecrm plugins
""",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@pass_state
def plugins_command(state: State, as_json: bool) -> None:
    infos = list(state.plugins.info.values())
    failures = list(state.plugins.failures)
    startup_error = state.load_error
    if startup_error is None:
        try:
            crm = state.crm()
        except EcrmError as exc:
            startup_error = str(exc)
        else:
            failures += list(crm.plugins.failures)
    if as_json:
        doc = {
            "plugins": [
                {
                    "name": i.name,
                    "source": i.source,
                    "status": i.status,
                    "version": i.version,
                    "hooks": list(i.hooks),
                    "hook_api": i.hook_api,
                    "error": i.error,
                }
                for i in infos
            ],
            "hook_failures": [
                {"plugin": f.plugin, "hook": f.hook, "error": f.error, "at": f.at.isoformat()} for f in failures
            ],
            "startup_error": startup_error,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="ecrm plugins", title_justify="left")
    for column in ("name", "source", "status", "version", "hooks"):
        table.add_column(column, no_wrap=column in ("source", "status", "version"), overflow="fold")
    table.add_column("error", overflow="fold", min_width=20)
    for i in infos:
        table.add_row(
            escape(i.name),
            i.source,
            f"[{_STATUS_STYLE.get(i.status, '')}]{i.status}[/]",
            escape(i.version or ""),
            "\n".join(h.removeprefix("ecrm_") for h in i.hooks),
            f"[red]{escape(i.error)}[/]" if i.error else "",
        )
    state.out.print(table)
    failed = sum(1 for i in infos if i.status == "failed")
    loaded = sum(1 for i in infos if i.status == "loaded")
    state.out.print(f"{loaded} loaded, {failed} failed, {len(infos) - loaded - failed} disabled")
    if failures:
        state.out.print("[bold red]Hook failures[/] (the plugin was skipped for that hook):")
        for f in failures:
            state.out.print(f"  {escape(f.plugin)} in {f.hook}: {escape(f.error)}", soft_wrap=True)
    if startup_error:
        state.out.print(
            f"[bold red]The CRM cannot start with these plugins:[/] {escape(startup_error)}", soft_wrap=True
        )
