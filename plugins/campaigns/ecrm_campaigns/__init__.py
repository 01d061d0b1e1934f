"""ecrm-campaigns: campaigns as data — audience, offers, triggers, journeys, holdouts and variants —
executed set-based by ``ecrm worker``.

``campaigns(crm)`` is the Python API (see docs/plugins/campaigns)::

    from ecrm_campaigns import campaigns
    info = campaigns(crm).save(open("welcome.yaml").read())
    campaigns(crm).start(info.key)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import Action
from .model import Audience, Campaign, Case, Goal, OfferRef, Reentry, Step, Trigger, Variant, Window
from .plugin import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .service import Campaigns

__all__ = [
    "Action",
    "Audience",
    "Campaign",
    "CampaignInvalid",
    "Campaigns",
    "Case",
    "Goal",
    "OfferRef",
    "Reentry",
    "Step",
    "Trigger",
    "Variant",
    "Window",
    "__version__",
    "campaigns",
]


def campaigns(crm: CRM) -> Campaigns:
    """The campaigns of ``crm`` (in its workspace)."""
    from .service import Campaigns

    return Campaigns(crm)


def __getattr__(name: str) -> Any:
    if name == "Campaigns":
        from .service import Campaigns

        return Campaigns
    if name == "CampaignInvalid":
        from .validate import CampaignInvalid

        return CampaignInvalid
    raise AttributeError(name)
