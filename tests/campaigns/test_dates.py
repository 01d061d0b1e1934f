"""Date triggers are set-based and indexed: ``campaign_dates`` is kept current by the core's batch
events, and the lookup reads the (workspace, source, month_day) index on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_campaigns import campaigns, dates, plugin

from ecrm_core import CRM
from ecrm_core.testing.channels import MemoryChannel

from .conftest import Shop

SEND = {"id": "s", "type": "send", "channel": "capture", "template": {"subject": "s", "body": "s"}}


def rows(crm: CRM) -> dict[tuple[str, int], date]:
    dt = crm.db.tables["campaign_dates"]
    with crm.db.read() as conn:
        return {(r.source, r.customer_id): r.day for r in conn.execute(sa.select(dt))}


def test_dates_follow_the_customers(shop: Shop) -> None:
    from ecrm_core.worker import JobRunner

    crm = shop.crm
    a = crm.customers.create(email="a@x.org", attributes={"birthday": "1990-03-04"}).id
    b = crm.customers.create(email="b@x.org", attributes={"birthday": "not a date"}).id
    svc = shop.campaigns
    svc.save(
        {"key": "bday", "name": "B", "trigger": {"type": "date", "attribute": "attributes.birthday"}, "steps": [SEND]}
    )
    svc.save({"key": "anniv", "name": "A", "trigger": {"type": "date", "attribute": "first_purchase"}, "steps": [SEND]})
    assert rows(crm) == {}  # built by the job, once, when it meets the campaign
    svc.start("bday")
    svc.start("anniv")
    crm.interactions.track(
        "purchase", customer_id=a, amount="5.00", currency="EUR", occurred_at=shop.clock() - timedelta(days=400)
    )
    JobRunner(crm, jobs=["campaigns.schedule"]).tick("campaigns.schedule", "default", force=True)
    assert rows(crm) == {
        ("birthday", a): date(1990, 3, 4),
        ("first_purchase", a): (shop.clock() - timedelta(days=400)).date(),
    }
    # from now on the core's batch events keep it current, set-based
    c = crm.customers.create(email="c@x.org", attributes={"birthday": "2001-02-28"}).id
    crm.customers.update(b, attributes={"birthday": "1980-12-24"})
    crm.interactions.track("purchase", customer_id=c, amount="5.00", currency="EUR")
    got = rows(crm)
    assert got[("birthday", b)] == date(1980, 12, 24) and got[("birthday", c)] == date(2001, 2, 28)
    assert got[("first_purchase", c)] == shop.clock().date()
    crm.customers.update(a, attributes={"birthday": None})  # the birthday removed: its row goes
    assert ("birthday", a) not in rows(crm)
    crm.customers.merge(c, into=b)  # the survivor keeps its own birthday and gains c's first purchase
    got = rows(crm)
    assert ("birthday", c) not in got and ("first_purchase", c) not in got
    assert got[("first_purchase", b)] == shop.clock().date() and got[("birthday", b)] == date(1980, 12, 24)
    crm.customers.delete(b)
    assert not any(cid == b for _s, cid in rows(crm))


def test_a_leap_day_birthday_is_celebrated_on_the_28th_of_a_common_year(shop: Shop) -> None:
    from ecrm_core.worker import JobRunner

    shop.clock.now = datetime(2027, 2, 28, 10, 0, tzinfo=UTC)  # 2027 is a common year
    leap = shop.crm.customers.create(
        email="l@x.org", attributes={"birthday": "2000-02-29"}, consent={"capture": "granted"}
    ).id
    shop.campaigns.save(
        {"key": "bday", "name": "B", "trigger": {"type": "date", "attribute": "attributes.birthday"}, "steps": [SEND]}
    )
    shop.campaigns.start("bday")
    JobRunner(shop.crm, jobs=["campaigns.schedule"]).tick("campaigns.schedule", "default", force=True)
    assert shop.campaigns.enrollment("bday", leap) is not None
    assert dates.month_days([date(2027, 2, 28)]) == [228, 229] and dates.month_days([date(2028, 2, 28)]) == [228]


def _plan(conn: sa.Connection, stmt: Any) -> str:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    if conn.dialect.name == "sqlite":
        return "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))


def _fill(crm: CRM, n: int) -> None:
    """``n`` customers with birthdays spread over the year, their dates built."""
    cu, dt = crm.db.tables["customers"], crm.db.tables["campaign_dates"]
    now = datetime(2026, 3, 2, tzinfo=UTC)
    with crm.db.write() as conn:
        conn.execute(
            sa.insert(cu),
            [
                {
                    "workspace_id": crm.workspace,
                    "email": f"c{i}@x.org",
                    "attributes": {},
                    "consent": {},
                    "lifecycle_stage": "prospect",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(n)
            ],
        )
        ids = list(conn.scalars(sa.select(cu.c.id)))
        conn.execute(
            sa.insert(dt),
            [
                {
                    "workspace_id": crm.workspace,
                    "source": "birthday",
                    "customer_id": cid,
                    "month_day": d.month * 100 + d.day,
                    "day": d,
                }
                for cid in ids
                for d in [date(1990, 1, 1) + timedelta(days=cid % 365)]
            ],
        )


def test_the_lookup_uses_the_index_on_sqlite(crm_factory: Callable[..., CRM]) -> None:
    crm = crm_factory(plugins=[plugin, MemoryChannel(name="capture").plugin()])
    _fill(crm, 3000)
    with crm.db.write() as conn:
        conn.exec_driver_sql("ANALYZE")
    stmt = dates.lookup(crm, "birthday", dates.month_days([date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]))
    with crm.db.read() as conn:
        plan = _plan(conn, stmt)
        found = conn.execute(stmt).all()
    assert "ix_ecrm_campaign_dates_lookup" in plan and "SCAN ecrm_campaign_dates" not in plan, plan
    assert found and {(d.month, d.day) for _c, d, _tz in found} <= {(3, 1), (3, 2), (3, 3)}
    assert len(found) == sum(
        1
        for cid in range(1, 3001)
        if (date(1990, 1, 1) + timedelta(days=cid % 365)).month == 3
        and (date(1990, 1, 1) + timedelta(days=cid % 365)).day in (1, 2, 3)
    )


@pytest.mark.postgres
def test_the_lookup_uses_the_index_on_postgresql(pg_crm_factory: Any) -> None:
    crm = pg_crm_factory(plugins=[plugin, MemoryChannel(name="capture").plugin()])
    _fill(crm, 20_000)
    with crm.db.write() as conn:
        conn.exec_driver_sql(f"ANALYZE {crm.db.tables['campaign_dates'].name}")
        conn.exec_driver_sql(f"ANALYZE {crm.db.tables['customers'].name}")
    stmt = dates.lookup(crm, "birthday", dates.month_days([date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]))
    with crm.db.read() as conn:
        plan = _plan(conn, stmt)
        found = conn.execute(stmt).all()
    assert "ix_ecrm_campaign_dates_lookup" in plan and "Seq Scan on ecrm_campaign_dates" not in plan, plan
    assert len(found) > 100 and {(d.month, d.day) for _c, d, _tz in found} == {(3, 1), (3, 2), (3, 3)}
    campaigns(crm)  # the plugin works on this database too
