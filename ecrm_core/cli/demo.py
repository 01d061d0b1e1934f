"""``ecrm demo``: build the sample shop, print what ecrm knows, run the plugins' demo stages."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from .base import CONTEXT_SETTINGS, State, _money, _progress, _when, pass_state
from .customers import render_view

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

__all__ = ["demo_command", "render_report"]


class _RichDemoProgress:
    """Shows :func:`~ecrm_core.demo.build_demo`'s stages as progress bars."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, stage: str, total: int | None) -> None:
        if self.task is not None:
            previous = next(t for t in self.progress.tasks if t.id == self.task)
            self.progress.update(self.task, completed=previous.total or 1, total=previous.total or 1)
        self.task = self.progress.add_task(stage, total=total, detail="")

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


@click.command(
    "demo",
    context_settings=CONTEXT_SETTINGS,
    help="""Build a sample web shop and show what ecrm knows about it.

Generates customers (names, e-mails, phones, time zones, locales and
consent from six countries), two years of interactions (page and product
views, carts, purchases in five currencies with seasonal peaks, refunds,
newsletters, opens and clicks, complaints, inquiries; some customers churn,
some come back, a few buy a lot) and a few offers.  Then prints counts,
activity by kind and channel, revenue by month, top customers, active
offers and the 360° view of the best customer.

The schema is created if needed.  If the workspace already holds the
demo, it is reused as it is; --fresh deletes the demo data (demo-*
customers with their interactions, demo.* offers) and builds it again.
A workspace with customers that are not demo data is never touched.

Installed plugins add stages after the shop (hook ecrm_register_demo_stages):
a campaign run, an analytics report…; --core-only skips them.

\b
Examples:
  ecrm --db sqlite:///demo.db demo
  ecrm --db sqlite:///demo.db demo --customers 500 --seed 7 --fresh
  ecrm --db sqlite:///shop.db --workspace demo demo
""",
)
@click.option(
    "--customers",
    "n_customers",
    type=click.IntRange(1, 1_000_000),
    default=3000,
    show_default=True,
    help="How many customers to generate, e.g. --customers 200.",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: a fixed one, so every demo looks alike).")
@click.option("--months", type=click.IntRange(1, 120), default=24, show_default=True, help="Months of history.")
@click.option("--fresh", is_flag=True, help="Delete existing demo data and build it again.")
@click.option(
    "--core-only",
    is_flag=True,
    help="Skip the stages installed plugins add (a campaign run, an analytics report…).",
)
@pass_state
def demo_command(state: State, n_customers: int, seed: int | None, months: int, fresh: bool, core_only: bool) -> None:
    try:
        import faker  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs Faker: pip install 'ecrm-core[demo]'") from None
    from ..demo import DEFAULT_SEED, build_demo, shop_report

    crm = state.crm()
    with _progress(state) as bar:
        summary = build_demo(
            crm,
            customers=n_customers,
            seed=DEFAULT_SEED if seed is None else seed,
            months=months,
            fresh=fresh,
            progress=_RichDemoProgress(bar),
        )
    out = state.out
    if summary.reused:
        out.print(
            f"Reusing the demo already in {state.where()}: {summary.customers:,} customers. "
            "Pass --fresh to build it again.",
            soft_wrap=True,
        )
    else:
        out.print(
            f"Built the demo shop in {state.where()}: {summary.customers:,} customers, "
            f"{summary.interactions:,} interactions, {summary.offers} offers in {summary.seconds:.1f}s "
            f"(seed {summary.seed}).",
            soft_wrap=True,
        )
    render_report(state, shop_report(crm))
    if not core_only:
        _run_demo_stages(state, crm)


def _run_demo_stages(state: State, crm: Any) -> None:
    """Run the stages plugins add to the demo; show each one's output or error."""
    from rich.markup import escape

    from ..demo_stages import run_demo_stages

    if not crm.registry.demo_stages:
        return
    with _progress(state) as bar:
        outcomes = run_demo_stages(crm, _RichDemoProgress(bar))
    out = state.out
    for outcome in outcomes:
        out.rule(f"{escape(outcome.title)} [dim]({escape(outcome.plugin or '?')})[/]")
        if outcome.ok:
            if outcome.output is not None:
                out.print(outcome.output)
        else:
            out.print(f"[red]this stage failed: {escape(outcome.error or '')}[/] (the others went on)", soft_wrap=True)


def render_report(state: State, report: Any) -> None:
    """Print a :class:`~ecrm_core.demo.ShopReport`: what ecrm knows."""
    from rich.markup import escape
    from rich.table import Table

    out = state.out
    out.rule("What ecrm knows")
    counts = Table(title="Totals", title_justify="left", show_header=False)
    counts.add_row("customers", f"{report.customers:,}")
    counts.add_row("interactions", f"{report.interactions:,}")
    for stage, n in report.by_stage:
        counts.add_row(f"  stage {stage}", f"{n:,}")
    out.print(counts)

    kinds = Table(title="Interactions by kind and channel", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("channel")
    kinds.add_column("count", justify="right")
    for kind, channel, n in report.by_kind_channel:
        kinds.add_row(kind, channel or "", f"{n:,}")
    out.print(kinds)

    if report.revenue_by_month:
        peak = max((v for _, v in report.revenue_by_month), default=Decimal(1)) or Decimal(1)
        chart = Table(title="Net revenue by month (≈ EUR at fixed demo rates)", title_justify="left")
        chart.add_column("month")
        chart.add_column("revenue", justify="right")
        chart.add_column("", no_wrap=True)
        for month, value in report.revenue_by_month:
            width = max(0, int(30 * value / peak))
            chart.add_row(month, f"{value:,.0f}", "[cyan]" + "█" * width + "[/]")
        out.print(chart)
        currencies = Table(title="Revenue by currency", title_justify="left")
        currencies.add_column("currency")
        currencies.add_column("orders", justify="right")
        currencies.add_column("net revenue", justify="right")
        for currency, total, orders in report.revenue_by_currency:
            currencies.add_row(currency, f"{orders:,}", _money(total, currency))
        out.print(currencies)

    if report.top_customers:
        top = Table(title="Top customers by spend", title_justify="left")
        for column in ("id", "name", "email", "stage", "orders", "spend", "≈ EUR"):
            top.add_column(column, justify="right" if column in ("id", "orders", "spend", "≈ EUR") else "left")
        for t in report.top_customers:
            top.add_row(
                str(t.id),
                escape(t.name or ""),
                escape(t.email or ""),
                t.lifecycle_stage,
                str(t.orders),
                _money(t.spend, t.currency),
                f"{t.spend_eur:,.0f}",
            )
        out.print(top)

    if report.by_phase and report.customers:
        phases = Table(title="Customers by lifecycle phase (stages kept current by rules)", title_justify="left")
        phases.add_column("phase")
        phases.add_column("customers", justify="right")
        phases.add_column("", no_wrap=True)
        for phase, n in report.by_phase:
            phases.add_row(phase, f"{n:,}", "[green]" + "█" * round(30 * n / report.customers) + "[/]")
        out.print(phases)

    if report.segments:
        segs = Table(title="Segments (live: kept current as events arrive)", title_justify="left")
        for column in ("segment", "members", "rule"):
            segs.add_column(column, justify="right" if column == "members" else "left")
        for seg in report.segments:
            segs.add_row(escape(seg.name), f"{seg.member_count:,}", escape(seg.text or "(static list)"))
        out.print(segs)

    offers = Table(title="Active offers", title_justify="left")
    for column in ("code", "name", "kind", "priority", "channels", "valid until"):
        offers.add_column(column)
    for o in report.active_offers:
        offers.add_row(
            escape(o.code),
            escape(o.name),
            o.kind,
            str(o.priority),
            ", ".join(o.channels) or "any",
            _when(o.valid_until),
        )
    if not report.active_offers:
        offers.add_row("[dim]none[/]", "", "", "", "", "")
    out.print(offers)

    if report.top_customers:
        best = report.top_customers[0]
        out.rule(f"360° view of the best customer ({best.id})")
        render_view(out, state.crm().interactions.view(best.id, recent=10))
        out.print(f"Explore more: ecrm --db {state.db} customers show <id|email>", soft_wrap=True)
