"""The ``ecrm demo`` stage of the needs analysis: what sells, who is alike, what to offer whom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.registry import DemoStage

__all__ = ["clusters_table", "demo_stages", "run_needs_stage"]


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def clusters_table(report: Any) -> Any:
    """The clusters report laid out for an 80-column terminal: one column per cluster
    (k is at most 6-8), one row per measure, the clusters' labels listed above the
    table instead of in a column that would wrap every row."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    records = report.records()
    if not records:
        return report.to_rich()
    parts: list[Any] = []
    if report.summary:
        parts.append(escape("  ".join(f"{k}: {_number(v)}" for k, v in report.summary.items())))
    parts.extend(escape(f"cluster {r['cluster']}: {r['label']}") for r in records)
    table = Table(title=escape(report.title), caption=escape(report.caption) or None)
    table.add_column("cluster")
    for r in records:
        table.add_column(escape(str(r["cluster"])), justify="right", no_wrap=True)
    for column in report.columns:
        if column not in ("cluster", "label"):
            table.add_row(escape(column), *(_number(r[column]) for r in records))
    parts.append(table)
    return Group(*parts)


def run_needs_stage(crm: Any, progress: Any) -> Any:
    """Sales by channel, attribution, category rules, clusters in words and their category affinity."""
    from rich.console import Group

    from .reports import report

    steps = 5
    if progress is not None:
        progress.start("needs analysis", steps)

    def step() -> None:
        if progress is not None:
            progress.advance(1)

    sales = report(crm, "sales", by="channel", days=365)
    step()
    attribution = report(crm, "attribution", by="channel", days=365)
    step()
    basket = report(crm, "basket", level="category", min_support=0.01, min_confidence=0.05, top=8, save_rules=True)
    step()
    clusters = report(crm, "clusters", k_max=6, save=True)
    step()
    affinity = report(crm, "affinity", by="cluster", top=2)
    step()
    return Group(
        sales.to_rich(limit=8),
        attribution.to_rich(limit=8),
        basket.to_rich(limit=8),
        clusters_table(clusters),
        affinity.to_rich(limit=16),
    )


def demo_stages() -> list[DemoStage]:
    from ecrm_core.registry import DemoStage

    return [
        DemoStage(
            name="analytics.needs",
            title="Customer needs and sales: bought together, clusters, affinity, attribution",
            run=run_needs_stage,
            order=110,
        )
    ]
