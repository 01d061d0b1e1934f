"""The needs analysis and sales tracking on a real PostgreSQL server: the same answers as on SQLite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ecrm_analytics import plugin

from ecrm_core.testing import FakeClock

from .conftest import NOW, Shop

pytestmark = pytest.mark.postgres


def _fill(shop: Shop) -> list[int]:
    ids = [shop.customer(f"c{i}") for i in range(8)]
    shop.crm.interactions.track("product_view", customer_id=ids[0], properties={"sku": "S1", "category": "shoes"})
    for i, cid in enumerate(ids):
        shop.crm.interactions.track(
            "email_open",
            customer_id=cid,
            channel="email",
            occurred_at=NOW - timedelta(days=5 + i),
            properties={"campaign": "may"},
        )
        for k in range(1 + i % 3):
            items: list[Any] = ["S1", {"sku": "B1", "category": "bags"}] if i % 2 else ["S1", 7, "X"]
            shop.buy(cid, 1 + 40 * k + i, 10 * (i + 1), channel="web" if i % 2 else "app", properties={"skus": items})
    shop.buy(ids[0], 2, "5", kind="refund", channel="support")
    shop.buy(ids[1], 3, "1", properties={"skus": "not a list"})
    return ids


def _answers(shop: Shop) -> dict[str, Any]:
    from ecrm_analytics.affinity import affinity
    from ecrm_analytics.attribution import attribution
    from ecrm_analytics.basket import basket_rules, recommend, save
    from ecrm_analytics.clusters import cluster_customers
    from ecrm_analytics.sales import sales

    ids = _fill(shop)
    rules = basket_rules(shop.crm, min_support=0.05, min_confidence=0, min_lift=0)
    cats = basket_rules(shop.crm, level="category", min_support=0.05, min_confidence=0, min_lift=0)
    clusters = cluster_customers(shop.crm, k=2)
    shop.crm.segments.create("first", "cluster(id=1)")
    return {
        "rules": [r.to_dict() for r in rules.rules],
        "skipped": rules.skipped,
        "cats": [r.to_dict() for r in cats.rules],
        "sales": [sales(shop.crm, by) for by in ("channel", ("period", "currency"), "campaign")]
        + [sales(shop.crm, "period", period_unit=u) for u in ("day", "week", "quarter", "year")],
        "attribution": [attribution(shop.crm, by=by) for by in ("channel", "campaign")],
        "clusters": [(c.label, c.size) for c in clusters.clusters],
        "members": sorted(ids.index(m.customer_id) for m in shop.crm.segments.members("first")),
        "affinity": affinity(shop.crm, by="cluster"),
        "recommend": save(shop.crm, rules) and recommend(shop.crm, ids[0]),
        "attributes": [shop.crm.customers.get(c).attributes.get("cluster_label") for c in ids],
    }


def test_same_answers_as_sqlite(pg_crm_factory: Any, crm_factory: Any) -> None:
    pytest.importorskip("sklearn")
    pg_clock, lite_clock = FakeClock(NOW), FakeClock(NOW)
    on_pg = _answers(Shop(pg_crm_factory(plugins=[plugin], clock=pg_clock), pg_clock))
    on_sqlite = _answers(Shop(crm_factory(plugins=[plugin], clock=lite_clock), lite_clock))
    assert on_pg["rules"] and on_pg["skipped"] == 1 and all(on_pg["attributes"])
    assert on_pg["recommend"] and on_pg["recommend"][0]["item"] == "B1"
    for key in on_sqlite:
        assert on_pg[key] == on_sqlite[key], key
