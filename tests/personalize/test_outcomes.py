"""Outcomes against decision ids: idempotent, feeding the bandits (set-based, concurrent-safe),
on the customer's timeline, and the control group's uplift."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from ecrm_personalize import Outcome, personalize, plugin

from ecrm_core import CRM

from .conftest import SECRET, Shop, make_shop


def test_outcomes_are_idempotent_and_go_on_the_timeline(shop: Shop) -> None:
    shop.p.define("home", alternatives=["grid", "list"])
    cid = shop.customer(name="Ada")
    d = shop.p.decide(cid, "home")
    first = shop.p.report_many(
        [Outcome(decision=d.id, event="impression"), Outcome(decision=d.id, event="click", item=d.alternatives[1])]
    )
    assert [r.status for r in first] == ["recorded", "recorded"]
    again = shop.p.report_many(
        [{"decision": d.id, "event": "impression"}, {"decision": d.id, "event": "click", "item": d.alternatives[1]}]
    )
    assert [r.status for r in again] == ["duplicate", "duplicate"]
    in_batch = shop.p.report_many([{"decision": d.id, "event": "conversion", "value": 12.5}] * 3)
    assert [r.status for r in in_batch] == ["recorded", "duplicate", "duplicate"]
    arms = shop.p.arms("home")[d.segment]
    assert arms[d.alternatives[0]] == {"trials": 1, "wins": 0}
    assert arms[d.alternatives[1]] == {"trials": 1, "wins": 1}
    summary = {s.kind: s.count for s in shop.crm.interactions.view(cid).summary}
    assert summary["personalize_impression"] == 1
    assert summary["personalize_click"] == 1
    assert summary["personalize_conversion"] == 1


def test_unknown_forged_and_foreign_decisions_are_rejected(shop: Shop, crm_factory: Callable[..., CRM]) -> None:
    shop.p.define("home", alternatives=["a", "b"])
    d = shop.p.decide(shop.customer(), "home")
    uid, body, mac = d.id.split(".")
    other = crm_factory(plugins=[plugin], secret="other-secret-of-enough-length")
    personalize(other).define("home", alternatives=["a", "b"])
    foreign = personalize(other).decide(None, "home").id
    bad = [
        "nope",
        "",
        f"{uid}.{body}.{'a' * 26}",
        f"{uid}.{body[:-2]}xx.{mac}",
        f"{'A' * 16}.{body}.{mac}",
        foreign,
        personalize(shop.crm.in_workspace("elsewhere")).decide(None, "home").id,
    ]
    results = shop.p.report_many([{"decision": b, "event": "click", "item": "a"} for b in bad])
    assert all(r.status == "rejected" for r in results)
    assert shop.p.arms("home") == {}


def test_a_click_without_impression_keeps_wins_within_trials(shop: Shop) -> None:
    shop.p.define("home", alternatives=["a", "b"])
    d = shop.p.decide(shop.customer(), "home")
    shop.p.report(d.id, "click", "a")
    arms = shop.p.arms("home")[d.segment]
    assert arms["a"]["wins"] == 1 and arms["a"]["trials"] >= 1


def test_reward_event_is_the_placements(shop: Shop) -> None:
    shop.p.define("checkout", alternatives=["a", "b"], reward="conversion")
    d = shop.p.decide(shop.customer(), "checkout")
    shop.p.report_many([{"decision": d.id, "event": e, "item": "a"} for e in ("impression", "click")])
    assert shop.p.arms("checkout")[d.segment]["a"]["wins"] == 0
    shop.p.report(d.id, "conversion", "a")
    assert shop.p.arms("checkout")[d.segment]["a"]["wins"] == 1


def test_concurrent_reporters_lose_no_increment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ecrm_core.testing import make_crm

    crm = make_crm(tmp_path / "c.db", plugins=[plugin], secret=SECRET)
    try:
        p = personalize(crm)
        p.define("home", alternatives=["a", "b", "c"], segment_by="none")
        decisions = [p.decide(None, "home").id for _ in range(120)]
        errors: list[BaseException] = []

        def worker(part: list[str]) -> None:
            try:
                view = personalize(crm)
                for did in part:
                    # every decision reported twice (a retry), in small batches
                    view.report_many(
                        [{"decision": did, "event": "impression"}, {"decision": did, "event": "click", "item": "b"}]
                    )
                    view.report(did, "impression")
            except BaseException as exc:  # pragma: no cover - shown by the assertion
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(decisions[i::4],)) for i in range(4)]
        threads += [threading.Thread(target=worker, args=(decisions[i::3],)) for i in range(3)]  # overlapping retries
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        arms = p.arms("home")["all"]
        assert arms["a"] == {"trials": 120, "wins": 0}
        assert arms["b"] == {"trials": 120, "wins": 120}
        assert arms["c"] == {"trials": 120, "wins": 0}
    finally:
        crm.close()


def test_thompson_sampling_learns_the_better_alternative(crm_factory: Callable[..., CRM]) -> None:
    shop = make_shop(crm_factory)
    shop.p = personalize(shop.crm, seed=3)  # repeatable draws: the test cannot flake
    shop.p.define("banner", alternatives=["blue", "red", "green"], k=0, offers=0, strategies=["bandit"])
    truth = {"blue": 0.05, "red": 0.30, "green": 0.10}
    rng = random.Random(7)
    firsts = []
    for _ in range(300):
        d = shop.p.decide(None, "banner")
        chosen = d.alternatives[0]
        firsts.append(chosen)
        batch = [{"decision": d.id, "event": "impression"}]
        if rng.random() < truth[chosen]:
            batch.append({"decision": d.id, "event": "click", "item": chosen})
        shop.p.report_many(batch)
    late = firsts[-100:]
    assert late.count("red") > 60, late.count("red")
    arms = shop.p.arms("banner")["anonymous"]
    assert max(arms, key=lambda a: arms[a]["wins"] / max(arms[a]["trials"], 1)) == "red"


def test_segments_have_their_own_bandit(shop: Shop) -> None:
    shop.p.define("home", alternatives=["a", "b"])
    new = shop.customer(lifecycle_stage="new")
    active = shop.customer(lifecycle_stage="active")
    for cid in (new, active):
        shop.p.report(shop.p.decide(cid, "home").id, "impression")
    assert set(shop.p.arms("home")) == {"new", "active"}
    shop.p.define("attr", alternatives=["a", "b"], segment_by="attribute:tier")
    gold = shop.customer(attributes={"tier": "gold"})
    assert shop.p.decide(gold, "attr").segment == "gold"


def test_control_group_outcomes_measure_uplift_and_leave_bandits_alone(shop: Shop) -> None:
    shop.p.define("home", alternatives=["a", "b"], control=0.5, segment_by="none")
    people = [shop.customer() for _ in range(30)]
    for cid in people:
        d = shop.p.decide(cid, "home")
        shop.p.report(d.id, "impression")
        if d.group == "personalized":
            shop.p.report(d.id, "click", d.alternatives[0])
    up = shop.p.uplift("home")
    g = up["groups"]
    assert g["personalized"]["impression"] + g["control"]["impression"] == 30
    assert g["control"]["click"] == 0 and g["personalized"]["click_rate"] == 1.0
    trials = sum(a["trials"] for a in shop.p.arms("home").get("all", {}).values())
    assert trials == 2 * g["personalized"]["impression"]  # control impressions train nothing


def test_replays_with_made_up_items_cannot_inflate_a_bandit(shop: Shop) -> None:
    """One decision, many reports with invented items, in one request and in many:
    at most one trial per alternative shown and one win per decision and reward."""
    shop.p.define("home", alternatives=["city", "hiking", "beach"])
    d = shop.p.decide(shop.customer(), "home")
    shown = list(d.alternatives)
    forged = [{"decision": d.id, "event": "click", "item": f"made-up-{n}"} for n in range(300)]
    forged += [{"decision": d.id, "event": "impression", "item": f"made-up-{n}"} for n in range(200)]
    assert {r.status for r in shop.p.report_many(forged)} == {"recorded"}  # stored as data…
    for n in range(5):  # …and again in later requests
        shop.p.report_many([{"decision": d.id, "event": "impression", "item": f"later-{n}"}])
        shop.p.report_many([{"decision": d.id, "event": "click", "item": f"later-{n}"}])
    arms = shop.p.arms("home")[d.segment]
    assert {a: v["trials"] for a, v in arms.items()} == {a: 1 for a in shown}  # one impression counted
    assert all(v["wins"] == 0 for v in arms.values())  # no invented item wins
    shop.p.report(d.id, "click", shown[1])  # the real click on a shown alternative
    shop.p.report(d.id, "click", shown[2])  # a second reward of the same decision moves nothing
    shop.p.report(d.id, "click", shown[1])  # a replay
    arms = shop.p.arms("home")[d.segment]
    assert {a: v["wins"] for a, v in arms.items()} == {shown[0]: 0, shown[1]: 1, shown[2]: 0}
    assert all(v["trials"] == 1 for v in arms.values())


def test_outcomes_of_a_deleted_customer_are_rejected_and_the_batch_goes_on(shop: Shop) -> None:
    shop.p.define("home", alternatives=["a", "b"])
    gone, kept = shop.customer(), shop.customer()
    dg, dk = shop.p.decide(gone, "home"), shop.p.decide(kept, "home")
    shop.crm.customers.delete(gone)  # their page is still open
    results = shop.p.report_many(
        [{"decision": dg.id, "event": "impression"}, {"decision": dk.id, "event": "impression"},
         {"decision": dg.id, "event": "click", "item": "a"}]
    )  # fmt: skip
    assert [(r.status, r.reason) for r in results] == [
        ("rejected", "customer deleted"),
        ("recorded", None),
        ("rejected", "customer deleted"),
    ]
    assert shop.p.arms("home")[dk.segment]["a"]["trials"] == 1


def test_outcomes_after_a_merge_land_on_the_survivor(shop: Shop) -> None:
    import sqlalchemy as sa

    shop.p.define("home", alternatives=["a", "b"])
    source, survivor = shop.customer(), shop.customer()
    d = shop.p.decide(source, "home")
    shop.crm.customers.merge(source, into=survivor)
    assert shop.p.report(d.id, "impression").status == "recorded"
    o = shop.crm.db.tables["personalize_outcomes"]
    with shop.crm.db.read() as conn:
        assert conn.execute(sa.select(o.c.customer_id)).scalars().all() == [survivor]
    summary = {s.kind: s.count for s in shop.crm.interactions.view(survivor).summary}
    assert summary["personalize_impression"] == 1
