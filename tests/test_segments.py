"""Segments, rules validation, live refresh, lifecycle stages, events."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecrm_core import Cancelled, CancelToken, Conflict, NotFound, RuleError, ValidationError, hookimpl
from ecrm_core.registry import AttributeDef
from ecrm_core.services.segment_queries import explain as _explain
from ecrm_core.testing import EventRecorder, registered

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


class Country:
    @hookimpl
    def ecrm_register_attributes(self):
        return [AttributeDef(name="country", type="string"), AttributeDef(name="age", type="number")]


@pytest.fixture
def clock():
    return {"now": NOW}


@pytest.fixture
def shop(crm_factory, clock):
    return crm_factory(plugins=[Country()], clock=lambda: clock["now"])


def buy(crm, cid, days_ago, amount="50", **kw):
    return crm.interactions.track(
        "purchase", customer_id=cid, amount=amount, currency="EUR", occurred_at=NOW - timedelta(days=days_ago), **kw
    )


VIP = 'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country in ("KR", "JP")'


# --- creating, reading, previewing ---------------------------------------------
def test_dynamic_segment_is_filled_at_once_and_members_page(shop):
    ada = shop.customers.create(email="ada@example.com", attributes={"country": "KR"})
    bob = shop.customers.create(email="bob@example.com", attributes={"country": "US"})
    for d in (1, 10, 20):
        buy(shop, ada.id, d)
        buy(shop, bob.id, d)
    seg = shop.segments.create("vip", VIP, name="VIPs", description="best customers in KR/JP")
    assert (seg.slug, seg.name, seg.kind, seg.member_count) == ("vip", "VIPs", "dynamic", 1)
    assert seg.text == VIP and seg.refreshed_at == NOW
    assert [m.customer_id for m in shop.segments.members("vip")] == [ada.id]
    assert shop.segments.count("vip") == 1 and shop.segments.is_member("vip", ada.id)
    assert shop.segments.of(ada.id) == ["vip"] and shop.segments.of(bob.id) == []
    assert [s.slug for s in shop.segments.list()] == ["vip"]
    assert shop.segments.get(seg.id) == shop.segments.get("vip")


def test_members_are_paged_by_customer_id(shop):
    ids = [shop.customers.create(email=f"c{i}@example.com").id for i in range(7)]
    shop.segments.create("everyone", "created_at exists")
    page1 = shop.segments.members("everyone", limit=3)
    page2 = shop.segments.members("everyone", limit=3, after=page1[-1].customer_id)
    page3 = shop.segments.members("everyone", limit=3, after=page2[-1].customer_id)
    assert [m.customer_id for m in page1 + page2 + page3] == ids
    with pytest.raises(ValidationError, match="limit"):
        shop.segments.members("everyone", limit=0)


def test_preview_counts_samples_and_shows_sql_without_storing(shop):
    for i in range(5):
        c = shop.customers.create(email=f"c{i}@example.com", attributes={"country": "KR" if i % 2 else "JP"})
        buy(shop, c.id, 3)
    p = shop.segments.preview('country == "KR" and purchase.count(30d) >= 1', sample=1)
    assert p.count == 2 and len(p.sample) == 1 and p.sample[0].attributes["country"] == "KR"
    assert "kind = 'purchase'" in p.sql and "'KR'" in p.sql and p.text == 'country == "KR" and purchase.count(30d) >= 1'
    assert p.plan and shop.segments.list() == []
    # driven by the purchase subquery: customers are fetched by primary key, no full read
    assert p.warnings == () and any("INTEGER PRIMARY KEY" in step for step in p.plan), p.plan
    # an attribute condition alone cannot use an index: preview says so
    assert any("reads every row of customers" in w for w in shop.segments.preview('country == "KR"').warnings)


def test_event_conditions_use_the_kind_and_time_index(shop):
    for rule in (
        "purchase.count(90d) >= 3 and purchase.sum(90d) > 100",
        "purchase.last() within 7d",
        'purchase[category == "shoes"].count() >= 2',
    ):
        p = shop.segments.preview(rule)
        assert any("ws_kind_time (workspace_id=? AND kind=?" in step for step in p.plan), p.plan
        assert not any("interactions" in w for w in p.warnings), p.warnings


def test_restricted_statements_read_each_customers_own_interactions(shop):
    """Incremental refreshes (a few customers) compile to subqueries correlated
    with the customer row, each an index range of that customer: never a scan
    of the kind's window, nor a list built for every restricted customer first."""
    if not shop.db.is_sqlite:
        pytest.skip("SQLite plans")
    for rule in (
        VIP,
        "purchase.last() within 90d",
        "purchase.first() older_than 210d",
        "purchase.count() == 0",
        "purchase.count(30d) >= 1 and purchase.count(210d..30d) == 0",
    ):
        compiled = shop.segments.compile(rule)
        with shop.db.read() as conn:
            stmt = compiled.select(shop.segments._sql_context(conn, restrict=[1, 2, 3]))
            plan, _ = _explain(conn, stmt, shop.db.tables)
        reads = [step for step in plan if "ecrm_interactions" in step]
        assert reads and all("ws_customer_time (workspace_id=? AND customer_id=?" in step for step in reads), plan
        assert any("CORRELATED" in step for step in plan), plan
        assert "USING INTEGER PRIMARY KEY" in plan[0], plan


def test_preview_warns_when_a_table_is_read_in_full(shop):
    p = shop.segments.preview("created_at within 30d")
    assert p.warnings == ("reads every row of customers: conditions on attributes and text fields have no index",)


def test_static_segment_add_remove_and_events(shop):
    rec = EventRecorder()
    a, b = (shop.customers.create(email=f"{n}@example.com") for n in "ab")
    with registered(shop, rec):
        seg = shop.segments.create("beta", static=True, customer_ids=[a.id])
        assert seg.kind == "static" and seg.member_count == 1 and seg.rule is None and seg.text is None
        change = shop.segments.add("beta", [a.id, b.id])  # a already in: skipped
        assert change.entered == (b.id,) and change.segment.member_count == 2
        shop.segments.remove("beta", [a.id])
    assert [(h, kw["segment"].slug, kw["customer_ids"]) for h, kw in rec.calls if "segment" in h] == [
        ("ecrm_segment_entered", "beta", [a.id]),
        ("ecrm_segment_entered", "beta", [b.id]),
        ("ecrm_segment_exited", "beta", [a.id]),
    ]
    with pytest.raises(NotFound):
        shop.segments.add("beta", [999])
    assert shop.segments.count("beta") == 1  # nothing half-done
    with pytest.raises(ValidationError, match="rule"):
        shop.segments.add(shop.segments.create("dyn", "name exists").slug, [a.id])


# --- live membership and events -------------------------------------------------
def test_segment_entered_and_exited_fire_exactly_once_per_change(shop, clock):
    rec = EventRecorder()
    ada = shop.customers.create(email="ada@example.com", attributes={"country": "KR"})
    shop.segments.create("vip", VIP)
    with registered(shop, rec):
        buy(shop, ada.id, 1)
        buy(shop, ada.id, 2)
        assert rec.of("ecrm_segment_entered") == []
        buy(shop, ada.id, 3)  # third purchase: enters (live, incremental)
        entered = rec.of("ecrm_segment_entered")
        assert [(e["segment"].slug, e["customer_ids"], e["segment"].member_count) for e in entered] == [
            ("vip", [ada.id], 1)
        ]
        # refreshing again changes nothing and fires nothing
        shop.segments.refresh()
        shop.segments.refresh(customer_ids=[ada.id])
        assert len(rec.of("ecrm_segment_entered")) == 1
        # time passes: the purchases leave the 90-day window; a full refresh notices
        clock["now"] = NOW + timedelta(days=100)
        report = shop.segments.refresh()
        assert report.exited == 1 and report.customers is None
        assert rec.of("ecrm_segment_exited")[0]["customer_ids"] == [ada.id]
        assert shop.segments.refresh().exited == 0


def test_customer_changes_are_live_too(shop):
    rec = EventRecorder()
    shop.segments.create("koreans", 'country == "KR"')
    with registered(shop, rec):
        ada = shop.customers.create(email="ada@example.com", attributes={"country": "KR"})
        shop.customers.update(ada.id, attributes={"country": "JP"})
    assert [(h, kw["customer_ids"]) for h, kw in rec.calls if h.startswith("ecrm_segment")] == [
        ("ecrm_segment_entered", [ada.id]),
        ("ecrm_segment_exited", [ada.id]),
    ]


def test_incremental_refresh_only_touches_affected_customers_and_segments(shop):
    a = shop.customers.create(email="a@example.com")
    b = shop.customers.create(email="b@example.com")
    shop.segments.create("buyers", "purchase.count() >= 1")
    shop.segments.create("browsers", "page_view.count() >= 1")
    with shop.segments.paused():
        buy(shop, a.id, 1)
        buy(shop, b.id, 1)
    assert shop.segments.count("buyers") == 0  # paused: not live
    report = shop.segments.refresh(customer_ids=[a.id], kinds={"purchase"}, customers_changed=False)
    assert report.customers == 1 and [c.segment.slug for c in report.changes] == ["buyers"]
    assert [m.customer_id for m in shop.segments.members("buyers")] == [a.id]  # b not re-evaluated
    assert shop.segments.refresh().entered == 1  # the full refresh catches b up


def test_merge_moves_membership(shop):
    shop.segments.create("buyers", "purchase.count() >= 1")
    a = shop.customers.create(email="a@example.com")
    b = shop.customers.create(email="b@example.com")
    buy(shop, b.id, 1)
    assert shop.segments.of(b.id) == ["buyers"]
    shop.customers.merge(b.id, into=a.id)
    assert [m.customer_id for m in shop.segments.members("buyers")] == [a.id]


def test_segments_of_segments_refresh_in_dependency_order(shop):
    a = shop.customers.create(email="a@example.com", attributes={"country": "KR"})
    shop.segments.create("buyers", "purchase.count() >= 1")
    shop.segments.create("kr-buyers", 'segment("buyers") and country == "KR"')
    shop.segments.create("not-kr-buyers", 'not segment("kr-buyers")')
    assert shop.segments.of(a.id) == ["not-kr-buyers"]
    buy(shop, a.id, 1)
    assert shop.segments.of(a.id) == ["buyers", "kr-buyers"]
    # cycles are refused, naming the cycle
    with pytest.raises(RuleError, match=r"cycle: (buyers → kr-buyers → buyers|kr-buyers → buyers → kr-buyers)"):
        shop.segments.update("buyers", rule='segment("kr-buyers")')
    with pytest.raises(RuleError, match="refers to itself"):
        shop.segments.create("me", 'segment("me")')
    # a segment in use cannot be deleted
    with pytest.raises(Conflict, match="kr-buyers"):
        shop.segments.delete("buyers")
    shop.segments.delete("not-kr-buyers")
    shop.segments.delete("kr-buyers")
    shop.segments.delete("buyers")
    assert shop.segments.list() == []


def test_update_changes_rule_and_refreshes(shop):
    a = shop.customers.create(email="a@example.com")
    buy(shop, a.id, 1)
    shop.segments.create("buyers", "purchase.count() >= 1")
    seg = shop.segments.update("buyers", rule="purchase.count() >= 2", name="Repeat buyers")
    assert seg.name == "Repeat buyers" and seg.member_count == 0 and seg.text == "purchase.count() >= 2"
    with pytest.raises(Conflict):
        shop.segments.create("buyers", "purchase.count() >= 1")


# --- errors ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ('contry == "KR"', "field", 'unknown field "contry"'),
        ('all_of == "KR"', "field", "unknown field"),
        ("purchse.count() > 1", "event.kind", 'did you mean "purchase"'),
        ('age > "abc"', "value", "age"),
        ("country > 3", "op", '"gt" does not apply to country'),
        ("purchase.count(90d) >= -1", "value", "count is a whole number"),
        ("purchase.sum(90d) > 10.12345", "value", "4 decimal places"),
        ("purchase.count(30d..90d) > 1", "event.window", "ends before it starts"),
        ("purchase.count(99999w) > 1", "event.window", "longer than 100 years"),
        ('segment("vipp")', "segment", "unknown segment"),
        ('lifecycle_stage == "actve"', "value", 'did you mean "active"'),
        ("nope(x=1)", "condition", "unknown condition type"),
        ("`id; drop table ecrm_customers` == 1", "field", "unknown field"),
        ("attributes.`a b` == 1", "field", "not a valid attribute"),
    ],
)
def test_rule_errors_name_the_path_and_a_fix(shop, rule, field, message):
    with pytest.raises(ValidationError) as err:
        shop.segments.preview(rule)
    assert err.value.field.endswith(field), err.value.field
    assert message in str(err.value)


def test_rule_errors_in_nested_trees_name_the_full_path(shop):
    tree = {
        "all": [
            {"consent": "email"},
            {"field": "email", "op": "exists"},
            {"any": [{"field": "contry", "op": "eq", "value": "KR"}]},
        ]
    }
    with pytest.raises(RuleError) as err:
        shop.segments.compile(tree)
    assert err.value.field == "all[2].any[0].field"
    assert str(err.value).startswith('all[2].any[0].field: unknown field "contry"') and 'did you mean "country"' in str(
        err.value
    )


def test_text_rule_errors_point_at_line_and_column(shop):
    with pytest.raises(RuleError) as err:
        shop.segments.compile('purchase.count(90d) >= 3\n  and contry in ("KR", "JP")')
    assert (err.value.line, err.value.column) == (2, 7)
    assert "and contry in" in str(err.value) and "      ^" in str(err.value)


def test_absurd_rules_are_refused_cleanly(shop):
    deep = {"not": {"field": "email", "op": "exists"}}
    for _ in range(10_000):
        deep = {"not": deep}
    with pytest.raises(RuleError, match="nested more than 64"):
        shop.segments.compile(deep)
    with pytest.raises(ValidationError, match="longer than 20,000 characters"):
        shop.segments.compile("(" * 10_000 + "email exists" + ")" * 10_000)
    with pytest.raises(ValidationError, match="deeper than 64"):
        shop.segments.compile("(" * 3_000 + "email exists" + ")" * 3_000)
    wide = {"any": [{"field": "email", "op": "exists"}] * 5000}
    with pytest.raises(RuleError, match="more than 2000 conditions"):
        shop.segments.compile(wide)
    with pytest.raises(RuleError, match="exactly one of"):
        shop.segments.compile({"field": "email", "op": "exists", "all": []})
    with pytest.raises(RuleError, match="not a condition"):
        shop.segments.compile({"all": ["email"]})
    with pytest.raises(ValidationError, match="slug"):
        shop.segments.create("Bad Slug!", "email exists")
    with pytest.raises(ValidationError, match="static"):
        shop.segments.create("s", "email exists", static=True)


def test_field_names_that_look_like_sql_never_reach_sql(shop):
    shop.customers.create(email="a@example.com", attributes={"x": 1})
    evil = "x'); DROP TABLE ecrm_customers; --"
    with pytest.raises(RuleError):
        shop.segments.compile({"field": f"attributes.{evil}", "op": "eq", "value": 1})
    # values are always bound parameters: a hostile value matches nothing and breaks nothing
    assert shop.segments.preview({"field": "email", "op": "eq", "value": evil}).count == 0
    assert shop.customers.count() == 1


# --- cancellation ---------------------------------------------------------------
def test_a_long_count_can_be_cancelled(shop):
    with shop.db.write() as conn:  # enough rows for a slow cross join
        c = shop.db.tables["customers"]
        conn.execute(
            sa.insert(c),
            [
                {
                    "workspace_id": "default",
                    "attributes": {},
                    "consent": {},
                    "lifecycle_stage": "prospect",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for _ in range(3000)
            ],
        )
    token = CancelToken()
    threading.Timer(0.2, token.cancel).start()
    rule = 'not segment("big")'  # the segment has no members; fine
    shop.segments.create("big", static=True)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        # a deliberately expensive rule: every customer against every interaction
        for _ in range(1000):
            shop.segments.preview(rule, cancel=token)
    assert time.monotonic() - started < 5
    with pytest.raises(Cancelled):
        shop.segments.preview(rule, timeout=0)


# --- in-memory evaluation ---------------------------------------------------------
def test_evaluate_one_customer_in_memory(shop):
    ada = shop.customers.create(email="ada@example.com", attributes={"country": "KR"})
    for d in (1, 10, 20):
        buy(shop, ada.id, d)
    assert shop.segments.evaluate(VIP, ada.id) is True
    assert shop.segments.evaluate(VIP, ada.id, at=NOW + timedelta(days=75)) is False  # a purchase left the window
    assert shop.segments.evaluate(VIP, ada.id, interactions=[]) is False


# --- lifecycle ------------------------------------------------------------------
def test_lifecycle_stages_follow_purchases(shop, clock):
    rec = EventRecorder()
    ada = shop.customers.create(email="ada@example.com")
    assert shop.customers.get(ada.id).lifecycle_stage == "prospect"
    with registered(shop, rec):
        buy(shop, ada.id, 0)
    assert shop.customers.get(ada.id).lifecycle_stage == "new"
    [call] = rec.of("ecrm_lifecycle_changed")
    assert [(c.customer_id, c.before, c.after, c.phase) for c in call["changes"]] == [
        (ada.id, "prospect", "new", "acquisition")
    ]
    stages = []
    for days in (40, 120, 200):  # time passes; the scheduled full refresh moves her on
        clock["now"] = NOW + timedelta(days=days)
        shop.segments.refresh()
        stages.append(shop.customers.get(ada.id).lifecycle_stage)
    assert stages == ["active", "at_risk", "lapsed"]
    clock["now"] = NOW + timedelta(days=250)
    buy(shop, ada.id, -250)  # she buys again, 250 days after her only purchase
    assert shop.customers.get(ada.id).lifecycle_stage == "won_back"
    assert shop.lifecycle.stage_for(ada.id) == "won_back"
    counts = shop.lifecycle.counts()
    assert counts["won_back"] == 1 and counts["prospect"] == 0 and next(iter(counts)) == "prospect"


def test_one_refresh_moves_customers_to_different_stages(shop, clock):
    """Each mover gets its own new stage and the refresh's time (SQLite writes them in one pass by id)."""
    ada, bob, cy, dee = (shop.customers.create(email=f"{n}@example.com") for n in ("ada", "bob", "cy", "dee"))
    buy(shop, ada.id, 0)
    buy(shop, bob.id, -60)
    buy(shop, cy.id, -95)  # dee never buys
    assert {shop.customers.get(i).lifecycle_stage for i in (ada.id, bob.id, cy.id)} == {"new"}
    clock["now"] = NOW + timedelta(days=100)
    rec = EventRecorder()
    with registered(shop, rec):
        assert shop.lifecycle.refresh() == 2
    got = {c.customer_id: (c.before, c.after) for call in rec.of("ecrm_lifecycle_changed") for c in call["changes"]}
    assert got == {ada.id: ("new", "at_risk"), bob.id: ("new", "active")}
    after = {i: shop.customers.get(i) for i in (ada.id, bob.id, cy.id, dee.id)}
    assert [after[i].lifecycle_stage for i in (ada.id, bob.id, cy.id, dee.id)] == [
        "at_risk",
        "active",
        "new",
        "prospect",
    ]
    assert after[ada.id].updated_at == after[bob.id].updated_at == clock["now"]
    assert after[cy.id].updated_at < clock["now"] and after[dee.id].updated_at < clock["now"]
    # the incremental form (a few customers) writes the same way
    clock["now"] = NOW + timedelta(days=200)
    assert shop.lifecycle.refresh(customer_ids=[ada.id, cy.id]) == 2
    assert [shop.customers.get(i).lifecycle_stage for i in (ada.id, bob.id, cy.id)] == ["lapsed", "active", "at_risk"]


def test_lifecycle_rules_are_configurable_per_workspace(shop):
    ada = shop.customers.create(email="ada@example.com")
    buy(shop, ada.id, 0, amount="500")
    assert [r.stage for r in shop.lifecycle.rules()] == ["won_back", "new", "active", "at_risk", "lapsed", "prospect"]
    rules = shop.lifecycle.set_rules({"active": "purchase.sum(365d) >= 100", "prospect": "purchase.count() == 0"})
    assert [(r.stage, r.phase, r.text) for r in rules] == [
        ("active", "cultivation", "purchase.sum(365d) >= 100"),
        ("prospect", "acquisition", "purchase.count() == 0"),
    ]
    assert shop.lifecycle.refresh() == 1 and shop.customers.get(ada.id).lifecycle_stage == "active"
    other = shop.in_workspace("other")
    assert next(r.stage for r in other.lifecycle.rules()) == "won_back"  # defaults there
    with pytest.raises(ValidationError, match="lifecycle stage"):
        shop.lifecycle.set_rules({"vip": "purchase.count() > 10"})
    with pytest.raises(RuleError, match="unknown segment"):
        shop.lifecycle.set_rules({"active": 'segment("x")'})
    # no rules: stages are only what the host sets
    shop.lifecycle.set_rules({})
    assert shop.lifecycle.rules() == []
    shop.customers.update(ada.id, lifecycle_stage="lapsed")
    buy(shop, ada.id, 1)
    assert shop.customers.get(ada.id).lifecycle_stage == "lapsed"
    shop.lifecycle.reset()
    assert shop.lifecycle.refresh() == 1 and shop.customers.get(ada.id).lifecycle_stage == "new"


def test_live_refresh_failure_never_loses_the_write(shop, caplog):
    """A broken stored rule is recorded on its segment and skipped; the interaction is kept."""
    ada = shop.customers.create(email="ada@example.com")
    shop.segments.create("buyers", "purchase.count() >= 1")
    s = shop.db.tables["segments"]
    with shop.db.write() as conn:  # simulate a rule whose plugin disappeared
        conn.execute(sa.update(s).values(rule={"condition": "gone", "args": {}}))
    buy(shop, ada.id, 1)
    assert shop.interactions.count() == 1
    assert "no longer validates" in shop.segments.get("buyers").error
    report = shop.segments.refresh()
    assert [f.slug for f in report.failed] == ["buyers"] and "no longer validates" in report.failed[0].error


# --- offer eligibility (the rule slot of offers) ------------------------------------
def test_offer_eligibility_rules(shop):
    ada = shop.customers.create(email="ada@example.com", attributes={"country": "KR"})
    bob = shop.customers.create(email="bob@example.com", attributes={"country": "US"})
    for d in (1, 2, 3):
        buy(shop, ada.id, d)
    shop.segments.create("kr", 'country == "KR"')
    shop.offers.create("welcome", "Welcome", priority=1)  # no rule: for everyone
    loyal = shop.offers.create("loyal", "Thank you", priority=5, eligibility="purchase.count(90d) >= 3")
    assert loyal.eligibility == {"event": {"kind": "purchase", "agg": "count", "window": "90d"}, "op": "ge", "value": 3}
    shop.offers.create("kr-only", "For Korea", priority=3, eligibility={"segment": "kr"}, channels=["email"])
    assert [o.code for o in shop.offers.eligible(ada.id)] == ["loyal", "kr-only", "welcome"]
    assert [o.code for o in shop.offers.eligible(bob.id)] == ["welcome"]
    assert [o.code for o in shop.offers.eligible(ada.id, channel="web")] == ["loyal", "welcome"]
    assert shop.offers.audience("loyal").count == 1
    with pytest.raises(RuleError) as err:
        shop.offers.update("loyal", eligibility="purchase.count(90d) >= 3 and contry == 'KR'")
    assert err.value.field == "eligibility.all[1].field"
    assert shop.offers.get("loyal").eligibility == loyal.eligibility  # unchanged
    with pytest.raises(Conflict, match="offer kr-only"):
        shop.segments.delete("kr")
