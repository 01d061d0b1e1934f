"""The analytics SQL on a real PostgreSQL server: RFM (window functions, UPDATE … FROM), the partial
index, attributes (jsonb), conditions, CLV (epoch days), churn and cohorts (to_char months)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ecrm_analytics import analytics, plugin, report

from ecrm_core.testing import FakeClock

from .conftest import NOW

pytestmark = pytest.mark.postgres


def test_rfm_clv_reports_and_conditions_on_postgres(pg_crm_factory: Any) -> None:
    crm = pg_crm_factory(plugins=[plugin], clock=FakeClock(NOW))
    from ecrm_analytics import set_rates

    set_rates(crm, "EUR", {"USD": 0.5})
    ids = [crm.customers.create(name=f"c{i}", email=f"c{i}@example.com").id for i in range(12)]
    rows = []
    for i, c in enumerate(ids):
        for k in range(1 + i % 4):
            rows.append({"kind": "purchase", "customer_id": c, "amount": str(10 + i), "currency": "USD" if i % 3 else "EUR",
                         "occurred_at": (NOW - timedelta(days=40 * k + 9 * i + 1)).isoformat()})  # fmt: skip
    rows.append({"kind": "refund", "customer_id": ids[1], "amount": "3", "currency": "USD",
                 "occurred_at": (NOW - timedelta(days=2)).isoformat()})  # fmt: skip
    crm.interactions.track_many(rows)
    from ecrm_analytics.attributes import set_copy

    set_copy(crm, True)  # the attributes copied too (JSONB, the pre-rendered write)
    result = analytics(crm).refresh(full=True, clv=True)
    assert result.customers == 12
    # a full build on unchanged data writes no RFM row (PostgreSQL's sums are numeric, the table's floats)
    from ecrm_analytics.rfm import build

    with crm.db.write() as conn:
        built = build(crm, conn)
    assert sorted(built.customers) == sorted(ids) and built.changed == []
    one = analytics(crm).customer(ids[1])["rfm"]
    assert one["orders"] == 2 and one["revenue"] == pytest.approx(11) and one["monetary"] == pytest.approx(9.5)
    attrs = crm.customers.get(ids[-1]).attributes
    assert attrs["rfm_group"] == analytics(crm).customer(ids[-1])["rfm"]["group"]
    crm.segments.create("best", "rfm(f_min=4) and clv(p_alive_ge=0)")
    sql = {c.id for c in crm.segments.preview("rfm(f_min=4) and clv(p_alive_ge=0)", sample=1000).sample}
    assert sql == {c for c in ids if crm.segments.evaluate("rfm(f_min=4) and clv(p_alive_ge=0)", c)}
    # the groups the SQL rescoring writes (every row recomputed by SQL) are the grid's: ⌈(F + M) / 2⌉ by an
    # integer division (a cast of 3.5 to an integer rounds up on PostgreSQL)
    from ecrm_analytics.rfm import compute, group_of, rescore

    with crm.db.write() as conn:
        compute(crm, conn)
        rescore(crm, conn)
    rows = [analytics(crm).customer(c)["rfm"] for c in ids]
    assert any((r["f"] + r["m"]) % 2 == 0 for r in rows)
    assert [r["group"] for r in rows] == [group_of(r["r"], r["f"], r["m"]) for r in rows]
    # incremental: a new purchase, one UPDATE … FROM
    crm.interactions.track("purchase", customer_id=ids[0], amount="500", currency="EUR", occurred_at=NOW)
    analytics(crm).refresh()
    assert analytics(crm).customer(ids[0])["rfm"]["orders"] == 2
    for name in ("rfm", "clv", "churn", "cohorts"):
        assert report(crm, name).to_dict()["name"] == name
