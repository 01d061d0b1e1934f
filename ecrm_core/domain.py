# mypy: disable-error-code="misc"
# (the attrs mypy plugin cannot see through our converter factories; the
# converters are tested by tests/test_domain.py.)
"""Domain objects: frozen, slotted, validated attrs classes.

These are values, not rows: they never talk to the database and never import
the web layer.  Construction validates and normalises every field (e-mail
addresses lower-cased, phones in E.164, datetimes in UTC); a bad value raises
:class:`~ecrm_core.errors.ValidationError` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import attrs
from attrs import field, frozen

from .errors import ValidationError
from .validation import (
    aware_datetime,
    check_amount,
    check_currency,
    check_key,
    check_slug,
    check_text,
    check_timezone,
    freeze,
    normalize_email,
    normalize_phone,
    properties_json,
)

__all__ = [
    "DEFAULT_WORKSPACE",
    "Alias",
    "Consent",
    "Customer",
    "CustomerChange",
    "Interaction",
    "InteractionBatch",
    "MergeRecord",
    "Offer",
    "OFFER_KINDS",
    "OFFER_STATUSES",
]

#: The workspace (tenant) used when the host never names one.
DEFAULT_WORKSPACE = "default"

#: Kinds of offer the core knows; plugins may use others (any lower-case slug).
OFFER_KINDS = ("product", "discount", "coupon", "content")
OFFER_STATUSES = ("draft", "active", "paused", "archived")
CONSENT_STATUSES = ("granted", "denied")


def _opt(fn: Any, name: str, **kw: Any) -> Any:
    check = partial(fn, field=name, **kw)
    return lambda v: None if v is None else check(v)


def _json_mapping(name: str) -> Any:
    def convert(value: Any) -> Mapping[str, Any]:
        properties_json(value, name)  # validates: JSON types, size
        return freeze(dict(value or {}))  # type: ignore[no-any-return]

    return convert


def _workspace(value: Any) -> str:
    return check_slug(value, "workspace", "workspace id")


def _positive_id(name: str) -> Any:
    def convert(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not (0 < value < 2**63):
            raise ValidationError(name, value, "not a valid id", "send a positive integer id")
        return value

    return convert


# --------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------

#: Alias kinds with a normaliser; any other kind (``external:erp``,
#: ``anonymous``, ``cookie``) is stored as given (trimmed text).
_ALIAS_NORMALISERS = {"email": normalize_email, "phone": normalize_phone}


@frozen
class Alias:
    """One way of recognising a customer: an e-mail, a phone, a cookie id…

    ``kind`` is a slug (``email``, ``phone``, ``anonymous``, ``external``,
    ``external:erp``); ``value`` is normalised for e-mail and phone.  An alias
    belongs to at most one customer per workspace.
    """

    kind: str = field(converter=partial(check_slug, field="alias.kind", what="alias kind"))
    value: str = field()

    def __attrs_post_init__(self) -> None:
        normalise = _ALIAS_NORMALISERS.get(self.kind)
        value = (
            normalise(self.value, field=f"alias.{self.kind}")
            if normalise
            else check_text(self.value, f"alias.{self.kind}", 200).strip()
        )
        if not value:
            raise ValidationError(f"alias.{self.kind}", self.value, "empty", "send a non-empty value")
        object.__setattr__(self, "value", value)


@frozen
class Consent:
    """The current consent of a customer for one channel (or channel:purpose)."""

    status: Literal["granted", "denied"] = field()
    at: datetime | None = field(default=None, converter=_opt(aware_datetime, "consent.at"))
    source: str | None = field(default=None, converter=_opt(check_text, "consent.source"))

    @status.validator
    def _check_status(self, _a: Any, value: Any) -> None:
        if value not in CONSENT_STATUSES:
            raise ValidationError("consent.status", value, "unknown consent status", "use 'granted' or 'denied'")

    @property
    def granted(self) -> bool:
        return self.status == "granted"


def _consent_map(value: Any) -> Mapping[str, Consent]:
    if value is None:
        return freeze({})  # type: ignore[no-any-return]
    if not isinstance(value, Mapping):
        raise ValidationError("consent", value, "not a mapping", "send e.g. {'email': 'granted'}")
    out: dict[str, Consent] = {}
    for channel, state in value.items():
        check_slug(channel, f"consent.{channel}", "channel name")
        if isinstance(state, Consent):
            out[channel] = state
        elif isinstance(state, bool):
            out[channel] = Consent("granted" if state else "denied")
        elif isinstance(state, str):
            out[channel] = Consent(state)  # type: ignore[arg-type]
        elif isinstance(state, Mapping):
            try:
                out[channel] = Consent(**state)
            except TypeError as exc:
                raise ValidationError(f"consent.{channel}", state, str(exc), "send {'status': 'granted'}") from None
        else:
            raise ValidationError(
                f"consent.{channel}", state, "not a consent state", "send 'granted', 'denied' or a bool"
            )
    return freeze(out)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# Customers
# --------------------------------------------------------------------------


@frozen(kw_only=True)
class Customer:
    """A person the business has a relationship with (or a prospect).

    ``id`` is ecrm's stable id (assigned on storage); ``external_id`` is the
    host application's own user id.  ``attributes`` are free JSON data;
    ``consent`` maps a channel (``email``, ``sms``…) to a :class:`Consent`.
    ``merged_into`` is set on a customer that was merged into another one:
    such a record is a tombstone that redirects to the survivor.
    """

    id: int | None = field(default=None, converter=_positive_id("id"))
    workspace: str = field(default=DEFAULT_WORKSPACE, converter=_workspace)
    external_id: str | None = field(default=None, converter=_opt(check_text, "external_id", max_length=200))
    email: str | None = field(default=None, converter=_opt(normalize_email, "email"))
    phone: str | None = field(default=None, converter=_opt(normalize_phone, "phone"))
    name: str | None = field(default=None, converter=_opt(check_text, "name", max_length=200))
    attributes: Mapping[str, Any] = field(factory=dict, converter=_json_mapping("attributes"))
    consent: Mapping[str, Consent] = field(factory=dict, converter=_consent_map)
    lifecycle_stage: str = field(
        default="prospect", converter=partial(check_slug, field="lifecycle_stage", what="stage")
    )
    timezone: str | None = field(default=None, converter=_opt(check_timezone, "timezone"))
    locale: str | None = field(default=None, converter=_opt(check_text, "locale", max_length=35))
    created_at: datetime | None = field(default=None, converter=_opt(aware_datetime, "created_at"))
    updated_at: datetime | None = field(default=None, converter=_opt(aware_datetime, "updated_at"))
    merged_into: int | None = field(default=None, converter=_positive_id("merged_into"))

    def consents_to(self, channel: str) -> bool:
        """True only when consent for ``channel`` was explicitly granted."""
        state = self.consent.get(channel)
        return state is not None and state.granted


#: Fields of :class:`Customer` a caller may set or change.
CUSTOMER_WRITABLE = (
    "external_id",
    "email",
    "phone",
    "name",
    "attributes",
    "consent",
    "lifecycle_stage",
    "timezone",
    "locale",
)


@frozen
class CustomerChange:
    """A customer before and after an update (passed to event hooks)."""

    before: Customer
    after: Customer

    @property
    def changed(self) -> frozenset[str]:
        return frozenset(name for name in CUSTOMER_WRITABLE if getattr(self.before, name) != getattr(self.after, name))


@frozen(kw_only=True)
class MergeRecord:
    """The audit record of merging ``source_id`` into ``target_id``."""

    id: int
    workspace: str
    source_id: int
    target_id: int
    merged_at: datetime
    moved_interactions: int
    moved_aliases: int
    actor: str | None = None
    reason: str | None = None


# --------------------------------------------------------------------------
# Interactions
# --------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return check_slug(value, "kind", "interaction kind")


def _channel(value: Any) -> str | None:
    return None if value is None else check_slug(value, "channel", "channel name")


@frozen(kw_only=True)
class Interaction:
    """Something a customer did or was sent: a purchase, a page view, a complaint…

    ``occurred_at`` must be timezone-aware (stored in UTC).  Sales carry
    ``amount`` *and* ``currency`` (ISO 4217).  ``idempotency_key`` makes
    tracking safe to retry: the same key stores one row.
    """

    kind: str = field(converter=_kind)
    occurred_at: datetime = field(converter=partial(aware_datetime, field="occurred_at"))
    customer_id: int | None = field(default=None, converter=_positive_id("customer_id"))
    channel: str | None = field(default=None, converter=_channel)
    amount: Decimal | None = field(default=None, converter=_opt(check_amount, "amount"))
    currency: str | None = field(default=None, converter=_opt(check_currency, "currency"))
    properties: Mapping[str, Any] = field(factory=dict, converter=_json_mapping("properties"))
    idempotency_key: str | None = field(default=None, converter=_opt(check_key, "idempotency_key"))
    id: int | None = field(default=None, converter=_positive_id("id"))
    workspace: str = field(default=DEFAULT_WORKSPACE, converter=_workspace)
    recorded_at: datetime | None = field(default=None, converter=_opt(aware_datetime, "recorded_at"))

    def __attrs_post_init__(self) -> None:
        if (self.amount is None) != (self.currency is None):
            missing = "currency" if self.currency is None else "amount"
            raise ValidationError(missing, None, "amount and currency go together", f"send {missing} too, or neither")


@attrs.define(slots=True, frozen=True)
class InteractionBatch:
    """The interactions stored by one ``track``/``track_many`` transaction.

    Passed to ``ecrm_interactions_recorded`` once per committed batch, so a
    bulk import of a million rows calls a listener a few hundred times, not a
    million.  The cheap summaries (:attr:`customer_ids`, :attr:`kinds`) need
    no object per row; iterating builds :class:`Interaction` objects lazily.
    """

    workspace: str
    rows: Sequence[Mapping[str, Any]] = attrs.field(repr=False)
    customer_ids: frozenset[int]
    kinds: frozenset[str]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Interaction]:
        import json

        for row in self.rows:
            props = row.get("properties")
            if isinstance(props, str):  # the bulk path keeps the stored JSON text
                row = {**row, "properties": json.loads(props)}
            yield Interaction(workspace=self.workspace, **row)

    @property
    def earliest(self) -> datetime | None:
        return min((r["occurred_at"] for r in self.rows), default=None)


# --------------------------------------------------------------------------
# Offers
# --------------------------------------------------------------------------


def _channels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValidationError("channels", value, "not a list", "send a list of channel names, e.g. ['email']")
    return tuple(sorted({check_slug(c, "channels", "channel name") for c in value}))


def _eligibility(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    return _json_mapping("eligibility")(value)  # type: ignore[no-any-return]


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (-(10**6) <= value <= 10**6):
        raise ValidationError("priority", value, "not an integer in -1e6..1e6", "send a whole number; higher wins")
    return value


@frozen(kw_only=True)
class Offer:
    """*What* to give a customer: a product, a discount, a coupon, content.

    ``code`` is a stable, unique (per workspace) slug.  The offer is live
    between ``valid_from`` and ``valid_until`` (either open) while its status
    is ``active``.  ``channels`` restricts where it may be shown (empty: any).
    ``eligibility`` holds a rule tree (JSON) that the segments engine compiles;
    the core stores it and hands it to condition compilers untouched.
    """

    code: str = field(converter=partial(check_slug, field="code", what="offer code"))
    name: str = field(converter=partial(check_text, field="name", max_length=200))
    kind: str = field(default="content", converter=partial(check_slug, field="kind", what="offer kind"))
    content: Mapping[str, Any] = field(factory=dict, converter=_json_mapping("content"))
    valid_from: datetime | None = field(default=None, converter=_opt(aware_datetime, "valid_from"))
    valid_until: datetime | None = field(default=None, converter=_opt(aware_datetime, "valid_until"))
    priority: int = field(default=0, converter=_priority)
    channels: tuple[str, ...] = field(factory=tuple, converter=_channels)
    eligibility: Mapping[str, Any] | None = field(default=None, converter=_eligibility)
    status: str = field(default="active")
    id: int | None = field(default=None, converter=_positive_id("id"))
    workspace: str = field(default=DEFAULT_WORKSPACE, converter=_workspace)
    created_at: datetime | None = field(default=None, converter=_opt(aware_datetime, "created_at"))
    updated_at: datetime | None = field(default=None, converter=_opt(aware_datetime, "updated_at"))

    @status.validator
    def _check_status(self, _a: Any, value: Any) -> None:
        if value not in OFFER_STATUSES:
            raise ValidationError("status", value, "unknown offer status", f"use one of {', '.join(OFFER_STATUSES)}")

    def __attrs_post_init__(self) -> None:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValidationError(
                "valid_until", self.valid_until, "ends before it starts", "make valid_until later than valid_from"
            )

    def is_active_at(self, when: datetime, channel: str | None = None) -> bool:
        """Whether the offer is live at ``when`` (aware) on ``channel``."""
        when = aware_datetime(when, "when")
        if self.status != "active":
            return False
        if self.valid_from is not None and when < self.valid_from:
            return False
        if self.valid_until is not None and when >= self.valid_until:
            return False
        return not (channel is not None and self.channels and channel not in self.channels)


OFFER_WRITABLE = (
    "name",
    "kind",
    "content",
    "valid_from",
    "valid_until",
    "priority",
    "channels",
    "eligibility",
    "status",
)


def utcnow() -> datetime:
    return datetime.now(UTC)
