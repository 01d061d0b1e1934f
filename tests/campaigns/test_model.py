"""Campaigns as data: the YAML form round-trips, and bad campaigns are refused naming the step."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ecrm_campaigns import Campaign
from ecrm_campaigns.validate import CampaignInvalid

from ecrm_core.errors import Conflict, ValidationError

from .conftest import Shop

FIXTURES = Path(__file__).parent.parent / "fixtures" / "campaigns"
INVALID = yaml.safe_load((FIXTURES / "invalid.yaml").read_text())
MALFORMED = yaml.safe_load((FIXTURES / "malformed.yaml").read_text())

BASE: dict[str, Any] = {
    "key": "base",
    "name": "Base",
    "trigger": {"type": "api"},
    "offers": ["deal"],
    "steps": [
        {
            "id": "hello",
            "type": "send",
            "channel": "capture",
            "template": {"subject": "Hi", "body": "x"},
            "offer": "deal",
        },
    ],
}

# Canonical text: what dump() writes; load() then dump() gives it back byte for byte.
FULL = """\
key: spring
name: Spring sale
description: Bring lapsed buyers back.
audience:
  segment: lapsed
  rule: consent(capture) and purchase.count(365d) >= 1
trigger:
  type: segment_entered
  segment: lapsed
offers:
- deal
- code: gift
  limit: 1
reentry:
  policy: cooldown
  cooldown: 30d
window:
  start: 09:00
  end: '20:00'
  days:
  - mon
  - tue
  - wed
  - thu
  - fri
goal:
  kind: purchase
  where: amount >= 20
  within: 14d
holdout: 10
variants:
- name: plain
  percent: 50
- name: gift
  percent: 50
steps:
- id: hello
  type: send
  channel: capture
  template:
    subject: Hello {{ customer.name }}
    body: We miss you
  offer: deal
  next: split
- id: split
  type: branch
  cases:
  - variant: gift
    next: gift
  otherwise: wait_buy
- id: gift
  type: send
  channel: capture
  template:
    subject: A gift
    body: For you
  offer: gift
  purpose: marketing
  next: wait_buy
- id: wait_buy
  type: wait
  event: purchase
  where: amount > 0
  timeout: 3d
  on_event: thanks
  next: nudge
- id: nudge
  type: branch
  cases:
  - engaged: hello
    next: later
  - rule: purchase.count(30d) >= 1
    next: thanks
  otherwise: tag
- id: later
  type: wait
  until: 09:00
  next: tag
- id: tag
  type: update
  attribute: winback
  value: tried
  next: done
- id: thanks
  type: send
  channel: capture
  template:
    subject: Thanks
    body: Thank you
- id: done
  type: exit
"""


def _setup(shop: Shop) -> None:
    crm = shop.crm
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1")
    crm.offers.create("deal", "10 % off", status="active")
    crm.offers.create("gift", "A gift", status="active")
    crm.offers.create("old_deal", "Gone", status="active", valid_until=shop.clock() - timedelta(days=1))


def test_yaml_round_trips_exactly(shop: Shop) -> None:
    c = Campaign.from_yaml(FULL)
    assert c.to_yaml() == FULL
    assert Campaign.from_dict(c.to_dict()) == c
    assert Campaign.from_yaml(c.to_yaml()) == c
    _setup(shop)
    info = shop.campaigns.save(FULL)
    assert shop.campaigns.export("spring") == FULL
    assert info.definition == c


def test_every_part_survives_the_round_trip() -> None:
    c = Campaign.from_yaml(FULL)
    assert c.reentry.cooldown == "30d" and c.window is not None and c.window.days[-1] == "fri"
    assert [v.name for v in c.variants] == ["plain", "gift"] and c.holdout == 10
    assert c.step("wait_buy").on_event == "thanks" and c.step("nudge").cases[0].engaged == "hello"
    assert c.offers[1].limit == 1 and c.goal is not None and c.goal.within == "14d"


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_bad_campaigns_are_refused_naming_the_step(shop: Shop, case: dict[str, Any]) -> None:
    _setup(shop)
    data = {**BASE, **case["patch"]}
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save(data)
    fields = {p.field: str(p) for p in err.value.problems}
    assert case["field"] in fields, f"{case['field']} not in {list(fields)}"
    assert case["says"] in fields[case["field"]]
    assert shop.campaigns.list() == []  # nothing stored


@pytest.mark.parametrize("case", MALFORMED, ids=[c["name"] for c in MALFORMED])
def test_malformed_texts_are_refused_with_the_path(case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        Campaign.from_yaml(case["text"])
    assert err.value.field == case["field"], str(err.value)


def test_base_campaign_is_valid(shop: Shop) -> None:
    _setup(shop)
    assert shop.campaigns.save(BASE).version == 1


def test_all_problems_are_listed(shop: Shop) -> None:
    _setup(shop)
    bad = {**BASE, "holdout": 100, "steps": [{"id": "w", "type": "wait", "duration": "-1d", "next": "nowhere"}]}
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save(bad)
    assert {p.field for p in err.value.problems} >= {"steps.w.next", "steps.w.duration", "holdout"}


def test_editing_makes_a_new_version_and_old_versions_stay(shop: Shop) -> None:
    _setup(shop)
    svc = shop.campaigns
    assert svc.save(FULL).version == 1
    assert svc.save(FULL).version == 1  # unchanged: no new version
    edited = FULL.replace("We miss you", "Come back")
    info = svc.save(edited, actor="ana")
    assert info.version == 2
    assert [v.version for v in svc.versions("spring")] == [1, 2]
    assert svc.export("spring", 1) == FULL and svc.export("spring") == edited
    svc.start("spring")
    svc.stop("spring")
    with pytest.raises(Conflict):
        svc.save(FULL)


def test_a_deleted_segment_is_reported_on_the_next_save(shop: Shop) -> None:
    _setup(shop)
    shop.campaigns.save(FULL)
    shop.crm.segments.delete("lapsed")
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.validate(FULL)
    assert {"trigger.segment", "audience.segment"} <= {p.field for p in err.value.problems}
