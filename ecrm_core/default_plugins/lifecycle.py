"""The default customer lifecycle (plugin ``core.lifecycle``).

The stages follow the seeds' lifecycle — acquisition (prospects, new
customers), cultivation (active customers) and retention (at risk, lapsed,
won back) — each with a default rule over purchases.  Rules are tried by
``precedence`` (the first that holds wins); ``crm.lifecycle.set_rules``
overrides them per workspace.
"""

from __future__ import annotations

from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import LifecycleStage

STAGES = (
    LifecycleStage(
        name="prospect",
        phase="acquisition",
        order=0,
        precedence=60,
        description="known, has not bought yet",
        rule="purchase.count() == 0",
    ),
    LifecycleStage(
        name="new",
        phase="acquisition",
        order=1,
        precedence=20,
        description="first purchase in the last 30 days",
        rule="purchase.first() within 30d",
    ),
    LifecycleStage(
        name="active",
        phase="cultivation",
        order=2,
        precedence=30,
        description="bought in the last 90 days",
        rule="purchase.last() within 90d",
    ),
    LifecycleStage(
        name="at_risk",
        phase="retention",
        order=3,
        precedence=40,
        description="last purchase 90 to 180 days ago",
        rule="purchase.last() within 180d",
    ),
    LifecycleStage(
        name="lapsed",
        phase="retention",
        order=4,
        precedence=50,
        description="no purchase for more than 180 days",
        rule="purchase.last() older_than 180d",
    ),
    LifecycleStage(
        name="won_back",
        phase="retention",
        order=5,
        precedence=10,
        description="bought in the last 30 days after more than 180 days without buying",
        rule="purchase.count(30d) >= 1 and purchase.count(210d..30d) == 0 and purchase.first() older_than 210d",
    ),
)


@hookimpl
def ecrm_register_lifecycle_stages() -> tuple[LifecycleStage, ...]:
    return STAGES
