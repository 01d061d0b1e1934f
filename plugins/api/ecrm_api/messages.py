"""Segment Tracking API messages: checked and mapped to interaction rows.

No database access here: :class:`MessageReader` takes decoded JSON messages
(the bodies of ``/v1/identify`` … ``/v1/alias``, or the items of a
``/v1/batch``), checks each one with the core's rules (shape, ids, times,
amounts, free-form data) and maps it to the interaction row and the
customer changes it asks for (:class:`Parsed`).  Storing is
:mod:`ecrm_api.tracking` (customer-changing messages) and
:mod:`ecrm_api.events` (events, set-based); the mapping itself is described
in :mod:`ecrm_api.tracking`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
from ecrm_core.domain import Customer
from ecrm_core.errors import ValidationError
from ecrm_core.validation import (
    check_amount,
    check_currency,
    check_json,
    check_string,
    currencies,
    properties_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "BATCH_MAX_MESSAGES",
    "CALL_TYPES",
    "KEY_PREFIX",
    "MESSAGE_MAX_BYTES",
    "MessageError",
    "MessageReader",
    "Outcome",
    "Parsed",
    "Rejected",
    "corrected_time",
    "parse_time",
]

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
#: Segment's limit for one message (32 KB).
MESSAGE_MAX_BYTES = 32 * 1024
#: Messages accepted in one batch request: a longer ``batch`` is refused as
#: a whole (413), so that neither the work nor the answer grows with what a
#: small (compressed) body can hold.
BATCH_MAX_MESSAGES = 2500
#: Put in front of a ``messageId`` to make the interaction's idempotency key
#: (so it cannot clash with keys sent to the REST API).
KEY_PREFIX = "segment:"
#: A retried message is skew-corrected again with its new ``sentAt``; the
#: corrected time then differs by the network latency.  Within this much the
#: stored time is kept and the retry counts as a duplicate.
RETRY_TOLERANCE = timedelta(minutes=5)
#: Event times before this are refused (a dead device clock, a unit mistake).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

_MAX_ID_LENGTH = 200
_MAX_MESSAGE_ID = 200 - len(KEY_PREFIX)
_SET_BASED = frozenset({"track", "page", "screen"})
_CHANNELS = {"browser": "web", "mobile": "app", "server": "server"}
_IDENTITY_TRAITS = ("email", "phone")
#: Traits that become customer fields, not attributes (as the docs say).
_NAME_TRAITS = frozenset({"name", "firstName", "lastName", "email", "phone"})
_AMOUNT_STEP = Decimal("0.0001")


class MessageError(Exception):
    """One message was rejected: ``field`` (a path into the request), ``problem``, ``fix``.

    ``conflict`` is true when the message reuses a ``messageId`` with another
    payload (409 for a single message).
    """

    def __init__(self, field: str, problem: str, fix: str, *, conflict: bool = False) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix
        self.conflict = conflict


@attrs.frozen
class Rejected:
    """A message of a batch that was not stored, and why."""

    index: int
    message_id: str | None
    field: str
    problem: str
    fix: str
    conflict: bool = False


@attrs.frozen
class Outcome:
    """What :meth:`Tracker.ingest` did: messages stored, duplicates skipped, rejected ones."""

    accepted: int
    duplicates: int
    rejected: tuple[Rejected, ...]
    notes: tuple[str, ...] = ()


@attrs.define
class Parsed:
    """One request's messages, validated and mapped, and what became of them.

    :meth:`Tracker.parse` fills :attr:`fast` (track, page, screen: stored
    set-based, by :func:`store_events`), :attr:`slow` (identify, group,
    alias: :meth:`Tracker.store_slow`) and :attr:`rejected`; storing counts
    into :attr:`accepted`, :attr:`duplicates`, :attr:`rejected` and
    :attr:`notes`.
    """

    fast: list[_Message] = attrs.field(factory=list)
    slow: list[_Message] = attrs.field(factory=list)
    rejected: list[Rejected] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    accepted: int = 0
    duplicates: int = 0

    @property
    def events(self) -> int:
        """Messages still to store."""
        return len(self.fast) + len(self.slow)

    def outcome(self) -> Outcome:
        """The answer of a batch."""
        rejected = sorted(self.rejected, key=lambda r: r.index)
        return Outcome(self.accepted, self.duplicates, tuple(rejected), tuple(self.notes))

    def single(self) -> Outcome:
        """The answer of a single-call endpoint: raises :class:`MessageError` for a rejected message."""
        if self.rejected:
            e = self.rejected[0]
            raise MessageError(e.field, e.problem, e.fix, conflict=e.conflict)
        return Outcome(self.accepted, self.duplicates, (), tuple(self.notes))


# ----------------------------------------------------------------------
# values
# ----------------------------------------------------------------------
def _shown(value: Any) -> str:
    """``repr(value)``, cut short: an answer never echoes a big value."""
    if type(value) is int and abs(value) > 10**40:
        return f"<{type(value).__name__} of {len(str(abs(value))) if abs(value) < 10**4000 else 'many'} digits>"
    text = repr(value) if type(value) in (str, int, float, bool) or value is None else f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def parse_time(value: Any, field: str) -> datetime | None:
    """An ISO 8601 time with a UTC offset (as UTC), ``None`` for absent; raises :class:`MessageError`."""
    if value is None:
        return None
    if type(value) is not str or len(value) > 64:
        raise MessageError(field, "not a time", 'send an ISO 8601 time with an offset, e.g. "2024-05-01T12:00:00Z"')
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageError(field, f"not an ISO 8601 time: {value!r}", 'send e.g. "2024-05-01T12:00:00.000Z"') from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise MessageError(field, "no time zone (a naive time)", 'add the offset, e.g. "Z" or "+02:00"')
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise MessageError(field, "out of range", "send a time between 2000 and 9999") from None


def corrected_time(timestamp: datetime | None, sent_at: datetime | None, received_at: datetime) -> datetime | None:
    """Segment's clock-skew correction: ``receivedAt - (sentAt - timestamp)``.

    Without ``sentAt`` the client's time is taken as is; without a time,
    ``None`` (the caller uses ``receivedAt``).
    """
    if timestamp is None:
        return None
    if sent_at is None:
        return timestamp
    return received_at - (sent_at - timestamp)


def _identifier(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if type(value) is int:
        value = str(value)
    elif type(value) is not str:
        raise MessageError(field, "not a string", "send the id as a string (or an integer)")
    value = value.strip()
    if not value:
        return None
    if len(value) > _MAX_ID_LENGTH or not value.isprintable():
        raise MessageError(field, f"longer than {_MAX_ID_LENGTH} characters or not printable", "send a shorter id")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise MessageError(field, "not an object", "send an object of key/value pairs (or leave it out)")
    return value


def _text(value: Any, field: str, max_length: int = 200) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise MessageError(field, "not a string", "send text")
    if len(value) > max_length:
        raise MessageError(field, f"longer than {max_length} characters", "send shorter text")
    try:
        return check_string(value, field)
    except ValidationError as exc:
        raise MessageError(exc.field, exc.problem, exc.fix) from None


def _check_traits(traits: dict[str, Any], path: str) -> None:
    """The core's rules for free-form data, on the traits as sent (the same
    limits as customer attributes; paths under ``path``)."""
    try:
        check_json(traits, path)
    except ValidationError as exc:
        raise MessageError(exc.field, exc.problem, exc.fix) from None


#: Amounts below this (in absolute value) pass the core's size limit.
_AMOUNT_LIMIT = 10**11


def _checked_amount(raw: Any, field: str) -> Decimal:
    """``raw`` through the core's amount checks, rounded to 4 decimals (and checked again)."""
    try:
        amount = check_amount(raw, field)
        return check_amount(amount.quantize(_AMOUNT_STEP, rounding=ROUND_HALF_EVEN), field)
    except ValidationError as exc:
        raise MessageError(exc.field, exc.problem, exc.fix) from None


def _currencies() -> frozenset[str]:
    global _CURRENCIES
    if _CURRENCIES is None:
        _CURRENCIES = currencies()
    return _CURRENCIES


_CURRENCIES: frozenset[str] | None = None


def _amount(props: Mapping[str, Any], path: str) -> tuple[Decimal, str] | None:
    for name in ("revenue", "total", "value"):
        raw = props.get(name)
        if raw is None:
            continue
        kind = type(raw)
        if kind is int and -_AMOUNT_LIMIT < raw < _AMOUNT_LIMIT:
            # The common amount (a finite number of at most 4 decimals, within
            # the core's limit): what the checks below give, without them.
            amount = Decimal(raw).quantize(_AMOUNT_STEP, rounding=ROUND_HALF_EVEN)
        elif kind is float and -_AMOUNT_LIMIT < raw < _AMOUNT_LIMIT:
            text = repr(raw)
            # (a float's repr has a "." unless it has an exponent: at most 4
            # digits after it is a Decimal exponent >= -4)
            if "e" not in text and len(text) - text.index(".") <= 5:
                amount = Decimal(text).quantize(_AMOUNT_STEP, rounding=ROUND_HALF_EVEN)
            else:
                amount = _checked_amount(raw, f"{path}.{name}")
        else:
            amount = _checked_amount(raw, f"{path}.{name}")
        currency = props.get("currency") or "USD"
        if type(currency) is str:
            currency = currency.strip().upper()
            if currency in _currencies():  # (what check_currency returns for it, without the call)
                return amount, currency
        try:
            currency = check_currency(currency, f"{path}.currency")
        except ValidationError as exc:
            raise MessageError(exc.field, exc.problem, exc.fix) from None
        return amount, currency
    return None


# ----------------------------------------------------------------------
# one message
# ----------------------------------------------------------------------
@attrs.define
class _Message:
    """A validated message: the interaction row and what the slow path needs."""

    index: int
    type: str
    message_id: str | None
    path: str
    row: dict[str, Any]
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    customer: dict[str, Any] = attrs.field(factory=dict)
    group: dict[str, Any] | None = None


class MessageReader:
    """Checks and maps Segment messages for ``crm`` (one workspace's CRM view);
    :class:`~ecrm_api.tracking.Tracker` adds storing.

    :param event_kinds: ``track`` event names mapped to interaction kinds.
    :param future_tolerance: how far after ``received_at`` a (corrected)
        event time may be.
    :param received_at: when the request arrived (default: now).
    """

    def __init__(
        self,
        crm: CRM,
        *,
        event_kinds: Mapping[str, str],
        future_tolerance: timedelta = timedelta(days=1),
        received_at: datetime | None = None,
        check_properties: bool = False,
    ) -> None:
        self.crm = crm
        self.event_kinds = event_kinds
        self.received_at = (received_at or crm.now()).astimezone(UTC)
        self.latest = self.received_at + future_tolerance
        self.sale_kinds = {n for n, k in crm.registry.interaction_kinds.items() if getattr(k, "sale", False)}
        #: Check the properties of track/page/screen here too (the gateway,
        #: which answers before the core stores them), not only in the core.
        self.check_properties = check_properties

    # -- validation --------------------------------------------------------
    def prepare(
        self,
        message: Any,
        index: int,
        path: str,
        *,
        call: str | None = None,
        sent_at: datetime | None = None,
    ) -> _Message:
        """Validate one message and map it; raises :class:`MessageError` naming the field."""
        if type(message) is not dict:
            raise MessageError(path, "not an object", "send each message as a JSON object")
        get = message.get
        kind = get("type")
        if call is not None:
            if kind is not None and kind != call:
                raise MessageError(
                    f"{path}.type", f"{_shown(kind)} sent to the {call} endpoint", f'send "{call}" or leave it out'
                )
            kind = call
        elif kind not in CALL_TYPES:
            raise MessageError(
                f"{path}.type", f"unknown call type {_shown(kind)}", f"send one of {', '.join(CALL_TYPES)}"
            )
        message_id = get("messageId")
        if message_id is not None:
            if (
                type(message_id) is not str
                or not 0 < len(message_id) <= _MAX_MESSAGE_ID
                or not message_id.isprintable()
            ):
                raise MessageError(
                    f"{path}.messageId", f"not 1 to {_MAX_MESSAGE_ID} printable characters", "send a UUID"
                )
        user_id = _identifier(get("userId"), f"{path}.userId")
        anonymous_id = _identifier(get("anonymousId"), f"{path}.anonymousId")
        # The event's time, corrected for the client's clock.
        t_field = "originalTimestamp" if get("originalTimestamp") is not None else "timestamp"
        client_time = parse_time(get(t_field), f"{path}.{t_field}")
        own_sent = parse_time(get("sentAt"), f"{path}.sentAt")
        try:
            at = corrected_time(client_time, own_sent or sent_at, self.received_at)
        except OverflowError:
            raise MessageError(
                f"{path}.sentAt", "sentAt and the event time are too far apart", "send real times"
            ) from None
        if at is not None:
            if at > self.latest:
                raise MessageError(
                    f"{path}.{t_field}",
                    f"{at.isoformat()} is in the future (after clock-skew correction)",
                    "send the time the event happened; check the client's clock and sentAt",
                )
            if at < EARLIEST:
                raise MessageError(f"{path}.{t_field}", "before 2000", "send the time the event happened")
        context = _object(get("context"), f"{path}.context")
        channel = _CHANNELS.get(get("channel")) if type(get("channel")) is str else None
        props: dict[str, Any]
        traits_path = f"{path}.traits"
        row: dict[str, Any] = {}
        msg = _Message(index, kind, message_id, path, row, user_id, anonymous_id)
        if kind == "alias":
            previous = _identifier(get("previousId"), f"{path}.previousId")
            if user_id is None:
                raise MessageError(f"{path}.userId", "missing", "send the new userId of the customer")
            if previous is None:
                raise MessageError(f"{path}.previousId", "missing", "send the id the customer was known by before")
            msg.previous_id = previous
            kind_name, props = "identify", {"type": "alias", "previousId": previous}
        else:
            if user_id is None and anonymous_id is None:
                raise MessageError(f"{path}.userId", "no userId or anonymousId", "send userId, anonymousId or both")
            if kind == "track":
                event = _text(get("event"), f"{path}.event")
                if not event:
                    raise MessageError(f"{path}.event", "missing", 'send the event\'s name, e.g. "Order Completed"')
                props = dict(_object(get("properties"), f"{path}.properties"))
                kind_name = self.event_kinds.get(event, "event")
                props["event"] = event
                if kind_name in self.sale_kinds:
                    money = _amount(props, f"{path}.properties")
                    if money is not None:
                        row["amount"], row["currency"] = money
            elif kind in ("page", "screen"):
                props = dict(_object(get("properties"), f"{path}.properties"))
                for name in ("name", "category"):
                    value = _text(get(name), f"{path}.{name}")
                    if value is not None:
                        props[name] = value
                kind_name = "page_view" if kind == "page" else "screen_view"
                channel = channel or ("web" if kind == "page" else "app")
            elif kind == "group":
                group_id = _identifier(get("groupId"), f"{path}.groupId")
                if group_id is None:
                    raise MessageError(f"{path}.groupId", "missing", "send the group's (account's) id")
                traits = _object(get("traits"), traits_path)
                _check_traits(traits, traits_path)
                msg.group = {"id": group_id, "traits": traits}
                kind_name, props = "event", {"event": "group", "groupId": group_id, "traits": traits}
            else:  # identify
                # RudderStack's SDKs send identify traits in context.traits only
                traits_path = f"{path}.traits" if get("traits") is not None else f"{path}.context.traits"
                traits = _object(get("traits"), f"{path}.traits") or _object(
                    context.get("traits"), f"{path}.context.traits"
                )
                msg.customer = self._traits(traits, traits_path)
                kind_name, props = "identify", {"traits": traits}
        campaign = context.get("campaign")
        if type(campaign) is dict and campaign and "campaign" not in props:
            props["campaign"] = campaign
        row["kind"] = kind_name
        if at is not None:
            row["occurred_at"] = at
        if channel is not None:
            row["channel"] = channel
        if user_id is not None:
            row["external_id"] = user_id
        else:
            row["anonymous_id"] = anonymous_id
        if message_id is not None:
            row["idempotency_key"] = KEY_PREFIX + message_id
        row["properties"] = props
        if kind in _SET_BASED and not self.check_properties:
            return msg  # the core checks the properties of the stored row (one JSON encoding, not two)
        try:
            properties_json(props, f"{path}.properties")
        except ValidationError as exc:
            # identify/group keep their traits in the properties: name what was sent
            field = exc.field
            if kind in ("identify", "group") and field.startswith(f"{path}.properties.traits"):
                field = f"{traits_path}{field[len(path) + len('.properties.traits') :]}"
            elif kind in ("identify", "group"):
                field = traits_path
            raise MessageError(field, exc.problem, exc.fix) from None
        return msg

    @staticmethod
    def _traits(traits: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Customer fields from identify traits (validated here, applied later)."""
        fields: dict[str, Any] = {}
        for name in _IDENTITY_TRAITS:
            value = traits.get(name)
            if value is not None and value != "":
                fields[name] = value
        name = traits.get("name")
        if name is None:
            first, last = traits.get("firstName"), traits.get("lastName")
            parts = [p.strip() for p in (first, last) if type(p) is str and p.strip()]
            name = " ".join(parts) or None
        if name is not None:
            fields["name"] = name
        attributes = {k: v for k, v in traits.items() if k not in _NAME_TRAITS}
        if attributes:
            fields["attributes"] = attributes
        try:
            Customer(**fields)
        except ValidationError as exc:
            name = exc.field
            if name.startswith("attributes"):  # attributes.plan, attributes["a b"]: the trait itself
                field = path + name[len("attributes") :]
            else:
                field = f"{path}.{name}"
            raise MessageError(field, exc.problem, exc.fix) from None
        return fields

    def parse(
        self,
        messages: Sequence[Any],
        *,
        path: str = "body.batch",
        sent_at: datetime | None = None,
        call: str | None = None,
        body_bytes: int | None = None,
    ) -> Parsed:
        """Validate and map a batch (no database access): what :meth:`store_slow`
        and :func:`~ecrm_api.events.store_events` take.

        ``body_bytes``, the size of the decoded request body: when it is
        within :data:`MESSAGE_MAX_BYTES`, no message can be larger and the
        messages are not measured one by one.
        """
        parsed = Parsed()
        measure = body_bytes is None or body_bytes > MESSAGE_MAX_BYTES
        for index, message in enumerate(messages):
            self.add(parsed, message, index, f"{path}[{index}]", call=call, sent_at=sent_at, measure=measure)
        return parsed

    def add(
        self,
        parsed: Parsed,
        message: Any,
        index: int,
        path: str,
        *,
        call: str | None = None,
        sent_at: datetime | None = None,
        measure: bool = True,
    ) -> _Message | None:
        """Check one message of a batch (its size too when ``measure``) and add
        it to ``parsed``: to :attr:`~Parsed.fast` or :attr:`~Parsed.slow`, or
        to :attr:`~Parsed.rejected` with the reason (then ``None``)."""
        try:
            if measure and _encoded_size(message) > MESSAGE_MAX_BYTES:
                raise MessageError(
                    path,
                    f"larger than {MESSAGE_MAX_BYTES} bytes",
                    "send smaller messages (Segment's limit is 32 KB)",
                )
            m = self.prepare(message, index, path, call=call, sent_at=sent_at)
        except MessageError as exc:
            parsed.rejected.append(_rejected(index, message, exc))
            return None
        (parsed.fast if m.type in _SET_BASED else parsed.slow).append(m)
        return m

    def parse_one(self, message: Any, *, call: str) -> Parsed:
        """Validate and map one message of a single-call endpoint; raises :class:`MessageError`."""
        m = self.prepare(message, 0, "body", call=call)
        return Parsed(fast=[m]) if m.type in _SET_BASED else Parsed(slow=[m])


def _rejected(index: int, message: Any, exc: MessageError) -> Rejected:
    mid = message.get("messageId") if type(message) is dict else None
    return Rejected(index, mid if type(mid) is str else None, exc.field, exc.problem, exc.fix)


def _encoded_size(message: Any) -> int:
    return len(msgspec.json.encode(message))
