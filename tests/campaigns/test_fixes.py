"""Regressions: bugs found in the first version of the campaigns plugin, each with the case that showed it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecrm_core.testing import make_crm

from .conftest import Shop


def test_an_email_template_can_be_saved_in_a_campaign(tmp_path: Path) -> None:
    """The template check rendered with a sample customer whose id was 0; the e-mail channel signs
    the preference link with the customer id and refuses ids below 1, so no e-mail step could be saved."""
    from ecrm_campaigns import campaigns, plugin
    from ecrm_email import plugin as email_plugin

    crm = make_crm(
        tmp_path / "shop.db",
        plugins=[plugin, email_plugin],
        secret="fixes-secret-0123456789abcdef",
        channels={"email": {"from": "Shop <news@shop.example>", "base_url": "http://127.0.0.1:9"}},
    )
    try:
        svc = campaigns(crm)
        info = svc.save(
            {
                "key": "hello",
                "name": "Hello",
                "trigger": {"type": "api"},
                "steps": [
                    {
                        "id": "mail",
                        "type": "send",
                        "channel": "email",
                        "template": {
                            "subject": "Hi {{ customer.name }}",
                            "text": "Prefs: {{ preferences_url }} / {{ unsubscribe_url }}",
                        },
                    }
                ],
            }
        )
        assert info.version == 1
        # a template that really is broken is still refused, naming the step
        from ecrm_campaigns import CampaignInvalid

        with pytest.raises(CampaignInvalid) as err:
            svc.save(
                {
                    "key": "broken",
                    "name": "Broken",
                    "trigger": {"type": "api"},
                    "steps": [
                        {
                            "id": "mail",
                            "type": "send",
                            "channel": "email",
                            "template": {"subject": "{% if %}", "text": "x"},
                        }
                    ],
                }
            )
        assert err.value.field == "steps.mail.template"
    finally:
        crm.close()


def test_an_interaction_filter_holds_on_the_bulk_path(shop: Shop) -> None:
    """``track_many`` hands the listeners the properties as stored JSON text; the trigger's ``where``
    filter read them as a mapping and never matched."""
    shop.campaigns.save(
        {
            "key": "shoes",
            "name": "Shoes",
            "trigger": {"type": "interaction", "kind": "purchase", "where": 'category == "shoes"'},
            "steps": [{"id": "s", "type": "send", "channel": "capture", "template": {"subject": "s", "body": "s"}}],
        }
    )
    shop.campaigns.start("shoes")
    a, b = shop.customers(2)
    report = shop.crm.interactions.track_many(
        [
            {
                "kind": "purchase",
                "customer_id": a,
                "amount": "30.00",
                "currency": "EUR",
                "properties": {"category": "shoes"},
            },
            {
                "kind": "purchase",
                "customer_id": b,
                "amount": "30.00",
                "currency": "EUR",
                "properties": {"category": "hats"},
            },
        ]
    )
    assert report.stored == 2
    assert shop.campaigns.enrollment("shoes", a) is not None
    assert shop.campaigns.enrollment("shoes", b) is None


def _goal_campaign(shop: Shop) -> None:
    shop.campaigns.save(
        {
            "key": "g",
            "name": "G",
            "trigger": {"type": "api"},
            "goal": {"kind": "purchase", "within": "30d"},
            "steps": [
                {"id": "w", "type": "wait", "duration": "1d", "next": "s"},
                {"id": "s", "type": "send", "channel": "capture", "template": {"subject": "s", "body": "s"}},
            ],
        }
    )
    shop.campaigns.start("g")


def test_a_future_stamped_purchase_is_not_a_conversion_yet(shop: Shop) -> None:
    """The goal check and the report counted interactions stamped in the future (an order scheduled
    for next week, a clock skew) as conversions that had already happened."""
    _goal_campaign(shop)
    [cid] = shop.customers(1)
    shop.campaigns.trigger("g", [cid])
    shop.run()
    shop.crm.interactions.track(
        "purchase", customer_id=cid, amount="10.00", currency="EUR", occurred_at=shop.clock() + timedelta(days=5)
    )
    shop.clock.advance(days=1, seconds=1)
    shop.run()
    row: Any = shop.campaigns.enrollment("g", cid)
    assert row["status"] == "done" and row["reason"] != "goal reached"  # sent: the purchase is in the future
    assert len(shop.channel.sent) == 1
    [arm] = shop.campaigns.evaluate("g").arms
    assert arm.converted == 0
    shop.clock.advance(days=5)  # now it has happened, inside the window
    [arm] = shop.campaigns.evaluate("g").arms
    assert arm.converted == 1


def test_a_future_stamped_event_does_not_end_a_wait(shop: Shop) -> None:
    shop.campaigns.save(
        {
            "key": "ev",
            "name": "Ev",
            "trigger": {"type": "api"},
            "steps": [
                {"id": "w", "type": "wait", "event": "page_view", "timeout": "3d", "on_event": "yes", "next": "no"},
                {"id": "yes", "type": "send", "channel": "capture", "template": {"subject": "yes", "body": "y"}},
                {"id": "no", "type": "send", "channel": "capture", "template": {"subject": "no", "body": "n"}},
            ],
        }
    )
    shop.campaigns.start("ev")
    [cid] = shop.customers(1)
    shop.campaigns.trigger("ev", [cid])
    shop.run()
    shop.crm.interactions.track("page_view", customer_id=cid, occurred_at=shop.clock() + timedelta(days=10))
    shop.run()
    shop.clock.advance(days=3, seconds=1)
    shop.run()
    m = shop.crm.db.tables["messages"]
    with shop.crm.db.read() as conn:
        keys = list(conn.scalars(sa.select(m.c.dedupe_key)))
    assert [k.split(".")[2] for k in keys] == ["no"]


def test_an_update_step_adds_to_or_removes_from_a_static_segment(shop: Shop) -> None:
    from ecrm_campaigns import CampaignInvalid

    crm = shop.crm
    crm.segments.create("tried_winback", static=True)
    crm.segments.create("newsletter", static=True)
    crm.segments.create("dynamic", rule="attributes.x == 1")
    steps = [
        {"id": "tag", "type": "update", "segment": "tried_winback", "next": "drop"},
        {"id": "drop", "type": "update", "segment": "newsletter", "remove": True},
    ]
    shop.campaigns.save({"key": "seg", "name": "Seg", "trigger": {"type": "api"}, "steps": steps})
    shop.campaigns.start("seg")
    ids = shop.customers(4)
    crm.segments.add("newsletter", ids)
    shop.campaigns.trigger("seg", ids[:3])
    shop.run()
    assert sorted(m.customer_id for m in crm.segments.members("tried_winback")) == sorted(ids[:3])
    assert [m.customer_id for m in crm.segments.members("newsletter")] == [ids[3]]
    # refused at save time: a dynamic segment, a missing one, both kinds of update, a value with a segment
    bad: list[dict[str, Any]] = [
        {"id": "u", "type": "update", "segment": "dynamic"},
        {"id": "u", "type": "update", "segment": "nope"},
        {"id": "u", "type": "update", "segment": "newsletter", "attribute": "x"},
        {"id": "u", "type": "update", "segment": "newsletter", "value": 1},
    ]
    from ecrm_core import ValidationError

    for step in bad:
        with pytest.raises((CampaignInvalid, ValidationError)) as err:
            shop.campaigns.save({"key": "bad", "name": "Bad", "trigger": {"type": "api"}, "steps": [step]})
        assert "steps" in str(err.value.field), err.value
    # the YAML round-trips
    from ecrm_campaigns import Campaign

    c = shop.campaigns.definition("seg")
    assert Campaign.from_yaml(c.to_yaml()) == c and "remove: true" in c.to_yaml()
