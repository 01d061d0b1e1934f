"""Clusters: three planted groups found and named, bad input, the cluster() condition, merge and delete."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrm_core import ValidationError

from .conftest import Shop

pytest.importorskip("sklearn")


def _plant(shop: Shop, seed: int = 3) -> dict[str, list[int]]:
    """Big recent frequent spenders, small lapsed one-off buyers, and middling ones."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {"vip": [], "lapsed": [], "mid": []}
    rows = []
    for name, n in (("vip", 8), ("lapsed", 14), ("mid", 10)):
        for i in range(n):
            cid = shop.customer(f"{name}{i}")
            groups[name].append(cid)
            if name == "vip":
                rows += [(cid, rng.uniform(1, 20), round(rng.uniform(300, 500), 2)) for _ in range(rng.randint(12, 16))]
            elif name == "lapsed":
                rows += [(cid, rng.uniform(300, 400), round(rng.uniform(10, 20), 2))]
            else:
                rows += [(cid, rng.uniform(60, 120), round(rng.uniform(60, 90), 2)) for _ in range(rng.randint(3, 5))]
    shop.history(rows)
    return groups


def test_planted_groups_are_found_and_described(shop: Shop) -> None:
    from ecrm_analytics.clusters import cluster_customers, model

    from ecrm_core.testing import EventRecorder, registered

    groups = _plant(shop)
    prospect = shop.customer("no purchase")
    recorder = EventRecorder()
    with registered(shop.crm, recorder):
        result = cluster_customers(shop.crm, k_max=5)
        # the attributes written are customer changes like any other: the core's event names each
        changes = [ch for kw in recorder.of("ecrm_customers_updated") for ch in kw["changes"]]
        assert len(changes) == 32 and all(ch.changed == {"attributes"} for ch in changes)
        recorder.clear()
        cluster_customers(shop.crm, k=3)  # the same clusters again: nothing changes, nothing is written or fired
        assert not recorder.of("ecrm_customers_updated")
    assert result.customers == 32 and result.k == 3 and result.silhouette > 0.5
    assert set(result.tried) == {2, 3, 4, 5} and result.tried[3] == max(result.tried.values())
    labels = {c.label for c in result.clusters}
    vip = next(c for c in result.clusters if c.size == 8)
    lapsed = next(c for c in result.clusters if c.size == 14)
    assert vip.label.startswith("high spend") and "frequent" in vip.label
    assert "lapsed" in lapsed.label and "low spend" in lapsed.label
    assert len(labels) == 3 and lapsed.id == 1  # numbered by size
    table = shop.crm.db.tables["analytics_clusters"]
    with shop.crm.db.read() as conn:
        stored = dict(conn.execute(table.select().with_only_columns(table.c.customer_id, table.c.cluster)).all())
    assert prospect not in stored and len(stored) == 32
    assert {stored[c] for c in groups["vip"]} == {vip.id}
    assert model(shop.crm)["k"] == 3
    report = result.to_report().to_dict()
    assert report["chart"]["kind"] == "scatter" and report["rows"][0][0] == 1

    customer = shop.crm.customers.get(groups["vip"][0])
    assert customer.attributes["cluster"] == vip.id and customer.attributes["cluster_label"] == vip.label
    assert "cluster" not in shop.crm.customers.get(prospect).attributes
    assert shop.crm.segments.preview(f'cluster_label == "{vip.label}"').count == 8  # a declared attribute too

    seg = shop.crm.segments.create("vips", f"cluster(id={vip.id})")
    assert seg.member_count == 8
    assert shop.crm.segments.preview(f'cluster(label="{lapsed.label}")').count == 14
    assert shop.crm.segments.evaluate(f"cluster(id={vip.id})", groups["vip"][0])
    assert not shop.crm.segments.evaluate(f"cluster(id={vip.id})", prospect)


def test_merge_places_the_survivor_and_delete_erases(shop: Shop) -> None:
    from ecrm_analytics.clusters import cluster_customers

    groups = _plant(shop)
    cluster_customers(shop.crm, k=3)
    table = shop.crm.db.tables["analytics_clusters"]

    def cluster_of(cid: int) -> int | None:
        with shop.crm.db.read() as conn:
            return conn.execute(table.select().where(table.c.customer_id == cid)).first()

    lapsed, vip = groups["lapsed"][0], groups["vip"][0]
    before = cluster_of(vip).cluster
    shop.crm.customers.merge(lapsed, into=vip, reason="same person")
    assert cluster_of(lapsed) is None and cluster_of(vip).cluster == before
    assert shop.crm.customers.get(vip).attributes["cluster"] == before
    shop.crm.customers.delete(vip)
    assert cluster_of(vip) is None
    assert not [f for f in shop.crm.plugins.failures if "analytics" in f.plugin]


def test_too_few_or_identical_buyers_say_why(shop: Shop) -> None:
    from ecrm_analytics import report
    from ecrm_analytics.clusters import assign, cluster_customers

    empty = cluster_customers(shop.crm)
    assert empty.clusters == () and "nothing to cluster" in empty.message
    one = shop.customer()
    shop.history([(one, 5, 10)])
    single = cluster_customers(shop.crm)
    assert single.k == 0 and "1 buyer(s)" in single.message
    assert report(shop.crm, "clusters").to_dict()["caption"] == single.message
    twins = [shop.customer() for _ in range(5)]
    shop.history([(c, 5, 10) for c in twins])
    alike = cluster_customers(shop.crm)
    assert alike.clusters == () and "different profile" in alike.message
    shop.history([(one, 4, 10)])  # one buyer now differs: two clusters
    assert cluster_customers(shop.crm, k=2).k == 2
    assert shop.crm.customers.get(one).attributes["cluster"] == 2
    shop.history([(c, 4, 10) for c in twins])  # everybody alike again
    assert cluster_customers(shop.crm).clusters == ()
    assert shop.crm.customers.get(one).attributes["cluster"] is None  # cleared with the clusters
    assert assign(shop.crm, twins) == 0  # no stored model any more
    for bad in ({"k": 1}, {"k_max": 50}, {"k_min": 5, "k_max": 3}):
        with pytest.raises(ValidationError):
            cluster_customers(shop.crm, **bad)
    for rule in ("cluster()", "cluster(id=0)", 'cluster(id=1, label="x")', "cluster(size=3)", "cluster(label=3)"):
        with pytest.raises(ValidationError):
            shop.crm.segments.compile(rule)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(1, 4), min_size=1, max_size=3), by_label=st.booleans(), negate=st.booleans())
def test_sql_and_memory_agree(shop: Shop, ids: list[int], by_label: bool, negate: bool) -> None:
    from ecrm_analytics.clusters import cluster_customers, model

    if model(shop.crm) is None:  # the fixture's shop lives across the examples: plant it once
        _plant(shop, seed=5)
        shop.customer("prospect")
        cluster_customers(shop.crm, k=4)
    labels = {c["id"]: c["label"] for c in model(shop.crm)["clusters"]}
    arg = "(" + ", ".join(f'"{labels[i]}"' if by_label else str(i) for i in ids) + ")"
    rule = f"cluster({'label' if by_label else 'id'}={arg})"
    if negate:
        rule = f"not {rule}"
    members = {c.id for c in shop.crm.segments.preview(rule, sample=100).sample}
    everyone = [c.id for c in shop.crm.customers.list(limit=100)]
    assert len(everyone) == 33
    assert members == {c for c in everyone if shop.crm.segments.evaluate(rule, c)}


def test_the_worker_job_recomputes_what_was_saved_once_a_day(shop: Shop) -> None:
    from ecrm_analytics.basket import basket_rules, save, stored
    from ecrm_analytics.clusters import cluster_customers, model

    from ecrm_core.worker import JobRunner

    assert "analytics.needs" in shop.crm.registry.jobs
    runner = JobRunner(shop.crm, jobs=["analytics.needs"])
    assert runner.tick("analytics.needs", "default").status == "ran"  # nothing saved: nothing to do
    groups = _plant(shop)
    for cid in groups["vip"]:
        shop.buy(cid, 1, properties={"skus": ["A", "B"]})
    save(shop.crm, basket_rules(shop.crm, min_support=0.1, min_confidence=0.5))
    cluster_customers(shop.crm, k=3)
    assert model(shop.crm)["k_fixed"] == 3
    for cid in groups["lapsed"]:
        shop.buy(cid, 1, properties={"skus": ["A", "C"]})
    shop.clock.advance(days=2)
    assert runner.tick("analytics.needs", "default").status == "ran"
    assert {r.consequent for r in stored(shop.crm)} >= {("C",)}  # recomputed with the new purchases
    assert model(shop.crm)["k"] == 3 and model(shop.crm)["customers"] == 32
