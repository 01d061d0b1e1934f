"""Market-basket rules: exact counts on a small shop, pairs vs FP-growth, bad input, cross-sell."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from ecrm_core import ValidationError

from .conftest import NOW, Shop

pytest.importorskip("scipy")


def _buy(shop: Shop, cid: int, items: Any, days_ago: float = 1, **extra: Any) -> None:
    shop.buy(cid, days_ago, properties={"skus": items} if items is not None else {}, **extra)


def _brute(carts: list[set[str]], min_count: int) -> dict[tuple[str, str], tuple[float, float, float, int]]:
    """Every single-item rule, counted by hand."""
    n = len(carts)
    items = sorted(set().union(*carts))
    count = {i: sum(i in c for c in carts) for i in items}
    out = {}
    for a, b in itertools.permutations(items, 2):
        both = sum(a in c and b in c for c in carts)
        if both >= min_count and count[a] >= min_count and count[b] >= min_count:
            conf = both / count[a]
            out[(a, b)] = (both / n, conf, conf / (count[b] / n), both)
    return out


def test_rules_match_a_hand_count(shop: Shop) -> None:
    from ecrm_analytics.basket import basket_rules

    rng = random.Random(7)
    carts = []
    cid = shop.customer()
    for _ in range(60):
        cart = set(rng.sample("ABCDEFG", rng.randint(1, 4)))
        if "A" in cart and rng.random() < 0.8:
            cart.add("B")  # A drags B along
        carts.append(cart)
    for k, cart in enumerate(carts):
        _buy(shop, cid, sorted(cart), days_ago=k + 1)
    result = basket_rules(shop.crm, min_support=0.05, min_confidence=0, min_lift=0, max_rules=1000)
    expected = _brute(carts, 3)
    got = {(r.antecedent[0], r.consequent[0]): (r.support, r.confidence, r.lift, r.count) for r in result.rules}
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key] == pytest.approx(values)
    assert result.baskets == 60 and result.items == 7
    lifts = [r.lift for r in result.rules]
    assert lifts == sorted(lifts, reverse=True)
    top = basket_rules(shop.crm, min_support=0.05, min_confidence=0.5, min_lift=1.0)
    assert all(r.confidence >= 0.5 and r.lift >= 1 for r in top.rules)
    assert ("A",) in {r.antecedent for r in top.rules if r.consequent == ("B",)}


def test_fpgrowth_agrees_with_pairs_and_finds_larger_itemsets(shop: Shop) -> None:
    pytest.importorskip("mlxtend")
    from ecrm_analytics.basket import basket_rules

    cid = shop.customer()
    carts = [["A", "B", "C"]] * 5 + [["A", "B"]] * 3 + [["C", "D"]] * 4 + [["A"], ["D"]]
    for k, cart in enumerate(carts):
        _buy(shop, cid, cart, days_ago=k + 1)
    pairs = basket_rules(shop.crm, min_support=0.1, min_confidence=0.2, min_lift=0)
    fp = basket_rules(shop.crm, min_support=0.1, min_confidence=0.2, min_lift=0, method="fpgrowth", max_len=3)
    single = {(r.antecedent, r.consequent): r for r in fp.rules if len(r.antecedent) == len(r.consequent) == 1}
    assert set(single) == {(r.antecedent, r.consequent) for r in pairs.rules}
    for r in pairs.rules:
        s = single[(r.antecedent, r.consequent)]
        assert (s.support, s.confidence, s.lift, s.count) == pytest.approx((r.support, r.confidence, r.lift, r.count))
    assert any(r.antecedent == ("A", "B") and r.consequent == ("C",) for r in fp.rules)


def test_category_level_uses_item_objects_then_the_catalogue(shop: Shop) -> None:
    from ecrm_analytics.basket import basket_rules
    from ecrm_analytics.items import UNCATEGORIZED

    cid = shop.customer()
    shop.crm.interactions.track("product_view", customer_id=cid, properties={"sku": "S1", "category": "shoes"})
    shop.crm.interactions.track("product_view", customer_id=cid, properties={"sku": "S2", "category": "shoes"})
    for k in range(4):
        _buy(shop, cid, ["S1", {"sku": "B1", "category": "bags"}], days_ago=k + 1)
    _buy(shop, cid, ["S2", "MYSTERY"], days_ago=9)
    result = basket_rules(shop.crm, level="category", min_support=0.1, min_confidence=0, min_lift=0)
    pairs = {(r.antecedent[0], r.consequent[0]): r.count for r in result.rules}
    assert pairs[("shoes", "bags")] == 4 and pairs[("shoes", UNCATEGORIZED)] == 1
    assert result.uncategorized == 1 and result.items == 3
    given = basket_rules(
        shop.crm, level="category", categories={"MYSTERY": "socks"}, min_support=0.1, min_confidence=0, min_lift=0
    )
    assert ("shoes", "socks") in {(r.antecedent[0], r.consequent[0]) for r in given.rules}


def test_bad_and_empty_input_has_clear_results(shop: Shop) -> None:
    from ecrm_analytics.basket import basket_rules

    empty = basket_rules(shop.crm)
    assert (empty.baskets, empty.rules, empty.skipped) == (0, (), 0)
    assert "nothing to analyse" in empty.to_report().caption and empty.to_report().chart is None
    cid = shop.customer()
    _buy(shop, cid, None)  # no items array
    _buy(shop, cid, "A,B")  # not an array
    _buy(shop, cid, [None, 3, {"name": "no sku"}, {"sku": "X"}, "X"])  # odd elements: 3 and X count, once each
    _buy(shop, cid, ["A", "B"], days_ago=-5)  # future-dated: left out
    one = basket_rules(shop.crm, min_support=0, min_confidence=0, min_lift=0)
    assert (one.baskets, one.skipped, one.items) == (1, 2, 2)
    assert [(r.antecedent, r.consequent) for r in one.rules] == [(("3",), ("X",)), (("X",), ("3",))]
    single = shop.customer()
    for bad in (
        {"min_support": 2},
        {"min_confidence": -0.1},
        {"min_lift": float("nan")},
        {"level": "brand"},
        {"method": "apriori"},
        {"max_rules": 0},
        {"items_key": "a.b"},
    ):
        with pytest.raises(ValidationError) as err:
            basket_rules(shop.crm, **bad)
        assert err.value.field == next(iter(bad))
    assert single


def test_rules_of_a_segment_and_a_period(shop: Shop) -> None:
    from datetime import timedelta

    from ecrm_analytics.basket import basket_rules

    a, b = shop.customer("a"), shop.customer("b")
    for k in range(3):
        _buy(shop, a, ["A", "B"], days_ago=k + 1)
        _buy(shop, b, ["C", "D"], days_ago=100 + k)
    shop.crm.segments.create("only-a", static=True, customer_ids=[a])
    seg = basket_rules(shop.crm, segment="only-a", min_support=0.1, min_confidence=0)
    assert {r.antecedent[0] for r in seg.rules} == {"A", "B"}
    recent = basket_rules(shop.crm, since=NOW - timedelta(days=30), min_support=0.1, min_confidence=0)
    assert recent.baskets == 3


def test_saved_rules_drive_recommendations_and_a_cross_sell_segment(shop: Shop) -> None:
    from ecrm_analytics.basket import basket_rules, cross_sell, recommend, save, stored

    ids = [shop.customer(f"c{i}") for i in range(5)]
    for cid, cart in zip(ids, [["A", "B"], ["A", "B"], ["A", "B", "C"], ["A"], ["C"]], strict=True):
        _buy(shop, cid, cart)
    result = basket_rules(shop.crm, min_support=0.2, min_confidence=0.5, min_lift=0)
    assert save(shop.crm, result) == len(result.rules) > 0
    assert stored(shop.crm) == list(result.rules)
    assert recommend(shop.crm, ids[3])[0]["item"] == "B"
    assert recommend(shop.crm, ids[0]) == []  # bought everything the rules suggest
    chosen = cross_sell(shop.crm, "B", segment="cross-sell-b")
    assert chosen == [ids[3]]
    assert [m.customer_id for m in shop.crm.segments.members("cross-sell-b")] == [ids[3]]
    _buy(shop, ids[3], ["B"])
    assert cross_sell(shop.crm, "B", segment="cross-sell-b") == []
    assert shop.crm.segments.count("cross-sell-b") == 0
    offer = shop.crm.offers.create("b10", "10% off B", kind="discount", eligibility='segment("cross-sell-b")')
    assert offer.eligibility == {"segment": "cross-sell-b"}
    shop.crm.segments.create("dyn", "purchase.count() >= 1")
    with pytest.raises(ValidationError):
        cross_sell(shop.crm, "B", segment="dyn")


def test_report_through_the_catalogue(shop: Shop) -> None:
    from ecrm_analytics import report

    cid = shop.customer()
    for k in range(3):
        _buy(shop, cid, ["A", "B"], days_ago=k + 1)
    data = report(shop.crm, "basket", min_support="0.1", top="5").to_dict()
    assert data["summary"]["baskets"] == 3 and data["rows"][0][:2] == ["A", "B"]
    assert data["chart"]["kind"] == "bar"
    with pytest.raises(ValidationError):
        report(shop.crm, "basket", level="brand")
