"""Closing the loop: rfm()/clv()/churn() conditions (SQL and memory agree), attributes, merge and delete hooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from ecrm_analytics.conditions import CLV_METRICS
from ecrm_analytics.rfm import group_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrm_core import RuleError

from .conftest import NOW

scores = st.integers(1, 5)
# days since the last purchase: k + 0.37 days never equals a threshold (90, 180, or k * span / frequency with
# small integers), so the SQL and the in-memory arithmetic cannot fall on either side of one by rounding
recency = st.integers(0, 400).map(lambda k: k + 0.37)
rfm_rows = st.one_of(st.none(), st.tuples(scores, scores, scores, recency))
clv_values = st.one_of(st.none(), st.fixed_dictionaries(
    {"p_alive": st.floats(0, 1), "purchases_12m": st.floats(0, 20), "expected_value": st.floats(0, 900),
     "value_12m": st.floats(0, 5000), "frequency": st.integers(0, 12), "recency_days": st.integers(0, 400)}
))  # fmt: skip
thresholds = st.one_of(st.integers(0, 1000), st.floats(0, 1000, allow_nan=False), st.sampled_from([0.3, 0.5, 500.0]))


@st.composite
def rfm_conditions(draw):
    args = {}
    if draw(st.booleans()):
        groups = draw(
            st.lists(st.sampled_from(["champions", "loyal", "at_risk", "lost", "new"]), min_size=1, max_size=3)
        )
        args["group"] = groups[0] if len(groups) == 1 else groups
    for key in draw(st.lists(st.sampled_from(["r_min", "r_max", "f_min", "f_max", "m_min", "m_max"]), max_size=2)):
        args[key] = draw(scores)
    if not args:
        args["r_min"] = draw(scores)
    return {"condition": "rfm", "args": args}


@st.composite
def clv_conditions(draw):
    keys = draw(st.lists(st.sampled_from([f"{m}_{o}" for m in CLV_METRICS for o in ("lt", "le", "gt", "ge")]),
                         min_size=1, max_size=2, unique=True))  # fmt: skip
    return {"condition": "clv", "args": {k: draw(thresholds) for k in keys}}


@st.composite
def churn_conditions(draw):
    risks = draw(st.lists(st.sampled_from(["high", "medium", "low"]), min_size=1, max_size=2, unique=True))
    return {"condition": "churn", "args": {"risk": risks[0] if len(risks) == 1 else risks}}


conditions = st.one_of(rfm_conditions(), clv_conditions(), churn_conditions())
trees = st.recursive(
    conditions,
    lambda children: st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"any": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=5,
)


def _store(shop, ids, rfm, clv) -> None:
    crm = shop.crm
    rt, ct = crm.db.tables["analytics_rfm"], crm.db.tables["analytics_clv"]
    with crm.db.write() as conn:
        conn.execute(sa.delete(rt))
        conn.execute(sa.delete(ct))
        for cid, row in zip(ids, rfm, strict=True):
            if row is not None:
                r, f, m, days = row
                last = NOW - timedelta(days=days)
                conn.execute(sa.insert(rt).values(
                    workspace_id="default", customer_id=cid, first_at=last, last_at=last, orders=1,
                    revenue=1.0, refunds=0.0, monetary=1.0, unconverted=0, r_score=r, f_score=f, m_score=m,
                    grp=group_of(r, f, m), computed_at=NOW,
                ))  # fmt: skip
        for cid, row in zip(ids, clv, strict=True):
            if row is not None:
                conn.execute(sa.insert(ct).values(
                    workspace_id="default", customer_id=cid, age_days=500.0, avg_value=1.0, computed_at=NOW, **row,
                ))  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sql_and_memory_evaluators_agree(shop, data) -> None:
    if not hasattr(shop, "ids"):
        shop.ids = [shop.customer(f"c{i}") for i in range(8)]
    ids = shop.ids
    rfm = data.draw(st.lists(rfm_rows, min_size=8, max_size=8))
    clv = data.draw(st.lists(clv_values, min_size=8, max_size=8))
    tree = data.draw(trees)
    _store(shop, ids, rfm, clv)
    sql = {c.id for c in shop.crm.segments.preview(tree, sample=1000).sample}
    memory = {c for c in ids if shop.crm.segments.evaluate(tree, c)}
    assert sql == memory, tree


def test_text_syntax_and_bad_arguments(shop) -> None:
    rule = shop.crm.segments.compile('rfm(group="at_risk") and clv(p_alive_lt=0.3, value_12m_gt=500)')
    assert rule.tree["all"][0]["condition"] == "rfm" and rule.tree["all"][1]["args"]["value_12m_gt"] == 500
    shop.crm.segments.compile('rfm(group=("at_risk", "cant_lose_them"), r_max=2)')
    assert shop.crm.segments.compile('churn(risk=("high", "medium"))').tree["args"]["risk"] == ["high", "medium"]
    for bad, field in (('rfm(group="vip")', "group"), ("rfm(r_min=9)", "r_min"), ("clv(p_alive_between=1)", "p_alive"),
                       ('clv(value_12m_gt="a lot")', "value_12m_gt"), ("rfm()", "args"),
                       ('churn(risk="severe")', "risk"), ("churn()", "args"), ('churn(level="high")', "level")):  # fmt: skip
        with pytest.raises(RuleError) as err:
            shop.crm.segments.compile(bad)
        assert field in str(err.value)


def test_segments_follow_the_refresh_and_attributes_agree(shop) -> None:
    from ecrm_analytics.attributes import set_copy

    assert set_copy(shop.crm, True) == 0  # nothing computed yet: nothing to copy
    ids = [shop.customer(f"c{i}") for i in range(10)]
    shop.history([(c, 100 - 10 * i + k, 10 * (i + 1)) for i, c in enumerate(ids) for k in range(i + 1)])
    shop.crm.segments.create("champions", 'rfm(group="champions")')
    shop.crm.segments.create("champions_attr", 'rfm_group == "champions"')
    assert shop.crm.segments.count("champions") == 0  # nothing computed yet
    shop.analytics.refresh(full=True)
    members = {m.customer_id for m in shop.crm.segments.members("champions")}
    assert members == {m.customer_id for m in shop.crm.segments.members("champions_attr")}
    assert ids[-1] in members and ids[0] not in members
    # the lost customer buys a lot now: the job's refresh moves them into the segment
    for d in range(12):
        shop.buy(ids[0], d * 0.1, "900")
    shop.analytics.refresh()
    assert shop.crm.segments.is_member("champions", ids[0])
    assert shop.crm.customers.get(ids[0]).attributes["rfm_group"] == "champions"


def test_merge_recomputes_the_survivor_and_delete_erases(shop) -> None:
    a, b = shop.customer("a", email="a@example.com"), shop.customer("b", email="b@example.com")
    shop.buy(a, 10, "10")
    shop.buy(b, 5, "20")
    shop.buy(b, 3, "30")
    shop.analytics.refresh(full=True)
    shop.crm.customers.merge(b, into=a, reason="same person")
    info = shop.analytics.customer(a)
    assert info["rfm"]["orders"] == 3 and info["rfm"]["monetary"] == 60
    table = shop.crm.db.tables["analytics_rfm"]
    with shop.crm.db.read() as conn:
        assert conn.execute(sa.select(table.c.customer_id)).scalars().all() == [a]
    shop.buy(a, 1, "5")  # a mark for a
    shop.crm.customers.delete(a)
    with shop.crm.db.read() as conn:
        for name in ("analytics_rfm", "analytics_clv", "analytics_dirty"):
            t = shop.crm.db.tables[name]
            assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 0, name
    assert not [f for f in shop.crm.plugins.failures if f.plugin == "analytics"]


def test_churn_condition_counts_what_the_churn_report_counts(shop) -> None:
    ids = [shop.customer(f"c{i}") for i in range(12)]
    # regular buyers every 10 days, the later ones stopped long ago; two single buyers (recency rules alone)
    shop.history([(c, 20 * i + 10 * k, 30) for i, c in enumerate(ids[:10]) for k in range(4)])
    shop.buy(ids[10], 200, "40")
    shop.buy(ids[11], 5, "40")
    shop.analytics.refresh(full=True)
    from ecrm_analytics.churn import churn_report

    summary = churn_report(shop.crm).summary
    for risk in ("high", "medium", "low"):
        preview = shop.crm.segments.preview(f'churn(risk="{risk}")', sample=100)
        assert preview.count == summary[f"risk_{risk}"], risk
        assert all(shop.crm.segments.evaluate(f'churn(risk="{risk}")', c.id) for c in preview.sample)
    high = {c.id for c in shop.crm.segments.preview('churn(risk="high")', sample=100).sample}
    assert ids[10] in high and ids[11] not in high and ids[0] not in high


def test_attributes_are_read_from_the_tables_unless_copied_and_copies_fire_the_customer_event(shop) -> None:

    from ecrm_core.testing import EventRecorder, registered

    ids = [shop.customer(f"c{i}") for i in range(6)]
    shop.history([(c, 10 * i + k, 20 * (i + 1)) for i, c in enumerate(ids[:5]) for k in range(i + 1)])
    recorder = EventRecorder()
    with registered(shop.crm, recorder):
        _copy_scenario(shop, ids, recorder)


def _copy_scenario(shop, ids, recorder) -> None:
    from ecrm_analytics.attributes import EMPTY, set_copy, values

    shop.analytics.refresh(full=True)
    # by default nothing is copied: no attribute, no customer event; the values come from the tables
    assert not [c for c in recorder.calls if c[0] == "ecrm_customers_updated"]
    assert all("rfm_group" not in shop.crm.customers.get(c).attributes for c in ids)
    known = values(shop.crm, ids)
    assert set(known) == set(ids[:5]) and known[ids[4]]["rfm_score"][0] in "12345"
    assert known.get(ids[5], EMPTY) == EMPTY
    # copying on: every customer with results at once, one event listing exactly them
    assert set_copy(shop.crm, True) == 5
    updated = [c for c in recorder.calls if c[0] == "ecrm_customers_updated"]
    changes = updated[-1][1]["changes"]
    assert {ch.after.id for ch in changes} == set(ids[:5])
    for ch in changes:
        assert ch.changed == {"attributes"} and ch.after.attributes["rfm_group"] == known[ch.after.id]["rfm_group"]
    # a refresh that changes nothing writes nothing and fires nothing
    before = len(updated)
    shop.analytics.refresh(full=True)
    assert len([c for c in recorder.calls if c[0] == "ecrm_customers_updated"]) == before
    # one customer buys a lot: only the customers whose values moved are written
    for d in range(8):
        shop.buy(ids[0], d * 0.1, "900")
    shop.analytics.refresh()
    last = [c for c in recorder.calls if c[0] == "ecrm_customers_updated"][-1][1]["changes"]
    assert ids[0] in {ch.after.id for ch in last}
    assert shop.crm.customers.get(ids[0]).attributes["rfm_group"] == values(shop.crm, [ids[0]])[ids[0]]["rfm_group"]
    # off: the copies are cleared (they would go stale), the tables still answer
    assert set_copy(shop.crm, False) == 5
    assert all(shop.crm.customers.get(c).attributes.get("rfm_group") is None for c in ids)
    assert values(shop.crm, [ids[0]])[ids[0]]["rfm_group"]
