"""Live segments (plugin ``core.segments``).

After every committed change — interactions recorded, customers created,
updated or merged — re-evaluates lifecycle stages and segments for the
customers concerned only (incremental refresh), so that membership is
current as events arrive.  ``CRM(live_segments=False)`` or
``crm.segments.paused()`` turn this off (bulk loads); a full
``crm.segments.refresh()`` then catches up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Customer, CustomerChange, InteractionBatch, MergeRecord


@hookimpl
def ecrm_interactions_recorded(crm: CRM, batch: InteractionBatch) -> None:
    if crm.segments.live:
        crm.segments.refresh(customer_ids=sorted(batch.customer_ids), kinds=batch.kinds, customers_changed=False)


@hookimpl
def ecrm_customers_created(crm: CRM, customers: Sequence[Customer]) -> None:
    if crm.segments.live:
        crm.segments.refresh(customer_ids=[c.id for c in customers if c.id], kinds=())


@hookimpl
def ecrm_customers_updated(crm: CRM, changes: Sequence[CustomerChange]) -> None:
    if crm.segments.live:
        crm.segments.refresh(customer_ids=[ch.after.id for ch in changes if ch.after.id], kinds=())


@hookimpl
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    if crm.segments.live:
        # The target received the source's interactions: any rule may change.
        crm.segments.refresh(customer_ids=[merge.target_id, merge.source_id])
