"""The stages plugins add to ``ecrm demo`` (hook ``ecrm_register_demo_stages``).

The core builds the sample shop (:func:`~ecrm_core.demo.build_demo`); then
each installed plugin that registered a :class:`~ecrm_core.registry.DemoStage`
shows what it does with it — a campaign run, an analytics report — in
``order``.  :func:`run_demo_stages` runs them one by one, each isolated: a
stage that raises is recorded (``crm.plugins.failures``, hook
``ecrm_register_demo_stages``) and returned with its error, and the next
one still runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from attrs import frozen

if TYPE_CHECKING:  # pragma: no cover
    from .crm import CRM
    from .demo import DemoProgress

__all__ = ["StageOutcome", "run_demo_stages"]


@frozen(kw_only=True)
class StageOutcome:
    """What one demo stage did: its output (a rich renderable or a string) or its error."""

    name: str
    title: str
    plugin: str | None
    output: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def run_demo_stages(
    crm: CRM, progress: DemoProgress | None = None, *, only: Iterable[str] | None = None
) -> list[StageOutcome]:
    """Run the registered demo stages (all, or those named in ``only``) in order.

    >>> from ecrm_core import CRM
    >>> crm = CRM("sqlite://")
    >>> run_demo_stages(crm)          # no plugin added a stage
    []
    """
    wanted = None if only is None else set(only)
    stages = sorted(crm.registry.demo_stages.values(), key=lambda s: (s.order, s.name))
    outcomes: list[StageOutcome] = []
    for stage in stages:
        if wanted is not None and stage.name not in wanted:
            continue
        started = time.perf_counter()
        try:
            output = stage.run(crm, progress)
        except Exception as exc:
            crm.plugins.record_failure(stage.plugin or "?", "ecrm_register_demo_stages", exc)
            outcomes.append(
                StageOutcome(
                    name=stage.name,
                    title=stage.title,
                    plugin=stage.plugin,
                    error=f"{type(exc).__name__}: {exc}",
                    seconds=time.perf_counter() - started,
                )
            )
        else:
            outcomes.append(
                StageOutcome(
                    name=stage.name,
                    title=stage.title,
                    plugin=stage.plugin,
                    output=output,
                    seconds=time.perf_counter() - started,
                )
            )
    return outcomes
