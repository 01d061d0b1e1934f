"""The gateway's compiled fast path (ecrm_api.fastpath) answers exactly as the
general path (MessageReader.parse) does: property tests with hypothesis over
messages full of what the core refuses (control characters, lone surrogates,
big integers, naive and far times, deep or wide properties, bad amounts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from ecrm_api.config import DEFAULT_EVENT_KINDS
from ecrm_api.fastpath import check_batch, read_event
from ecrm_api.messages import MessageError, MessageReader, parse_time
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

RECEIVED = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

_chars = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=())
_weird_text = st.text(_chars, max_size=12)
_text = st.one_of(st.text(max_size=12), _weird_text, st.sampled_from(["", " ", "a\tb", "x" * 201, "é", "\u2028"]))
_ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]))
_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, 0.1, -0.0, 1e16]))
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _text)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=12,
)


def _time(delta: timedelta) -> str:
    return (RECEIVED + delta).isoformat()


_times = st.one_of(
    st.none(),
    st.builds(_time, st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=3))),
    st.sampled_from(
        [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00+00:00",
            "1999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "not a time",
            "2024-13-01T00:00:00Z",
            "x" * 70,
        ]
    ),
    _ints,
)
_ids = st.one_of(st.none(), _text, _ints, st.booleans(), st.sampled_from(["user-1", " user-2 ", "anon\u00a0x"]))
_events = st.one_of(
    st.sampled_from(["Order Completed", "Product Viewed", "Signed In", "Refund", ""]), _text, st.integers()
)
_amounts = st.one_of(_scalars, st.sampled_from(["12.50", "1e20", "-3", "0.00001", 99999999999, "abc"]))


_valid_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.text(max_size=8))
_valid_json = st.recursive(
    _valid_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def messages(draw):
    """A valid track/page/screen message, with each field replaced by a nasty value now and then."""
    kind = draw(st.sampled_from(["track", "track", "page", "screen"]))
    m: dict = {"type": kind, "messageId": draw(st.uuids()).hex}
    m["userId" if draw(st.booleans()) else "anonymousId"] = draw(st.sampled_from(["user-1", "anon-2", 17]))
    if draw(st.booleans()):
        m["timestamp"] = draw(st.builds(_time, st.timedeltas(timedelta(days=-30), timedelta(0))))
    if kind == "track":
        m["event"] = draw(st.sampled_from(["Order Completed", "Product Viewed", "Signed In", "Video Played"]))
    elif draw(st.booleans()):
        m["name"] = draw(st.text(max_size=10))
    m["properties"] = draw(st.dictionaries(st.text(max_size=6), _valid_json, max_size=4))
    if m.get("event") == "Order Completed":
        m["properties"]["revenue"] = draw(st.one_of(st.integers(0, 10**6), st.decimals(0, 10**6, places=2).map(str)))
    if draw(st.booleans()):
        m["context"] = {"library": {"name": "analytics.js"}}
    nasty = {
        "type": st.one_of(st.sampled_from(["identify", "Track", "alias"]), _scalars),
        "messageId": st.one_of(_ids, st.just("m-" + "x" * 200)),
        "userId": _ids,
        "anonymousId": _ids,
        "timestamp": _times,
        "originalTimestamp": _times,
        "sentAt": _times,
        "event": _events,
        "name": st.one_of(_text, _scalars),
        "category": _text,
        "channel": _scalars,
        "context": st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"campaign": _json, "library": _json, "traits": _json}),
            _scalars,
        ),
        "properties": st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"revenue": _amounts, "currency": _scalars, "total": _amounts}),
            _json,
            st.dictionaries(st.text(max_size=300), _scalars, max_size=3),
        ),
    }
    for name, strategy in nasty.items():
        if draw(st.integers(0, 9)) == 0:
            if draw(st.integers(0, 5)) == 0:
                m.pop(name, None)
            else:
                m[name] = draw(strategy)
    if draw(st.integers(0, 29)) == 0:
        return draw(_json)  # not even an object
    return m


@st.composite
def bodies(draw):
    doc: dict = {"batch": draw(st.lists(messages(), max_size=6))}
    if draw(st.integers(0, 9)) == 0:
        doc["sentAt"] = draw(_times)
    elif draw(st.booleans()):
        doc["sentAt"] = _time(timedelta(seconds=draw(st.integers(-5, 5))))
    if draw(st.integers(0, 19)) == 0:
        doc["writeKey"] = "key"
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    return text.encode("utf-8", "surrogatepass")


def general(body: bytes, reader: MessageReader):
    """What the general path answers: an error for the whole body, or (accepted, rejected)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "invalid JSON"
    if type(doc) is not dict or "writeKey" in doc or type(doc.get("batch")) is not list:
        return "not a batch"
    try:
        sent_at = parse_time(doc.get("sentAt"), "body.sentAt")
    except MessageError:
        return "bad sentAt"
    parsed = reader.parse(doc["batch"], sent_at=sent_at, body_bytes=len(body))
    accepted = sorted(m.index for m in (*parsed.fast, *parsed.slow))
    rejected = sorted((r.index, r.message_id, r.field, r.problem, r.fix) for r in parsed.rejected)
    return doc, accepted, rejected


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    import ecrm_api.plugin

    from ecrm_core import CRM

    crm = CRM(
        f"sqlite:///{tmp_path_factory.mktemp('fast') / 'crm.db'}", plugins=[ecrm_api.plugin], load_entrypoints=False
    )
    yield MessageReader(crm, event_kinds=DEFAULT_EVENT_KINDS, received_at=RECEIVED, check_properties=True)
    crm.close()


def agree(body: bytes, reader: MessageReader) -> None:
    fast = check_batch(body, reader)
    expected = general(body, reader)
    if fast is None:
        return  # left to the general path whole: its answer is the answer
    assert not isinstance(expected, str), f"the fast path took a body the general path refuses: {expected}"
    doc, accepted, rejected = expected
    got = sorted((r.index, r.message_id, r.field, r.problem, r.fix) for r in fast.rejected)
    assert got == rejected
    assert fast.count == len(accepted)
    stored = msgspec.json.decode(fast.payload)
    assert stored["batch"] == [doc["batch"][i] for i in accepted]
    assert stored.get("sentAt") == doc.get("sentAt")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"E","properties":{"a":"\\ud800"}}]}')
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"E","properties":{"a":"\\u0000"}}]}')
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"E","properties":{"n":123456789012345678901}}]}')
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"E","timestamp":"2024-01-01T00:00:00"}]}')
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"E","event":"F","type":"track"}]}')
@example(body=b'{"batch":[{"type":"track","userId":"u","event":"Order Completed","properties":{"revenue":"x"}}]}')
@example(body=b'{"batch":[{"type":"track","userId":17,"anonymousId":"' + b"x" * 201 + b'","event":"E"}]}')
def test_the_fast_path_answers_as_the_general_path(reader, body):
    agree(body, reader)


def test_the_fast_path_takes_the_common_batch_and_stores_it_raw(reader):
    batch = [
        {
            "type": "track",
            "userId": f"user-{i}",
            "event": "Order Completed" if i % 3 == 0 else "Product Viewed",
            "messageId": f"m-{i}",
            "timestamp": _time(timedelta(minutes=-i)),
            "properties": {"revenue": 12.5, "currency": "EUR", "items": [{"sku": "a", "n": 2}]},
            "context": {"library": {"name": "analytics-python"}},
        }
        for i in range(100)
    ]
    body = json.dumps({"batch": batch, "sentAt": _time(timedelta(0))}).encode()
    fast = check_batch(body, reader)
    assert fast is not None and fast.count == 100 and fast.rejected == []
    assert msgspec.json.decode(fast.payload)["batch"] == batch
    agree(body, reader)
    # one bad message among them: answered as the general path answers it, the rest stored
    batch[6]["properties"] = {"revenue": "lots"}  # an Order Completed: a sale, its amount checked
    body = json.dumps({"batch": batch}).encode()
    fast = check_batch(body, reader)
    assert fast is not None and fast.count == 99 and [r.index for r in fast.rejected] == [6]
    agree(body, reader)


_SENT = st.one_of(st.none(), st.builds(_time, st.timedeltas(timedelta(seconds=-30), timedelta(seconds=30))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages(), sent=_SENT, channel=st.sampled_from([None, "browser", "mobile", "server", "tv"]))
@example(
    message={"type": "page", "userId": " u ", "name": "Home", "properties": {"name": "x", "category": "c"}},
    sent=None,
    channel="browser",
)
def test_the_processor_reads_an_event_as_the_general_path_maps_it(reader, message, sent, channel):
    """``read_event`` (the ingest processor's one typed parse of a message)
    gives the very interaction row and identities that ``prepare`` gives, or
    leaves the message to it."""
    if type(message) is dict and channel is not None:
        message["channel"] = channel
    data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
    sent_at = parse_time(sent, "body.sentAt")
    got = read_event(data, 3, "body.batch[3]", reader, sent_at)
    if got is None:
        return  # the general path decides it
    expected = reader.prepare(msgspec.json.decode(data), 3, "body.batch[3]", sent_at=sent_at)
    assert (got.index, got.type, got.message_id, got.path) == (3, expected.type, expected.message_id, expected.path)
    assert (got.user_id, got.anonymous_id, got.previous_id) == (expected.user_id, expected.anonymous_id, None)
    assert got.row == expected.row
    assert list(got.row) == list(expected.row)  # the same keys, in the same order (hashes do not depend on it)


def test_the_processor_reads_the_common_event_typed(reader):
    """The benchmark's messages take the typed path (not the general one)."""
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-1",
        "messageId": "m-1",
        "timestamp": _time(timedelta(minutes=-5)),
        "properties": {"revenue": 12.5, "currency": "eur", "sku": "a"},
        "context": {"library": {"name": "analytics-python"}},
    }
    got = read_event(json.dumps(message).encode(), 0, "body.batch[0]", reader, RECEIVED)
    assert got is not None
    assert got.row["kind"] == "purchase" and got.row["currency"] == "EUR" and str(got.row["amount"]) == "12.5000"
    assert got.row["idempotency_key"] == "segment:m-1" and got.row["external_id"] == "user-1"


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(
        _floats,
        _ints,
        st.floats(min_value=-1e11, max_value=1e11).map(lambda f: round(f, 4)),
        st.sampled_from([99999999999.99998, -99999999999.99998, 1e11, 10**11 - 1, 0.00005, 1.23456, -0.0, 0]),
    )
)
def test_the_common_amount_is_read_as_the_core_checks_it(raw):
    """``_amount``'s shortcut for plain numbers gives what the core's checks
    (``check_amount``, rounding, ``check_amount`` again) give, or refuses alike."""
    from ecrm_api.messages import _amount, _checked_amount

    try:
        expected: object = _checked_amount(raw, ".revenue")
    except MessageError as exc:
        expected = ("refused", exc.field, exc.problem)
    try:
        got = _amount({"revenue": raw, "currency": "EUR"}, "")
    except MessageError as exc:
        assert ("refused", exc.field, exc.problem) == expected
    else:
        assert got is not None and got[1] == "EUR"
        assert got[0] == expected and str(got[0]) == str(expected)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(_times.filter(lambda v: type(v) is str), _weird_text))
@example(value="2024-05-01T12:00:00+00:00")
@example(value="2024-05-01T14:00:00.123456+02:00")
@example(value="0001-01-01T00:30:00+01:00")
def test_the_fast_time_is_parse_time(value):
    """The fast path's time reading gives parse_time's UTC time, or leaves the value to it."""
    from ecrm_api.fastpath import _time, _Undecided

    try:
        expected = parse_time(value, "t")
    except MessageError:
        expected = None
    try:
        got = _time(value)
    except _Undecided:
        assert expected is None
    else:
        assert got == expected and got.tzinfo is UTC and got.isoformat() == expected.isoformat()


def test_a_large_or_escaped_batch_is_decided_message_by_message(reader):
    """Bodies the one-call typed decode does not take (a backslash, more than one
    message's size) answer as the general path does too."""
    base = {"type": "track", "userId": "u", "event": "Signed In", "properties": {"note": "x" * 300}}
    batch = [dict(base, messageId=f"m-{i}") for i in range(120)]
    batch[3]["properties"] = {"note": "tab\there"}
    batch[7]["userId"] = ""  # no id: rejected
    body = json.dumps({"batch": batch}).encode()
    assert len(body) > 32 * 1024 and b"\\" in body
    fast = check_batch(body, reader)
    assert fast is not None and fast.count == 119 and [r.index for r in fast.rejected] == [7]
    agree(body, reader)
