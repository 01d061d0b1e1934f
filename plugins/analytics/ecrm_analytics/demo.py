"""The ``ecrm demo`` stage of the plugin: who the champions are, who is slipping away."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.registry import DemoStage

__all__ = ["demo_stages", "run_value_stage"]


def run_value_stage(crm: Any, progress: Any) -> Any:
    """Compute RFM (and CLV) for the demo shop and show the groups, the champions and who is slipping away."""
    from rich.console import Group

    from .reports import report
    from .service import analytics

    if progress is not None:
        progress.start("analytics", 3)
    result = analytics(crm).refresh(full=True)
    if progress is not None:
        progress.advance(1)
    groups = report(crm, "rfm")
    champions = report(crm, "rfm", group="champions", top=5)
    if progress is not None:
        progress.advance(1)
    slipping = report(crm, "rfm", group="cant_lose_them", top=5)
    at_risk = report(crm, "rfm", group="at_risk", top=5)
    if progress is not None:
        progress.advance(1)
    return Group(
        result.describe(),
        groups.to_rich(limit=11),
        champions.to_rich(limit=5),
        slipping.to_rich(limit=5),
        at_risk.to_rich(limit=5),
    )


def demo_stages() -> list[DemoStage]:
    from ecrm_core.registry import DemoStage

    return [
        DemoStage(name="analytics.value", title="Customer value: RFM groups and lifetime value", run=run_value_stage)
    ]
