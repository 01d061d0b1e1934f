"""The delivery pipeline (``crm.messages``) on a real PostgreSQL server.

The channel conformance suite runs here with the core's MemoryChannel; the
rest is what only a server with concurrent writers and timestamptz shows:
two workers on two connections claiming at the same moment (``FOR UPDATE
SKIP LOCKED``), an expired lease re-claimed by another worker, a frequency
cap under two concurrent ``send()`` calls, and times that stay right while
the server's TimeZone is UTC+05:45.

Overlaps are made exact, not left to chance: a worker is held *inside* its
claim (or cap-count) transaction, with its row locks taken, until the other
one has got as far as the test needs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from ecrm_core import CRM
from ecrm_core.services.messages import Messages
from ecrm_core.testing.channels import ChannelConformance, FakeClock, MemoryChannel, sign_body
from ecrm_core.testing.postgres import SERVER_TIMEZONE

pytestmark = pytest.mark.postgres

SECRET = "receipt-secret-0123456789"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WAIT = 10  # seconds a held worker waits for the other before giving up (a lock would block it)


class TestMemoryChannelConformanceOnPostgres(ChannelConformance):
    """The whole suite (consent, suppression, retries, dead letters, lease
    recovery, inbound signatures…) against a CRM on PostgreSQL."""

    channel = "memory"

    @pytest.fixture(autouse=True)
    def _provider(self):
        self.memory = MemoryChannel(name="memory")

    @pytest.fixture
    def crm(self, pg_crm_factory) -> Iterator[CRM]:  # the suite's own fixture, on PostgreSQL
        self.clock = FakeClock()
        policy = {"backoff": 0, "max_backoff": 0, "max_attempts": 3}
        crm = pg_crm_factory(
            plugins=list(self.plugins()),
            clock=self.clock,
            secret=self.secret,
            channels={self.channel: {**self.channel_config(), "policy": policy}},
        )
        assert crm.db.engine.dialect.name == "postgresql"
        yield crm

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
        import json

        from ecrm_core.channels import InboundRequest

        body = json.dumps({"type": "delivered", "message_id": message_id, "id": "r-1"}).encode()
        signature = sign_body(SECRET, body) if genuine else sign_body("forged-secret-xxxxxxxx", body)
        return InboundRequest(route="receipt", method="POST", headers={"x-signature": signature}, body=body)


# ---------------------------------------------------------------------------
# two workers: two CRMs (two engines, two connections) on one database
# ---------------------------------------------------------------------------


class Workers:
    """Two CRMs on the same PostgreSQL database, each with its own MemoryChannel
    (as two worker processes would have), sharing one clock."""

    def __init__(self, first: CRM, second: CRM, channels: tuple[MemoryChannel, MemoryChannel], clock: FakeClock):
        self.crms = (first, second)
        self.channels = channels
        self.clock = clock

    def delivered(self) -> Counter[str]:
        return Counter(mid for ch in self.channels for mid in ch.delivered_ids)


@pytest.fixture
def workers(pg_crm_factory) -> Iterator[Callable[..., Workers]]:
    made: list[CRM] = []

    def build(**policy: Any) -> Workers:
        clock = FakeClock(T0)
        channels = (MemoryChannel(name="memory"), MemoryChannel(name="memory"))
        options = {
            "clock": clock,
            "secret": "s" * 32,
            "channels": {"memory": {"policy": {"backoff": 0, "max_backoff": 0, **policy}}},
        }
        first = pg_crm_factory(plugins=[channels[0].plugin()], **options)
        url = first.db.engine.url.render_as_string(hide_password=False)
        second = CRM(url, load_entrypoints=False, plugins=[channels[1].plugin()], **options)
        made.append(second)
        assert first.db.engine is not second.db.engine
        return Workers(first, second, channels, clock)

    yield build
    for crm in made:
        crm.close()


def customers(crm: CRM, n: int, **extra: Any) -> list[int]:
    return [
        crm.customers.create(email=f"c{i}@example.com", consent={"memory": "granted"}, **extra).id for i in range(n)
    ]


def run_both(work: Callable[[int], Any]) -> list[Any]:
    """``work(0)`` and ``work(1)`` in two threads started together; their results
    (an exception is re-raised)."""
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def main(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]
    return results


def hold_inside_claim(monkeypatch, pause: Callable[[], None]) -> None:
    """Call ``pause()`` inside every claim transaction, right after its
    ``SELECT … FOR UPDATE SKIP LOCKED`` (the claim reads the customers'
    current consent there, on the same connection)."""
    original = Messages._customers

    def customers_in_claim(self, ids, single, conn=None):
        if conn is not None:  # only _claim passes its connection
            pause()
        return original(self, ids, single, conn)

    monkeypatch.setattr(Messages, "_customers", customers_in_claim)


def test_two_workers_dispatching_at_once_never_send_a_message_twice(workers, monkeypatch):
    w = workers(max_attempts=3)
    ids = customers(w.crms[0], 40)
    report = w.crms[0].messages.send_many("memory", {"body": "hi"}, customer_ids=ids)
    assert report.queued == 40

    # Each worker's first claim waits, holding its locks, until the other
    # worker's first claim has its rows too: both claim transactions are open
    # at the same moment.  With SKIP LOCKED the second one skips the rows the
    # first has locked instead of waiting for them (which would break the barrier).
    both_claiming = threading.Barrier(2, timeout=WAIT)
    first_claims = threading.local()

    def pause() -> None:
        if not getattr(first_claims, "done", False):
            first_claims.done = True
            both_claiming.wait()

    hold_inside_claim(monkeypatch, pause)
    reports = run_both(lambda i: w.crms[i].messages.dispatch(batch_size=10))

    assert not both_claiming.broken
    assert all(r.sent > 0 for r in reports), [r.sent for r in reports]  # both did work
    assert sum(r.sent for r in reports) == 40
    delivered = w.delivered()
    assert sorted(delivered.values()) == [1] * 40  # every message exactly once
    assert not set(w.channels[0].delivered_ids) & set(w.channels[1].delivered_ids)
    assert w.crms[0].messages.counts(channel="memory").get("sent") == 40
    for mid in delivered:
        assert [a.status for a in w.crms[1].messages.attempts(mid)] == ["accepted"]


def test_a_claimed_message_is_skipped_not_waited_for(workers, monkeypatch):
    """A second worker passes over a message another worker is claiming
    right now (row locked), without blocking and without sending it."""
    w = workers()
    [cid] = customers(w.crms[0], 1)
    record = w.crms[0].messages.send("memory", cid, {"body": "hi"})
    holding, other_done = threading.Event(), threading.Event()

    def pause() -> None:
        if threading.current_thread().name == "holder":
            holding.set()
            assert other_done.wait(WAIT), "the other worker blocked on the locked row"

    hold_inside_claim(monkeypatch, pause)
    result: dict[str, Any] = {}
    holder = threading.Thread(
        target=lambda: result.setdefault("a", w.crms[0].messages.dispatch()), name="holder", daemon=True
    )
    holder.start()
    assert holding.wait(WAIT)
    result["b"] = w.crms[1].messages.dispatch()  # the row is locked by the holder's open transaction
    other_done.set()
    holder.join(timeout=60)
    assert result["b"].attempted == 0 and result["b"].sent == 0
    assert result["a"].sent == 1
    assert w.delivered() == Counter({record.id: 1})


def test_an_expired_lease_is_reclaimed_by_another_worker_once(workers):
    w = workers(lease=60)
    [cid] = customers(w.crms[0], 1)
    record = w.crms[0].messages.send("memory", cid, {"body": "hi"})
    # worker 0 claims the message and dies before sending or recording anything
    claimed = w.crms[0].messages._claim(None, 10, {"recovered": 0, "blocked": 0})
    assert [c.message.id for c in claimed] == [record.id]
    assert w.crms[1].messages.get(record.id).status == "sending"

    w.clock.advance(seconds=59)
    assert w.crms[1].messages.dispatch().attempted == 0  # the lease still holds

    w.clock.advance(seconds=2)
    reports = run_both(lambda i: w.crms[i].messages.dispatch())  # both workers see it expired
    assert sum(r.recovered for r in reports) == 1 and sum(r.sent for r in reports) == 1
    assert w.delivered() == Counter({record.id: 1})
    got = w.crms[0].messages.get(record.id)
    assert got.status == "sent" and got.attempts == 2
    attempts = w.crms[0].messages.attempts(record.id)
    assert [a.status for a in attempts] == ["lost", "accepted"]
    assert attempts[0].attempt_id == claimed[0].message.attempt_id and attempts[1].attempt_id != attempts[0].attempt_id


def test_frequency_cap_holds_under_two_concurrent_sends(workers, monkeypatch):
    w = workers(frequency_caps=[(1, timedelta(days=1))])
    [cid] = customers(w.crms[0], 1)
    # Each send waits after counting for the other to have counted too.
    # Without a lock both count 0 and both queue; with the customer's row
    # locked before counting (the fix) the second blocks in its count until
    # the first commits, so the first gives up waiting after a few seconds,
    # and the second counts the first's message.
    counted = threading.Barrier(2, timeout=3)
    original = Messages._cap_counts

    def cap_counts(self, conn, channel, ids, policy):
        out = original(self, conn, channel, ids, policy)
        try:
            counted.wait()
        except threading.BrokenBarrierError:
            pass
        return out

    monkeypatch.setattr(Messages, "_cap_counts", cap_counts)
    records = run_both(lambda i: w.crms[i].messages.send("memory", cid, {"body": f"offer {i}"}))
    assert sorted(r.status for r in records) == ["blocked", "queued"]
    assert sorted(r.reason or "" for r in records) == ["", "frequency_cap"]


def test_frequency_cap_counts_sequential_sends_across_workers(workers):
    """The same cap with the two sends one after the other (no race): the
    window is compared in SQL against timestamptz values."""
    w = workers(frequency_caps=[(1, timedelta(days=1))])
    [cid] = customers(w.crms[0], 1)
    assert w.crms[0].messages.send("memory", cid, {"body": "1"}).status == "queued"
    second = w.crms[1].messages.send("memory", cid, {"body": "2"})
    assert second.status == "blocked" and second.reason == "frequency_cap"
    w.clock.advance(days=1, seconds=-1)
    assert w.crms[1].messages.send("memory", cid, {"body": "3"}).reason == "frequency_cap"
    w.clock.advance(seconds=2)  # one day and a second after the first
    assert w.crms[1].messages.send("memory", cid, {"body": "4"}).status == "queued"


# ---------------------------------------------------------------------------
# time: the server runs at UTC+05:45
# ---------------------------------------------------------------------------


def test_server_runs_in_an_odd_zone(pg_crm):
    with pg_crm.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == SERVER_TIMEZONE
        offset = conn.exec_driver_sql("SELECT to_char(now(), 'TZH:TZM')").scalar()
    assert offset == "+05:45"


def test_message_times_are_instants_whatever_the_server_zone(workers):
    w = workers(backoff=90, max_backoff=90)
    crm = w.crms[0]
    [cid] = customers(crm, 1)
    # scheduled with a wall time in another zone: the same instant is stored
    at = datetime(2026, 6, 1, 8, 30, tzinfo=timezone(timedelta(hours=-7)))  # 15:30 UTC
    record = crm.messages.send("memory", cid, {"body": "hi"}, at=at)
    assert record.next_attempt_at == at and record.next_attempt_at.tzinfo is UTC
    assert record.created_at == T0 and record.created_at.tzinfo is UTC

    t = crm.db.tables["messages"]
    with crm.db.read() as conn:
        utc_wall = conn.execute(
            sa.select(sa.func.timezone("UTC", t.c.next_attempt_at), sa.func.timezone("UTC", t.c.created_at)).where(
                t.c.uid == record.id
            )
        ).one()
    assert tuple(utc_wall) == (datetime(2026, 6, 1, 15, 30), datetime(2026, 6, 1, 12, 0))

    # due is compared in SQL: one second early nothing goes, one second late it does
    w.clock.advance(hours=3, minutes=29, seconds=59)
    assert crm.messages.dispatch().attempted == 0
    w.clock.advance(seconds=2)
    w.channels[0].fail_next("temporary")
    assert crm.messages.dispatch().retrying == 1
    retry = crm.messages.get(record.id)
    sent_try = w.clock.now
    assert timedelta(seconds=80) <= retry.next_attempt_at - sent_try <= timedelta(seconds=100)  # backoff 90 s ±10%
    [first] = crm.messages.attempts(record.id)
    assert first.started_at == sent_try and first.started_at.tzinfo is UTC
    w.clock.advance(seconds=101)
    assert w.crms[1].messages.dispatch().sent == 1  # the other worker, its own connection
    done = crm.messages.get(record.id)
    assert done.sent_at == w.clock.now and done.sent_at.tzinfo is UTC


def test_quiet_hours_are_the_customers_local_night(workers):
    """Quiet hours 21:00-08:00 in each customer's zone, on a server at +05:45
    (whose own 21:00 is neither customer's)."""
    w = workers(quiet_hours=("21:00", "08:00"), default_timezone="America/New_York")
    crm = w.crms[0]
    # T0 = 12:00 UTC: 21:00 in Seoul (quiet), 17:45 on the server, 14:00 in Paris, 08:00 in New York
    seoul = crm.customers.create(email="kr@example.com", consent={"memory": "granted"}, timezone="Asia/Seoul").id
    paris = crm.customers.create(email="fr@example.com", consent={"memory": "granted"}, timezone="Europe/Paris").id
    kathmandu = crm.customers.create(
        email="np@example.com", consent={"memory": "granted"}, timezone="Asia/Kathmandu"
    ).id
    nyc = crm.customers.create(email="us@example.com", consent={"memory": "granted"}).id  # default zone

    late = crm.messages.send("memory", seoul, {"body": "hi"})
    assert late.next_attempt_at == datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # 08:00 KST
    assert crm.messages.send("memory", paris, {"body": "hi"}).next_attempt_at == T0
    assert crm.messages.send("memory", nyc, {"body": "hi"}).next_attempt_at == T0  # 08:00 sharp: quiet is over
    receipt = crm.messages.send("memory", seoul, {"body": "receipt"}, purpose="transactional")
    assert receipt.next_attempt_at == T0

    # 15:15 UTC is 21:00 in Kathmandu (the server's zone too): quiet until 08:00 there = 02:15 UTC
    w.clock.advance(hours=3, minutes=15)
    nepal = crm.messages.send("memory", kathmandu, {"body": "hi"})
    assert nepal.next_attempt_at == datetime(2026, 6, 2, 2, 15, tzinfo=UTC)

    assert crm.messages.dispatch().sent == 3  # paris, new york, the receipt
    w.clock.advance(hours=7, minutes=44, seconds=59)  # 22:59:59 UTC
    assert w.crms[1].messages.dispatch().attempted == 0
    w.clock.advance(seconds=1)  # 23:00 UTC = 08:00 in Seoul
    assert w.crms[1].messages.dispatch().sent == 1
    w.clock.advance(hours=3, minutes=15)  # 02:15 UTC = 08:00 in Kathmandu
    assert w.crms[1].messages.dispatch().sent == 1
    assert w.delivered()[late.id] == 1 and w.delivered()[nepal.id] == 1


def test_claim_leases_per_channel_and_a_late_report_replaces_lost_on_postgres(pg_crm_factory):
    """The claim's one statement on PostgreSQL (a CTE with SKIP LOCKED joined by the UPDATE): each
    channel's own lease; the attempt row written once; a takeover logs the stalled attempt ``lost``
    and its late report replaces that row (``INSERT … ON CONFLICT DO UPDATE``)."""
    clock = FakeClock()
    memory, sms = MemoryChannel(name="memory"), MemoryChannel(name="sms", address_field="phone")
    second = sms.plugin()
    second.ECRM_PLUGIN_NAME = "memory-sms"
    crm = pg_crm_factory(
        plugins=[memory.plugin(), second],
        clock=clock,
        secret="s" * 32,
        channels={"memory": {"policy": {"lease": 60}}, "sms": {"policy": {"lease": 900}}},
    )
    cid = crm.customers.create(
        email="c@example.com", phone="+14155550101", consent={"memory": "granted", "sms": "granted"}
    ).id
    ids = {ch: crm.messages.send(ch, cid, {"body": "x"}).id for ch in ("memory", "sms")}
    claimed = {c.message.channel: c for c in crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})}
    assert sorted(claimed) == ["memory", "sms"]
    t = crm.db.tables["messages"]
    with crm.db.read() as conn:
        leases = dict(conn.execute(sa.select(t.c.uid, t.c.lease_until)).all())
    assert leases[ids["memory"]] == clock() + timedelta(seconds=60)
    assert leases[ids["sms"]] == clock() + timedelta(seconds=900)
    assert [a.status for a in crm.messages.attempts(ids["memory"])] == ["started"]
    clock.advance(seconds=61)  # the memory message's lease expires; another worker takes it over
    report = crm.messages.dispatch()
    assert (report.recovered, report.sent) == (1, 1)
    assert [(a.number, a.status) for a in crm.messages.attempts(ids["memory"])] == [(1, "lost"), (2, "accepted")]
    totals = {"sent": 0, "retrying": 0, "dead": 0, "blocked": 0, "recovered": 0}
    crm.messages._deliver(list(claimed.values()), totals)  # the stalled worker reports, late for memory
    assert [(a.number, a.status) for a in crm.messages.attempts(ids["memory"])] == [(1, "accepted"), (2, "accepted")]
    assert crm.messages.get(ids["memory"]).attempts == 2
    assert [(a.number, a.status) for a in crm.messages.attempts(ids["sms"])] == [(1, "accepted")]
    assert crm.messages.get(ids["sms"]).status == "sent"
