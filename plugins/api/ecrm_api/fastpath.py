"""The gateway's fast path: the checks of a batch, compiled with msgspec.

A ``/v1/batch`` request going to the inbox needs only a *decision* per
message -- accepted or rejected, and why -- not the mapped rows: the
processor reads and maps the messages again when it stores them.  The
general path (:meth:`~ecrm_api.messages.MessageReader.parse`) decodes the
body into Python objects, maps every message and encodes its properties
again to check them; this path:

1. decodes the envelope with the ``batch`` array left as raw JSON, so an
   accepted message is never encoded again: when every message is accepted
   the inbox payload is that array as it came (with ``sentAt``), else the
   accepted messages' raw JSON joined;
2. decodes the messages into typed structs (``track``/``page``/``screen``,
   properties a few levels deep of JSON scalars within the core's limits:
   64-bit integers, finite floats, keys of at most 256 characters, a
   bounded number of keys) -- the checks msgspec does in C, the whole array
   in one call when it can (a body without a backslash, within the size of
   one message: the common batch), else message by message;
3. runs the few checks left in Python with the **same functions** as the
   general path (ids, times and clock-skew correction, amounts of sale
   kinds) and bounds the sizes.

A message this path cannot decide -- another call type, a backslash escape
anywhere in it (a control character or a lone surrogate may hide there),
a campaign in its context, properties near a limit, an integer past 64
bits --
goes through the general path, alone: the answer is the general path's,
message by message.  So the fast path never answers differently; it only
answers sooner (``tests/api/test_fastpath.py`` checks that with hypothesis
against the general path).  A request the envelope decoder refuses (not
an object, no ``batch`` list, a ``writeKey`` in the body, more messages
than allowed) is left to the general path whole.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeGuard

import msgspec
from ecrm_core.validation import MAX_INT, MAX_JSON_KEYS, MAX_KEY_LENGTH, MAX_PROPERTIES_BYTES, MIN_INT
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from .messages import (
    _CHANNELS,
    _MAX_MESSAGE_ID,
    BATCH_MAX_MESSAGES,
    EARLIEST,
    KEY_PREFIX,
    MESSAGE_MAX_BYTES,
    MessageError,
    MessageReader,
    Parsed,
    Rejected,
    _amount,
    _identifier,
    _Message,
    parse_time,
)

__all__ = ["FastBatch", "check_batch", "map_event", "read_event", "read_events"]

_Key = Annotated[str, Meta(max_length=MAX_KEY_LENGTH)]
_Int = Annotated[int, Meta(ge=MIN_INT, le=MAX_INT)]
_Float = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
_Scalar = str | _Int | _Float | bool | None
_Level2 = str | _Int | _Float | bool | list[_Scalar] | Annotated[dict[_Key, _Scalar], Meta(max_length=100)] | None
_Level1 = str | _Int | _Float | bool | list[_Level2] | Annotated[dict[_Key, _Level2], Meta(max_length=100)] | None
_Props = Annotated[dict[_Key, _Level1], Meta(max_length=200)]


class _Head(Struct):
    """The envelope with its ``batch`` array left whole, as raw JSON (the gateway's first read)."""

    batch: Raw
    sentAt: Any = None
    writeKey: Any = UNSET


class _Context(Struct):
    """What the checks read of a message's ``context``: whether it names a campaign
    (the rest is skipped by the decoder, not built: the message is stored raw)."""

    campaign: Any = UNSET


class _Event(Struct):
    messageId: str | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    context: _Context | None = None
    channel: Any = None
    properties: _Props | None = None


class _Track(_Event, tag_field="type", tag="track"):
    event: str | None = None


class _Page(_Event, tag_field="type", tag="page"):
    name: str | None = None
    category: str | None = None


class _Screen(_Event, tag_field="type", tag="screen"):
    name: str | None = None
    category: str | None = None


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_event = msgspec.json.Decoder(_Track | _Page | _Screen).decode
_decode_events = msgspec.json.Decoder(list[_Track | _Page | _Screen]).decode
_decode_raws = msgspec.json.Decoder(list[Raw]).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
#: Properties encoded longer than this are left to the general path: the
#: mapping adds the event's name, a page's name and category (200 characters
#: each), and Python's encoder writes some numbers longer than msgspec's.
_MAX_PROPS_TEXT = MAX_PROPERTIES_BYTES // 2


class FastBatch(Struct):
    """The decision on a batch: ``count`` messages accepted, the ``rejected``
    ones, and the inbox ``payload`` (the accepted messages, raw, and ``sentAt``)."""

    count: int
    rejected: list[Rejected]
    payload: bytes


def check_batch(body: bytes, reader: MessageReader) -> FastBatch | None:
    """Decide a batch body as :meth:`~ecrm_api.messages.MessageReader.parse` would
    (``None``: the body is left to the general path whole); see the module's text."""
    try:
        head = _decode_head(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if type(head.writeKey) is not UnsetType:
        return None
    raw_sent = head.sentAt
    try:
        sent_at = parse_time(raw_sent, "body.sentAt")
    except MessageError:
        return None
    received, latest = reader.received_at, reader.latest
    kinds, sale_kinds = reader.event_kinds, reader.sale_kinds
    shift = None if sent_at is None else received - sent_at
    sent = b"}" if raw_sent is None else b',"sentAt":' + _encode(raw_sent) + b"}"
    measure = len(body) > MESSAGE_MAX_BYTES
    escaped = b"\\" in body  # (scanned once: a message without one needs no scan of its own)
    typed: list[_Track | _Page | _Screen] | None = None
    if not measure and not escaped:
        # The common batch: every message typed in one call, and, when all
        # pass, the array stored as it came.
        try:
            typed = _decode_events(head.batch)
        except (msgspec.DecodeError, msgspec.ValidationError):
            typed = None
        if typed is not None:
            if len(typed) > BATCH_MAX_MESSAGES:
                return None
            for event in typed:
                if _checked(event, sent_at, received, latest, kinds, sale_kinds, shift) is None:
                    break
            else:
                return FastBatch(len(typed), [], b'{"batch":' + bytes(head.batch) + sent)
    try:
        raws = _decode_raws(head.batch)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # (not a list: the general path refuses the body)
    if len(raws) > BATCH_MAX_MESSAGES:
        return None
    keep: list[Raw] = []
    general = Parsed()
    for index, raw in enumerate(raws):
        m: _Track | _Page | _Screen | None
        if typed is not None:
            m = typed[index]
        elif not (measure and len(raw) * 8 > MESSAGE_MAX_BYTES) and not (escaped and b"\\" in bytes(raw)):
            # (numbers may grow when encoded again: a large message is measured by the general path)
            try:
                m = _decode_event(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                m = None
        else:
            m = None
        if m is not None and _checked(m, sent_at, received, latest, kinds, sale_kinds, shift) is not None:
            keep.append(raw)
            continue
        # The general path, for this message alone.
        try:
            message = _decode_any(raw)
        except msgspec.DecodeError:
            return None  # (the body as a whole is refused by the general path, as before)
        if reader.add(general, message, index, f"body.batch[{index}]", sent_at=sent_at, measure=measure) is not None:
            keep.append(raw)
    payload = b'{"batch":[' + b",".join(keep) + b"]"  # (Raw is a buffer: joined without copies)
    return FastBatch(len(keep), general.rejected, payload + sent)


def _plain_id(value: Any) -> TypeGuard[str]:
    """An id that ``_identifier`` returns unchanged (the common case, without the call)."""
    return (
        type(value) is str
        and 0 < len(value) <= 200
        and value.isprintable()
        and not value[0].isspace()
        and not value[-1].isspace()
    )


class _Undecided(Exception):
    """A value this path does not decide (the general path then does, and says why)."""


def _time(value: str) -> datetime:
    """:func:`~ecrm_api.messages.parse_time` of a string, for this path: the same
    time (UTC), or :class:`_Undecided` where it raises."""
    if len(value) > 64:
        raise _Undecided
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Undecided from None
    tz = parsed.tzinfo
    if tz is UTC:  # ("Z", "+00:00": already what astimezone(UTC) gives)
        return parsed
    if tz is None or parsed.utcoffset() is None:
        raise _Undecided
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _Undecided from None


#: What :func:`_checked` found: the user and anonymous ids, the corrected
#: time, the interaction kind and, for a sale, ``(amount, currency)``.
_Checked = tuple[str | None, str | None, datetime | None, str, tuple[Decimal, str] | None]


def _checked(
    m: _Track | _Page | _Screen,
    sent_at: datetime | None,
    received: datetime,
    latest: datetime,
    kinds: Any,
    sale_kinds: set[str],
    shift: timedelta | None = None,
) -> _Checked | None:
    """What the general path reads from the message when it accepts it (None: let it decide).

    ``shift`` is ``received - sent_at`` when the caller has it (the batch's
    clock-skew correction, computed once)."""
    mid = m.messageId
    if mid is not None and not (0 < len(mid) <= _MAX_MESSAGE_ID and mid.isprintable()):
        return None
    user, anonymous = m.userId, m.anonymousId
    try:
        # Both checked: a bad anonymousId beside a good userId is refused.
        if user is not None and not (
            type(user) is str
            and 0 < len(user) <= 200
            and user.isprintable()
            and not user[0].isspace()
            and not user[-1].isspace()
        ):
            user = _identifier(user, "")
        if anonymous is not None and not _plain_id(anonymous):
            anonymous = _identifier(anonymous, "")
    except MessageError:
        return None
    if user is None and anonymous is None:
        return None
    raw_time = m.originalTimestamp
    if raw_time is None:
        raw_time = m.timestamp
    try:
        own = m.sentAt
        if own is not None:
            # Segment's clock-skew correction with the message's own sentAt
            # (messages.corrected_time: receivedAt - (sentAt - timestamp)).
            own_at = _time(own)
            at = None if raw_time is None else received - (own_at - _time(raw_time))
        elif raw_time is None:
            at = None
        elif shift is not None:
            at = _time(raw_time) + shift  # (the same: receivedAt - (sentAt - timestamp))
        elif sent_at is not None:
            at = received - (sent_at - _time(raw_time))
        else:
            at = _time(raw_time)
    except (_Undecided, OverflowError):
        return None
    if at is not None and (at > latest or at < EARLIEST):
        return None
    context = m.context
    if context is not None and type(context.campaign) is not UnsetType:
        return None
    props = m.properties
    if props:
        text = _encode(props)
        if len(text) > _MAX_PROPS_TEXT or text.count(b":") > MAX_JSON_KEYS - 10:
            return None
    money = None
    if type(m) is _Track:
        event = m.event
        if not event or len(event) > 200:
            return None
        kind = kinds.get(event, "event")
        if kind in sale_kinds:
            try:
                money = _amount(props or {}, "")
            except MessageError:
                return None
    else:
        for text_value in (m.name, m.category):  # type: ignore[union-attr]
            if text_value is not None and len(text_value) > 200:
                return None
        kind = "page_view" if type(m) is _Page else "screen_view"
    return user, anonymous, at, kind, money


def read_event(data: bytes, index: int, path: str, reader: MessageReader, sent_at: datetime | None) -> _Message | None:
    """One ``track``/``page``/``screen`` message (its raw JSON) checked and mapped
    as :meth:`~ecrm_api.messages.MessageReader.prepare` maps it, in one typed
    decode; ``None`` when this path cannot decide it (the general path then
    does, and gives the reason of a rejection).

    The ingest processor reads the inbox with it: the message is parsed once,
    into the interaction row ``track_many`` takes.  Sizes are the caller's
    (see :func:`check_batch`).
    """
    if b"\\" in data:
        return None
    try:
        m = _decode_event(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return map_event(m, index, path, reader, sent_at)


def read_events(data: bytes | Raw) -> list[_Track | _Page | _Screen] | None:
    """Every message of a batch array (its raw JSON) decoded typed in one call,
    for :func:`map_event`; ``None`` when one of them is not a typed event, or
    the array has a backslash escape (each then goes through :func:`read_event`)."""
    if b"\\" in (data if type(data) is bytes else bytes(data)):
        return None
    try:
        return _decode_events(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def map_event(
    m: _Track | _Page | _Screen,
    index: int,
    path: str,
    reader: MessageReader,
    sent_at: datetime | None,
    shift: timedelta | None = None,
) -> _Message | None:
    """:func:`read_event` of a message already decoded typed (``shift``: see :func:`_checked`)."""
    got = _checked(m, sent_at, reader.received_at, reader.latest, reader.event_kinds, reader.sale_kinds, shift)
    if got is None:
        return None
    user, anonymous, at, kind, money = got
    row: dict[str, Any] = {}
    props = dict(m.properties) if m.properties else {}
    channel = _CHANNELS.get(m.channel) if type(m.channel) is str else None
    if type(m) is _Track:
        call = "track"
        props["event"] = m.event
        if money is not None:
            row["amount"], row["currency"] = money
    else:
        call = "page" if type(m) is _Page else "screen"
        if m.name is not None:  # type: ignore[union-attr]
            props["name"] = m.name  # type: ignore[union-attr]
        if m.category is not None:  # type: ignore[union-attr]
            props["category"] = m.category  # type: ignore[union-attr]
        channel = channel or ("web" if call == "page" else "app")
    row["kind"] = kind
    if at is not None:
        row["occurred_at"] = at
    if channel is not None:
        row["channel"] = channel
    if user is not None:
        row["external_id"] = user
    else:
        row["anonymous_id"] = anonymous
    if m.messageId is not None:
        row["idempotency_key"] = KEY_PREFIX + m.messageId
    row["properties"] = props
    return _Message(index, call, m.messageId, path, row, user, anonymous)
