"""``ecrm personalize ...``: refresh the recommenders, evaluate them, try a decision, look at bandits and uplift.

The commands work on the ``ecrm`` command line's CRM (``ecrm --db URL
--workspace W personalize ...``); used outside ``ecrm`` they build one from
``ECRM_DATABASE_URL``.  Errors print the field and the fix and exit with
status 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

    from .service import Personalize

__all__ = ["personalize"]


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

    if "personalize_recs" not in crm.db.tables:
        crm.register_plugin(plugin)
    return crm


def _svc(ctx: click.Context) -> Personalize:
    from .service import Personalize

    return Personalize(_crm(ctx))


def _run(fn: Any, *args: Any, **kw: Any) -> Any:
    from ecrm_core.errors import EcrmError

    try:
        return fn(*args, **kw)
    except EcrmError as exc:
        raise click.ClickException(str(exc)) from None


def _console() -> Any:
    from rich.console import Console

    return Console()


@click.group("personalize")
def personalize() -> None:
    """Personalization: recommenders, decisions, bandits (ecrm-personalize)."""


@personalize.command("refresh")
@click.pass_context
def refresh_cmd(ctx: click.Context) -> None:
    """Recompute every recommendation list now (what the worker's personalize.refresh job does)."""
    with _console().status("computing popularity, co-occurrence and content similarity…"):
        report = _run(_svc(ctx).refresh)
    d = report.to_dict()
    click.echo(
        f"{sum(d['lists'].values())} lists ({', '.join(f'{k} {v}' for k, v in d['lists'].items())}) from "
        f"{d['interactions']} interactions of {d['customers']} customers and {d['products']} products "
        f"in {d['seconds']['total']:.2f} s"
    )


@personalize.command("evaluate")
@click.option(
    "--k", "k", default=10, show_default=True, type=click.IntRange(1, 100), help="Recommendations per customer."
)
@click.option(
    "--holdout", default=1, show_default=True, type=click.IntRange(1, 10), help="Purchases held out per customer."
)
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), help="Write the chart (.svg or .png).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def evaluate_cmd(ctx: click.Context, k: int, holdout: int, chart_path: str | None, as_json: bool) -> None:
    """Replay held-out purchases: hit-rate@k, coverage and novelty of each recommender vs popularity."""
    with _console().status("training on the history without the held-out purchases…"):
        ev = _run(_svc(ctx).evaluate, k=k, holdout=holdout, min_purchases=holdout + 1)
    if as_json:
        click.echo(json.dumps(ev.to_dict(), indent=2))
    else:
        from rich.table import Table

        table = Table(title=f"Offline evaluation on {ev.customers} customers (k={k})")
        for col in ("recommender", f"hit-rate@{k}", "vs popularity", "coverage", "novelty (bits)"):
            table.add_column(col, justify="right" if col != "recommender" else "left")
        for s in ev.scores:
            table.add_row(
                s.recommender,
                f"{s.hit_rate:.1%}",
                "-" if s.lift is None else f"{s.lift:.2f}x",
                f"{s.coverage:.1%}",
                f"{s.novelty:.2f}",
            )
        _console().print(table)
    if chart_path:
        from ecrm_core.charts import write

        write(ev.chart(), chart_path)
        click.echo(f"chart written to {chart_path}")


@personalize.command("decide")
@click.argument("placement")
@click.option("--customer", "customer_id", type=click.IntRange(1), help="The customer's id.")
@click.option("--visitor", help="A visitor cookie.")
@click.option("--context", "context", default="{}", help='The page context as JSON, e.g. \'{"sku": "A-1"}\'.')
@click.pass_context
def decide_cmd(ctx: click.Context, placement: str, customer_id: int | None, visitor: str | None, context: str) -> None:
    """Make one decision and print it (items, offers, presentation, explanation) as JSON."""
    try:
        data = json.loads(context)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--context") from None
    d = _run(_svc(ctx).decide, None, placement, data, customer_id=customer_id, visitor=visitor)
    click.echo(json.dumps(d.to_dict(), indent=2, ensure_ascii=False))


@personalize.command("arms")
@click.argument("placement")
@click.pass_context
def arms_cmd(ctx: click.Context, placement: str) -> None:
    """The bandit of a placement: trials, wins and win rate per segment and alternative."""
    from rich.table import Table

    arms = _run(_svc(ctx).arms, placement)
    table = Table(title=f"Bandit of {placement!r}")
    for col in ("segment", "alternative", "trials", "wins", "win rate"):
        table.add_column(col)
    for seg, by_arm in arms.items():
        for arm, n in by_arm.items():
            rate = f"{n['wins'] / n['trials']:.1%}" if n["trials"] else "-"
            table.add_row(seg, arm, str(n["trials"]), str(n["wins"]), rate)
    _console().print(table)


@personalize.command("uplift")
@click.argument("placement")
@click.pass_context
def uplift_cmd(ctx: click.Context, placement: str) -> None:
    """Personalized vs control group of a placement: impressions, clicks, conversions and rates."""
    click.echo(json.dumps(_run(_svc(ctx).uplift, placement), indent=2))
