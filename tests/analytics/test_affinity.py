"""Affinity per segment and per cluster: indices by hand, bad input, the report."""

from __future__ import annotations

import pytest

from ecrm_core import NotFound, ValidationError

from .conftest import Shop


def _buy(shop: Shop, cid: int, items: list[str], days_ago: float = 1) -> None:
    shop.buy(cid, days_ago, properties={"skus": items})


def test_segment_affinity_by_hand(shop: Shop) -> None:
    from ecrm_analytics.affinity import affinity

    a, b, c = shop.customer("a"), shop.customer("b"), shop.customer("c")
    for cid in (a, b, c):
        shop.crm.interactions.track("product_view", customer_id=cid, properties={"sku": "S1", "category": "shoes"})
    shop.crm.interactions.track("product_view", customer_id=a, properties={"sku": "B1", "category": "bags"})
    _buy(shop, a, ["S1", "B1"])
    _buy(shop, a, ["S1"], days_ago=2)
    _buy(shop, b, ["B1", "NOCAT"])
    _buy(shop, c, ["B1"])
    shop.crm.segments.create("shoe-lovers", static=True, customer_ids=[a])
    shop.crm.segments.create("others", static=True, customer_ids=[b, c])
    rows = {(r["group"], r["item"]): r for r in affinity(shop.crm)}
    # all items: shoes 2, bags 3, (uncategorized) 1 of 6
    shoes = rows[("shoe-lovers", "shoes")]
    assert (shoes["items"], shoes["share"], shoes["overall"]) == (2, pytest.approx(2 / 3), pytest.approx(2 / 6))
    assert shoes["index"] == pytest.approx(2.0) and shoes["penetration"] == 1.0
    bags = rows[("others", "bags")]
    assert bags["index"] == pytest.approx((2 / 3) / (3 / 6)) and bags["buyers"] == 2
    assert ("others", "shoes") not in rows
    only = affinity(shop.crm, groups=["others"], min_index=1.1)
    assert [(r["item"], r["index"]) for r in only] == [("(uncategorized)", 2.0), ("bags", pytest.approx(4 / 3))]
    products = {(r["group"], r["item"]) for r in affinity(shop.crm, level="product")}
    assert ("others", "NOCAT") in products
    with pytest.raises(NotFound):
        affinity(shop.crm, groups=["nope"])
    for bad in ({"by": "country"}, {"level": "brand"}, {"min_items": 0}, {"min_index": -1}):
        with pytest.raises(ValidationError):
            affinity(shop.crm, **bad)


def test_empty_and_cluster_affinity_and_report(shop: Shop) -> None:
    pytest.importorskip("sklearn")
    from ecrm_analytics import report
    from ecrm_analytics.affinity import affinity
    from ecrm_analytics.clusters import cluster_customers

    assert affinity(shop.crm) == []
    assert "nothing to compare" in report(shop.crm, "affinity").caption
    ids = [shop.customer(f"c{i}") for i in range(12)]
    for k, cid in enumerate(ids):
        big = k < 4
        for n in range(6 if big else 1):
            _buy(shop, cid, ["LUX-1"] if big else ["CHEAP-1", "CHEAP-2"], days_ago=3 + n + (0 if big else 200))
    cluster_customers(shop.crm, k=2)
    rows = affinity(shop.crm, by="cluster", level="product")
    assert {r["group"].split(":")[0] for r in rows} == {"1", "2"}
    lux = next(r for r in rows if r["item"] == "LUX-1")
    assert lux["index"] > 1 and lux["buyers"] == 4
    data = report(shop.crm, "affinity", by="cluster", level="product", min_items="1").to_dict()
    assert data["rows"] and data["chart"]["columns"] == ["CHEAP-1", "CHEAP-2", "LUX-1"]
    shop.crm.segments.create("all", "purchase.count() >= 1")
    data = report(shop.crm, "affinity", min_items="1").to_dict()
    assert data["chart"]["kind"] == "heatmap" and data["chart"]["rows"] == ["all"]
