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
from types import MappingProxyType
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
        if type(value) is MappingProxyType:
            # A domain object's own frozen value (attrs.evolve passes it on) or
            # data read back from storage: checked when it was written, and a
            # rule made stricter later must not make stored customers unreadable
            # or their other fields unchangeable.
            return value
        properties_json(value, name)  # validates: JSON types and values, depth, keys, size
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


class InteractionBatch:
    """The interactions stored by one ``track``/``track_many`` transaction.

    Passed to ``ecrm_interactions_recorded`` once per committed batch, so a
    bulk import of a million rows calls a listener a few hundred times, not a
    million.  The batch is columnar and lazy: the bulk path hands over the
    values it inserted, and nothing per row is built until a listener asks.
    From cheapest to dearest: ``len(batch)``, :attr:`ids`,
    :attr:`customer_ids` and :attr:`kinds` (frozensets), :attr:`columns`
    (one tuple per field, for set-based work), :attr:`earliest`,
    :attr:`rows` (one mapping per row) and iteration (one
    :class:`Interaction` per row, without ``id`` and ``recorded_at``).
    Every view is built once, on first use.
    """

    #: The fields of :attr:`columns` and of each mapping in :attr:`rows`.
    FIELDS = ("customer_id", "kind", "occurred_at", "channel", "amount", "currency", "properties", "idempotency_key")

    __slots__ = ("_columns", "_customer_ids", "_kinds", "_len", "_rows", "_source", "ids", "workspace")

    workspace: str
    #: The ids of the stored interactions, in row order, when the database
    #: assigned them as one contiguous range (ecrm's writes on SQLite); else
    #: ``None``.  A range, so ``ids.start``/``ids.stop`` bound an SQL query.
    ids: range | None
    _len: int
    _source: tuple[Sequence[int], Sequence[Sequence[Any]], Mapping[str, int]] | None
    _rows: Sequence[Mapping[str, Any]] | None
    _columns: Mapping[str, tuple[Any, ...]] | None
    _customer_ids: frozenset[int] | None
    _kinds: frozenset[str] | None

    def __init__(
        self,
        workspace: str,
        rows: Sequence[Mapping[str, Any]],
        customer_ids: frozenset[int] | None = None,
        kinds: frozenset[str] | None = None,
        *,
        ids: range | None = None,
    ) -> None:
        """A batch of ``rows``: mappings with the keys of :attr:`FIELDS`."""
        self._init(workspace, len(rows), None, ids)
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_customer_ids", customer_ids)
        object.__setattr__(self, "_kinds", kinds)

    @classmethod
    def from_tuples(
        cls,
        workspace: str,
        customer_ids: Sequence[int],
        tuples: Sequence[Sequence[Any]],
        positions: Mapping[str, int],
        *,
        ids: range | None = None,
    ) -> InteractionBatch:
        """A batch over a bulk writer's own row tuples, without copying them.

        ``customer_ids`` is the (resolved) customer of each row; ``positions``
        gives, for every other name of :attr:`FIELDS`, its index in each of
        ``tuples`` (``occurred_at`` an aware datetime, ``amount`` a
        :class:`~decimal.Decimal` or ``None``, ``properties`` a mapping or its
        JSON text).  The caller must not change the sequences afterwards.
        """
        if len(customer_ids) != len(tuples):
            raise ValueError("one customer id per row tuple")
        missing = set(cls.FIELDS[1:]) - set(positions)
        if missing:
            raise ValueError(f"positions lack {sorted(missing)}")
        batch = object.__new__(cls)
        batch._init(workspace, len(tuples), (customer_ids, tuples, positions), ids)
        for name in ("_rows", "_customer_ids", "_kinds"):
            object.__setattr__(batch, name, None)
        return batch

    def _init(self, workspace: str, n: int, source: Any, ids: range | None) -> None:
        if ids is not None and len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} rows")
        object.__setattr__(self, "workspace", workspace)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "_len", n)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_columns", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __repr__(self) -> str:
        return f"InteractionBatch(workspace={self.workspace!r}, rows={self._len}, ids={self.ids!r}, kinds={set(self.kinds)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InteractionBatch):
            return NotImplemented
        return self.workspace == other.workspace and self.ids == other.ids and self.columns == other.columns

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return self._len

    @property
    def customer_ids(self) -> frozenset[int]:
        """The customers of the batch (survivors of merges, as stored)."""
        found = self._customer_ids
        if found is None:
            src = self._source
            found = frozenset(src[0] if src is not None else self.columns["customer_id"])
            object.__setattr__(self, "_customer_ids", found)
        return found

    @property
    def kinds(self) -> frozenset[str]:
        """The interaction kinds in the batch."""
        found = self._kinds
        if found is None:
            src = self._source
            if src is not None:
                from operator import itemgetter

                found = frozenset(map(itemgetter(src[2]["kind"]), src[1]))
            else:
                found = frozenset(self.columns["kind"])
            object.__setattr__(self, "_kinds", found)
        return found

    @property
    def columns(self) -> Mapping[str, tuple[Any, ...]]:
        """One tuple per name of :attr:`FIELDS`, in row order (``properties`` as stored:
        JSON text from the bulk path, a mapping otherwise)."""
        cols = self._columns
        if cols is None:
            from operator import itemgetter
            from types import MappingProxyType

            src = self._source
            if src is not None:
                cids, tuples, positions = src
                built = {"customer_id": tuple(cids)}
                for name in self.FIELDS[1:]:
                    built[name] = tuple(map(itemgetter(positions[name]), tuples))
            else:
                given = self._rows or ()
                built = {name: tuple([r.get(name) for r in given]) for name in self.FIELDS}
            cols = MappingProxyType(built)
            object.__setattr__(self, "_columns", cols)
        return cols

    @property
    def rows(self) -> Sequence[Mapping[str, Any]]:
        """One mapping per row with the keys of :attr:`FIELDS` (built on first use)."""
        rows = self._rows
        if rows is None:
            cols = self.columns
            names = self.FIELDS
            rows = [dict(zip(names, values, strict=True)) for values in zip(*(cols[n] for n in names), strict=True)]
            object.__setattr__(self, "_rows", rows)
        return rows

    def __iter__(self) -> Iterator[Interaction]:
        import json

        for row in self.rows:
            props = row.get("properties")
            if isinstance(props, str):  # the bulk path keeps the stored JSON text
                row = {**row, "properties": json.loads(props)}
            yield Interaction(workspace=self.workspace, **row)

    @property
    def earliest(self) -> datetime | None:
        """The earliest ``occurred_at`` of the batch."""
        return min(self.columns["occurred_at"], default=None)


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
