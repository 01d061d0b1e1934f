"""The delivery pipeline (crm.messages) and the channel conformance suite,
run against the reference MemoryChannel."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ecrm_core import CRM, ChannelSpec, ValidationError, hookimpl
from ecrm_core.channels import (
    Channel,
    ChannelConfigError,
    Content,
    DeliveryPolicy,
    DeliveryResult,
    InboundRequest,
    MessageEvent,
    TemplateError,
    load_transport,
)
from ecrm_core.errors import Conflict, NotFound
from ecrm_core.services.messages import quiet_until
from ecrm_core.signing import MissingSecret, Signer
from ecrm_core.testing import EventRecorder, make_crm, registered
from ecrm_core.testing.channels import ChannelConformance, FakeClock, MemoryChannel, sign_body

SECRET = "receipt-secret-0123456789"


class TestMemoryChannelConformance(ChannelConformance):
    channel = "memory"

    @pytest.fixture(autouse=True)
    def _provider(self):
        self.memory = MemoryChannel(name="memory")

    def plugins(self):
        return [self.memory.plugin()]

    def channel_config(self):
        return {"webhook_secret": SECRET}

    def customer_fields(self, n):
        return {"email": f"c{n}@example.com"}

    def delivered_ids(self):
        return self.memory.delivered_ids

    def fail_next(self, kind):
        self.memory.fail_next(kind)

    def inbound_request(self, crm, message_id, *, genuine):
        body = json.dumps({"type": "delivered", "message_id": message_id, "id": "r-1"}).encode()
        signature = sign_body(SECRET, body) if genuine else sign_body("forged-secret-xxxxxxxx", body)
        return InboundRequest(route="receipt", method="POST", headers={"x-signature": signature}, body=body)


# ---------------------------------------------------------------------------
# pipeline behaviour beyond the suite
# ---------------------------------------------------------------------------


@pytest.fixture
def clock():
    return FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def memory():
    return MemoryChannel(name="memory")


def build(tmp_path, memory, clock, **policy):
    return make_crm(
        tmp_path / "m.db",
        plugins=[memory.plugin()],
        clock=clock,
        secret="s" * 32,
        channels={"memory": {"policy": {"backoff": 60, **policy}}},
    )


def customer(crm, n=1, **extra):
    return crm.customers.create(email=f"c{n}@example.com", consent={"memory": "granted"}, **extra).id


def test_frequency_cap_blocks_over_the_limit_but_not_transactional(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock, frequency_caps=[(2, timedelta(days=1))])
    cid = customer(crm)
    statuses = [crm.messages.send("memory", cid, {"body": str(i)}).status for i in range(3)]
    assert statuses == ["queued", "queued", "blocked"]
    assert crm.messages.send("memory", cid, {"body": "r"}, purpose="transactional").status == "queued"
    clock.advance(days=1, seconds=1)
    assert crm.messages.send("memory", cid, {"body": "next day"}).status == "queued"
    # bulk: counted per customer in the same chunk too
    other = customer(crm, 2)
    report = crm.messages.send_many("memory", {"body": "x"}, customer_ids=[other, other, other])
    assert report.queued == 2 and report.blocked == {"frequency_cap": 1}


def test_quiet_hours_delay_to_the_customers_morning(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock, quiet_hours=("21:00", "08:00"))
    # 12:00 UTC is 21:00 in Seoul: quiet until 08:00 KST = 23:00 UTC
    seoul = customer(crm, 1, timezone="Asia/Seoul")
    paris = customer(crm, 2, timezone="Europe/Paris")  # 14:00 local: fine
    late = crm.messages.send("memory", seoul, {"body": "hi"})
    now = crm.messages.send("memory", paris, {"body": "hi"})
    receipt = crm.messages.send("memory", seoul, {"body": "receipt"}, purpose="transactional")
    assert late.next_attempt_at == datetime(2026, 6, 1, 23, 0, tzinfo=UTC)
    assert now.next_attempt_at == clock.now == receipt.next_attempt_at
    assert crm.messages.dispatch().sent == 2
    clock.advance(hours=11, seconds=1)
    assert crm.messages.dispatch().sent == 1
    assert memory.delivered_ids[-1] == late.id


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-06-01T20:59", None),
        ("2026-06-01T21:00", "2026-06-02T08:00"),
        ("2026-06-02T03:00", "2026-06-02T08:00"),
        ("2026-06-02T08:00", None),
    ],
)
def test_quiet_until_across_midnight(now, expected):
    from datetime import time

    got = quiet_until(datetime.fromisoformat(now).replace(tzinfo=UTC), "UTC", time(21), time(8))
    assert got == (datetime.fromisoformat(expected).replace(tzinfo=UTC) if expected else None)


def test_backoff_grows_and_respects_retry_after(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock, max_attempts=5)
    cid = customer(crm)
    record = crm.messages.send("memory", cid, {"body": "x"})
    delays = []
    for _ in range(3):
        memory.fail_next("temporary")
        crm.messages.dispatch()
        due = crm.messages.get(record.id).next_attempt_at
        delays.append((due - clock.now).total_seconds())
        clock.now = due
    assert 54 <= delays[0] <= 66 and 108 <= delays[1] <= 132 and 216 <= delays[2] <= 264


def test_one_claim_leases_fresh_retried_and_recovered_messages_with_the_right_numbers(tmp_path, memory, clock):
    """A claim leases its whole batch with one set-based update (attempts + 1):
    in one batch, a fresh message, a retried one and one whose lease expired
    each get the next number, in the counter and in the delivery log."""
    crm = build(tmp_path, memory, clock, max_attempts=5, lease=60)
    a, b, c, d = (crm.messages.send("memory", customer(crm, n), {"body": "x"}).id for n in range(1, 5))
    memory.fail_next("temporary", times=2)
    first = crm.messages.dispatch(batch_size=2)  # a and b deferred, then c and d sent
    assert (first.retrying, first.sent) == (2, 2)
    clock.advance(seconds=120)  # past the backoff
    [claimed] = crm.messages._claim(None, 1, {"recovered": 0, "blocked": 0})  # leases a or b; its worker dies
    stale = claimed.message.id
    [retried] = {a, b} - {stale}
    fresh = crm.messages.send("memory", customer(crm, 5), {"body": "x"}).id
    clock.advance(seconds=61)  # past the lease
    report = crm.messages.dispatch(batch_size=10)  # one claim: the stale one, the retried one and the fresh one
    assert (report.recovered, report.sent) == (1, 3)
    assert [crm.messages.get(m).attempts for m in (stale, retried, c, d, fresh)] == [3, 2, 1, 1, 1]
    assert [(x.number, x.status) for x in crm.messages.attempts(stale)] == [
        (1, "deferred"),
        (2, "lost"),
        (3, "accepted"),
    ]
    assert [(x.number, x.status) for x in crm.messages.attempts(retried)] == [(1, "deferred"), (2, "accepted")]
    assert [x.number for x in crm.messages.attempts(fresh)] == [1]


def test_an_attempt_is_written_once_with_its_outcome_and_a_late_report_replaces_lost(tmp_path, memory, clock):
    """The claim writes no attempt row: an attempt in flight is listed as ``started`` (from the
    message's lease), with the id the channel was given; its row is written when it settles.  A
    worker that reports after its lease expired and another worker took the message over finds its
    attempt logged ``lost``: its outcome replaces that, the message stays with the newer attempt."""
    crm = build(tmp_path, memory, clock, lease=60)
    mid = crm.messages.send("memory", customer(crm), {"body": "x"}).id
    [slow] = crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})  # its worker stalls
    [started] = crm.messages.attempts(mid)
    assert (started.number, started.status, started.attempt_id) == (1, "started", slow.message.attempt_id)
    assert started.finished_at is None
    with crm.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ecrm_delivery_attempts").scalar() == 0
    clock.advance(seconds=61)
    assert crm.messages.dispatch().sent == 1  # another worker takes it over: attempt 1 lost, 2 accepted
    second = crm.messages.attempts(mid)
    assert [(a.number, a.status) for a in second] == [(1, "lost"), (2, "accepted")]
    assert second[0].attempt_id == slow.message.attempt_id != second[1].attempt_id
    assert second[0].started_at == started.started_at
    crm.messages._deliver([slow], {"sent": 0, "retrying": 0, "dead": 0, "blocked": 0, "recovered": 0})
    assert [(a.number, a.status) for a in crm.messages.attempts(mid)] == [(1, "accepted"), (2, "accepted")]
    record = crm.messages.get(mid)
    assert (record.status, record.attempts) == ("sent", 2)  # settled once, by the attempt holding the lease


def test_one_claim_gives_each_channel_its_own_lease(tmp_path, memory, clock):
    """The claim's one UPDATE takes each message's lease from its channel's policy."""
    sms = MemoryChannel(name="sms", address_field="phone")
    second = sms.plugin()
    second.ECRM_PLUGIN_NAME = "memory-sms"  # two MemoryChannel plugins: each its own name
    crm = make_crm(
        tmp_path / "m.db",
        plugins=[memory.plugin(), second],
        clock=clock,
        secret="s" * 32,
        channels={"memory": {"policy": {"lease": 60}}, "sms": {"policy": {"lease": 900}}},
    )
    cid = crm.customers.create(
        email="c@example.com", phone="+14155550101", consent={"memory": "granted", "sms": "granted"}
    ).id
    by_channel = {ch: crm.messages.send(ch, cid, {"body": "x"}).id for ch in ("memory", "sms")}
    claimed = crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})
    assert sorted(c.message.channel for c in claimed) == ["memory", "sms"]
    with crm.db.read() as conn:
        leases = dict(conn.exec_driver_sql("SELECT uid, lease_until FROM ecrm_messages").all())
    now = clock().replace(tzinfo=None)
    for ch, seconds in (("memory", 60), ("sms", 900)):
        assert datetime.fromisoformat(leases[by_channel[ch]]) == now + timedelta(seconds=seconds)


def test_settling_after_the_customer_was_merged_or_deleted_meanwhile(tmp_path, memory, clock):
    """Between claim and settle a customer may be merged (the outcome lands on the survivor's
    timeline) or deleted with their messages (nothing is written for them); the others settle."""
    crm = build(tmp_path, memory, clock)
    keep, merged, gone, survivor = (customer(crm, n) for n in range(1, 5))
    ids = {cid: crm.messages.send("memory", cid, {"body": "x"}).id for cid in (keep, merged, gone)}
    claimed = crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})
    assert len(claimed) == 3
    crm.customers.merge(merged, into=survivor)
    crm.customers.delete(gone)
    totals = {"sent": 0, "retrying": 0, "dead": 0, "blocked": 0, "recovered": 0}
    crm.messages._deliver(claimed, totals)
    assert totals["sent"] == 3
    assert crm.messages.get(ids[keep]).status == "sent"
    with pytest.raises(NotFound):
        crm.messages.get(ids[gone])

    def sent_to(cid):
        return [i.properties["message"] for i in crm.interactions.timeline(cid) if i.kind == "message_sent"]

    assert sent_to(keep) == [ids[keep]]
    assert ids[merged] in sent_to(survivor)
    assert [a.status for a in crm.messages.attempts(ids[keep])] == ["accepted"]


def test_a_merge_moves_the_sources_messages_to_the_survivor(tmp_path, memory, clock):
    """Sent and still queued messages follow the person (their history, and the caps count them)."""
    crm = build(tmp_path, memory, clock)
    source, survivor = customer(crm, 1), customer(crm, 2)
    sent = crm.messages.send("memory", source, {"body": "x"}).id
    assert crm.messages.dispatch().sent == 1
    queued = crm.messages.send("memory", source, {"body": "y"}).id
    crm.customers.merge(source, into=survivor)
    assert crm.messages.list(customer_id=source) == []
    mine = {m.id: m.status for m in crm.messages.list(customer_id=survivor)}
    assert mine == {sent: "sent", queued: "queued"}
    assert crm.messages.dispatch().sent == 1  # the queued one still goes out
    assert crm.messages.get(queued).status == "sent"


def test_channel_that_raises_or_returns_garbage_loses_nothing(tmp_path, memory, clock, caplog):
    crm = build(tmp_path, memory, clock)
    cid = customer(crm)
    record = crm.messages.send("memory", cid, {"body": "x"})
    memory.fail_next("raise")
    assert crm.messages.dispatch().retrying == 1
    assert "provider unreachable" in crm.messages.get(record.id).reason
    assert "channel memory failed" in caplog.text

    class Garbage(Channel):
        name = "garbage"

        def address(self, c):
            return c["email"]

        def send_many(self, messages):
            return ["ok"] * len(messages)

    class P:
        @hookimpl
        def ecrm_register_channels(self):
            return [ChannelSpec(name="garbage", factory=Garbage)]

    with registered(crm, P()):
        crm.customers.set_consent(cid, "garbage", True)
        g = crm.messages.send("garbage", cid, {"body": "x"})
        assert crm.messages.dispatch(channel="garbage").retrying == 1
        assert crm.messages.get(g.id).reason == "channel returned an invalid result"


def test_events_hooks_fire_once_per_batch(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock)
    recorder = EventRecorder()

    class Listen:
        @hookimpl
        def ecrm_messages_dispatched(self, outcomes):
            recorder.calls.append(("ecrm_messages_dispatched", {"outcomes": list(outcomes)}))

        @hookimpl
        def ecrm_message_events(self, events):
            recorder.calls.append(("ecrm_message_events", {"events": list(events)}))

    with registered(crm, Listen()):
        ids = [customer(crm, n) for n in range(3)]
        crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
        memory.fail_next("temporary")
        crm.messages.dispatch(batch_size=10)
        [call] = recorder.of("ecrm_messages_dispatched")
        assert sorted(o.status for o in call["outcomes"]) == ["retrying", "sent", "sent"]
        sent = next(o for o in call["outcomes"] if o.status == "sent")
        event = MessageEvent(type="opened", channel="memory", message_id=sent.message, key="o-1")
        assert len(crm.messages.apply_events([event, event])) == 1
        assert crm.messages.apply_events([event]) == []
        [applied] = recorder.of("ecrm_message_events")
        assert applied["events"][0].customer_id == sent.customer_id


def test_feedback_events_change_consent_and_suppress(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock)
    cid = customer(crm)
    record = crm.messages.send("memory", cid, {"body": "x"})
    crm.messages.dispatch()
    unsub = MessageEvent(type="unsubscribed", channel="memory", message_id=record.id, purpose="marketing", key="u")
    crm.messages.apply_events([unsub])
    assert crm.customers.get(cid).consent["memory:marketing"].status == "denied"
    assert crm.messages.send("memory", cid, {"body": "y"}).reason == "opted_out"
    crm.messages.apply_events(
        [MessageEvent(type="resubscribed", channel="memory", customer_id=cid, purpose="marketing")]
    )
    assert crm.customers.get(cid).consent["memory:marketing"].status == "granted"
    crm.messages.apply_events([MessageEvent(type="complained", channel="memory", message_id=record.id, key="c")])
    assert crm.customers.get(cid).consent["memory"].status == "denied"
    [entry] = crm.messages.suppressions()
    assert (entry.address, entry.scope, entry.reason) == ("c1@example.com", "marketing", "complaint")
    # a bounce names the message it is about (an address alone is not proof that ecrm sent there)
    orphan = MessageEvent(type="bounced", channel="memory", address="c1@example.com", key="b0")
    assert crm.messages.apply([orphan]).ignored[0].reason.startswith("a bounced event needs the message")
    bounce = MessageEvent(type="bounced", channel="memory", message_id=record.id, address="C1@example.com ", key="b")
    assert crm.messages.apply_events([bounce])
    [entry] = crm.messages.suppressions()
    assert entry.scope == "all"  # widened, never narrowed
    kinds = [i.kind for i in crm.interactions.timeline(cid)]
    assert {"unsubscribe", "resubscribe", "complaint", "bounce"} <= set(kinds)
    assert crm.messages.unsuppress("memory", "C1@example.com") is False  # non-email channels keep case
    assert crm.messages.unsuppress("memory", "c1@example.com") is True


def test_send_many_to_a_segment_with_per_customer_context(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock)
    ids = [customer(crm, n, attributes={"vip": n % 2 == 0}) for n in range(6)]
    crm.segments.create("vip", rule="attributes.vip == true")
    seen = []
    report = crm.messages.send_many(
        "memory",
        {"body": "x"},
        segment="vip",
        context=lambda c: seen.append(c["id"]) or {"greeting": "hi"},
        dedupe_key="vip-{customer_id}",
    )
    assert report.queued == 3 and sorted(seen) == [i for i in ids if ids.index(i) % 2 == 0]
    again = crm.messages.send_many("memory", {"body": "x"}, segment="vip", dedupe_key="vip-{customer_id}")
    assert again.duplicates == 3 and again.queued == 0


def test_bad_input_is_named(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock)
    cid = customer(crm)
    with pytest.raises(ValidationError, match=r"unknown channel.*did you mean 'memory'"):
        crm.messages.send("memroy", cid, {"body": "x"})
    with pytest.raises(ValidationError, match="purpose: unknown message purpose"):
        crm.messages.send("memory", cid, {"body": "x"}, purpose="spam")
    with pytest.raises(NotFound):
        crm.messages.send("memory", 999, {"body": "x"})
    with pytest.raises(ValidationError, match=r"context\.offer_obj: not plain data"):
        crm.messages.send("memory", cid, {"body": "x"}, context={"offer_obj": object()})
    with pytest.raises(TemplateError, match="does not render templates"):
        crm.messages.send("memory", cid, 42, on_error="raise")
    with pytest.raises(ValidationError, match="on_error"):
        crm.messages.send("memory", cid, {"body": "x"}, on_error="ignore")
    with pytest.raises(ValidationError, match="dedupe_key"):
        crm.messages.send_many("memory", {"body": "x"}, customer_ids=[cid], dedupe_key="static")
    with pytest.raises(ValidationError, match="at: "):
        crm.messages.send("memory", cid, {"body": "x"}, at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="status"):
        crm.messages.list(status="bogus")
    with pytest.raises(ValidationError, match="scope"):
        crm.messages.suppress("memory", "a@b.c", scope="some")
    assert crm.messages.list() == []  # nothing stored by any of the above
    recorded = crm.messages.send("memory", cid, 42)  # the default: recorded, not raised
    assert recorded.status == "blocked" and recorded.reason.startswith("render_failed: ")
    assert "does not render templates" in recorded.reason
    with pytest.raises(ValidationError, match=r"frequency_caps\[0\]"):
        DeliveryPolicy.from_config({"frequency_caps": [(0, 10)]})
    with pytest.raises(ValidationError, match="quiet_hours"):
        DeliveryPolicy.from_config({"quiet_hours": ("25:00", "08:00")})
    with pytest.raises(ValidationError, match=r"channels\.memory\.policy"):
        bad = make_crm(tmp_path / "bad.db", plugins=[memory.plugin()], channels={"memory": {"policy": {"lease": -1}}})
        bad.channels.policy("memory")
    with pytest.raises(ValidationError, match="channels"):
        CRM(f"sqlite:///{tmp_path / 'x.db'}", load_entrypoints=False, channels=["email"])
    with pytest.raises(ValidationError):
        DeliveryResult(status="maybe")


def test_replay_and_cancel_only_in_the_right_state(tmp_path, memory, clock):
    crm = build(tmp_path, memory, clock)
    cid = customer(crm)
    record = crm.messages.send("memory", cid, {"body": "x"})
    with pytest.raises(Conflict, match="only dead letters"):
        crm.messages.replay(record.id)
    assert crm.messages.cancel(record.id).status == "cancelled"
    assert crm.messages.dispatch().attempted == 0
    with pytest.raises(Conflict, match="only queued"):
        crm.messages.cancel(record.id)
    assert crm.messages.counts() == {"cancelled": 1}


def test_signing_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("ECRM_SECRET", raising=False)
    crm = CRM(f"sqlite:///{tmp_path / 's.db'}", load_entrypoints=False)
    with pytest.raises(MissingSecret, match="ECRM_SECRET"):
        crm.signer  # noqa: B018
    monkeypatch.setenv("ECRM_SECRET", "old-secret-0123456789,new-secret-0123456789")
    rotated = CRM(f"sqlite:///{tmp_path / 's.db'}", load_entrypoints=False)
    old = Signer("old-secret-0123456789").sign("click", {"m": 1})
    assert rotated.signer.verify("click", old) == {"m": 1}
    assert "secret" not in repr(rotated.signer)
    with pytest.raises(ValidationError, match="secret"):
        CRM(f"sqlite:///{tmp_path / 's.db'}", load_entrypoints=False, secret="short").signer  # noqa: B018


def test_unknown_transport_lists_the_installed_ones():
    with pytest.raises(ChannelConfigError, match="unknown transport 'carrier-pigeon'"):
        load_transport("email", "carrier-pigeon")


def test_content_round_trips_json():
    c = Content(subject="s", body="b", html="<p>h</p>", headers={"X-A": "1"})
    assert Content.from_json(c.to_json()) == c


def test_ecrm_register_message_purposes(tmp_path, memory, clock):
    from ecrm_core.channels import Purpose

    class Plugin:
        @hookimpl
        def ecrm_register_message_purposes(self):
            return [Purpose(name="newsletter", description="monthly"), Purpose(name="marketing")]

    crm = build(tmp_path, memory, clock)
    from ecrm_core import PluginError

    with pytest.raises(PluginError, match="message purpose 'marketing' is registered twice"):
        crm.register_plugin(Plugin())
    assert "newsletter" not in crm.registry.purposes


def test_locate_finds_a_message_in_any_workspace_get_stays_in_its_own(tmp_path, memory, clock):
    from ecrm_core.errors import NotFound

    crm = build(tmp_path, memory, clock)
    other = crm.in_workspace("shop-b")
    cid = other.customers.create(email="b@example.com", consent={"memory": "granted"}).id
    sent = other.messages.send("memory", cid, {"body": "hi"})
    found = crm.messages.locate(sent.id)  # the default workspace's view finds it
    assert found is not None and (found.workspace, found.customer_id, found.id) == ("shop-b", cid, sent.id)
    assert other.messages.locate(sent.id) == found
    with pytest.raises(NotFound):
        crm.messages.get(sent.id)  # get never leaves the view's workspace
    assert crm.messages.locate("0" * 26) is None
