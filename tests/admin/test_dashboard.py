"""The dashboard's figures: customers by stage without the merged ones, revenue by
calendar month over the last twelve months (closed months cached apart)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ecrm_core import CRM


def test_stage_counts_leave_out_merged_customers(admin_crm: CRM) -> None:
    from ecrm_admin.views.dashboard import stage_counts

    crm = admin_crm
    a = crm.customers.create(email="a@example.com")
    b = crm.customers.create(email="b@example.com")
    crm.customers.create(email="c@example.com")
    assert stage_counts(crm) == {"prospect": 3}
    crm.customers.merge(b.id, into=a.id)
    assert stage_counts(crm) == {"prospect": 2}
    other = crm.in_workspace("other")
    other.customers.create(email="z@example.com")
    assert stage_counts(crm) == {"prospect": 2} and stage_counts(other) == {"prospect": 1}


def test_the_revenue_window_is_twelve_calendar_months() -> None:
    from ecrm_admin.views.dashboard import _window

    assert _window(datetime(2026, 3, 17, 15, tzinfo=UTC)) == (
        datetime(2025, 4, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert _window(datetime(2026, 12, 31, 23, tzinfo=UTC))[0] == datetime(2026, 1, 1, tzinfo=UTC)
    assert _window(datetime(2026, 1, 1, tzinfo=UTC))[0] == datetime(2025, 2, 1, tzinfo=UTC)


def test_revenue_by_month_and_the_page_total(admin_client: Any, admin_crm: CRM) -> None:
    from ecrm_admin.views.dashboard import _window, revenue_by_month

    crm = admin_crm
    c = crm.customers.create(email="buyer@example.com")
    now = crm.now()
    first, current = _window(now)
    crm.interactions.track("purchase", customer_id=c.id, amount="10.00", currency="EUR", occurred_at=now)
    crm.interactions.track("purchase", customer_id=c.id, amount="5.50", currency="EUR", occurred_at=first)
    crm.interactions.track(
        "purchase", customer_id=c.id, amount="99.00", currency="EUR", occurred_at=first.replace(year=first.year - 1)
    )
    assert revenue_by_month(crm, first, current) == [(f"{first:%Y-%m}", Decimal("5.50"), 1)]
    assert revenue_by_month(crm, current) == [(f"{current:%Y-%m}", Decimal("10.00"), 1)]
    page = admin_client("agent").get("/")
    assert page.status_code == 200, page.text
    assert '<div class="n">15.5</div>' in page.text.split("Revenue, last 12 months")[1]


def test_merged_customers_are_read_through_their_index_with_or_without_statistics(admin_crm: CRM) -> None:
    """The plan does not depend on ANALYZE: the merged_into index either way."""
    from ecrm_admin.views.dashboard import merged_by_stage, stage_counts

    crm = admin_crm
    made = [crm.customers.create(email=f"p{n}@example.com") for n in range(30)]
    crm.customers.merge(made[1].id, into=made[0].id)
    c = crm.db.tables["customers"]
    for analyze in (False, True):
        with crm.db.engine.connect() as conn:
            if analyze:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
            query = merged_by_stage(conn, c, crm.workspace)
            sql = str(query.compile(conn))
            plan = " ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("default",)))
            assert conn.execute(query).all() == [("prospect", 1)]
        assert "merged_into" in plan and "SCAN" not in plan, (analyze, plan)
    assert stage_counts(crm) == {"prospect": 29}
