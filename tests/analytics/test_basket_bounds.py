"""Basket rules stay bounded whatever the purchases hold (review, round 25).

A purchase's ``skus`` may list thousands of items in its 16 KB of
properties; the pair count grows with the square of a basket's size, so
four such purchases made ``GET /analytics/reports/basket`` use 2.7 GB and
10 CPU-seconds, and 300 purchases of 200 distinct items with
``min_support=0`` 1.2 GB.  Each case of the corpus is a shape of hostile
purchases; every way in (Python, the REST route, the daily ``analytics.needs``
job) must answer with bounded work: an oversized purchase is left out and
counted, a support too low for the data is refused naming the lowest that fits.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from ecrm_core import CRM
from ecrm_core.errors import ValidationError
from ecrm_core.testing import FakeClock

from .conftest import NOW, Shop

pytest.importorskip("scipy")
from ecrm_analytics import plugin
from ecrm_analytics.basket import MAX_BASKET_ITEMS, MAX_PAIRS, basket_rules, save

# (name, purchases as (count, distinct items each), params, what must happen)
CORPUS: list[tuple[str, int, int, dict[str, Any], str]] = [
    ("one purchase just over the basket size", 1, MAX_BASKET_ITEMS + 1, {}, "oversized"),
    ("one purchase of 2,000 items", 1, 2_000, {}, "oversized"),
    ("a few purchases of 1,500 items, support 0", 3, 1_500, {"min_support": 0}, "oversized"),
    ("many baskets of 200 distinct items, support 0", 300, 200, {"min_support": 0}, "refused"),
    ("many baskets of 200 distinct items, default support", 300, 200, {}, "refused"),
    ("one basket of 400 items for FP-growth", 1, 400, {"method": "fpgrowth", "min_support": 0}, "refused"),
    ("baskets of 60 items for FP-growth up to 5", 20, 60, {"method": "fpgrowth", "max_len": 5}, "refused"),
]


def _hostile(crm: CRM, count: int, size: int, first: int = 10_000) -> None:
    """``count`` purchases of ``size`` distinct items each, numbers (the shortest JSON: 2,000 fit in 16 KB)."""
    c = crm.customers.create(name="hostile").id
    crm.interactions.track_many(
        [
            {"kind": "purchase", "customer_id": c, "amount": "1", "currency": "EUR",
             "occurred_at": (NOW - timedelta(days=1)).isoformat(),
             "properties": {"skus": list(range(first + b * size, first + (b + 1) * size))}}
            for b in range(count)
        ]
    )  # fmt: skip


def _ordinary(shop: Shop) -> None:
    for k in range(30):
        c = shop.customer(f"c{k}")
        shop.buy(c, 2, properties={"skus": ["tea", "cup"] if k % 2 else ["tea", "biscuit", "cup"]})


@pytest.mark.parametrize(("name", "count", "size", "params", "want"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_purchases_make_bounded_work(shop: Shop, name, count, size, params, want, monkeypatch) -> None:
    _ordinary(shop)
    _hostile(shop.crm, count, size)
    seen: list[int] = []
    import scipy.sparse as sp

    real = sp.csr_matrix.__matmul__

    def counted(self, other):  # the pair count: no product larger than the bound
        out = real(self, other)
        seen.append(out.nnz)
        return out

    monkeypatch.setattr(sp.csr_matrix, "__matmul__", counted)
    if want == "refused":
        with pytest.raises(ValidationError) as info:
            basket_rules(shop.crm, **params)
        assert info.value.field == "min_support" and "at least" in info.value.fix
        support = float(info.value.fix.rsplit(" ", 1)[1])
        if params.get("method") != "fpgrowth":  # the support it names fits (FP-growth needs mlxtend)
            result = basket_rules(shop.crm, **{**params, "min_support": support})
            assert result.frequent >= 2
    else:
        result = basket_rules(shop.crm, min_confidence=0, **params)
        assert result.oversized == count and result.summary()["oversized_baskets"] == count
        assert result.baskets == 30 + count
        # the ordinary purchases are analysed as if the hostile ones were not there
        assert {(r.antecedent, r.consequent) for r in result.rules} >= {(("tea",), ("cup",))}
        assert all(not a.isdigit() for r in result.rules for a in (*r.antecedent, *r.consequent))
    assert all(n <= MAX_PAIRS for n in seen), seen


def test_the_report_route_refuses_a_support_too_low_for_the_data(
    crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]
) -> None:
    pytest.importorskip("ecrm_api")
    from ecrm_api import plugin as api_plugin

    crm = crm_factory(plugins=[api_plugin, plugin], clock=FakeClock(NOW))
    _hostile(crm, 300, 200)
    http = live_api_factory(crm).client()
    r = http.get("/analytics/reports/basket", params={"min_support": "0"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "query.min_support" and "at least" in r.text
    _hostile(crm, 1, 2_000, first=80_000)
    r = http.get("/analytics/reports/basket", params={"min_support": "0.01"})
    assert r.status_code == 200 and r.json()["summary"]["oversized_baskets"] == 1, r.text


def test_the_daily_job_keeps_the_old_rules_and_goes_on(shop: Shop) -> None:
    from ecrm_analytics.needs import refresh_needs

    _ordinary(shop)
    saved = save(shop.crm, basket_rules(shop.crm, min_support=0.001, min_confidence=0))
    assert saved > 0
    _hostile(shop.crm, 300, 200)
    shop.clock.advance(days=2)
    done = refresh_needs(shop.crm)
    assert any("not refreshed" in line and "min_support" in line for line in done), done
    from ecrm_analytics.basket import stored

    assert len(stored(shop.crm)) == saved
