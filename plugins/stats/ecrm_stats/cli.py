"""``ecrm stats rebuild`` and ``ecrm stats show ID``.

Which CRM the commands work on, first match wins:

1. ``ecrm stats --url URL ...``: a CRM built for that URL (``--table-prefix``
   or ``ECRM_TABLE_PREFIX``; the installed plugins loaded);
2. the ``ecrm`` command line's own CRM, built from its global options
   (``ctx.find_root().obj.crm()``; a :class:`~ecrm_core.CRM` as ``ctx.obj``
   also works);
3. a CRM built from ``ECRM_DATABASE_URL`` (default ``sqlite:///ecrm.db``)
   when the group is used outside ``ecrm``.

``--workspace`` switches the workspace in every case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["stats"]


def _from_context(ctx: click.Context) -> CRM | None:
    from ecrm_core.crm import CRM

    obj = ctx.find_root().obj
    if isinstance(obj, CRM):
        return obj
    candidate = getattr(obj, "crm", None)
    if callable(candidate) and not isinstance(candidate, CRM):
        candidate = candidate()
    return candidate if isinstance(candidate, CRM) else None


@click.group("stats")
@click.option("--url", default=None, help="Database URL (default: the one of `ecrm --db`).")
@click.option(
    "--table-prefix", envvar="ECRM_TABLE_PREFIX", default=None, help="Table prefix with --url (default 'ecrm_')."
)
@click.option(
    "--workspace", default=None, help="Workspace (tenant) to work in (default: the one of `ecrm --workspace`)."
)
@click.pass_context
def stats(ctx: click.Context, url: str | None, table_prefix: str | None, workspace: str | None) -> None:
    """Per-customer interaction aggregates (ecrm-stats)."""
    ctx.meta["ecrm_stats"] = {"url": url, "table_prefix": table_prefix, "workspace": workspace}


def _options(ctx: click.Context) -> dict[str, Any]:
    return ctx.meta.get("ecrm_stats", {})  # type: ignore[no-any-return]


@stats.command("rebuild")
@click.option("--all-workspaces", is_flag=True, help="Rebuild every workspace, not only the current one.")
@click.pass_context
def rebuild_command(ctx: click.Context, all_workspaces: bool) -> None:
    """Recompute the stats from the interactions table (one INSERT ... SELECT ... GROUP BY)."""
    import time

    from rich.console import Console

    from .store import rebuild

    crm = _open(ctx)
    start = time.perf_counter()
    rows = rebuild(crm, all_workspaces=all_workspaces)
    scope = "every workspace" if all_workspaces else f"workspace {crm.workspace!r}"
    Console().print(f"[green]rebuilt[/] {rows} stats row(s) for {scope} in {time.perf_counter() - start:.2f} s")


@stats.command("show")
@click.argument("customer_id", type=int)
@click.pass_context
def show_command(ctx: click.Context, customer_id: int) -> None:
    """Show the stats of customer CUSTOMER_ID."""
    from ecrm_core.errors import EcrmError
    from rich.console import Console
    from rich.table import Table

    from .store import stats_for

    crm = _open(ctx)
    try:
        s = stats_for(crm, customer_id)
    except EcrmError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()
    if not s.by_kind:
        console.print(f"customer {s.customer_id}: no interactions")
        return
    table = Table(title=f"customer {s.customer_id}")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("amount", justify="right")
    table.add_column("first")
    table.add_column("last")
    for k in s.by_kind.values():
        amount = "" if k.amount_sum is None else f"{k.amount_sum.normalize():f}"
        table.add_row(k.kind, str(k.count), amount, k.first_at.isoformat(), k.last_at.isoformat())
    console.print(table)


def _open(ctx: click.Context) -> CRM:
    """The CRM to work on (see the module doc); one built here is closed when the command ends."""
    import os

    options = _options(ctx)
    url = options.get("url")
    crm = None if url else _from_context(ctx)
    if crm is None:
        from ecrm_core.crm import CRM

        crm = CRM(
            url or os.environ.get("ECRM_DATABASE_URL"),
            table_prefix=options.get("table_prefix") or "ecrm_",
            workspace=os.environ.get("ECRM_WORKSPACE") or "default",
        )
        ctx.call_on_close(crm.close)
    from . import plugin

    if "customer_stats" not in crm.db.tables:
        crm.register_plugin(plugin)
    workspace = options.get("workspace")
    return crm.in_workspace(workspace) if workspace else crm
