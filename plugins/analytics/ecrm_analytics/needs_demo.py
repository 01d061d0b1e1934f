"""The ``ecrm demo`` stage of the needs analysis: what sells, who is alike, what to offer whom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.registry import DemoStage

__all__ = ["demo_stages", "run_needs_stage"]


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
        clusters.to_rich(limit=8),
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
