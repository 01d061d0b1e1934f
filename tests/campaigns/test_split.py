"""A traffic split at one step (a ``split`` branch): deterministic, independent of the campaign's
arms, the same in the simulation, compared per step in the report."""

from __future__ import annotations

from typing import Any

import pytest
from ecrm_campaigns import CampaignInvalid, assign

from .conftest import Shop


def send(sid: str) -> dict[str, Any]:
    return {"id": sid, "type": "send", "channel": "capture", "template": {"subject": sid, "body": sid}}


SPLIT = {
    "key": "subject_test",
    "name": "Subject test",
    "trigger": {"type": "api"},
    "holdout": 10,
    "goal": {"kind": "purchase", "within": "7d"},
    "steps": [
        {
            "id": "ab",
            "type": "branch",
            "cases": [{"split": 30, "next": "short"}, {"split": 70, "next": "long"}],
        },
        send("short"),
        send("long"),
    ],
}


def test_a_step_split_sends_each_customer_one_side_deterministically(shop: Shop) -> None:
    svc = shop.campaigns
    svc.save(SPLIT)
    svc.start("subject_test")
    ids = shop.customers(200)
    before = svc.simulate("subject_test", days=1, customer_ids=ids)
    svc.trigger("subject_test", ids)
    shop.run()
    m = shop.crm.db.tables["messages"]
    import sqlalchemy as sa

    with shop.crm.db.read() as conn:
        got = {r.customer_id: r.dedupe_key.split(".")[2] for r in conn.execute(sa.select(m))}
    treated = [c for c in ids if assign.arm("subject_test", c, 10, ()) != "holdout"]
    assert sorted(got) == sorted(treated)  # each treated customer exactly one message, the holdout none
    expected = {c: ("short" if assign.split("subject_test", "ab", c, [30, 70]) == 0 else "long") for c in treated}
    assert got == expected
    assert 0.15 < sum(1 for v in got.values() if v == "short") / len(got) < 0.45
    assert {(p.customer_id, p.step) for p in before.messages} == set(got.items())  # the simulation agreed
    steps = {s.step: s for s in svc.evaluate("subject_test").steps}
    assert steps["short"].sent + steps["long"].sent == len(treated)


@pytest.mark.parametrize(
    ("cases", "problem"),
    [
        ([{"split": 60, "next": "short"}, {"split": 50, "next": "long"}], "more than 100"),
        ([{"split": 60, "next": "short"}, {"rule": "attributes.x == 1", "next": "long"}], "mixes split"),
    ],
)
def test_bad_splits_are_refused(shop: Shop, cases: list[dict[str, Any]], problem: str) -> None:
    bad = {**SPLIT, "steps": [{"id": "ab", "type": "branch", "cases": cases}, send("short"), send("long")]}
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save(bad)
    assert err.value.field == "steps.ab.cases" and problem in str(err.value)


def test_a_split_round_trips_and_the_rest_goes_to_otherwise(shop: Shop) -> None:
    from ecrm_campaigns import Campaign

    c = Campaign.from_dict(
        {
            **SPLIT,
            "steps": [
                {"id": "ab", "type": "branch", "cases": [{"split": 25, "next": "short"}], "otherwise": "long"},
                send("short"),
                send("long"),
            ],
        }
    )
    assert Campaign.from_yaml(c.to_yaml()) == c and "split: 25" in c.to_yaml()
    assert assign.split("k", "ab", 7, [25]) in (0, None)
