"""Sales tracking and attribution: figures by hand on a small shop, bad input, the three models."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ecrm_core import ValidationError

from .conftest import NOW, Shop


def _sale(
    shop: Shop,
    cid: int,
    days_ago: float,
    amount: Any,
    currency: str = "EUR",
    kind: str = "purchase",
    channel: str | None = "web",
    **props: Any,
) -> None:
    shop.crm.interactions.track(
        kind,
        customer_id=cid,
        amount=str(amount),
        currency=currency,
        channel=channel,
        occurred_at=NOW - timedelta(days=days_ago),
        properties=props,
    )


def _touch(shop: Shop, cid: int, days_ago: float, kind: str, channel: str, **props: Any) -> None:
    shop.crm.interactions.track(
        kind, customer_id=cid, channel=channel, occurred_at=NOW - timedelta(days=days_ago), properties=props
    )


def test_sales_by_channel_period_currency_campaign(shop: Shop) -> None:
    from ecrm_analytics import set_rates
    from ecrm_analytics.sales import sales

    a, b = shop.customer("a"), shop.customer("b")
    _sale(shop, a, 40, "100", channel="web", campaign="spring")
    _sale(shop, a, 10, "50", channel="app")
    _sale(shop, b, 9, "20", channel="web")
    _sale(shop, b, 8, "0", channel="web")  # an order without revenue
    _sale(shop, b, 5, "20", kind="refund", channel="support")
    _sale(shop, b, 3, "1000", currency="JPY", channel="web")  # no rate yet
    _sale(shop, a, -3, "999", channel="web")  # future-dated: left out
    by_channel = {r["channel"]: r for r in sales(shop.crm, "channel")}
    assert by_channel["web"] == {
        "channel": "web",
        "revenue": 120.0,
        "refunds": 0.0,
        "net": 120.0,
        "orders": 4,
        "customers": 2,
        "aov": 30.0,
        "unconverted": 1,
    }
    assert by_channel["support"]["net"] == -20.0 and by_channel["support"]["aov"] is None
    set_rates(shop.crm, "EUR", {"JPY": 0.01})
    web = next(r for r in sales(shop.crm, "channel") if r["channel"] == "web")
    assert (web["revenue"], web["unconverted"]) == (130.0, 0)
    months = {(r["period"], r["currency"]): r["revenue"] for r in sales(shop.crm, ("period", "currency"))}
    assert months == {("2026-04", "EUR"): 100.0, ("2026-05", "EUR"): 70.0, ("2026-05", "JPY"): 10.0}
    weeks = {r["period"] for r in sales(shop.crm, "period", period_unit="week")}
    assert "2026-04-20" in weeks  # NOW - 40 days is Wednesday 2026-04-22: its week starts Monday the 20th
    assert {r["period"] for r in sales(shop.crm, "period", period_unit="quarter")} == {"2026-Q2"}
    camps = {r["campaign"]: r["orders"] for r in sales(shop.crm, "campaign")}
    assert camps == {"spring": 1, "(none)": 4}
    recent = sales(shop.crm, "channel", since=NOW - timedelta(days=20))
    assert sum(r["orders"] for r in recent) == 4


def test_sales_by_segment_and_empty(shop: Shop) -> None:
    from ecrm_analytics.sales import sales

    assert sales(shop.crm, "channel") == []
    a, b = shop.customer("a"), shop.customer("b")
    _sale(shop, a, 1, "10")
    _sale(shop, b, 1, "30")
    shop.crm.segments.create("big", "purchase.sum() > 20")
    shop.crm.segments.create("all-buyers", "purchase.count() >= 1")
    rows = {r["segment"]: (r["revenue"], r["customers"]) for r in sales(shop.crm, "segment")}
    assert rows == {"big": (30.0, 1), "all-buyers": (40.0, 2)}
    only = sales(shop.crm, "segment", segments=["big"])
    assert [r["segment"] for r in only] == ["big"]
    for bad in ({"by": "country"}, {"by": ()}, {"by": "channel,channel"}, {"period_unit": "decade"}, {"by": "a,b,c,d"}):
        with pytest.raises(ValidationError):
            sales(shop.crm, **bad)


def test_attribution_models(shop: Shop) -> None:
    from ecrm_analytics.attribution import DIRECT, attribution

    a, b, c = shop.customer("a"), shop.customer("b"), shop.customer("c")
    _touch(shop, a, 20, "email_open", "email", campaign="spring")
    _touch(shop, a, 10, "page_view", "web")
    _touch(shop, a, 2, "click", "social", utm_campaign="ig")
    _sale(shop, a, 1, "90")
    _touch(shop, b, 40, "email_open", "email", campaign="spring")  # outside the 30-day window
    _touch(shop, b, 3, "page_view", "web")
    _sale(shop, b, 2, "30")
    _sale(shop, c, 1, "12")  # no touch at all
    rows = {r["channel"]: r for r in attribution(shop.crm)}
    assert rows["email"]["first_touch"] == 90 and rows["email"]["last_touch"] == 0
    assert rows["social"]["last_touch"] == 90 and rows["social"]["first_touch"] == 0
    assert rows["web"]["first_touch"] == 30 and rows["web"]["last_touch"] == 30
    assert rows["web"]["linear"] == pytest.approx(30 + 30) and rows["email"]["linear"] == pytest.approx(30)
    assert rows[DIRECT]["first_touch_orders"] == rows[DIRECT]["last_touch_orders"] == 1
    for model in ("first_touch", "last_touch", "linear"):
        assert sum(r[model] for r in rows.values()) == pytest.approx(132)
    assert sum(r["linear_orders"] for r in rows.values()) == pytest.approx(3)
    wide = {r["channel"]: r for r in attribution(shop.crm, lookback_days=60)}
    assert wide["email"]["first_touch"] == 120
    camps = {r["campaign"]: r for r in attribution(shop.crm, by="campaign")}
    assert camps["spring"]["first_touch"] == 90 and camps["ig"]["last_touch"] == 90
    assert camps["(none)"]["first_touch"] == 30
    for bad in ({"by": "country"}, {"lookback_days": -1}, {"kinds": ()}):
        with pytest.raises(ValidationError):
            attribution(shop.crm, **bad)


def test_attribution_credits_the_campaign_that_sent_the_message(crm_factory) -> None:
    """The campaign of a touch about an ecrm message is the ecrm-campaigns campaign that sent it (its dedupe
    key), not the free-form metadata of a send."""
    pytest.importorskip("ecrm_campaigns")
    from ecrm_analytics import plugin
    from ecrm_analytics.attribution import attribution
    from ecrm_campaigns import campaigns
    from ecrm_campaigns import plugin as campaigns_plugin

    from ecrm_core.testing import CapturingChannel, FakeClock
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor

    from .conftest import NOW

    channel, clock = CapturingChannel(), FakeClock(NOW)
    crm = crm_factory(plugins=[plugin, campaigns_plugin, channel.plugin()], clock=clock)
    a, b = (crm.customers.create(email=f"{n}@example.com", consent={"capture": "granted"}).id for n in ("a", "b"))
    svc = campaigns(crm)
    svc.save({"key": "winback", "name": "Win back", "trigger": {"type": "api"},
              "steps": [{"id": "mail", "type": "send", "channel": "capture", "template": {"body": "hi"}}]})  # fmt: skip
    svc.start("winback")
    svc.trigger("winback", [a])
    runner = JobRunner(crm, jobs=["campaigns.*", "messages.*"])
    for _ in range(3):
        InProcessExecutor(runner).run(once=True)
    # b gets a message outside any campaign whose metadata merely says "campaign": not a campaign's message
    crm.messages.send("capture", b, {"body": "hi"}, metadata={"campaign": "winback"})
    crm.messages.dispatch()
    sent = {kw["customer_id"] for kw in _sent(crm)}
    assert sent == {a, b}
    clock.advance(hours=1)
    crm.interactions.track("purchase", customer_id=a, amount="25", currency="EUR")
    crm.interactions.track("purchase", customer_id=b, amount="40", currency="EUR")
    rows = {r["campaign"]: r for r in attribution(crm, by="campaign")}
    assert rows["winback"]["last_touch"] == 25 and rows["winback"]["last_touch_orders"] == 1
    assert rows["(none)"]["last_touch"] == 40


def _sent(crm) -> list[dict]:
    it = crm.db.tables["interactions"]
    import sqlalchemy as sa

    with crm.db.read() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(it.c.customer_id).where(it.c.kind == "message_sent"))]


def test_reports_through_the_catalogue(shop: Shop) -> None:
    from ecrm_analytics import report

    a = shop.customer()
    _touch(shop, a, 3, "email_open", "email", campaign="spring")
    _sale(shop, a, 2, "10")
    _sale(shop, a, 40, "30", channel="app")
    data = report(shop.crm, "sales", by="period,channel").to_dict()
    assert data["columns"][:2] == ["period", "channel"] and data["chart"]["kind"] == "line"
    assert data["summary"]["revenue"] == 40
    assert report(shop.crm, "sales").to_dict()["chart"]["kind"] == "bar"
    att = report(shop.crm, "attribution", by="campaign").to_dict()
    assert att["rows"][0][0] in ("spring", "(direct)") and att["chart"]["kind"] == "bar"
    empty = report(shop.crm, "sales", days="1").to_dict()
    assert empty["rows"] == [] and empty["chart"] is None
