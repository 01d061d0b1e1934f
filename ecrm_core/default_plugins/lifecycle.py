"""The default customer lifecycle (plugin ``core.lifecycle``).

The stages follow the seeds' lifecycle: acquisition (prospects), cultivation
(new and active customers) and retention (at-risk, lapsed, won back).  The
rules that move customers between stages belong to the segments engine.
"""

from __future__ import annotations

from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import LifecycleStage

STAGES = (
    LifecycleStage(name="prospect", phase="acquisition", order=0, description="known, has not bought yet"),
    LifecycleStage(name="new", phase="cultivation", order=1, description="first purchase recently"),
    LifecycleStage(name="active", phase="cultivation", order=2, description="buys regularly"),
    LifecycleStage(name="at_risk", phase="retention", order=3, description="buying less than before"),
    LifecycleStage(name="lapsed", phase="retention", order=4, description="no purchase for a long time"),
    LifecycleStage(name="won_back", phase="retention", order=5, description="bought again after lapsing"),
)


@hookimpl
def ecrm_register_lifecycle_stages() -> tuple[LifecycleStage, ...]:
    return STAGES
