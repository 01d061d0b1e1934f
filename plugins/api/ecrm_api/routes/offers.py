"""Routes: offers — CRUD, what is live now, what one customer is eligible for.

An offer is addressed by its id or its code (``/offers/12``,
``/offers/spring-sale``).  Its ``eligibility`` is a rule (text or JSON tree,
see docs/rules.md), validated when it is written: a bad rule is a 422
problem naming ``body.eligibility`` (with ``line``/``column`` and a caret for
text, the ``path`` inside a tree).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from ecrm_core.domain import OFFER_STATUSES
from ecrm_core.errors import ValidationError
from ecrm_core.validation import thaw
from litestar import delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from ..problems import problem_responses
from ..types import SLUG_PATTERN, CoreSlug, DateTime, date_time_param, ref_param
from .interactions import MAX_ID, check_json_text
from .segments import RuleIn, compile_rule_field, parse_ref

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Offer

__all__ = ["HANDLERS"]

#: Paths under /offers that are routes of their own, not offer codes.
RESERVED = frozenset({"active"})

Code = CoreSlug
Name = Annotated[str, msgspec.Meta(max_length=200)]
KindT = CoreSlug
AwareTime = DateTime
At = date_time_param("when, default now")
Priority = Annotated[int, msgspec.Meta(ge=-(10**6), le=10**6)]
Channels = Annotated[list[CoreSlug], msgspec.Meta(max_length=50)]
Status = Literal["draft", "active", "paused", "archived"]
assert set(Status.__args__) == set(OFFER_STATUSES)  # type: ignore[attr-defined]

RefParam = ref_param("the offer's code, or its id", r"_.:\-")


class OfferIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new offer.  ``code`` is a unique slug; the offer is live between
    ``valid_from`` and ``valid_until`` (either open) while ``status`` is
    ``active``, on ``channels`` (empty: any); ``eligibility`` is a rule."""

    code: Code
    name: Name
    kind: KindT = "content"
    content: dict[str, Any] = {}
    valid_from: AwareTime | None = None
    valid_until: AwareTime | None = None
    priority: Priority = 0
    channels: Channels = []
    eligibility: RuleIn | None = None
    status: Status = "active"


class OfferPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change (absent: unchanged; ``null`` clears ``valid_from``,
    ``valid_until`` or ``eligibility``)."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    kind: KindT | msgspec.UnsetType = msgspec.UNSET
    content: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    valid_from: AwareTime | msgspec.UnsetType | None = msgspec.UNSET
    valid_until: AwareTime | msgspec.UnsetType | None = msgspec.UNSET
    priority: Priority | msgspec.UnsetType = msgspec.UNSET
    channels: Channels | msgspec.UnsetType = msgspec.UNSET
    eligibility: RuleIn | msgspec.UnsetType | None = msgspec.UNSET
    status: Status | msgspec.UnsetType = msgspec.UNSET


class OfferOut(msgspec.Struct):
    """A stored offer; ``eligibility`` is the canonical rule tree, ``eligibility_text`` the rule as text."""

    id: int
    code: str
    name: str
    kind: str
    content: dict[str, Any]
    valid_from: datetime | None
    valid_until: datetime | None
    priority: int
    channels: list[str]
    eligibility: dict[str, Any] | None
    eligibility_text: str | None
    status: str
    created_at: datetime | None
    updated_at: datetime | None


class OfferList(msgspec.Struct):
    items: list[OfferOut]


def offer_out(o: Offer) -> OfferOut:
    from ecrm_core.rules import to_text

    assert o.id is not None
    rule = None if o.eligibility is None else thaw(o.eligibility)
    return OfferOut(
        id=o.id,
        code=o.code,
        name=o.name,
        kind=o.kind,
        content=thaw(o.content),
        valid_from=o.valid_from,
        valid_until=o.valid_until,
        priority=o.priority,
        channels=list(o.channels),
        eligibility=rule,
        eligibility_text=None if rule is None else to_text(rule),
        status=o.status,
        created_at=o.created_at,
        updated_at=o.updated_at,
    )


def _fields(crm: CRM, values: dict[str, Any]) -> dict[str, Any]:
    """Check what the API checks beyond the core, and compile the rule."""
    if values.get("content"):
        check_json_text(values["content"], "body.content")
    if values.get("eligibility") is not None:
        values["eligibility"] = dict(compile_rule_field(crm, values["eligibility"], "body.eligibility"))
    return values


def _core(fn: Any) -> Any:
    """Run a core call; its field errors name the body's fields."""
    try:
        return fn()
    except ValidationError as exc:
        raise exc if exc.field.startswith(("body", "path", "query")) else exc.at("body") from None


@post(
    "/offers",
    opt={"scope": "write"},
    tags=["offers"],
    sync_to_thread=True,
    status_code=201,
    responses=problem_responses(409),
)
def create_offer(data: JSONBody[OfferIn], crm: NamedDependency[CRM]) -> OfferOut:
    """Create an offer (409 when the code is taken; a bad eligibility rule is
    422 naming ``body.eligibility``)."""
    if data.code in RESERVED:
        raise ValidationError("body.code", data.code, "reserved (it is a route)", "choose another code")
    values = _fields(crm, {f: getattr(data, f) for f in data.__struct_fields__})
    code, name = values.pop("code"), values.pop("name")
    return offer_out(_core(lambda: crm.offers.create(code, name, **values)))


@get("/offers", opt={"scope": "read"}, tags=["offers"], sync_to_thread=True, responses=problem_responses())
def list_offers(
    crm: NamedDependency[CRM],
    status: Annotated[Status | None, Parameter(description="only offers with this status")] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000, description="at most this many")] = 1000,
) -> OfferList:
    """Offers by priority (highest first), then code."""
    return OfferList(items=[offer_out(o) for o in crm.offers.list(status=status, limit=limit)])


@get("/offers/active", opt={"scope": "read"}, tags=["offers"], sync_to_thread=True, responses=problem_responses())
def active_offers(
    crm: NamedDependency[CRM],
    at: At = None,
    channel: Annotated[
        str | None,
        Parameter(
            max_length=64, description="only offers shown on this channel", schema_extra={"pattern": SLUG_PATTERN}
        ),
    ] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000, description="at most this many, the highest priority")] = 1000,
) -> OfferList:
    """Offers live at ``at`` (default now), optionally on ``channel``, highest priority first (at most ``limit``)."""
    when, channel = _when_where(at, channel)
    return OfferList(items=[offer_out(o) for o in _core(lambda: crm.offers.active(when, channel=channel))[:limit]])


def _when_where(at: str | None, channel: str | None) -> tuple[datetime | None, str | None]:
    """``at`` parsed as ISO 8601 only (not a number: no Unix-time guessing)."""
    from ecrm_core.validation import aware_datetime, check_slug

    when = None if at is None else aware_datetime(at, "query.at")
    if channel is not None:
        check_slug(channel, "query.channel", "channel name")
    return when, channel


@get(
    "/offers/{ref:str}",
    opt={"scope": "read"},
    tags=["offers"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_offer(ref: RefParam, crm: NamedDependency[CRM]) -> OfferOut:
    """One offer by id or code."""
    return offer_out(crm.offers.get(parse_ref(ref)))


@patch(
    "/offers/{ref:str}",
    opt={"scope": "write"},
    tags=["offers"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def update_offer(ref: RefParam, data: JSONBody[OfferPatch], crm: NamedDependency[CRM]) -> OfferOut:
    """Change fields of an offer (its code cannot change)."""
    changes = {f: v for f in data.__struct_fields__ if (v := getattr(data, f)) is not msgspec.UNSET}
    target = parse_ref(ref)
    crm.offers.get(target)  # 404 before any validation of the body
    changes = _fields(crm, changes)
    return offer_out(_core(lambda: crm.offers.update(target, **changes)))


@delete(
    "/offers/{ref:str}",
    opt={"scope": "write"},
    tags=["offers"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def delete_offer(ref: RefParam, crm: NamedDependency[CRM]) -> None:
    """Delete an offer for good (PATCH ``status: archived`` keeps it)."""
    crm.offers.delete(parse_ref(ref))


@get(
    "/customers/{customer_id:int}/offers",
    opt={"scope": "read"},
    tags=["offers"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def customer_offers(
    customer_id: Annotated[int, Parameter(ge=1, le=MAX_ID, description="the customer's id")],
    crm: NamedDependency[CRM],
    at: At = None,
    channel: Annotated[
        str | None,
        Parameter(
            max_length=64, description="only offers shown on this channel", schema_extra={"pattern": SLUG_PATTERN}
        ),
    ] = None,
) -> OfferList:
    """The live offers this customer is eligible for, highest priority first
    (an offer without an eligibility rule is for everyone)."""
    when, channel = _when_where(at, channel)
    return OfferList(items=[offer_out(o) for o in crm.offers.eligible(customer_id, when, channel=channel)])


HANDLERS: list[Any] = [
    create_offer,
    list_offers,
    active_offers,
    get_offer,
    update_offer,
    delete_offer,
    customer_offers,
]
