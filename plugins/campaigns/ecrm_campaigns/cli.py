"""``ecrm campaigns ...``: create/apply from a YAML file, list, show, start, pause, resume, stop, export.

The commands work on the ``ecrm`` command line's CRM (``ecrm --db URL
--workspace W campaigns ...``); used outside ``ecrm`` they build one from
``ECRM_DATABASE_URL``.  Errors print the field and the fix, every problem of
a refused campaign on its own line, and exit with status 1.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

    from .service import Campaigns

__all__ = ["campaigns"]


def _crm(ctx: click.Context) -> CRM:
    import os

    from ecrm_core.crm import CRM

    obj = ctx.find_root().obj
    crm = obj if isinstance(obj, CRM) else getattr(obj, "crm", None)
    if callable(crm) and not isinstance(crm, CRM):
        crm = crm()
    if not isinstance(crm, CRM):
        crm = CRM(os.environ.get("ECRM_DATABASE_URL"), workspace=os.environ.get("ECRM_WORKSPACE") or "default")
        ctx.call_on_close(crm.close)
    from . import plugin

    if "campaigns" not in crm.db.tables:
        crm.register_plugin(plugin)
    return crm


def _svc(ctx: click.Context) -> Campaigns:
    from .service import Campaigns

    return Campaigns(_crm(ctx))


def _fail(exc: Exception) -> click.ClickException:
    problems = getattr(exc, "problems", None)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        return click.ClickException(f"campaign refused, {len(problems)} problem(s):\n{lines}")
    return click.ClickException(str(exc))


def _run(fn: Any, *args: Any, **kw: Any) -> Any:
    from ecrm_core.errors import EcrmError

    try:
        return fn(*args, **kw)
    except (EcrmError, LookupError) as exc:
        raise _fail(exc) from None


@click.group("campaigns")
def campaigns() -> None:
    """Campaigns: audience, offers, triggers and journeys (ecrm-campaigns)."""


@campaigns.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.File("r", encoding="utf-8"),
    help="The campaign as YAML ('-' for stdin).",
)
@click.option("--start", is_flag=True, help="Make the campaign live if it is a draft.")
@click.option("--actor", default=None, help="Who made the change (kept with the version).")
@click.pass_context
def apply_command(ctx: click.Context, path: Any, start: bool, actor: str | None) -> None:
    """Create the campaign in FILE, or store a new version of it if it changed."""
    svc = _svc(ctx)
    text = path.read()
    before = None
    from .model import Campaign

    key = _run(Campaign.from_yaml, text).key
    try:
        before = svc.get(key).version
    except Exception:
        before = None
    info = _run(svc.save, text, actor=actor)
    if start and info.status == "draft":
        info = _run(svc.start, info.key)
    what = "created" if before is None else ("new version" if info.version != before else "unchanged")
    click.echo(f"{info.key}: {what} (version {info.version}, {info.status})")


campaigns.add_command(apply_command, "create")


@campaigns.command("list")
@click.option("--status", type=click.Choice(["draft", "live", "paused", "stopped"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """The campaigns of the workspace."""
    items = _run(_svc(ctx).list, status=status)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "key": i.key,
                        "name": i.name,
                        "status": i.status,
                        "version": i.version,
                        "trigger": i.definition.trigger.type,
                    }
                    for i in items
                ],
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="campaigns")
    for col in ("key", "name", "status", "version", "trigger"):
        table.add_column(col)
    for i in items:
        table.add_row(i.key, i.name, i.status, str(i.version), i.definition.trigger.type)
    Console().print(table)


@campaigns.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_command(ctx: click.Context, key: str, as_json: bool) -> None:
    """A campaign's state: status, version, and its customers by status, step and arm."""
    svc = _svc(ctx)
    info = _run(svc.get, key)
    counts = _run(svc.counts, key)
    data = {
        "key": info.key,
        "name": info.name,
        "status": info.status,
        "version": info.version,
        "versions": [v.version for v in svc.versions(key)],
        "next_run_at": info.next_run_at.isoformat() if info.next_run_at else None,
        **counts,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"{info.key}: {info.name} — {info.status}, version {info.version}")
    for part in ("status", "step", "arm"):
        if counts[part]:
            click.echo(f"  by {part}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts[part].items(), key=str)))


@campaigns.command("export")
@click.argument("key")
@click.option("--version", type=int, default=None, help="An earlier version (default: the current one).")
@click.pass_context
def export_command(ctx: click.Context, key: str, version: int | None) -> None:
    """Print the campaign as YAML (``apply -f`` takes it back)."""
    sys.stdout.write(_run(_svc(ctx).export, key, version))


def _lifecycle(name: str, doc: str) -> None:
    @campaigns.command(name, help=doc)
    @click.argument("key")
    @click.pass_context
    def command(ctx: click.Context, key: str) -> None:
        info = _run(getattr(_svc(ctx), name), key)
        click.echo(f"{info.key}: {info.status}")


_lifecycle("start", "Make a draft campaign live.")
_lifecycle("pause", "Pause a live campaign (customers keep their place).")
_lifecycle("resume", "Resume a paused campaign.")
_lifecycle("stop", "Stop a campaign for good (active journeys end).")


@campaigns.command("trigger")
@click.argument("key")
@click.argument("customer_ids", nargs=-1, type=int, required=True)
@click.pass_context
def trigger_command(ctx: click.Context, key: str, customer_ids: tuple[int, ...]) -> None:
    """Enroll customers now (the explicit trigger)."""
    report = _run(_svc(ctx).trigger, key, list(customer_ids))
    click.echo(f"{key}: {report.entered} entered, {report.held_out} held out, skipped {dict(report.skipped)}")


@campaigns.command("report")
@click.argument("key")
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write a chart to this .svg or .png file.",
)
@click.option(
    "--chart-kind",
    type=click.Choice(["uplift", "funnel"]),
    default=None,
    help="Which chart (default: the uplift when the campaign has a holdout, else the funnel).",
)
@click.pass_context
def report_command(
    ctx: click.Context, key: str, confidence: float, as_json: bool, chart_path: str | None, chart_kind: str | None
) -> None:
    """Results by arm and by send step (reached, sent, delivered, opened, clicked, bounced,
    unsubscribed, complained, converted, revenue) and the uplift against the holdout."""
    ev = _run(_svc(ctx).evaluate, key, confidence=confidence)
    if chart_path:
        from ecrm_core.charts import write

        kind = chart_kind or ("uplift" if ev.uplifts else "funnel")
        _run(write, ev.uplift_chart() if kind == "uplift" else ev.funnel_chart(), chart_path)
    if as_json:
        click.echo(json.dumps(ev.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    goal = f"goal {ev.goal} within {ev.within}" if ev.goal else "no goal"
    table = Table(title=f"{key}: by arm ({goal})")
    cols = (
        "arm",
        "entered",
        "messaged",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "rate",
        "revenue/recipient",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "arm" else "right")
    for a in ev.arms:
        table.add_row(
            a.name,
            *(
                str(getattr(a, k))
                for k in ("entered", "messaged", "sent", "delivered", "opened", "clicked", "converted")
            ),
            f"{a.rate:.1%}",
            str(a.revenue_per_recipient),
        )
    console = Console()
    console.print(table)
    if ev.steps:
        steps = Table(title=f"{key}: by send step")
        scols = ("step", "arm", "reached", "blocked", "sent", "delivered", "opened", "clicked", "bounced")
        for col in (*scols, "unsub.", "complaints", "converted", "revenue/recipient"):
            steps.add_column(col, justify="left" if col in ("step", "arm") else "right")
        for r in ev.steps:
            steps.add_row(
                r.step,
                r.arm,
                *(str(getattr(r, k)) for k in scols[2:]),
                str(r.unsubscribed),
                str(r.complained),
                str(r.converted),
                str(r.revenue_per_recipient),
            )
        console.print(steps)
    for line in ev.summary():
        console.print(line)
    for note in ev.notes:
        console.print(f"[yellow]{note}[/]")
    if chart_path:
        console.print(f"chart written to {chart_path}")


@campaigns.command("simulate")
@click.argument("key")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True, help="How many days ahead.")
@click.option(
    "--every", default="1d", show_default=True, help="How often dynamic segments are evaluated (like their refresh)."
)
@click.option("--customer", "customer_ids", type=int, multiple=True, help="A customer entering at the start (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result.")
@click.option("--details", is_flag=True, help="With --json: list the entries and messages (the first 10,000).")
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the chart (entrants and messages per day) to this .svg or .png file.",
)
@click.pass_context
def simulate_command(
    ctx: click.Context,
    key: str,
    days: int,
    every: str,
    customer_ids: tuple[int, ...],
    as_json: bool,
    details: bool,
    chart_path: str | None,
) -> None:
    """What the campaign would do over the next DAYS days, on the real data, without sending."""
    from rich.console import Console

    sim = _run(_svc(ctx).simulate, key, days=days, every=every, customer_ids=list(customer_ids) or None)
    if chart_path:
        from ecrm_core.charts import write

        _run(write, sim.chart(), chart_path)
    if as_json:
        click.echo(json.dumps(sim.to_dict(details=details), indent=2))
        return
    from ecrm_core.charts import to_rich

    console = Console()
    console.print(sim.table())
    console.print(to_rich(sim.chart()))
    if chart_path:
        console.print(f"chart written to {chart_path}")
