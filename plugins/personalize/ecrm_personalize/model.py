"""The plugin's value objects: placements (where and how to decide) and decisions (what was decided, and why)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen
from ecrm_core.errors import ValidationError
from ecrm_core.validation import check_slug

__all__ = [
    "RECOMMENDERS",
    "Alternative",
    "Decision",
    "Item",
    "OfferPick",
    "Outcome",
    "OutcomeResult",
    "Placement",
    "Product",
]

#: the recommenders a placement may ask for (``auto`` blends the others)
RECOMMENDERS = ("auto", "popular", "cooccurrence", "content", "recent")
#: the outcome events a decision can receive
EVENTS = ("impression", "click", "conversion")
MAX_K = 50
_SEGMENT_BY = re.compile(r"^(lifecycle|none|attribute:[a-z][a-z0-9_]{0,63})$")
_DEFAULT_STRATEGIES = ("preferences", "greeting", "ranked", "bandit")


def _text(value: Any, where: str, max_length: int = 2000) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise ValidationError(where, value, f"not a text of at most {max_length} characters", "send a string")
    return value


def _mapping_of_text(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 100:
        raise ValidationError(where, value, "not a mapping of at most 100 entries", 'send e.g. {"en": "Hello"}')
    return {_text(k, f"{where}.key", 64): _text(v, f"{where}.{k}") for k, v in value.items()}


@frozen(kw_only=True)
class Alternative:
    """One alternative an adaptive placement offers (an arm of its bandit).

    ``offer``: an offer code shown when this alternative is chosen;
    ``variant``: presentation fields it sets (``{"layout": "carousel"}``).
    """

    name: str = field(converter=lambda v: check_slug(v, "alternatives.name", "alternative name"))
    offer: str | None = None
    variant: Mapping[str, str] = field(factory=dict)
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.offer:
            out["offer"] = self.offer
        if self.variant:
            out["variant"] = dict(self.variant)
        if self.label:
            out["label"] = self.label
        return out


@frozen(kw_only=True)
class Placement:
    """Where a decision is made, and how.

    * ``strategies``: the strategy plugins applied, in order (registered
      through ``ecrm_register_strategies``);
    * ``recommender``: which precomputed lists feed the items (``auto``:
      co-occurrence from purchases, content similarity from views, recently
      viewed, popularity to fill);
    * ``k``: how many items to return (1-50); ``offers``: how many offers;
    * ``alternatives``: the arms the adaptive strategy chooses between
      (shown ranked, all of them); ``reward``: the event that counts as a win
      (``click`` or ``conversion``); ``segment_by``: one bandit per
      ``lifecycle`` stage, per value of an ``attribute:<name>``, or ``none``;
    * ``control``: the share (0-0.5) of people held out of personalization
      (popular items, the default presentation), drawn deterministically per
      person, so the uplift of personalization itself is measured;
    * ``exclude_bought``: never recommend what the person already bought;
    * ``greetings``: greeting templates by locale (sandboxed Jinja2:
      ``name``, ``first_name``, ``part_of_day``, ``tone``, ``locale``);
      ``tones`` and ``layouts``: presentation by lifecycle stage
      (``default`` for the rest);
    * ``options``: per-strategy settings, by strategy name.
    """

    name: str = field(converter=lambda v: check_slug(v, "name", "placement name"))
    strategies: tuple[str, ...] = _DEFAULT_STRATEGIES
    recommender: str = "auto"
    k: int = 10
    offers: int = 3
    alternatives: tuple[Alternative, ...] = ()
    reward: str = "click"
    segment_by: str = "lifecycle"
    control: float = 0.0
    exclude_bought: bool = True
    greetings: Mapping[str, str] = field(factory=dict)
    tones: Mapping[str, str] = field(factory=dict)
    layouts: Mapping[str, str] = field(factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.recommender not in RECOMMENDERS:
            raise ValidationError(
                "recommender", self.recommender, "unknown recommender", f"use one of {', '.join(RECOMMENDERS)}"
            )
        for name, value, hi in (("k", self.k, MAX_K), ("offers", self.offers, 20)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise ValidationError(name, value, f"not a count between 0 and {hi}", f"send e.g. {name}=5")
        if self.reward not in ("click", "conversion"):
            raise ValidationError("reward", self.reward, "not a reward event", "use 'click' or 'conversion'")
        if not isinstance(self.segment_by, str) or not _SEGMENT_BY.match(self.segment_by):
            raise ValidationError(
                "segment_by", self.segment_by, "not a segmentation", "use 'lifecycle', 'none' or 'attribute:<name>'"
            )
        if isinstance(self.control, bool) or not isinstance(self.control, int | float) or not 0 <= self.control <= 0.5:
            raise ValidationError("control", self.control, "not a share between 0 and 0.5", "send e.g. 0.1")
        if len(self.alternatives) > 20:
            raise ValidationError("alternatives", len(self.alternatives), "more than 20", "offer fewer alternatives")
        names = [a.name for a in self.alternatives]
        if len(set(names)) != len(names):
            raise ValidationError("alternatives", names, "names repeat", "give each alternative its own name")
        if len(self.strategies) > 20:
            raise ValidationError("strategies", self.strategies, "more than 20", "apply fewer strategies")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str | None = None) -> Placement:
        """Build and check a placement from JSON data (unknown keys are refused)."""
        if not isinstance(data, Mapping):
            raise ValidationError("placement", data, "not a mapping", "send an object")
        known = {
            "name",
            "strategies",
            "recommender",
            "k",
            "offers",
            "alternatives",
            "reward",
            "segment_by",
            "control",
            "exclude_bought",
            "greetings",
            "tones",
            "layouts",
            "options",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(
                unknown[0], data[unknown[0]], "unknown placement field", f"use {', '.join(sorted(known))}"
            )
        fields = dict(data)
        if name is not None:
            fields["name"] = name
        if "name" not in fields:
            raise ValidationError("name", None, "missing", "name the placement, e.g. 'home_hero'")
        strategies = fields.get("strategies", _DEFAULT_STRATEGIES)
        if not isinstance(strategies, Sequence) or isinstance(strategies, str):
            raise ValidationError("strategies", strategies, "not a list", 'send e.g. ["greeting", "ranked"]')
        fields["strategies"] = tuple(
            check_slug(s, f"strategies[{i}]", "strategy name") for i, s in enumerate(strategies)
        )
        alts = fields.get("alternatives", ())
        if not isinstance(alts, Sequence) or isinstance(alts, str):
            raise ValidationError("alternatives", alts, "not a list", 'send e.g. [{"name": "spring"}]')
        out = []
        for i, a in enumerate(alts):
            if isinstance(a, str):
                a = {"name": a}
            if not isinstance(a, Mapping) or set(a) - {"name", "offer", "variant", "label"}:
                raise ValidationError(
                    f"alternatives[{i}]", a, "not an alternative", "send {name, offer?, variant?, label?}"
                )
            out.append(
                Alternative(
                    name=a.get("name"),
                    offer=check_slug(a["offer"], f"alternatives[{i}].offer", "offer code") if a.get("offer") else None,
                    variant=_mapping_of_text(a.get("variant"), f"alternatives[{i}].variant"),
                    label=_text(a.get("label", ""), f"alternatives[{i}].label", 200),
                )
            )
        fields["alternatives"] = tuple(out)
        for key in ("greetings", "tones", "layouts"):
            fields[key] = _mapping_of_text(fields.get(key), key)
        options = fields.get("options") or {}
        if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
            raise ValidationError("options", options, "not a mapping of mappings", 'send e.g. {"ranked": {...}}')
        from ecrm_core.validation import check_json

        fields["options"] = {str(k): dict(v) for k, v in options.items()}
        check_json(fields["options"], "options")  # the core's JSON rules: finite numbers, depth, sizes
        if "exclude_bought" in fields and not isinstance(fields["exclude_bought"], bool):
            raise ValidationError("exclude_bought", fields["exclude_bought"], "not a boolean", "send true or false")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategies": list(self.strategies),
            "recommender": self.recommender,
            "k": self.k,
            "offers": self.offers,
            "alternatives": [a.to_dict() for a in self.alternatives],
            "reward": self.reward,
            "segment_by": self.segment_by,
            "control": self.control,
            "exclude_bought": self.exclude_bought,
            "greetings": dict(self.greetings),
            "tones": dict(self.tones),
            "layouts": dict(self.layouts),
            "options": {k: dict(v) for k, v in self.options.items()},
        }


@frozen(kw_only=True)
class Product:
    """A catalogue entry the recommenders can recommend."""

    sku: str
    title: str
    category: str | None = None
    attributes: Mapping[str, Any] = field(factory=dict)
    available: bool = True


@frozen(kw_only=True)
class Item:
    """One recommended product, with its score and the reasons it is there."""

    sku: str
    title: str
    category: str | None
    score: float
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "title": self.title,
            "category": self.category,
            "score": round(self.score, 6),
            "reasons": list(self.reasons),
        }


@frozen(kw_only=True)
class OfferPick:
    """One offer chosen for the person (``reason``: why it ranks where it does)."""

    code: str
    name: str
    kind: str
    content: Mapping[str, Any]
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "kind": self.kind,
            "content": dict(self.content),
            "score": round(self.score, 6),
            "reason": self.reason,
        }


@frozen(kw_only=True)
class Decision:
    """What :meth:`~ecrm_personalize.Personalize.decide` answered.

    ``id`` is the decision id to report outcomes against (a signed token:
    nothing is written when deciding).  ``group`` is ``personalized`` or
    ``control``; ``segment`` the bandit segment; ``alternatives`` the
    adaptive alternatives in the order shown; ``variant`` the presentation
    (``greeting``, ``locale``, ``tone``, ``layout``…); ``explanation`` says
    why, in sentences; ``visitor`` is the visitor cookie to set (a new one
    when none, or an invalid one, came in); ``fallback`` names the defined
    fallback used, if any (``unknown_placement``, ``unknown_customer``,
    ``invalid_visitor``…).
    """

    id: str
    placement: str
    group: str
    segment: str
    items: tuple[Item, ...]
    offers: tuple[OfferPick, ...]
    alternatives: tuple[str, ...]
    variant: Mapping[str, Any]
    explanation: tuple[str, ...]
    customer_id: int | None = None
    visitor: str | None = None
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "placement": self.placement,
            "group": self.group,
            "segment": self.segment,
            "items": [i.to_dict() for i in self.items],
            "offers": [o.to_dict() for o in self.offers],
            "alternatives": list(self.alternatives),
            "variant": dict(self.variant),
            "explanation": list(self.explanation),
            "customer_id": self.customer_id,
            "visitor": self.visitor,
            "fallback": self.fallback,
        }


@frozen(kw_only=True)
class Outcome:
    """An outcome to report: ``event`` (impression, click, conversion) of decision ``decision``.

    ``item``: the sku, offer code or alternative that was clicked or bought
    (``""`` for the decision as a whole); ``value``: a conversion's amount.
    """

    decision: str
    event: str
    item: str = ""
    value: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValidationError("event", self.event, "not an outcome event", f"use one of {', '.join(EVENTS)}")
        if not isinstance(self.item, str) or len(self.item) > 200:
            raise ValidationError("item", self.item, "not an item id", "send the sku, offer code or alternative name")
        if self.value is not None and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float) or not -1e12 < self.value < 1e12
        ):
            raise ValidationError("value", self.value, "not an amount", "send a number")


@frozen(kw_only=True)
class OutcomeResult:
    """What happened to one reported outcome: ``recorded``, ``duplicate`` (reported before:
    nothing changed) or ``rejected`` (``reason``: an unknown, forged or other-workspace decision id)."""

    decision: str
    event: str
    item: str
    status: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "event": self.event,
            "item": self.item,
            "status": self.status,
            "reason": self.reason,
        }
