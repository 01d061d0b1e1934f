"""Segments and rules on a real PostgreSQL server.

The agreement property tests run here too: the compiled SQL (PostgreSQL's
JSON functions, numeric casts, timestamptz) must give the same answers as
the in-memory evaluator.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
import test_rules_agreement as agreement
from hypothesis import given, settings
from hypothesis import strategies as st

from ecrm_core import Cancelled, ConditionType, hookimpl
from ecrm_core.testing import EventRecorder, registered

pytestmark = pytest.mark.postgres

NOW = agreement.NOW


@pytest.fixture
def pg_agreement(pg_crm_factory):
    clock = {"now": NOW}
    crm = pg_crm_factory(plugins=[agreement.Attrs()], clock=lambda: clock["now"], live_segments=False)
    return crm, clock


@settings(agreement._SETTINGS, max_examples=8)
@given(
    people=st.lists(agreement.customer(), min_size=1, max_size=6),
    events=st.lists(agreement.event_leaf(), min_size=30, max_size=40),
)
def test_every_condition_agrees_on_postgres(pg_agreement, people, events):
    crm, clock = pg_agreement
    ws, ids = agreement.load(crm, people, clock, direct=True)
    ctxs = agreement.contexts(ws, ids)
    for tree in [*agreement.FIELD_CONDITIONS, *events]:
        agreement.check_agreement(ws, ctxs, tree)
        agreement.check_agreement(ws, ctxs, {"not": tree})


@settings(agreement._SETTINGS, max_examples=25)
@given(
    people=st.lists(agreement.customer(), min_size=1, max_size=6),
    rules=st.lists(agreement.trees, min_size=5, max_size=10),
)
def test_sql_and_memory_agree_on_postgres(pg_agreement, people, rules):
    crm, clock = pg_agreement
    ws, ids = agreement.load(crm, people, clock, direct=True)
    ctxs = agreement.contexts(ws, ids)
    for tree in rules:
        agreement.check_agreement(ws, ctxs, tree)


def test_segments_live_refresh_and_events_on_postgres(pg_agreement):
    crm, clock = pg_agreement
    rec = EventRecorder()
    ada = crm.customers.create(email="ada@example.com", attributes={"country": "KR"})
    bob = crm.customers.create(email="bob@example.com", attributes={"country": "JP"})
    rows = [
        {
            "kind": "purchase",
            "customer_id": who.id,
            "amount": "60",
            "currency": "EUR",
            "channel": "web",
            "properties": {},
            "occurred_at": NOW - timedelta(days=d),
        }
        for who in (ada, bob)
        for d in (1, 5, 9)
    ]
    agreement.insert_interactions(crm, rows)
    with registered(crm, rec):
        crm.segments.create("vip", 'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country == "KR"')
        crm.segments.create("vip-or-jp", 'segment("vip") or country == "JP"')
        crm.segments.create("beta", static=True, customer_ids=[bob.id])
        assert crm.segments.of(ada.id) == ["vip", "vip-or-jp"] and crm.segments.of(bob.id) == ["beta", "vip-or-jp"]
        clock["now"] = NOW + timedelta(days=95)
        report = crm.segments.refresh()
    assert report.exited == 2 and report.stage_changes == 2 and crm.segments.of(ada.id) == []
    assert [(h, kw["segment"].slug, kw["customer_ids"]) for h, kw in rec.calls if h == "ecrm_segment_exited"] == [
        ("ecrm_segment_exited", "vip", [ada.id]),
        ("ecrm_segment_exited", "vip-or-jp", [ada.id]),
    ]
    # lifecycle stages by rules, on PostgreSQL too (moved by the full refresh above)
    assert crm.lifecycle.refresh() == 0
    assert {crm.customers.get(c.id).lifecycle_stage for c in (ada, bob)} == {"at_risk"}
    p = crm.segments.preview("purchase.count() >= 1", sample=1)
    assert p.count == 2 and p.plan and "GROUP BY" not in p.sql


def test_concurrent_refreshes_report_each_change_once_on_postgres(pg_agreement):
    """Two refreshes racing on READ COMMITTED: every entry is reported exactly once."""
    crm, _ = pg_agreement
    ids = [crm.customers.create(email=f"c{i}@example.com").id for i in range(200)]
    crm.segments.create("all", "created_at exists", refresh=False)
    entered: list[int] = []
    lock = threading.Lock()

    class Count:
        @hookimpl
        def ecrm_segment_entered(self, customer_ids):
            with lock:
                entered.extend(customer_ids)

    with registered(crm, Count()):
        threads = [threading.Thread(target=crm.segments.refresh, args=("all",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(entered) == ids and crm.segments.get("all").member_count == 200


def test_a_long_preview_is_cancelled_on_postgres(pg_crm_factory):
    def slow(args, ctx):
        return sa.literal_column("(SELECT pg_sleep(5)) IS NULL")

    class Slow:
        @hookimpl
        def ecrm_register_condition_types(self):
            return [ConditionType(name="slow", compile=slow, evaluate=lambda args, ctx: True)]

    crm = pg_crm_factory(plugins=[Slow()])
    crm.customers.create(email="a@example.com")
    with pytest.raises(Cancelled):
        crm.segments.preview("slow()", timeout=0.3)
    assert crm.segments.preview("created_at exists").count == 1  # the connection is fine afterwards


@settings(agreement._SETTINGS, max_examples=12)
@given(
    people=st.lists(agreement.customer(), min_size=1, max_size=6),
    rules=st.lists(st.one_of(agreement.wide_trees, agreement.deep_trees), min_size=3, max_size=6),
)
def test_wide_and_deep_rules_agree_on_postgres(pg_agreement, people, rules):
    from ecrm_core.errors import ValidationError

    crm, clock = pg_agreement
    ws, ids = agreement.load(crm, people, clock, direct=True)
    ctxs = agreement.contexts(ws, ids)
    for tree in rules:
        try:
            ws.segments.compile(tree)
        except ValidationError as exc:
            assert "limit '" in str(exc), exc
            continue
        agreement.check_agreement(ws, ctxs, tree)
