"""CRM(live_segments="background"): segments and stages follow writes from a worker thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from ecrm_core import ValidationError, hookimpl
from ecrm_core.testing import EventRecorder

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def buy(crm, cid, days_ago=1):
    return crm.interactions.track(
        "purchase", customer_id=cid, amount="50", currency="EUR", occurred_at=NOW - timedelta(days=days_ago)
    )


@pytest.fixture
def bg(crm_factory):
    events = EventRecorder()
    crm = crm_factory(plugins=[events], clock=lambda: NOW, live_segments="background")
    crm.events = events
    return crm


def test_changes_appear_after_flush_and_hooks_fire_once(bg):
    assert bg.segments.live == "background"
    bg.segments.create("buyers", "purchase.count() >= 1")
    ids = [bg.customers.create(email=f"c{i}@example.com").id for i in range(5)]
    for cid in ids:
        buy(bg, cid)
    buy(bg, ids[0])  # a second purchase changes nothing: no second event
    assert bg.segments.flush(timeout=10)
    assert sorted(m.customer_id for m in bg.segments.members("buyers")) == ids
    assert {bg.customers.get(cid).lifecycle_stage for cid in ids} == {"new"}
    entered = [cid for kw in bg.events.of("ecrm_segment_entered") for cid in kw["customer_ids"]]
    assert sorted(entered) == ids
    moved = [ch.customer_id for kw in bg.events.of("ecrm_lifecycle_changed") for ch in kw["changes"]]
    assert sorted(set(moved)) == ids
    assert bg.segments.flush(timeout=10)  # nothing queued: returns at once


def test_many_commits_are_refreshed_together(bg, monkeypatch):
    from ecrm_core.services.segments import Segments

    bg.segments.create("buyers", "purchase.count() >= 1")
    cids = [bg.customers.create(email=f"x{i}@example.com").id for i in range(20)]
    assert bg.segments.flush(timeout=10)
    calls = []
    original = Segments.refresh

    def counting(self, *a, **kw):
        calls.append(kw.get("customer_ids"))
        return original(self, *a, **kw)

    monkeypatch.setattr(Segments, "refresh", counting)
    for c in cids:
        buy(bg, c)  # 20 commits
    assert bg.segments.flush(timeout=10)
    assert bg.segments.count("buyers") == 20
    assert sum(len(c) for c in calls) == 20 and len(calls) < 20


def test_close_drains_the_queue(crm_factory, tmp_path):
    crm = crm_factory(clock=lambda: NOW, live_segments="background")
    crm.segments.create("buyers", "purchase.count() >= 1")
    cid = crm.customers.create(email="ada@example.com").id
    buy(crm, cid)
    crm.close()
    from ecrm_core import CRM

    again = CRM(crm.db.engine.url.render_as_string(), load_entrypoints=False)
    try:
        assert again.segments.is_member("buyers", cid)
        assert again.customers.get(cid).lifecycle_stage == "new"
    finally:
        again.close()


def test_refresh_failures_are_logged_and_recorded_not_raised(bg, monkeypatch):
    from ecrm_core.services.segments import Segments

    cid = bg.customers.create(email="ada@example.com").id
    assert bg.segments.flush(timeout=10)

    def boom(self, *a, **kw):
        raise RuntimeError("refresh broke")

    monkeypatch.setattr(Segments, "refresh", boom)
    buy(bg, cid)  # the write itself succeeds
    assert bg.segments.flush(timeout=10)
    failure = bg.plugins.failures[-1]
    assert failure.plugin == "core.segments" and "refresh broke" in failure.error
    monkeypatch.undo()
    buy(bg, cid, days_ago=2)
    assert bg.segments.flush(timeout=10)  # the worker lives on
    assert bg.customers.get(cid).lifecycle_stage == "new"


def test_segment_hooks_fire_in_the_worker_thread(crm_factory):
    seen = []

    class Tagger:
        @hookimpl
        def ecrm_segment_entered(self, crm, segment, customer_ids):
            seen.append(threading.current_thread().name)

    crm = crm_factory(plugins=[Tagger()], clock=lambda: NOW, live_segments="background")
    crm.segments.create("buyers", "purchase.count() >= 1")
    buy(crm, crm.customers.create(email="a@example.com").id)
    assert crm.segments.flush(timeout=10)
    assert seen == ["ecrm-live-segments"]


def test_modes_are_validated_and_paused_restores_background(bg):
    with bg.segments.paused():
        assert bg.segments.live is False
    assert bg.segments.live == "background"
    with pytest.raises(ValidationError) as err:
        bg.segments.live = "later"
    assert err.value.field == "live_segments"
    bg.segments.live = True
    assert bg.segments.live is True and bg.segments.flush() is True
