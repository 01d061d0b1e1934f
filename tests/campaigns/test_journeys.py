"""Triggers, journeys and their execution by the worker's ``campaigns.steps`` job."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_campaigns import Action, assign
from ecrm_campaigns.engine import Runner

from ecrm_core import hookimpl
from ecrm_core.channels import TemplateError
from ecrm_core.testing.channels import MemoryChannel

from .conftest import Shop


def send(sid: str, nxt: str | None = None, **extra: Any) -> dict[str, Any]:
    step = {"id": sid, "type": "send", "channel": "capture", "template": {"subject": sid, "body": sid}, **extra}
    if nxt:
        step["next"] = nxt
    return step


def campaign(key: str, steps: list[dict[str, Any]], trigger: dict[str, Any] | None = None, **extra: Any) -> dict:
    return {"key": key, "name": key.title(), "trigger": trigger or {"type": "api"}, "steps": steps, **extra}


def outbox(shop: Shop) -> list[Any]:
    m = shop.crm.db.tables["messages"]
    with shop.crm.db.read() as conn:
        return conn.execute(sa.select(m.c.customer_id, m.c.dedupe_key, m.c.status, m.c.meta)).all()


def enrollments(shop: Shop) -> list[Any]:
    e = shop.crm.db.tables["campaign_enrollments"]
    with shop.crm.db.read() as conn:
        return conn.execute(sa.select(e)).all()


def test_segment_entered_enrolls_the_whole_set_holdout_gets_nothing(shop: Shop) -> None:
    crm = shop.crm
    crm.segments.create("vip", rule="attributes.vip == true")
    shop.campaigns.save(campaign("vip", [send("hello")], {"type": "segment_entered", "segment": "vip"}, holdout=20))
    shop.campaigns.start("vip")
    ids = shop.customers(60)
    calls: list[int] = []
    from ecrm_campaigns import service

    orig = service.Campaigns.enroll

    def spy(self: Any, campaign_id: int, customer_ids: Any, **kw: Any) -> Any:
        calls.append(len(customer_ids))
        return orig(self, campaign_id, customer_ids, **kw)

    service.Campaigns.enroll = spy  # type: ignore[method-assign]
    try:
        # one batch: one segment refresh, one ecrm_segment_entered with the 60 customers
        crm.customers.upsert_many([{"email": f"c{i}@example.com", "attributes": {"vip": True}} for i in range(60)])
    finally:
        service.Campaigns.enroll = orig  # type: ignore[method-assign]
    assert calls == [60]  # one refresh, one set-based enrollment of all who entered
    shop.run()
    rows = enrollments(shop)
    assert len(rows) == 60  # one state row per customer
    held = {r.customer_id for r in rows if r.arm == "holdout"}
    assert held == {cid for cid in ids if assign.arm("vip", cid, 20, ()) == "holdout"} and 0 < len(held) < 30
    assert {r.status for r in rows if r.arm == "holdout"} == {"holdout"}
    got = Counter(m.customer_id for m in outbox(shop))
    assert set(got) == set(ids) - held and set(got.values()) == {1}
    assert len(shop.channel.sent) == 60 - len(held)
    assert {r.status for r in rows if r.arm != "holdout"} == {"done"}


def test_assignment_is_deterministic_and_follows_the_split() -> None:
    from ecrm_campaigns.model import Variant

    vs = (Variant(name="a", percent=30), Variant(name="b", percent=70))
    arms = [assign.arm("spring", cid, 10, vs) for cid in range(20_000)]
    assert arms == [assign.arm("spring", cid, 10, vs) for cid in range(20_000)]
    n = Counter(arms)
    assert abs(n["holdout"] / 20_000 - 0.10) < 0.01
    assert abs(n["a"] / (20_000 - n["holdout"]) - 0.30) < 0.015
    # a known value: the hash is SHA-256, not Python's per-process salted hash()
    assert assign.bucket("spring", 42) == assign.bucket("spring", 42)
    assert round(assign.bucket("k", 1, "holdout"), 6) == round(
        int.from_bytes(__import__("hashlib").sha256(b"k\x1fholdout\x1f1").digest()[:8], "big") / 2**64 * 100, 6
    )
    # a different campaign key reshuffles
    assert arms != [assign.arm("autumn", cid, 10, vs) for cid in range(20_000)]


def test_wait_then_send_and_explicit_trigger(shop: Shop) -> None:
    shop.campaigns.save(
        campaign(
            "drip",
            [send("one", "pause"), {"id": "pause", "type": "wait", "duration": "2d", "next": "two"}, send("two")],
        )
    )
    shop.campaigns.start("drip")
    ids = shop.customers(5)
    report = shop.campaigns.trigger("drip", ids)
    assert report.entered == 5
    shop.run()
    assert len(shop.channel.sent) == 5
    assert {r.step for r in enrollments(shop)} == {"pause"}
    shop.clock.advance(days=1)
    shop.run()
    assert len(shop.channel.sent) == 5
    shop.clock.advance(days=1, seconds=1)
    shop.run()
    assert len(shop.channel.sent) == 10 and {r.status for r in enrollments(shop)} == {"done"}


def test_reentry_policies(shop: Shop) -> None:
    for key, reentry in (("never", "never"), ("always", "always"), ("cool", {"policy": "cooldown", "cooldown": "7d"})):
        steps = [send("s", "w"), {"id": "w", "type": "wait", "duration": "1h"}]
        shop.campaigns.save(campaign(key, steps, reentry=reentry))
        shop.campaigns.start(key)
    [cid] = shop.customers(1)
    for key in ("never", "always", "cool"):
        assert shop.campaigns.trigger(key, [cid]).entered == 1
        assert shop.campaigns.trigger(key, [cid]).skipped == {"active": 1}  # mid-journey: never twice
    shop.clock.advance(hours=2)
    shop.run()
    assert shop.campaigns.trigger("never", [cid]).skipped == {"already_entered": 1}
    assert shop.campaigns.trigger("always", [cid]).entered == 1
    assert shop.campaigns.trigger("cool", [cid]).skipped == {"cooldown": 1}
    shop.clock.advance(days=8)
    assert shop.campaigns.trigger("cool", [cid]).entered == 1
    shop.run()
    keys = Counter(m.dedupe_key.rsplit(".", 1)[0] for m in outbox(shop))
    assert sorted(keys.values()) == [1, 1, 1, 1, 1]  # a re-entry is a new entry: its own dedupe keys
    assert len(enrollments(shop)) == 3  # still one row per customer per campaign


def test_wait_for_an_event_with_timeout_and_goal_exit(shop: Shop) -> None:
    steps = [
        send("hello", "wait_buy"),
        {
            "id": "wait_buy",
            "type": "wait",
            "event": "page_view",
            "where": 'path == "/sale"',
            "timeout": "3d",
            "on_event": "thanks",
            "next": "nudge",
        },
        send("thanks"),
        send("nudge"),
    ]
    shop.campaigns.save(campaign("evt", steps, goal={"kind": "purchase", "within": "30d"}))
    shop.campaigns.start("evt")
    a, b, c, d = shop.customers(4)
    shop.campaigns.trigger("evt", [a, b, c, d])
    shop.run()
    shop.clock.advance(hours=1)
    shop.crm.interactions.track("page_view", customer_id=a, properties={"path": "/sale"})
    shop.crm.interactions.track("page_view", customer_id=b, properties={"path": "/home"})  # filtered out
    shop.crm.interactions.track("purchase", customer_id=d, amount="10.00", currency="EUR")  # converts
    shop.run()
    by = {r.customer_id: r for r in enrollments(shop)}
    assert by[a].status == "done"  # woken by the event at once, thanked
    assert by[b].step == "wait_buy" and by[c].step == "wait_buy"
    shop.clock.advance(days=3)
    shop.run()
    by = {r.customer_id: r for r in enrollments(shop)}
    assert by[d].status == "converted" and by[d].reason == "goal reached"
    steps_of = {
        cid: sorted(k.dedupe_key.split(".")[2] for k in outbox(shop) if k.customer_id == cid) for cid in (a, b, c, d)
    }
    assert steps_of == {a: ["hello", "thanks"], b: ["hello", "nudge"], c: ["hello", "nudge"], d: ["hello"]}


def test_branches_on_variant_rule_and_engagement(shop: Shop) -> None:
    steps = [
        send("hello", "split"),
        {"id": "split", "type": "branch", "cases": [{"variant": "b", "next": "for_b"}], "otherwise": "engaged"},
        send("for_b"),
        {
            "id": "engaged",
            "type": "branch",
            "cases": [{"engaged": "hello", "next": "opened"}, {"rule": 'attributes.tier == "gold"', "next": "gold"}],
            "otherwise": "rest",
        },
        send("opened"),
        send("gold"),
        send("rest"),
    ]
    shop.campaigns.save(campaign("ab", steps, variants=[{"name": "a", "percent": 50}, {"name": "b", "percent": 50}]))
    shop.campaigns.start("ab")
    ids = shop.customers(40)
    shop.crm.customers.update(ids[0], attributes={"tier": "gold"})
    shop.campaigns.trigger("ab", ids)
    shop.run()
    arms = {r.customer_id: r.arm for r in enrollments(shop)}
    assert set(arms.values()) == {"a", "b"}
    last = {}
    for m in outbox(shop):
        step = m.dedupe_key.split(".")[2]
        if step != "hello":
            last[m.customer_id] = step
    for cid, a in arms.items():
        if a == "b":
            assert last[cid] == "for_b"
        elif cid == ids[0]:
            assert last[cid] == "gold"
        else:
            assert last[cid] == "rest"


def test_engagement_branch_sees_opens_of_the_earlier_message(shop: Shop) -> None:
    steps = [
        send("hello", "pause"),
        {"id": "pause", "type": "wait", "duration": "1d", "next": "split"},
        {"id": "split", "type": "branch", "cases": [{"engaged": "hello", "next": "thanks"}], "otherwise": "again"},
        send("thanks"),
        send("again"),
    ]
    shop.campaigns.save(campaign("eng", steps))
    shop.campaigns.start("eng")
    a, b = shop.customers(2)
    shop.campaigns.trigger("eng", [a, b])
    shop.run()
    uid = next(m.id for m in shop.crm.messages.list(limit=10) if m.customer_id == a)
    shop.crm.interactions.track("email_open", customer_id=a, properties={"message": uid})
    shop.clock.advance(days=1, seconds=1)
    shop.run()
    last = {
        m.customer_id: m.dedupe_key.split(".")[2] for m in outbox(shop) if not m.dedupe_key.split(".")[2] == "hello"
    }
    assert last == {a: "thanks", b: "again"}


def test_send_window_in_the_customer_timezone(shop: Shop) -> None:
    # T0 is 10:00 UTC: 19:00 in Seoul (outside 09:00-18:00), 05:00 in New York (outside), 10:00 in London.
    shop.campaigns.save(campaign("win", [send("s")], window={"start": "09:00", "end": "18:00"}))
    shop.campaigns.start("win")
    seoul = shop.crm.customers.create(email="s@x.org", timezone="Asia/Seoul", consent={"capture": "granted"}).id
    ny = shop.crm.customers.create(email="n@x.org", timezone="America/New_York", consent={"capture": "granted"}).id
    ldn = shop.crm.customers.create(email="l@x.org", timezone="Europe/London", consent={"capture": "granted"}).id
    shop.campaigns.trigger("win", [seoul, ny, ldn])
    shop.run()
    assert {m.customer_id for m in outbox(shop)} == {ldn}
    due = {r.customer_id: r.due_at for r in enrollments(shop)}
    assert due[ny] == shop.clock() + timedelta(hours=4)  # 09:00 New York (UTC-5 in March)
    assert due[seoul] == shop.clock() + timedelta(hours=14)  # 09:00 next day in Seoul
    shop.clock.advance(hours=4)
    shop.run()
    assert {m.customer_id for m in outbox(shop)} == {ny, ldn}
    shop.clock.advance(hours=10)
    shop.run()
    assert {m.customer_id for m in outbox(shop)} == {seoul, ny, ldn}


def test_one_bad_customer_is_skipped_with_the_reason_the_others_are_sent(crm_factory: Any) -> None:
    from ecrm_campaigns import plugin

    from ecrm_core.testing import FakeClock

    class Picky(MemoryChannel):
        def render(self, template: Any, context: Any, *, message_id: str, purpose: str) -> Any:
            if (context["customer"].get("attributes") or {}).get("broken"):
                raise TemplateError("template", "x", "customer.attributes.broken makes it fail", "fix the data")
            return super().render(template, context, message_id=message_id, purpose=purpose)

    chan = Picky(name="capture", capabilities=("templates",))
    crm = crm_factory(plugins=[plugin, chan.plugin()], clock=FakeClock())
    shop = Shop(crm, chan, FakeClock())  # type: ignore[arg-type]
    shop.campaigns.save(campaign("pick", [send("s")]))
    shop.campaigns.start("pick")
    ids = shop.customers(6)
    crm.customers.update(ids[2], attributes={"broken": True})
    shop.campaigns.trigger("pick", ids)
    shop.run()
    by = {r.customer_id: r for r in enrollments(shop)}
    assert by[ids[2]].status == "failed" and "broken" in by[ids[2]].reason
    assert {cid for cid, r in by.items() if r.status == "done"} == set(ids) - {ids[2]}
    assert len(chan.sent) == 5


def test_a_first_send_step_runs_at_entry_and_writes_the_enrollment_once(shop: Shop, monkeypatch: Any) -> None:
    """The journey's first send step runs in the enrollment's transaction: its messages are in the
    outbox and each enrollment row is inserted in the state the step left it in (no claim, no UPDATE)."""
    shop.campaigns.save(campaign("one", [send("hi")], holdout=20))
    shop.campaigns.save(
        campaign("two", [send("a", "w"), {"id": "w", "type": "wait", "duration": "1d", "next": "b"}, send("b")])
    )
    for key in ("one", "two"):
        shop.campaigns.start(key)
    ids = shop.customers(40)
    e = shop.crm.db.tables["campaign_enrollments"]
    updates: list[str] = []

    def count_updates(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and e.name in statement:
            updates.append(statement)

    sa.event.listen(shop.crm.db.engine, "before_cursor_execute", count_updates)
    try:
        report = shop.campaigns.trigger("one", ids)
        shop.campaigns.trigger("two", ids)
    finally:
        sa.event.remove(shop.crm.db.engine, "before_cursor_execute", count_updates)
    assert updates == []  # each enrollment written once
    rows = {(r.campaign_id, r.customer_id): r for r in enrollments(shop)}
    one, two = (shop.campaigns.get(k).id for k in ("one", "two"))
    main = [cid for cid in ids if rows[(one, cid)].arm == "main"]
    assert len(main) == report.entered and report.held_out == len(ids) - len(main)
    assert {rows[(one, cid)].status for cid in main} == {"done"}
    assert all(rows[(one, cid)].finished_at is not None and rows[(one, cid)].step is None for cid in main)
    assert {(rows[(two, cid)].status, rows[(two, cid)].step) for cid in ids} == {("active", "w")}
    assert {rows[(two, cid)].due_at for cid in ids} == {shop.clock.now + timedelta(days=1)}
    assert Counter(m.dedupe_key.rsplit(".", 2)[1] for m in outbox(shop)) == {"hi": len(main), "a": len(ids)}
    shop.run()  # nothing due: the ticks change nothing
    assert len(outbox(shop)) == len(main) + len(ids)
    shop.clock.advance(days=1, seconds=1)
    shop.run()
    assert {rows.status for rows in enrollments(shop) if rows.campaign_id == two} == {"done"}


def test_the_first_step_at_entry_commits_with_the_enrollments_or_not_at_all(shop: Shop, monkeypatch: Any) -> None:
    import ecrm_campaigns.service as service

    shop.campaigns.save(campaign("atomic", [send("hi")]))
    shop.campaigns.start("atomic")
    ids = shop.customers(10)

    def die(*a: Any, **k: Any) -> None:
        raise RuntimeError("the enrollment's INSERT failed")

    with monkeypatch.context() as m:
        m.setattr(service, "_insert_many", die)
        with pytest.raises(RuntimeError):
            shop.campaigns.trigger("atomic", ids)
    assert outbox(shop) == [] and enrollments(shop) == []  # the messages rolled back with the enrollments
    assert shop.campaigns.trigger("atomic", ids).entered == 10
    assert len(outbox(shop)) == 10 and {r.status for r in enrollments(shop)} == {"done"}


def test_the_first_step_is_left_to_the_worker_without_its_channel_or_when_it_raises(
    crm_factory: Any, monkeypatch: Any
) -> None:
    from ecrm_campaigns import campaigns as service_of
    from ecrm_campaigns import plugin

    from ecrm_core import CRM
    from ecrm_core.testing import FakeClock

    chan = MemoryChannel(name="capture", capabilities=("templates",))
    clock = FakeClock()
    worker = crm_factory(plugins=[plugin, chan.plugin()], clock=clock)
    svc = service_of(worker)
    for key in ("later", "flaky"):
        svc.save(campaign(key, [send("hi")]))
        svc.start(key)
    worker.customers.upsert_many([{"email": f"c{i}@x.org", "consent": {"capture": "granted"}} for i in range(5)])
    cu, e = worker.db.tables["customers"], worker.db.tables["campaign_enrollments"]
    with worker.db.read() as conn:
        ids = list(conn.scalars(sa.select(cu.c.id)))

    def states(key: str) -> set[tuple[str, str | None]]:
        with worker.db.read() as conn:
            q = sa.select(e.c.status, e.c.step).where(e.c.campaign_id == svc.get(key).id)
            return {(r.status, r.step) for r in conn.execute(q)}

    # a process without the campaign's channel (an API node, say) enrolls; the worker sends
    url = worker.db.engine.url.render_as_string(hide_password=False)
    trigger_side = CRM(url, load_entrypoints=False, plugins=[plugin], clock=clock)
    try:
        assert service_of(trigger_side).trigger("later", ids).entered == 5
    finally:
        trigger_side.close()
    assert states("later") == {("active", "hi")} and worker.messages.dispatch().sent == 0
    Runner(worker).run()
    assert worker.messages.dispatch().sent == 5 and states("later") == {("done", None)}
    # a first step that raises at entry: the enrollments start at the step, due now, and a tick retries it
    with monkeypatch.context() as m:
        m.setattr(Runner, "_send", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        assert svc.trigger("flaky", ids).entered == 5
    assert states("flaky") == {("active", "hi")}
    Runner(worker).run()
    assert worker.messages.dispatch().sent == 5 and states("flaky") == {("done", None)}
    assert len(chan.sent) == 10


def test_a_crash_between_send_and_advance_sends_nothing_twice(shop: Shop, monkeypatch: Any) -> None:
    shop.campaigns.save(campaign("crash", [send("one", "two"), send("two")]))
    shop.campaigns.start("crash")
    ids = shop.customers(30)
    shop.campaigns.trigger("crash", ids)
    assert len(outbox(shop)) == 30  # the first step ran at entry, with the enrollments

    def die(*a: Any, **k: Any) -> None:
        raise SystemExit("killed after the send, before the advance")

    with monkeypatch.context() as m:
        m.setattr(Runner, "goto", die)
        with pytest.raises(SystemExit):
            Runner(shop.crm).run()
    assert len(outbox(shop)) == 60  # step two sent (queued), not advanced
    assert Runner(shop.crm).run().done == 0  # still leased by the dead worker
    shop.clock.advance(seconds=301)  # the lease expires
    shop.run()
    keys = Counter(m.dedupe_key for m in outbox(shop))
    assert len(keys) == 60 and set(keys.values()) == {1}
    shop.crm.messages.dispatch()
    assert len(shop.channel.sent) == 60 and {r.status for r in enrollments(shop)} == {"done"}


def test_pause_resume_stop(shop: Shop) -> None:
    shop.campaigns.save(
        campaign(
            "p",
            [
                send("one", "w"),
                {"id": "w", "type": "wait", "duration": "1h", "next": "two"},
                send("two", "w2"),
                {"id": "w2", "type": "wait", "duration": "1h", "next": "three"},
                send("three"),
            ],
        )
    )
    shop.campaigns.start("p")
    ids = shop.customers(3)
    shop.campaigns.trigger("p", ids)
    assert len(outbox(shop)) == 3  # the first step runs at entry
    shop.campaigns.pause("p")
    shop.clock.advance(hours=2)
    shop.run()
    assert len(outbox(shop)) == 3  # paused: the wait is over, step two is not run
    with pytest.raises(Exception, match="paused"):
        shop.campaigns.trigger("p", ids)
    shop.campaigns.resume("p")
    shop.run()
    assert len(outbox(shop)) == 6
    shop.campaigns.stop("p")
    shop.clock.advance(hours=2)
    shop.run()
    assert len(outbox(shop)) == 6 and {r.status for r in enrollments(shop)} == {"stopped"}


def test_new_version_mid_journey_customers_finish_on_their_version(shop: Shop) -> None:
    v1 = campaign("v", [send("one", "w"), {"id": "w", "type": "wait", "duration": "1d", "next": "two"}, send("two")])
    shop.campaigns.save(v1)
    shop.campaigns.start("v")
    early = shop.customers(2)
    shop.campaigns.trigger("v", early)
    shop.run()
    v2 = campaign(
        "v", [send("one", "w"), {"id": "w", "type": "wait", "duration": "1d", "next": "three"}, send("three")]
    )
    assert shop.campaigns.save(v2).version == 2
    late = [shop.crm.customers.create(email=f"l{i}@x.org", consent={"capture": "granted"}).id for i in range(2)]
    shop.campaigns.trigger("v", late)
    shop.run()
    shop.clock.advance(days=2)
    shop.run()
    last = {m.customer_id: m.dedupe_key.split(".")[2] for m in outbox(shop) if m.dedupe_key.split(".")[2] != "one"}
    assert last == {early[0]: "two", early[1]: "two", late[0]: "three", late[1]: "three"}


def test_interaction_trigger_with_filter(shop: Shop) -> None:
    shop.campaigns.save(
        campaign("thanks", [send("s")], {"type": "interaction", "kind": "purchase", "where": "amount >= 50"})
    )
    shop.campaigns.start("thanks")
    a, b = shop.customers(2)
    shop.crm.interactions.track("purchase", customer_id=a, amount="80.00", currency="EUR")
    shop.crm.interactions.track("purchase", customer_id=b, amount="20.00", currency="EUR")
    assert {r.customer_id for r in enrollments(shop)} == {a}


def test_schedule_trigger_one_off_and_recurring(shop: Shop) -> None:
    from ecrm_core.worker import JobRunner

    shop.crm.segments.create("all", rule="consent(capture)")
    at = (shop.clock() + timedelta(hours=1)).isoformat()
    shop.campaigns.save(campaign("once", [send("s")], {"type": "schedule", "at": at}, audience={"segment": "all"}))
    shop.campaigns.save(
        campaign(
            "weekly",
            [send("s")],
            {"type": "schedule", "at": at, "every": "7d"},
            audience={"segment": "all"},
            reentry="always",
        )
    )
    shop.campaigns.start("once")
    shop.campaigns.start("weekly")
    shop.customers(3)
    runner = JobRunner(shop.crm, jobs=["campaigns.schedule"])
    runner.tick("campaigns.schedule", "default", force=True)
    assert enrollments(shop) == []
    shop.clock.advance(hours=1)
    runner.tick("campaigns.schedule", "default", force=True)
    shop.run()
    assert len(outbox(shop)) == 6
    shop.clock.advance(days=7)
    runner.tick("campaigns.schedule", "default", force=True)
    shop.run()
    per = Counter(m.meta["campaign"] for m in outbox(shop))
    assert per == {"once": 3, "weekly": 6}
    assert shop.campaigns.get("once").next_run_at is None
    assert shop.campaigns.get("weekly").next_run_at == datetime.fromisoformat(at) + timedelta(days=14)


def test_birthday_in_the_customer_timezone(shop: Shop) -> None:
    from ecrm_core.worker import JobRunner

    shop.campaigns.save(
        campaign(
            "bday", [send("s")], {"type": "date", "attribute": "attributes.birthday", "time": "09:00"}, reentry="always"
        )
    )
    shop.campaigns.start("bday")
    # T0 = 2026-03-02 10:00 UTC: 19:00 on March 2 in Seoul, 05:00 on March 2 in New York.
    seoul = shop.crm.customers.create(
        email="s@x.org", timezone="Asia/Seoul", attributes={"birthday": "1990-03-02"}, consent={"capture": "granted"}
    ).id
    ny = shop.crm.customers.create(
        email="n@x.org",
        timezone="America/New_York",
        attributes={"birthday": "1985-03-02"},
        consent={"capture": "granted"},
    ).id
    shop.crm.customers.create(email="o@x.org", attributes={"birthday": "1985-03-03"}, consent={"capture": "granted"})
    runner = JobRunner(shop.crm, jobs=["campaigns.schedule"])
    runner.tick("campaigns.schedule", "default", force=True)
    assert {r.customer_id for r in enrollments(shop)} == {seoul}
    shop.clock.advance(hours=4)  # 09:00 in New York
    runner.tick("campaigns.schedule", "default", force=True)
    runner.tick("campaigns.schedule", "default", force=True)  # twice the same day: once
    assert Counter(r.customer_id for r in enrollments(shop)) == {seoul: 1, ny: 1}
    assert {r.entry for r in enrollments(shop)} == {1}


def test_update_attribute_and_plugin_action(shop: Shop) -> None:
    seen: list[tuple[list[int], dict[str, Any], str, str]] = []

    class Loyalty:
        @hookimpl
        def campaigns_register_actions(self, crm: Any) -> list[Action]:
            return [Action(name="loyalty.points", call=lambda crm, ids, args, c, s: seen.append((ids, args, c, s)))]

    shop.crm.register_plugin(Loyalty(), name="loyalty")
    steps = [
        {"id": "tag", "type": "update", "attribute": "winback", "value": "tried", "next": "pts"},
        {"id": "pts", "type": "action", "name": "loyalty.points", "args": {"points": 50}},
    ]
    shop.campaigns.save(campaign("act", steps))
    shop.campaigns.start("act")
    ids = shop.customers(3)
    shop.campaigns.trigger("act", ids)
    shop.run()
    assert [shop.crm.customers.get(c).attributes["winback"] for c in ids] == ["tried"] * 3
    assert seen == [(sorted(ids), {"points": 50}, "act", "pts")]


def test_offer_eligibility_and_per_customer_limit(shop: Shop) -> None:
    shop.crm.offers.create("deal", "Deal", status="active", eligibility='attributes.tier == "gold"')
    steps = [send("one", "two", offer="deal"), send("two", offer="deal")]
    shop.campaigns.save(campaign("off", steps, offers=[{"code": "deal", "limit": 1}]))
    shop.campaigns.start("off")
    gold = shop.crm.customers.create(email="g@x.org", attributes={"tier": "gold"}, consent={"capture": "granted"}).id
    plain = shop.crm.customers.create(email="p@x.org", consent={"capture": "granted"}).id
    shop.campaigns.trigger("off", [gold, plain])
    shop.run()
    assert [(m.customer_id, m.dedupe_key.split(".")[2]) for m in outbox(shop)] == [(gold, "one")]
    by = {r.customer_id: r for r in enrollments(shop)}
    assert by[plain].status == "done" and by[plain].reason == "offer_not_eligible"
    assert by[gold].status == "done" and by[gold].reason == "offer_limit"


def test_journey_state_follows_a_merge_and_goes_with_deletion(shop: Shop) -> None:
    for key in ("m1", "m2"):
        shop.campaigns.save(campaign(key, [send("one", "w"), {"id": "w", "type": "wait", "duration": "1d"}]))
        shop.campaigns.start(key)
    a, b, c = shop.customers(3)
    shop.campaigns.trigger("m1", [a, b])
    shop.campaigns.trigger("m2", [a])
    shop.crm.customers.merge(a, into=b)  # b has its own m1 journey (kept); a's m2 journey moves to b
    rows = {(r.campaign_id, r.customer_id) for r in enrollments(shop)}
    m1, m2 = shop.campaigns.get("m1").id, shop.campaigns.get("m2").id
    assert rows == {(m1, b), (m2, b)}
    shop.campaigns.trigger("m1", [c])
    shop.crm.customers.delete(b)
    assert {r.customer_id for r in enrollments(shop)} == {c}
