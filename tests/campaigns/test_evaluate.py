"""Evaluation: counts by arm built from the enrollments, the outbox and the goal's interactions;
the uplift's interval checked against an independent Newcombe (Wilson score) computation."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from .conftest import Shop

pytest.importorskip("statsmodels", reason="pip install 'ecrm-campaigns[evaluate]'")

from ecrm_campaigns.evaluate import uplift


def wilson(c: int, n: int, z: float) -> tuple[float, float]:
    p = c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def newcombe(c1: int, n1: int, c2: int, n2: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p1, p2 = c1 / n1, c2 / n2
    (l1, u1), (l2, u2) = wilson(c1, n1, z), wilson(c2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


@pytest.mark.parametrize(
    "counts", [(30, 200, 12, 190), (5, 50, 5, 50), (0, 40, 3, 45), (180, 1000, 150, 1000), (0, 10, 0, 1), (4, 4, 2, 2)]
)
def test_uplift_interval_is_newcombes(counts: tuple[int, int, int, int]) -> None:
    c1, n1, c2, n2 = counts
    u = uplift("b", (c1, n1), (c2, n2))
    low, high = newcombe(c1, n1, c2, n2)
    assert u.points == pytest.approx((c1 / n1 - c2 / n2) * 100)
    assert (u.low, u.high) == (pytest.approx(low * 100, abs=1e-6), pytest.approx(high * 100, abs=1e-6))
    assert u.significant == (low > 0 or high < 0)
    assert ("not yet significant" in u.sentence()) != u.significant
    assert 0 <= u.p_value <= 1


def test_report_by_arm_with_attribution_window(shop: Shop) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "s", "type": "send", "channel": "capture", "template": {"subject": "s", "body": "s"}}
    ]
    shop.campaigns.save(
        {
            "key": "ev",
            "name": "Ev",
            "trigger": {"type": "api"},
            "holdout": 30,
            "variants": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}],
            "goal": {"kind": "purchase", "where": "amount >= 10", "within": "7d", "exit": False},
            "steps": steps,
        }
    )
    shop.campaigns.start("ev")
    ids = shop.customers(60)
    shop.campaigns.trigger("ev", ids)
    shop.run()
    arms = {r["customer_id"]: r["arm"] for r in (shop.campaigns.enrollment("ev", c) for c in ids) if r}
    expected: dict[str, dict[str, Any]] = {}
    for n, cid in enumerate(ids):
        arm = arms[cid]
        e = expected.setdefault(arm, {"entered": 0, "converted": 0, "revenue": Decimal(0)})
        e["entered"] += 1
        kind = n % 4
        if kind == 0:  # converts inside the window
            shop.crm.interactions.track(
                "purchase",
                customer_id=cid,
                amount="25.00",
                currency="EUR",
                occurred_at=shop.clock() + timedelta(days=2),
            )
            e["converted"] += 1
            e["revenue"] += Decimal("25.00")
        elif kind == 1:  # too small: the goal's filter says no
            shop.crm.interactions.track(
                "purchase", customer_id=cid, amount="5.00", currency="EUR", occurred_at=shop.clock() + timedelta(days=1)
            )
        elif kind == 2:  # after the attribution window
            shop.crm.interactions.track(
                "purchase",
                customer_id=cid,
                amount="50.00",
                currency="EUR",
                occurred_at=shop.clock() + timedelta(days=8),
            )
    assert all(a.converted == 0 for a in shop.campaigns.evaluate("ev").arms)  # stamped in the future: not yet
    shop.clock.advance(days=9)
    ev = shop.campaigns.evaluate("ev")
    got = {a.name: a for a in ev.arms}
    assert set(got) == {"holdout", "a", "b"}
    for name, e in expected.items():
        assert (got[name].entered, got[name].converted, got[name].revenue) == (
            e["entered"],
            e["converted"],
            e["revenue"],
        )
        assert got[name].messaged == (0 if name == "holdout" else e["entered"])
    assert [u.arm for u in ev.uplifts] == ["a", "b"]
    h = got["holdout"]
    for u in ev.uplifts:
        a = got[u.arm]
        low, high = newcombe(a.converted, a.entered, h.converted, h.entered)
        assert u.low == pytest.approx(low * 100, abs=1e-6) and u.high == pytest.approx(high * 100, abs=1e-6)
    data = ev.to_dict()
    assert data["uplifts"][0]["summary"].startswith("a ")


def test_no_holdout_is_said(shop: Shop) -> None:
    shop.campaigns.save(
        {
            "key": "nh",
            "name": "Nh",
            "trigger": {"type": "api"},
            "goal": {"kind": "purchase"},
            "steps": [{"id": "x", "type": "exit"}],
        }
    )
    ev = shop.campaigns.evaluate("nh")
    assert ev.uplifts == () and any("no holdout" in n for n in ev.notes)


def test_the_funnel_counts_what_the_channel_reported_per_arm_and_step(crm_factory: Any) -> None:
    """Delivered, opened, clicked, bounced, unsubscribed and complained come from the pipeline's
    feedback on the campaign's own messages, per arm and per send step; charts render."""
    import sqlalchemy as sa
    from ecrm_campaigns import campaigns, plugin

    from ecrm_core.channels import MessageEvent
    from ecrm_core.testing import FakeClock
    from ecrm_core.testing.channels import MemoryChannel

    from .conftest import T0

    chan = MemoryChannel(name="capture", capabilities=("templates", "receipts", "links", "html"))
    crm = crm_factory(plugins=[plugin, chan.plugin()], clock=FakeClock(T0), secret="s" * 32)
    svc = campaigns(crm)
    send = {"type": "send", "channel": "capture", "template": {"subject": "s", "body": "b"}}
    svc.save(
        {
            "key": "fun",
            "name": "Funnel",
            "trigger": {"type": "api"},
            "holdout": 20,
            "goal": {"kind": "purchase", "within": "7d"},
            "steps": [{"id": "one", **send, "next": "two"}, {"id": "two", **send}],
        }
    )
    svc.start("fun")
    ids = [crm.customers.create(email=f"f{i}@x.org", consent={"capture": "granted"}).id for i in range(30)]
    svc.trigger("fun", ids)
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor

    runner = JobRunner(crm, jobs=["campaigns.*", "messages.*"])
    for _ in range(3):
        InProcessExecutor(runner).run(once=True)
    m = crm.db.tables["messages"]
    with crm.db.read() as conn:
        msgs = conn.execute(sa.select(m.c.uid, m.c.customer_id, m.c.dedupe_key, m.c.address, m.c.status)).all()
    assert msgs and {r.status for r in msgs} == {"sent"}
    first = sorted((r for r in msgs if r.dedupe_key.split(".")[2] == "one"), key=lambda r: r.customer_id)
    kinds = ["delivered", "opened", "clicked", "bounced", "unsubscribed", "complained"]
    events = []
    for n, r in enumerate(first[:12]):
        kind = kinds[n % 6]
        extra: dict[str, Any] = {"url": "https://shop.example/x"} if kind == "clicked" else {}
        if kind in ("bounced", "complained"):
            extra["address"] = r.address
        if kind == "unsubscribed":
            extra["purpose"] = "marketing"
        events.append(MessageEvent(type=kind, channel="capture", message_id=r.uid, key=f"e{n}", **extra))
    report = crm.messages.apply(events)
    assert len(report.applied) == 12 and not report.ignored, report
    crm.interactions.track("purchase", customer_id=first[0].customer_id, amount="12.00", currency="EUR")
    ev = svc.evaluate("fun")
    [main] = [a for a in ev.arms if a.name == "main"]
    assert (main.sent, main.delivered, main.opened, main.clicked) == (len(first), 2, 2, 2)
    assert (main.bounced, main.unsubscribed, main.complained, main.converted) == (2, 2, 2, 1)
    by_step = {s.step: s for s in ev.steps}
    assert by_step["one"].delivered == 2 and by_step["two"].delivered == 0
    assert by_step["one"].converted == 1 and by_step["one"].revenue_per_recipient > 0
    assert by_step["two"].reached == len(first) and by_step["one"].reached == len(first)
    assert ev.notes == () or all("does not report" not in n for n in ev.notes)
    data = ev.to_dict()
    assert data["arms"][1]["clicked"] == 2 and data["steps"][0]["step"] == "one"
    from ecrm_core.charts import render

    assert render(ev.uplift_chart()).startswith(b"<?xml") and render(ev.funnel_chart(), "png").startswith(b"\x89PNG")
    assert list(ev.funnel_chart().categories) == ["messaged", "sent", "delivered", "opened", "clicked", "converted"]
