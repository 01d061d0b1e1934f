"""The two-stage tracking contract over real HTTP: the gateway's 200 (durably in
the inbox), the processor, rejected messages, replay, backpressure."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from ecrm_api import plugin as api_plugin
from ecrm_api.ingest import ingest_status, rejected_entries
from ecrm_api.processor import process_inbox

from ecrm_core.cli import make_cli
from ecrm_core.services.interactions import Interactions

NOW = datetime.now(UTC).replace(microsecond=0)


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


def track(user: str = "u1", *, mid: str | None = None, event: str = "Product Viewed", **props):
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": mid or str(uuid.uuid4()),
        "timestamp": _iso(NOW - timedelta(minutes=5)),
        "properties": props,
    }


def batch(*messages):
    return {"batch": list(messages), "sentAt": _iso(NOW)}


def inbox_rows(crm) -> int:
    with crm.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(crm.db.tables["ingest_inbox"])).scalar()


def keys(crm) -> list[str]:
    t = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        return [k for (k,) in conn.execute(sa.select(t.c.idempotency_key)) if k]


def drain(crm) -> None:
    while process_inbox(crm).rows:
        pass


@pytest.fixture
def live(api_crm, live_api_factory):
    """The API with the processor left to the test (``ingest_processor="worker"``)."""
    return live_api_factory(api_crm, rate_limit=None, ingest_processor="worker")


@pytest.fixture
def seg(live):
    token = live.token(["ingest"], name="write key")
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=60) as client:
        yield client


def test_a_200_means_in_the_inbox_and_the_processor_makes_it_visible(live, seg):
    crm = live.crm
    messages = [track(f"u{i % 7}", n=i) for i in range(100)]
    r = seg.post("/v1/batch", json=batch(*messages))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 100 and r.json()["rejected"] == []
    assert inbox_rows(crm) == 1  # one row for the request, not one per event
    assert crm.interactions.count() == 0
    result = process_inbox(crm)
    assert (result.rows, result.events, result.stored, result.rejected) == (1, 100, 100, 0)
    assert inbox_rows(crm) == 0
    assert sorted(keys(crm)) == sorted(f"segment:{m['messageId']}" for m in messages)


def test_single_calls_and_identify_before_the_later_track_of_the_same_user(live, seg):
    crm = live.crm
    anon = "anon-1"
    assert (
        seg.post("/v1/track", json={"anonymousId": anon, "event": "Product Viewed", "messageId": "a1"}).status_code
        == 200
    )
    body = batch(
        {
            "type": "identify",
            "userId": "alice",
            "anonymousId": anon,
            "traits": {"email": "a@example.com"},
            "messageId": "i1",
        },
        {
            "type": "track",
            "userId": "alice",
            "event": "Order Completed",
            "messageId": "t1",
            "properties": {"revenue": 10},
        },
        {"type": "page", "anonymousId": anon, "name": "Home", "messageId": "p1"},
    )
    assert seg.post("/v1/batch", json=body).status_code == 200
    assert crm.customers.find(external_id="alice") is None  # not yet: in the inbox
    drain(crm)
    alice = crm.customers.find(external_id="alice")
    assert alice is not None and alice.email == "a@example.com"
    kinds = sorted(i.kind for i in crm.interactions.timeline(alice.id, limit=10))
    assert kinds == ["identify", "page_view", "product_view", "purchase"]
    assert crm.customers.count() == 1


def test_the_server_thread_processor_makes_events_visible(api_crm, live_api_factory):
    live = live_api_factory(api_crm, rate_limit=None)  # default: ingest_processor="thread"
    token = live.token(["ingest"])
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=30) as c:
        assert c.post("/v1/batch", json=batch(*[track() for _ in range(50)])).status_code == 200
    deadline = time.monotonic() + 10
    while api_crm.interactions.count() < 50:
        assert time.monotonic() < deadline, "the processor thread did not store the events"
        time.sleep(0.05)
    assert inbox_rows(api_crm) == 0


def test_resends_are_stored_once_and_conflicts_go_to_rejected(live, seg):
    crm = live.crm
    first = track("bob", mid="m-1", colour="red")
    assert seg.post("/v1/batch", json=batch(first, track("bob", mid="m-2"))).status_code == 200
    # an SDK's retry (same payload) and a conflicting reuse of m-2, in a later request
    assert seg.post("/v1/batch", json=batch(first, track("bob", mid="m-2", colour="blue"))).status_code == 200
    drain(crm)
    assert sorted(keys(crm)) == ["segment:m-1", "segment:m-2"]
    st = ingest_status(crm)
    assert st.rejected["conflict"] == 1 and sum(st.rejected.values()) == 1
    page = seg.get("/ingest/rejected", headers={"Authorization": f"Bearer {live.token(['read'])}"}, auth=None)
    assert page.status_code == 200, page.text
    [entry] = page.json()["items"]
    assert entry["reason"] == "conflict" and entry["message_id"] == "m-2"
    assert "messageId" in entry["field"] and entry["message"]["properties"] == {"colour": "blue"}


def test_shape_errors_are_answered_per_message_and_never_reach_the_inbox(live, seg):
    crm = live.crm
    bad = [
        {"type": "track", "userId": "u", "messageId": "no-event"},
        {"type": "track", "userId": "u", "event": "E", "properties": {"a": "\x00"}},
        {"type": "nope", "userId": "u"},
    ]
    r = seg.post("/v1/batch", json=batch(track(mid="ok-1"), *bad))
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 1 and body["rejected_total"] == 3
    assert [x["index"] for x in body["rejected"]] == [1, 2, 3]
    assert "properties" in body["rejected"][1]["field"]
    r = seg.post("/v1/track", json={"userId": "u", "event": "E", "properties": {"x": 2**70}})
    assert r.status_code in (400, 422)
    drain(crm)
    assert keys(crm) == ["segment:ok-1"]
    assert sum(ingest_status(crm).rejected.values()) == 0


def test_sync_true_keeps_the_synchronous_contract(live, seg):
    crm = live.crm
    r = seg.post("/v1/batch?sync=true", json=batch(track(mid="s-1"), track(mid="s-1")))
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["duplicates"] == 1
    assert keys(crm) == ["segment:s-1"] and inbox_rows(crm) == 0
    r = seg.post("/v1/track?sync=true", json={**track(mid="s-1"), "properties": {"other": 1}})
    assert r.status_code == 409


def _put_row(crm, payload: bytes, *, count: int = 1, call: str | None = None) -> None:
    with crm.db.write() as conn:
        conn.execute(
            crm.db.tables["ingest_inbox"].insert(),
            {"workspace_id": crm.workspace, "received_at": crm.now(), "call": call, "count": count, "payload": payload},
        )


def test_poison_rows_and_messages_are_rejected_alone_and_the_rest_flows(live, seg, monkeypatch):
    crm = live.crm
    assert seg.post("/v1/batch", json=batch(track(mid="before"))).status_code == 200
    _put_row(crm, b'{"batch": [ {"type": "track", "userId": "x"')  # unreadable JSON
    _put_row(crm, json.dumps({"batch": [{"type": "teleport", "userId": "x"}, track(mid="beside")]}).encode(), count=2)
    real = Interactions.track_many

    def track_many(self, rows, **kw):
        rows = list(rows)
        if any((r.get("properties") or {}).get("boom") for r in rows):
            raise RuntimeError("a plugin's bug")
        return real(self, rows, **kw)

    monkeypatch.setattr(Interactions, "track_many", track_many)
    poison = [track(mid=f"p-{i}", boom=(i == 37)) for i in range(100)]
    assert seg.post("/v1/batch", json=batch(*poison)).status_code == 200
    assert seg.post("/v1/batch", json=batch(track(mid="after"))).status_code == 200
    result = process_inbox(crm)
    assert result.rows == 5 and result.rejected == 3
    stored = set(keys(crm))
    assert {"segment:before", "segment:beside", "segment:after"} <= stored
    assert len(stored) == 3 + 99 and "segment:p-37" not in stored
    reasons = sorted(e.reason for e in rejected_entries(crm))
    assert reasons == ["error", "invalid", "unreadable"]
    # the fix, then the replay: the poisoned message is stored, once
    monkeypatch.setattr(Interactions, "track_many", real)
    admin = live.token(["admin"])
    r = seg.post("/ingest/replay", json={"reason": "error"}, headers={"Authorization": f"Bearer {admin}"}, auth=None)
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    drain(crm)
    assert "segment:p-37" in set(keys(crm)) and len(keys(crm)) == 103
    st = ingest_status(crm)
    assert st.rejected["error"] == 0 and st.depth == 0


def test_backpressure_503_with_retry_after_then_accepted_again(api_crm, live_api_factory):
    live = live_api_factory(
        api_crm, rate_limit=None, ingest_processor="worker", ingest_max_depth=150, ingest_retry_after=7
    )
    token = live.token(["ingest"])
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=30) as c:
        assert c.post("/v1/batch", json=batch(*[track() for _ in range(100)])).status_code == 200
        assert c.post("/v1/batch", json=batch(*[track() for _ in range(100)])).status_code == 200
        deadline = time.monotonic() + 5
        while True:
            r = c.post("/v1/track", json=track())
            if r.status_code == 503:
                break
            assert time.monotonic() < deadline, "no 503 past the inbox depth"
            time.sleep(0.1)
        assert r.headers["Retry-After"] == "7"
        assert "inbox" in r.json()["detail"]
        health = c.get("/health").json()
        assert health["inbox_depth"] >= 200
        ready = c.get("/ready").json()
        assert ready["inbox_depth"] >= 200 and ready["inbox_lag"] >= 0
        drain(api_crm)
        deadline = time.monotonic() + 5
        while c.post("/v1/track", json=track()).status_code == 503:
            assert time.monotonic() < deadline, "still 503 after the inbox was drained"
            time.sleep(0.1)


def test_database_locked_past_the_timeout_is_503_and_nothing_is_half_written(api_crm, live_api_factory):
    live = live_api_factory(api_crm, rate_limit=None, ingest_processor="worker", ingest_lock_timeout=0.5)
    token = live.token(["ingest"])
    holder = sqlite3.connect(api_crm.db.engine.url.database, isolation_level=None, check_same_thread=False)
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=30) as c:
        holder.execute("BEGIN IMMEDIATE")
        try:
            answers = []
            threads = [
                threading.Thread(target=lambda: answers.append(c.post("/v1/batch", json=batch(track(), track()))))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [a.status_code for a in answers] == [503] * 4
        assert all(a.headers.get("Retry-After") for a in answers)
        assert inbox_rows(api_crm) == 0
        assert c.post("/v1/batch", json=batch(track(), track())).status_code == 200
    assert inbox_rows(api_crm) == 1


def test_status_routes_and_cli(live, seg):
    crm = live.crm
    assert seg.post("/v1/batch", json=batch(*[track() for _ in range(30)])).status_code == 200
    read = {"Authorization": f"Bearer {live.token(['read'])}"}
    st = seg.get("/ingest/status", headers=read, auth=None).json()
    assert st["depth"] == 30 and st["workspace_depth"] == 30 and st["lag"] >= 0
    assert seg.post("/ingest/replay", json={}, headers=read, auth=None).status_code == 403
    runner = CliRunner()
    ecrm_cli = make_cli(plugins=[api_plugin], entrypoints=False)
    url = f"sqlite:///{crm.db.engine.url.database}"
    out = runner.invoke(ecrm_cli, ["--db", url, "ingest", "status", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["depth"] == 30
    drain(crm)
    out = runner.invoke(ecrm_cli, ["--db", url, "ingest", "status", "--json"], catch_exceptions=False)
    doc = json.loads(out.output)
    assert doc["depth"] == 0 and doc["processed_last_minute"] == 30 and doc["rate"] > 0
    out = runner.invoke(ecrm_cli, ["--db", url, "ingest", "status"], catch_exceptions=False)
    assert "depth" in out.output
    out = runner.invoke(ecrm_cli, ["--db", url, "ingest", "rejected", "--json"], catch_exceptions=False)
    assert json.loads(out.output) == []
    out = runner.invoke(ecrm_cli, ["--db", url, "ingest", "replay", "--all"], catch_exceptions=False)
    assert out.exit_code == 0 and "0" in out.output


def test_the_job_is_registered_for_the_one_worker(api_crm):
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor

    spec = api_crm.registry.jobs["ingest.process"]
    assert spec.scope == "global" and not spec.exclusive
    _put_row(api_crm, json.dumps(batch(track(mid="w-1"), track(mid="w-2"))).encode(), count=2)
    ticks = []
    InProcessExecutor(JobRunner(api_crm, jobs=["ingest.*"]), on_tick=ticks.append).run(once=True)
    assert sorted(keys(api_crm)) == ["segment:w-1", "segment:w-2"]
    assert ticks[0].result.done == 2


def _drift(crm) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with crm.db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": crm.db.naming.version_table, "compare_type": True}
        )
        return [d for d in compare_metadata(ctx, crm.db.metadata) if "ingest" in str(d)]


def test_the_migration_creates_exactly_the_defined_tables(api_crm):
    assert {"ingest_inbox", "ingest_rejected", "ingest_log"} <= set(api_crm.db.tables)
    assert _drift(api_crm) == []


def test_the_processor_waits_for_a_commit_not_for_a_fixed_time(api_crm):
    from ecrm_api.processor import CommitWatch

    watch = CommitWatch(api_crm, poll=0.002)
    try:
        watch.mark()
        assert watch.wait(0.05) is False  # nothing committed
        started = time.monotonic()
        threading.Timer(0.1, lambda: _put_row(api_crm, json.dumps(batch(track(mid="c-1"))).encode())).start()
        assert watch.wait(5.0) is True  # woken by the other connection's COMMIT...
        assert time.monotonic() - started < 4.0  # ...not by the timeout
        stopped = threading.Event()
        stopped.set()
        assert watch.wait(5.0, stopped.is_set) is False  # a stopping worker is not held
    finally:
        watch.close()
    # the job's idle tick: it waits for the row, then stores it in the same tick
    from ecrm_core.registry import JobContext

    drain(api_crm)
    spec = api_crm.registry.jobs["ingest.process"]
    threading.Timer(0.1, lambda: _put_row(api_crm, json.dumps(batch(track(mid="c-2"))).encode())).start()
    result = spec.tick(JobContext(crm=api_crm, workspace=None, job=spec, stopping=lambda: False))
    assert result.done >= 1 and "segment:c-2" in keys(api_crm)


def test_ticks_are_sized_to_hold_the_write_lock_about_a_second():
    from ecrm_api.processor import Pace, ProcessResult

    pace = Pace(budget=1.0)
    assert pace.size(10_000) == 10_000  # nothing measured yet
    pace.record(ProcessResult(rows=100, events=10_000, seconds=4.0))  # a slow machine: 2,500/s
    assert pace.size(10_000) == 2_500
    pace.record(ProcessResult(rows=10, events=1_000, seconds=0.05))  # faster again: 20,000/s
    assert pace.size(10_000) == 10_000
    pace.record(ProcessResult(rows=1, events=10, seconds=1.0))  # too small to say anything
    assert pace.size(10_000) == 10_000
    pace.record(ProcessResult(rows=1, events=200, seconds=10.0))
    assert pace.size(10_000) >= 200
