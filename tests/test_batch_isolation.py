"""One bad customer never stops a batch (issue 14, item 3).

A corpus of hostile customer data (``tests/fixtures/hardening/hostile_customers.json``)
is sent in one ``send_many`` together with good customers, through a tiny test
channel whose ``address``/``render`` (and the caller's context function) raise
or return unusable values for chosen customers: every good customer is queued
and delivered, every bad one is recorded (a ``blocked`` message with the reason,
a ``message_blocked`` interaction, an entry in ``SendReport``).  The same on
PostgreSQL, where an unstorable address used to fail the whole chunk's INSERT;
through a segment; with a ``render_many`` that fails a whole chunk; and on the
dispatch side, where a ``send_many`` that raises for one message used to
dead-letter its whole chunk.  The issue's exact case runs through the real
e-mail channel.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ecrm_core.channels import Channel, Content, DeliveryResult, TemplateError
from ecrm_core.errors import EcrmError, ValidationError
from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import ChannelSpec
from ecrm_core.services.messages import FAILURE_REASONS, MAX_LISTED_FAILURES
from ecrm_core.testing.channels import FakeClock, MemoryChannel

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "hardening" / "hostile_customers.json").read_text())
PAYLOADS = CORPUS["payloads"]
GOOD = 12  # good customers interleaved with the hostile ones
LINE_BREAKS = ("\r", "\n", "\u2028", "\u2029", "\x85")
TEMPLATE = {"subject": "Hi {{ customer.first_name }}", "body": "Hello {{ customer.name }}"}


def _value(v: Any) -> Any:
    if isinstance(v, dict) and "$repeat" in v:
        s, n = v["$repeat"]
        return s * n
    if v == "$object":
        return {"x": object()}
    if v == "$deep":
        deep: dict[str, Any] = {}
        for _ in range(40):
            deep = {"d": deep}
        return deep
    if v == "$intkey":
        return {1: "one"}
    return v


def _exception(name: str) -> BaseException:
    if name == "TemplateError":
        return TemplateError("this customer's data does not fit the template")
    if name == "ValidationError":
        return ValidationError("customer.attributes.x", "bad", "not usable", "fix the data")
    if name == "UnicodeEncodeError":
        return UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    exc_type = {
        "KeyError": KeyError,
        "RecursionError": RecursionError,
        "ZeroDivisionError": ZeroDivisionError,
        "MemoryError": MemoryError,
        "RuntimeError": RuntimeError,
    }[name]
    return exc_type("boom")


def _is_data_fault(name: str) -> bool:
    return name in ("TemplateError", "ValidationError")


class ScriptedChannel(MemoryChannel):
    """A channel with the ``templates`` capability that renders ``{{ customer.first_name }}``
    and ``{{ customer.name }}`` like a real one (a line break in a subject is a
    ``TemplateError``), and raises or returns what ``script[customer_id]`` says."""

    def __init__(self, name: str = "sms") -> None:
        super().__init__(name=name, address_field="phone", capabilities=("templates", "receipts", "inbound"))
        self.script: dict[int, dict[str, Any]] = {}
        self.render_many_calls: list[int] = []

    def _step(self, customer_id: int, stage: str) -> tuple[bool, Any]:
        what = self.script.get(customer_id, {}).get(stage)
        if what is None:
            return False, None
        if "raise" in what:
            raise _exception(what["raise"])
        return True, _value(what["return"])

    def address(self, customer: Any) -> str | None:
        scripted, value = self._step(customer["id"], "address")
        return value if scripted else super().address(customer)

    def render_many(self, template: Any, contexts: Any, *, message_ids: Any, purpose: str) -> Any:
        self.render_many_calls.append(len(contexts))
        return super().render_many(template, contexts, message_ids=message_ids, purpose=purpose)

    def render(self, template: Any, context: Any, *, message_id: str, purpose: str) -> Content:
        customer = context["customer"]
        scripted, value = self._step(customer["id"], "render")
        if scripted:
            return Content(**value) if isinstance(value, dict) else value
        first = customer["first_name"] or ""
        subject = template["subject"].replace("{{ customer.first_name }}", first)
        if any(b in subject for b in LINE_BREAKS):
            raise TemplateError(f"template.subject: the rendered subject has a line break ({subject!r})")
        return Content(subject=subject, body=template["body"].replace("{{ customer.name }}", customer["name"] or ""))


def _plugin(channel: Channel) -> Any:
    class P:
        @hookimpl
        def ecrm_register_channels(self) -> list[ChannelSpec]:
            return [ChannelSpec(name=channel.name, factory=channel._bind, capabilities=channel.capabilities)]  # type: ignore[attr-defined]

    return P()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def build(request: pytest.FixtureRequest, crm_factory: Any) -> Any:
    def make(channel: Channel, **options: Any) -> Any:
        options.setdefault("clock", FakeClock())
        options.setdefault("channels", {channel.name: {"policy": {"backoff": 0, "max_backoff": 0, "max_attempts": 3}}})
        if request.param == "postgres":
            return request.getfixturevalue("pg_crm_factory")(plugins=[_plugin(channel)], **options)
        return crm_factory(plugins=[_plugin(channel)], **options)

    return make


def _create(crm: Any, *, name: str, **fields: Any) -> int:
    """A customer with this name.  A name the core's one validation refuses at
    entry (control characters, lone surrogates…) is written straight to the
    table instead, as data stored before that validation existed, or by the
    host's own SQL, would be: the pipeline must isolate such a customer too.
    (PostgreSQL cannot store NUL or a lone surrogate at all: those are kept out.)"""
    import sqlalchemy as sa

    try:
        return int(crm.customers.create(name=name, **fields).id)
    except ValidationError:
        cid = int(crm.customers.create(name="placeholder", **fields).id)
        t = crm.customers.t("customers")
        with crm.db.write() as conn:
            conn.execute(sa.update(t).where(t.c.id == cid).values(name=name))
        return cid


def _storable(crm: Any, name: str) -> bool:
    if crm.db.is_sqlite:
        return True
    return "\x00" not in name and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)


def _populate(crm: Any, chan: ScriptedChannel) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """Good and hostile customers interleaved; returns (good ids, hostile id -> payload)."""
    good: list[int] = []
    bad: dict[int, dict[str, Any]] = {}
    n = 0
    for i, payload in enumerate(PAYLOADS):
        if i % 4 == 0 and len(good) < GOOD:
            n += 1
            good.append(
                crm.customers.create(name=f"Good Person{n}", phone=f"+1415555{n:04d}", consent={"sms": "granted"}).id
            )
        fields = {k: _value(v) for k, v in payload["customer"].items()}
        if not _storable(crm, fields["name"]):
            continue
        n += 1
        cid = _create(crm, phone=f"+1415555{n:04d}", consent={"sms": "granted"}, **fields)
        chan.script[cid] = payload.get("script", {})
        bad[cid] = payload
    while len(good) < GOOD:
        n += 1
        good.append(crm.customers.create(name=f"Good {n}", phone=f"+1415555{n:04d}", consent={"sms": "granted"}).id)
    return good, bad


def _context_fn(chan: ScriptedChannel) -> Any:
    def context(customer: Any) -> Any:
        what = chan.script.get(customer["id"], {}).get("context")
        if what is None:
            return {"greeting": "hello"}
        if "raise" in what:
            raise _exception(what["raise"])
        return _value(what["return"])

    return context


def test_corpus_every_good_customer_is_sent_every_bad_one_recorded(build, caplog):
    chan = ScriptedChannel()
    crm = build(chan)
    good, bad = _populate(crm, chan)
    ids = list(bad) + good
    ids.sort()
    with caplog.at_level(logging.ERROR, logger="ecrm.messages"):
        report = crm.messages.send_many("sms", TEMPLATE, customer_ids=ids, context=_context_fn(chan), chunk_size=7)

    expected = Counter(p["expect"] for p in bad.values())
    queued_expected = expected.pop("queued", 0) + len(good)
    no_address = expected.pop("no_address", 0)
    assert set(expected) <= set(FAILURE_REASONS)
    assert report.queued == queued_expected
    assert dict(report.failed) == dict(expected)
    assert dict(report.blocked) == ({"no_address": no_address} if no_address else {})
    assert report.total == len(ids)
    # one render_many call per chunk, never one per customer
    assert len(chan.render_many_calls) <= -(-len(ids) // 7)

    listed = {f.customer_id: f for f in report.failures}
    assert len(listed) == sum(expected.values()) <= MAX_LISTED_FAILURES
    by_customer = {m.customer_id: m for m in crm.messages.list(limit=1000)}
    for cid in good:
        assert by_customer[cid].status == "queued"
    for cid, payload in bad.items():
        record = by_customer[cid]
        want = payload["expect"]
        if want == "queued":
            assert record.status == "queued", payload["id"]
            continue
        assert record.status == "blocked", payload["id"]
        if want == "no_address":
            assert record.reason == "no_address"
            continue
        assert record.reason.startswith(f"{want}: "), (payload["id"], record.reason)
        failure = listed[cid]
        assert (failure.reason, failure.message) == (want, record.id), payload["id"]
        raised = next((s["raise"] for s in payload.get("script", {}).values() if "raise" in s), None)
        if raised is not None:
            assert failure.error == raised, payload["id"]
            assert failure.plugin_fault is (not _is_data_fault(raised)), payload["id"]
        # on the customer's timeline, with the reason and a detail that is safe to show
        [event] = [i for i in crm.interactions.timeline(cid) if i.kind == "message_blocked"]
        assert event.properties["reason"] == want and event.properties["message"] == record.id
        detail = event.properties["detail"]
        assert detail and len(detail) <= 1000 and "\x00" not in detail and "\n" not in detail
        detail.encode("utf-8")  # no lone surrogates
        assert record.address is None or "\x00" not in record.address

    # a plugin fault is logged once per batch, with its traceback
    tracebacks = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(tracebacks) == 1

    # and the good ones go out
    crm.messages.dispatch()
    delivered = {m.customer_id for m in chan.sent}
    assert set(good) <= delivered
    assert delivered == {cid for cid, m in by_customer.items() if m.status == "queued"}


def test_segment_send_skips_the_bad_members(build):
    chan = ScriptedChannel()
    crm = build(chan)
    good, bad = _populate(crm, chan)
    crm.segments.create("everyone", rule='phone != ""')
    crm.segments.refresh()
    report = crm.messages.send_many("sms", TEMPLATE, segment="everyone", chunk_size=5)
    render_bad = {cid for cid, p in bad.items() if p["expect"] not in ("queued", "no_address", "context_failed")}
    assert sum(report.failed.values()) == len(render_bad)
    assert {f.customer_id for f in report.failures} == render_bad
    queued = {m.customer_id for m in crm.messages.list(status="queued", limit=1000)}
    assert set(good) <= queued


def test_the_issues_exact_case_alone_and_single_send(build):
    chan = ScriptedChannel()
    crm = build(chan)
    ada = crm.customers.create(name="Ada Lovelace", phone="+14155550101", consent={"sms": "granted"}).id
    eve = crm.customers.create(name="Eve\nMallory", phone="+14155550102", consent={"sms": "granted"}).id
    bob = crm.customers.create(name="Bob", phone="+14155550103", consent={"sms": "granted"}).id
    report = crm.messages.send_many("sms", TEMPLATE, customer_ids=[ada, eve, bob])
    assert (report.queued, dict(report.failed)) == (2, {"render_failed": 1})
    [failure] = report.failures
    assert failure.customer_id == eve and "line break" in failure.detail and failure.error == "TemplateError"
    single = crm.messages.send("sms", eve, TEMPLATE)
    assert single.status == "blocked" and single.reason.startswith("render_failed: ")
    with pytest.raises(TemplateError, match="line break"):
        crm.messages.send("sms", eve, TEMPLATE, on_error="raise")
    with pytest.raises(TemplateError):
        crm.messages.send_many("sms", TEMPLATE, customer_ids=[ada, eve, bob], on_error="raise")
    # a re-send once the data is fixed is not a duplicate of the failed one
    crm.customers.update(eve, name="Eve Mallory")
    again = crm.messages.send_many("sms", TEMPLATE, customer_ids=[eve], dedupe_key="welcome-{customer_id}")
    assert again.queued == 1


class ChunkFailingChannel(ScriptedChannel):
    """``render_many`` raises, or answers the wrong shape, for chunks holding a marked customer."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.poison: set[int] = set()

    def render_many(self, template: Any, contexts: Any, *, message_ids: Any, purpose: str) -> Any:
        if any(c["customer"]["id"] in self.poison for c in contexts):
            if self.mode == "raise":
                raise OSError("the renderer pool died")
            if self.mode == "short":
                return [Content(body="x")]
            return None
        return super().render_many(template, contexts, message_ids=message_ids, purpose=purpose)


@pytest.mark.parametrize("mode", ["raise", "short", "none"])
def test_a_render_many_that_fails_loses_only_its_chunk(build, mode):
    chan = ChunkFailingChannel(mode)
    crm = build(chan)
    ids = [
        crm.customers.create(name=f"C {n}", phone=f"+1415555{n:04d}", consent={"sms": "granted"}).id
        for n in range(1, 13)
    ]
    chan.poison = {ids[5]}  # in the second chunk of 4
    report = crm.messages.send_many("sms", TEMPLATE, customer_ids=ids, chunk_size=4)
    assert report.queued == 8 and dict(report.failed) == {"render_failed": 4}
    assert {f.customer_id for f in report.failures} == set(ids[4:8])
    assert all(f.plugin_fault for f in report.failures)


class PoisonSendChannel(MemoryChannel):
    """``send_many`` raises for any batch that holds the poison address (a provider SDK
    that throws on one bad message instead of classifying it)."""

    def __init__(self) -> None:
        super().__init__(name="sms", address_field="phone")
        self.poison = ""
        self.attempt_ids: list[str] = []

    def send_many(self, messages: Any) -> list[DeliveryResult]:
        self.attempt_ids.extend(m.attempt_id for m in messages)
        if any(m.to == self.poison for m in messages):
            raise ValueError(f"SDK error: bad message in batch of {len(messages)}")
        return [self.send(m) for m in messages]


def test_a_send_many_that_raises_for_one_message_does_not_lose_the_chunk(build):
    chan = PoisonSendChannel()
    crm = build(chan)
    ids = [
        crm.customers.create(name=f"C {n}", phone=f"+1415555{n:04d}", consent={"sms": "granted"}).id
        for n in range(1, 11)
    ]
    chan.poison = "+14155550004"
    crm.messages.send_many("sms", {"body": "hi"}, customer_ids=ids)
    for _ in range(5):  # max_attempts=3, no backoff: the worker loop, several times
        crm.messages.dispatch(batch_size=10)
        crm._shared.clock.advance(seconds=1)
    statuses = Counter(m.status for m in crm.messages.list())
    assert statuses == {"sent": 9, "dead": 1}
    [dead] = crm.messages.dead_letters()
    assert dead.address == chan.poison and "SDK error" in (dead.reason or "")
    # each innocent message: the failed chunk attempt, then one that went out on its own
    innocent = next(m for m in crm.messages.list() if m.status == "sent")
    assert [a.status for a in crm.messages.attempts(innocent.id)] == ["deferred", "accepted"]
    assert len(chan.sent) == 9 and len(set(chan.delivered_ids)) == 9
    assert len(chan.attempt_ids) == len(set(chan.attempt_ids))  # no attempt handed over twice


def test_template_error_takes_a_plain_message_and_pickles():
    import pickle

    plain = TemplateError("the subject is empty")
    assert str(plain) == "the subject is empty" and plain.problem == "the subject is empty"
    assert plain.field == "template" and isinstance(plain, EcrmError)
    full = TemplateError("template.subject", "x\ny", "has a line break", "keep it on one line")
    assert full.field == "template.subject" and "has a line break" in str(full)
    assert full.at("email").field == "email.template.subject"
    for err in (plain, full, TemplateError("template.html", object(), "bad", "fix")):
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), back.field, back.problem, back.fix) == (TemplateError, err.field, err.problem, err.fix)
    assert str(pickle.loads(pickle.dumps(plain))) == str(plain)
    assert str(pickle.loads(pickle.dumps(full))) == str(full)
    with pytest.raises(TypeError, match="TemplateError takes a message"):
        TemplateError("template.subject", "x")


def test_default_render_many_puts_errors_in_place():
    class Flaky(Channel):
        name = "flaky"

        def render(self, template: Any, context: Any, *, message_id: str, purpose: str) -> Content:
            if context["n"] == 1:
                raise TemplateError("no")
            if context["n"] == 2:
                raise KeyError("k")
            return Content(body=str(context["n"]))

    out = Flaky(None, {}).render_many({}, [{"n": 0}, {"n": 1}, {"n": 2}], message_ids=["a", "b", "c"], purpose="p")
    assert isinstance(out[0], Content) and out[0].body == "0"
    assert isinstance(out[1], TemplateError) and out[1].original is None
    assert isinstance(out[2], TemplateError) and isinstance(out[2].original, KeyError)
    assert isinstance(out[2].__cause__, KeyError) and out[2].__cause__.__traceback__ is not None


EMAIL_TEMPLATE = {"subject": "Hi {{ customer.first_name }}", "text": "Hello {{ customer.name }}"}


def test_the_issues_exact_case_through_the_email_channel(crm_factory):
    email_plugin = pytest.importorskip("ecrm_email.plugin")
    crm = crm_factory(
        plugins=[email_plugin],
        secret="batch-isolation-secret-0123456789",
        channels={"email": {"from": "Shop <news@shop.example>", "base_url": "https://shop.example/crm"}},
    )
    names = ["Ada Lovelace", "Eve\nMallory", "Bob"] + [p["customer"]["name"] for p in PAYLOADS[:15]]
    ids = [
        _create(crm, name=name, email=f"c{i}@example.com", consent={"email": "granted"}) for i, name in enumerate(names)
    ]
    report = crm.messages.send_many("email", EMAIL_TEMPLATE, customer_ids=ids)
    assert report.total == len(ids)
    assert report.queued >= 2 and report.failed["render_failed"] >= 1
    failed = {f.customer_id for f in report.failures}
    assert ids[1] in failed and ids[0] not in failed and ids[2] not in failed
    records = {m.customer_id: m for m in crm.messages.list(limit=100)}
    for cid in ids:
        if cid in failed:
            assert records[cid].status == "blocked" and records[cid].reason.startswith("render_failed: ")
            assert "message_blocked" in [i.kind for i in crm.interactions.timeline(cid)]
        else:
            assert records[cid].status == "queued"
            assert "\n" not in (records[cid].content.subject or "")


def test_chunk_size_is_checked(build):
    crm = build(ScriptedChannel())
    with pytest.raises(ValidationError, match="chunk_size"):
        crm.messages.send_many("sms", TEMPLATE, customer_ids=[1], chunk_size=0)
