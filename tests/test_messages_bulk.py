"""The pipeline's bulk SQL (``ecrm_core.services.messages._sql``): rows it writes on the
DB-API read back through the tables' SQLAlchemy types unchanged, claims take the queue in
due order, and pausing the garbage collector per batch leaves the process as it was."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from ecrm_core.services.messages._sql import _uids
from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import FakeClock, MemoryChannel


def build(tmp_path, memory, clock):
    return make_crm(tmp_path / "b.db", plugins=[memory.plugin()], clock=clock, secret="s" * 32)


def customer(crm, n, **extra):
    return crm.customers.create(email=f"c{n}@example.com", consent={"memory": "granted"}, **extra).id


def test_rows_written_on_the_dbapi_read_back_through_the_tables_types(tmp_path):
    memory = MemoryChannel(name="memory")
    clock = FakeClock(datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC))  # microsecond 0: the format must keep ".000000"
    crm = build(tmp_path, memory, clock)
    ids = [customer(crm, n, name=f"Ann {n}") for n in range(3)]
    later = datetime(2026, 6, 1, 13, 30, 15, 250, tzinfo=UTC)
    report = crm.messages.send_many(
        "memory",
        {"subject": "Hi", "body": "Hello"},
        customer_ids=ids,
        at=later,
        metadata={"campaign": "spring", "nested": {"a": [1, 2]}},
        dedupe_key="spring-{customer_id}",
    )
    assert report.queued == 3
    [m] = [m for m in crm.messages.list() if m.customer_id == ids[0]]
    assert m.next_attempt_at == later and m.created_at == clock.now
    assert m.metadata == {"campaign": "spring", "nested": {"a": [1, 2]}}
    assert (m.content.subject, m.content.body, m.dedupe_key) == ("Hi", "Hello", f"spring-{ids[0]}")
    t = crm.db.tables["messages"]
    with crm.db.read() as conn:
        raw = conn.exec_driver_sql(
            f"SELECT next_attempt_at, created_at, transactional FROM {t.name} WHERE uid = ?", (m.id,)
        ).one()
        # the same text SQLAlchemy's DATETIME binds (text order is time order on SQLite)
        assert raw == ("2026-06-01 13:30:15.000250", "2026-06-01 12:00:00.000000", 0)
        same = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.next_attempt_at == later)).scalar()
    assert same == 3
    # the same dedupe key again: duplicates, found by the one-parameter lookup
    again = crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids, dedupe_key="spring-{customer_id}")
    assert (again.queued, again.duplicates) == (0, 3)
    # nothing is due before `at`; everything at it, settled through the same path
    assert crm.messages.dispatch().attempted == 0
    clock.now = later
    assert crm.messages.dispatch().sent == 3
    sent = crm.messages.get(m.id)
    assert (sent.status, sent.sent_at, sent.attempts) == ("sent", later, 1)
    [attempt] = crm.messages.attempts(m.id)
    assert (attempt.status, attempt.started_at, attempt.finished_at) == ("accepted", later, later)


def test_claims_take_expired_leases_first_then_due_messages_oldest_first(tmp_path):
    memory = MemoryChannel(name="memory")
    clock = FakeClock()
    crm = build(tmp_path, memory, clock)
    now = clock.now
    a, b, c = (customer(crm, n) for n in range(3))
    late = crm.messages.send("memory", a, {"body": "late"}, at=now + timedelta(hours=2)).id
    early = crm.messages.send("memory", b, {"body": "early"}, at=now + timedelta(hours=1)).id
    stale = crm.messages.send("memory", c, {"body": "stale"}).id
    [claimed] = crm.messages._claim(None, 1, {"recovered": 0, "blocked": 0})  # its worker dies
    assert claimed.message.id == stale
    clock.advance(hours=3)  # past the lease and both due times
    for _ in range(3):
        crm.messages.dispatch(limit=1)
    assert memory.delivered_ids == [stale, early, late]
    assert [a.status for a in crm.messages.attempts(stale)] == ["lost", "accepted"]


def test_batches_leave_the_garbage_collector_as_they_found_it(tmp_path):
    memory = MemoryChannel(name="memory")
    crm = build(tmp_path, memory, FakeClock())
    ids = [customer(crm, n) for n in range(3)]
    assert gc.isenabled()
    crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
    crm.messages.dispatch()
    assert gc.isenabled()
    gc.disable()  # a host that paused it keeps it paused
    try:
        crm.messages.send_many("memory", {"body": "y"}, customer_ids=ids)
        crm.messages.dispatch()
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert len(memory.delivered_ids) == 6


def test_batch_ids_are_distinct_version_4_uuids():
    ids = _uids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, u.hex) == (4, uuid.RFC_4122, text)
