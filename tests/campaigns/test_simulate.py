"""Simulation: the campaign on the real data and a fake clock, read-only, compared with a real run."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ecrm_core import CRM, ValidationError
from ecrm_core.testing import CapturingChannel, FakeClock

from .conftest import T0

pytest.importorskip("ecrm_campaigns")
from ecrm_campaigns import campaigns, plugin

WINBACK = {
    "key": "winback",
    "name": "Win back",
    "trigger": {"type": "segment_entered", "segment": "lapsed"},
    "offers": [{"code": "comeback", "budget": 2}],
    "window": {"start": "09:00", "end": "20:00"},
    "holdout": 25,
    "steps": [
        {
            "id": "offer",
            "type": "send",
            "channel": "capture",
            "template": {"subject": "s", "body": "b"},
            "offer": "comeback",
            "next": "pause",
        },
        {"id": "pause", "type": "wait", "duration": "2d", "next": "nudge"},
        {"id": "nudge", "type": "send", "channel": "capture", "template": {"subject": "n", "body": "n"}},
    ],
}


def build(crm_factory: Callable[..., CRM], clock: FakeClock) -> CRM:
    channel = CapturingChannel()
    crm = crm_factory(
        plugins=[plugin, channel.plugin()],
        clock=clock,
        channels={
            "capture": {
                "policy": {"frequency_caps": [(1, timedelta(days=3))], "quiet_start": "20:00", "quiet_end": "10:00"}
            }
        },
    )
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1 and purchase.count(7d) == 0")
    crm.offers.create("comeback", "Come back", status="active")
    zones = ["UTC", "America/Los_Angeles", "Asia/Seoul"]
    for k in range(1, 15):  # last purchase k days ago: enters "lapsed" on day 7 - k (or is a member already)
        consent = {} if k == 5 else {"capture": "granted"}
        c = crm.customers.create(email=f"c{k}@example.com", timezone=zones[k % 3], consent=consent)
        crm.interactions.track(
            "purchase", customer_id=c.id, amount="20.00", currency="EUR", occurred_at=T0 - timedelta(days=k)
        )
    campaigns(crm).save(WINBACK)
    campaigns(crm).start("winback")
    return crm


def snapshot(crm: CRM) -> dict[str, int]:
    with crm.db.read() as conn:
        return {n: conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0 for n, t in crm.db.tables.items()}


def real_run(crm: CRM, clock: FakeClock, days: int) -> None:
    """The worker every hour, the segment refresh once a day (as the simulation assumes)."""
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor

    runner = JobRunner(crm, jobs=["campaigns.steps"])
    for hour in range(days * 24):
        if hour and hour % 24 == 0:
            crm.segments.refresh()
        InProcessExecutor(runner).run(once=True)
        clock.advance(hours=1)


def test_a_simulation_predicts_the_real_run(crm_factory: Callable[..., CRM]) -> None:
    clock = FakeClock(T0)
    crm = build(crm_factory, clock)
    svc = campaigns(crm)
    before = snapshot(crm)
    sim = svc.simulate("winback", days=7)
    assert snapshot(crm) == before  # read-only: nothing written, nothing sent

    real_run(crm, clock, 7)

    e, m = crm.db.tables["campaign_enrollments"], crm.db.tables["messages"]
    with crm.db.read() as conn:
        entered = sorted((r.customer_id, r.entered_at, r.arm) for r in conn.execute(sa.select(e)))
        outbox = conn.execute(sa.select(m)).all()
    # who enters when, in which arm
    assert sorted(sim.entries) == entered and len(entered) >= 5
    # every message: the same decision, reason and time it would be handed to the channel
    predicted = sorted(
        (p.customer_id, p.step, p.decision, p.reason, p.due_at) for p in sim.messages if p.decision != "skip"
    )
    made = sorted(
        (
            r.customer_id,
            r.dedupe_key.split(".")[2],
            "queue" if r.status == "queued" else "block",
            r.reason,
            r.next_attempt_at,
        )
        for r in outbox
    )
    assert predicted == made
    reasons = {p.reason for p in sim.messages}
    assert {"frequency_cap", "no_consent", "offer_budget"} <= reasons  # the caps, consent and budget bite
    assert sim.quiet_hours() and sim.window_delays  # and quiet hours and the send window
    [offer] = sim.offers
    with crm.db.read() as conn:
        used = sum(1 for r in outbox if (r.meta or {}).get("offer") == "comeback" and r.status == "queued")
    assert offer.budget == 2 and offer.would_use == used == 2 and offer.remaining == 0
    assert offer.skipped.get("offer_budget", 0) >= 1 and offer.exhausted_at is not None
    # messages per day per channel, from the outbox the same way
    days = [0] * 7
    for r in outbox:
        if r.status == "queued":
            days[(r.next_attempt_at - T0) // timedelta(days=1)] += 1
    assert sim.messages_per_day() == {"capture": days}


def test_the_result_as_json_table_and_chart(crm_factory: Callable[..., CRM]) -> None:
    clock = FakeClock(T0)
    crm = build(crm_factory, clock)
    sim = campaigns(crm).simulate("winback", days=5)
    data = json.loads(json.dumps(sim.to_dict(details=True)))
    assert len(data["days"]) == 5 and data["entered_total"] == len(sim.entries)
    assert data["messages_per_day"]["capture"] == sim.messages_per_day()["capture"]
    assert data["offers"][0]["code"] == "comeback" and any("evaluated every 1d" in n for n in data["notes"])
    chart = sim.chart()
    assert chart.kind == "line" and [s.name for s in chart.series] == ["entered", "capture messages"]
    from ecrm_core.charts import render, to_rich

    assert render(chart).startswith(b"<?xml")
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(sim.table())
    console.print(to_rich(chart))
    text = console.export_text()
    assert "frequency_cap" in text and "quiet hours" in text and "comeback" in text


def test_explicit_entrants_mid_journey_customers_and_bad_input(crm_factory: Callable[..., CRM]) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    channel = CapturingChannel()
    crm = crm_factory(plugins=[plugin, channel.plugin()], clock=clock)
    svc = campaigns(crm)
    svc.save(
        {
            "key": "drip",
            "name": "Drip",
            "trigger": {"type": "api"},
            "steps": [
                {
                    "id": "one",
                    "type": "send",
                    "channel": "capture",
                    "template": {"subject": "1", "body": "1"},
                    "next": "w",
                },
                {"id": "w", "type": "wait", "duration": "3d", "next": "two"},
                {"id": "two", "type": "send", "channel": "capture", "template": {"subject": "2", "body": "2"}},
            ],
        }
    )
    svc.start("drip")
    ids = [crm.customers.create(email=f"d{i}@example.com", consent={"capture": "granted"}).id for i in range(4)]
    svc.trigger("drip", ids[:2])
    from ecrm_core.worker import JobRunner

    JobRunner(crm, jobs=["campaigns.steps"]).tick("campaigns.steps", "default")
    sim = svc.simulate("drip", days=5, customer_ids=ids)  # the first two are mid-journey: not again
    assert sorted(c for c, _w, _a in sim.entries) == ids[2:]
    steps = sorted((p.customer_id, p.step) for p in sim.messages)
    assert steps == sorted(
        [(ids[0], "two"), (ids[1], "two"), (ids[2], "one"), (ids[3], "one"), (ids[2], "two"), (ids[3], "two")]
    )
    assert sim.final == {"done": 4}
    assert any("mid-journey" in n for n in sim.notes)
    assert not svc.simulate("drip", days=2).entries  # an api trigger: nobody without customer_ids
    with pytest.raises(ValidationError, match="days"):
        svc.simulate("drip", days=0)
    with pytest.raises(ValidationError, match="every"):
        svc.simulate("drip", every="1m")
    with pytest.raises(ValidationError, match="segment evaluations; at most 2000"):
        svc.simulate("drip", days=366, every="5m")  # bounded work, whoever asks
    with pytest.raises(ValidationError, match=r"customer_ids\[0\]"):
        svc.simulate("drip", customer_ids=["x"])  # type: ignore[list-item]


def test_date_and_schedule_triggers_are_simulated(crm_factory: Callable[..., CRM]) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    channel = CapturingChannel()
    crm = crm_factory(plugins=[plugin, channel.plugin()], clock=clock)
    svc = campaigns(crm)
    seoul = crm.customers.create(
        email="s@example.com",
        timezone="Asia/Seoul",
        attributes={"birthday": "1990-03-04"},
        consent={"capture": "granted"},
    ).id
    crm.customers.create(email="n@example.com", attributes={"birthday": "1990-07-01"}, consent={"capture": "granted"})
    send: dict[str, Any] = {"id": "s", "type": "send", "channel": "capture", "template": {"subject": "s", "body": "s"}}
    svc.save(
        {
            "key": "bday",
            "name": "B",
            "trigger": {"type": "date", "attribute": "attributes.birthday", "time": "09:00"},
            "steps": [send],
        }
    )
    sim = svc.simulate("bday", days=5)
    # 09:00 on 4 March in Seoul is 00:00 UTC
    assert [(c, w) for c, w, _a in sim.entries] == [(seoul, datetime(2026, 3, 4, 0, 0, tzinfo=UTC))]
    svc.save(
        {
            "key": "weekly",
            "name": "W",
            "trigger": {"type": "schedule", "at": "2026-03-03T08:00:00+00:00", "every": "2d"},
            "steps": [send],
        }
    )
    sim = svc.simulate("weekly", days=6)
    assert sorted({w for _c, w, _a in sim.entries}) == [datetime(2026, 3, d, 8, 0, tzinfo=UTC) for d in (3,)]
    assert len(sim.entries) == 2  # everyone once: re-entry "never"
