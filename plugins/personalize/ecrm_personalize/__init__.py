"""ecrm-personalize: the four types of personalization, recommenders and one decision API that learns.

``personalize(crm)`` is the Python API (see docs/plugins/personalize)::

    from ecrm_personalize import personalize
    p = personalize(crm)
    p.define("home", k=4, control=0.1)
    d = p.decide(customer.id, "home", {"locale": "en"})
    p.report(d.id, "click", d.items[0].sku)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import Alternative, Decision, Item, OfferPick, Outcome, OutcomeResult, Placement, Product
from .plugin import __version__
from .strategies import Candidate, DecisionContext, OfferCandidate, Strategy
from .tokens import COOKIE_NAME

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .service import Personalize

__all__ = [
    "COOKIE_NAME",
    "Alternative",
    "Candidate",
    "Decision",
    "DecisionContext",
    "Item",
    "OfferCandidate",
    "OfferPick",
    "Outcome",
    "OutcomeResult",
    "Personalize",
    "Placement",
    "Product",
    "Strategy",
    "__version__",
    "personalize",
]


def personalize(crm: CRM, *, seed: int | None = None) -> Personalize:
    """Personalization for ``crm`` (in its workspace); ``seed`` makes the bandits' random draws
    repeatable (tests, simulations)."""
    from .service import Personalize

    return Personalize(crm, seed=seed)


def __getattr__(name: str) -> Any:
    if name == "Personalize":
        from .service import Personalize

        return Personalize
    raise AttributeError(name)
