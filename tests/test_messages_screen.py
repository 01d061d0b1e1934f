"""``crm.messages.screen``: the decision of ``send_many`` without writing anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecrm_core import ValidationError
from ecrm_core.testing import FakeClock, make_crm
from ecrm_core.testing.channels import MemoryChannel

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


def build(tmp_path, clock, **policy):
    memory = MemoryChannel(name="memory")
    return make_crm(
        tmp_path / "screen.db",
        plugins=[memory.plugin()],
        clock=clock,
        secret="s" * 32,
        channels={"memory": {"policy": {"backoff": 60, **policy}}},
    )


def snapshot(crm) -> dict[str, int]:
    """Row counts of every table: screening must leave them all as they were."""
    out = {}
    with crm.db.read() as conn:
        for name, table in crm.db.tables.items():
            out[name] = conn.scalar(sa.select(sa.func.count()).select_from(table))
    return out


def population(crm) -> dict[str, int]:
    """One customer per case the decision knows."""
    c = crm.customers.create
    ids = {
        "ok": c(email="ok@example.com", consent={"memory": "granted"}).id,
        "no_consent": c(email="none@example.com").id,
        "opted_out": c(email="out@example.com", consent={"memory": "granted", "memory:marketing": "denied"}).id,
        "suppressed": c(email="bounced@example.com", consent={"memory": "granted"}).id,
        "no_address": c(phone="+821012345678", consent={"memory": "granted"}).id,
        "capped": c(email="busy@example.com", consent={"memory": "granted"}).id,
        # 12:00 UTC is 21:00 in Seoul: inside quiet hours 20:00-08:00
        "quiet": c(email="seoul@example.com", consent={"memory": "granted"}, timezone="Asia/Seoul").id,
        "dup": c(email="dup@example.com", consent={"memory": "granted"}).id,
    }
    crm.messages.suppress("memory", "bounced@example.com", reason="bounce")
    crm.messages.send("memory", ids["capped"], {"body": "earlier"})
    crm.messages.send("memory", ids["dup"], {"body": "earlier"}, dedupe_key="spring-dup")
    return ids


def test_screen_predicts_send_many_exactly_and_writes_nothing(tmp_path, clock) -> None:
    crm = build(tmp_path, clock, frequency_caps=[(1, timedelta(days=1))], quiet_start="20:00", quiet_end="08:00")
    ids = population(crm)
    # the dedupe key of the "dup" customer is "spring-dup"
    key = "spring-{customer_id}"
    with crm.db.write() as conn:
        m = crm.db.tables["messages"]
        conn.execute(sa.update(m).where(m.c.dedupe_key == "spring-dup").values(dedupe_key=f"spring-{ids['dup']}"))
    before = snapshot(crm)
    everyone = [*ids.values(), 999_999]
    screening = crm.messages.screen("memory", everyone, dedupe_key=key)
    assert snapshot(crm) == before  # read-only
    d = screening.decisions
    assert screening.unknown == (999_999,)
    assert d[ids["ok"]].decision == "queue" and d[ids["ok"]].due_at == NOON and not d[ids["ok"]].scheduled
    for reason in ("no_consent", "opted_out", "suppressed", "no_address"):
        assert (d[ids[reason]].decision, d[ids[reason]].reason) == ("block", reason)
    assert (d[ids["capped"]].decision, d[ids["capped"]].reason) == ("block", "frequency_cap")
    quiet = d[ids["quiet"]]
    assert quiet.decision == "queue" and quiet.scheduled and quiet.due_at == datetime(2026, 6, 1, 23, 0, tzinfo=UTC)
    assert d[ids["dup"]].decision == "duplicate"
    assert screening.blocked == {
        "no_consent": 1,
        "opted_out": 1,
        "suppressed": 1,
        "no_address": 1,
        "frequency_cap": 1,
    }
    assert (screening.queued, screening.scheduled, screening.duplicates) == (2, 1, 1)

    # what send_many then does is exactly what screen said
    report = crm.messages.send_many("memory", {"body": "hi"}, customer_ids=everyone, dedupe_key=key)
    assert report.queued == screening.queued and report.scheduled == screening.scheduled
    assert dict(report.blocked) == screening.blocked and report.duplicates == screening.duplicates
    m = crm.db.tables["messages"]
    with crm.db.read() as conn:
        made = {
            r.customer_id: r
            for r in conn.execute(sa.select(m).where(m.c.dedupe_key.like("spring-%"), m.c.created_at == NOON))
        }
    for cid, decision in d.items():
        if decision.decision == "queue":
            assert made[cid].status == "queued" and made[cid].next_attempt_at == decision.due_at
        elif decision.decision == "block":
            assert made[cid].status == "blocked" and made[cid].reason == decision.reason


def test_screen_at_a_later_time_with_planned_messages(tmp_path, clock) -> None:
    crm = build(tmp_path, clock, frequency_caps=[(2, timedelta(days=7))], quiet_start="22:00", quiet_end="07:00")
    a = crm.customers.create(email="a@example.com", consent={"memory": "granted"}).id
    b = crm.customers.create(email="b@example.com", consent={"memory": "granted"}).id
    crm.messages.send("memory", a, {"body": "today"})  # one in the outbox, made at noon today
    later = NOON + timedelta(days=3, hours=11)  # 23:00 UTC: quiet
    s = crm.messages.screen("memory", [a, b], at=later)
    assert s.decisions[a].decision == "queue" and s.decisions[a].due_at == NOON + timedelta(days=4, hours=-5)
    # a simulation's own earlier message for a (not in the outbox) fills the cap of 2 a week
    planned = {a: [NOON + timedelta(days=1)], b: [NOON + timedelta(days=1)]}
    s = crm.messages.screen("memory", [a, b], at=later, planned=planned)
    assert s.decisions[a].reason == "frequency_cap" and s.decisions[b].decision == "queue"
    # a week after the outbox message it no longer counts; a planned one outside the window neither
    s = crm.messages.screen("memory", [a], at=NOON + timedelta(days=8, hours=1), planned=planned)
    assert s.decisions[a].decision == "queue"
    # messages made after `at` do not count: screening "now" ignores a message stamped later
    clock.advance(days=1)
    crm.messages.send("memory", b, {"body": "tomorrow"})
    crm.messages.send("memory", b, {"body": "tomorrow again"})
    assert crm.messages.screen("memory", [b], at=NOON).decisions[b].decision == "queue"
    assert crm.messages.screen("memory", [b]).decisions[b].reason == "frequency_cap"


def test_transactional_ignores_consent_caps_and_quiet_hours(tmp_path, clock) -> None:
    crm = build(tmp_path, clock, frequency_caps=[(1, timedelta(days=1))], quiet_start="20:00", quiet_end="08:00")
    cid = crm.customers.create(email="x@example.com", timezone="Asia/Seoul").id  # no consent, quiet now
    crm.messages.send("memory", cid, {"body": "receipt"}, purpose="transactional")
    s = crm.messages.screen("memory", [cid], purpose="transactional")
    assert s.decisions[cid].decision == "queue" and s.decisions[cid].due_at == NOON


def test_bad_input_is_refused(tmp_path, clock) -> None:
    crm = build(tmp_path, clock)
    with pytest.raises(ValidationError, match="dedupe_key"):
        crm.messages.screen("memory", [1], dedupe_key="no-placeholder")
    with pytest.raises(ValidationError, match=r"customer_ids\[1\]"):
        crm.messages.screen("memory", [1, "2"])
    with pytest.raises(ValidationError, match="at"):
        crm.messages.screen("memory", [1], at=datetime(2026, 1, 1))  # naive
    with pytest.raises(ValidationError):
        crm.messages.screen("nope", [1])
    with pytest.raises(ValidationError):
        crm.messages.screen("memory", [1], purpose="nope")


@pytest.mark.postgres
def test_screen_on_postgresql_locks_nothing_and_agrees_with_send_many(pg_crm_factory, clock) -> None:
    memory = MemoryChannel(name="memory")
    crm = pg_crm_factory(
        plugins=[memory.plugin()],
        clock=clock,
        secret="s" * 32,
        channels={"memory": {"policy": {"frequency_caps": [(1, 86400)], "quiet_start": "20:00", "quiet_end": "08:00"}}},
    )
    ids = population(crm)
    with crm.db.engine.connect() as other, other.begin():
        # another transaction holds the customers' rows: a send would wait for it, a screening does not
        c = crm.db.tables["customers"]
        other.execute(sa.select(c.c.id).where(c.c.id.in_(list(ids.values()))).with_for_update()).all()
        screening = crm.messages.screen("memory", list(ids.values()))
    report = crm.messages.send_many("memory", {"body": "hi"}, customer_ids=list(ids.values()))
    assert report.queued == screening.queued and dict(report.blocked) == screening.blocked
    assert report.scheduled == screening.scheduled == 1
