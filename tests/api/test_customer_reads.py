"""GET /customers/{id}: the compiled read (ecrm_api.reads) answers exactly what the core's read does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from ecrm_api.routes.customers import customer_out

from ecrm_core import hookimpl
from ecrm_core.registry import AttributeDef


class Country:
    @hookimpl
    def ecrm_register_attributes(self):
        return [AttributeDef(name="country", type="string")]


@pytest.fixture
def live(crm_factory, live_api_factory):
    from ecrm_api import plugin

    return live_api_factory(crm_factory(plugins=[plugin, Country()]), rate_limit=None)


def core_json(crm, customer_id):
    """What the route answered before the compiled read: the core's Customer, converted."""
    return msgspec.json.decode(msgspec.json.encode(customer_out(crm.customers.get(customer_id))))


def people(crm):
    seoul = timezone(timedelta(hours=9))
    c = crm.customers
    plain = c.create(email="plain@example.com")
    full = c.create(
        external_id="erp-1",
        email="Full.Name@Example.com",
        phone="+82 10 1234 5678",
        name="Zoë \u00e9\u4e2d",
        attributes={"country": "KR", "nested": {"list": [1, 2.5, None, True, "x"], "deep": {"a": [{"b": 1}]}}},
        consent={
            "email": {"status": "granted", "at": datetime(2024, 5, 1, 12, 0, tzinfo=seoul), "source": "form"},
            "sms": "denied",
        },
        timezone="Asia/Seoul",
        locale="ko-KR",
    )
    tomb = c.create(name="tombstone")
    c.merge(tomb.id, into=full.id)
    return plain, full, tomb


def test_the_compiled_read_agrees_with_the_core(live):
    plain, full, tomb = people(live.crm)
    reader = live.app.state["ecrm"].reader
    assert reader.fast  # SQLite, ecrm's own engine: the compiled path is the one tested
    client = live.client(["read"])
    for c in (plain, full):
        r = client.get(f"/customers/{c.id}")
        assert r.status_code == 200, r.text
        assert r.json() == core_json(live.crm, c.id)
        assert "Content-Location" not in r.headers
    body = client.get(f"/customers/{full.id}").json()
    assert body["consent"]["email"]["at"] == "2024-05-01T03:00:00Z"  # stored with +09:00, answered in UTC
    assert body["consent"]["sms"] == {"status": "denied", "at": body["consent"]["sms"]["at"], "source": None}
    # a merged id answers with the survivor, as the core does
    r = client.get(f"/customers/{tomb.id}")
    assert r.status_code == 200 and r.json() == core_json(live.crm, tomb.id) and r.json()["id"] == full.id
    assert r.headers["Content-Location"] == f"/customers/{full.id}"


def test_the_compiled_read_keeps_workspaces_apart(live):
    plain, _full, _tomb = people(live.crm)
    other = live.crm.in_workspace("other")
    theirs = other.customers.create(email="plain@example.com")
    ours = live.client(["read"])
    r = ours.get(f"/customers/{theirs.id}")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert "plain@example.com" not in r.text
    mine = live.client(["read"], workspace="other")
    assert mine.get(f"/customers/{plain.id}").status_code == 404
    assert mine.get(f"/customers/{theirs.id}").json()["id"] == theirs.id
    # a merge in one workspace never points the read at another's row
    tomb = other.customers.create(name="t")
    other.customers.merge(tomb.id, into=theirs.id)
    assert ours.get(f"/customers/{tomb.id}").status_code == 404
    assert mine.get(f"/customers/{tomb.id}").json()["id"] == theirs.id


def test_deleted_and_unknown_ids_are_404(live):
    plain, _full, _tomb = people(live.crm)
    client = live.client(["read"])
    live.crm.customers.delete(plain.id)
    for cid in (plain.id, 10**12, 2**63 - 1):
        r = client.get(f"/customers/{cid}")
        assert r.status_code == 404, (cid, r.text)
        assert r.json()["type"] == "urn:ecrm:problem:not-found"


def test_the_core_path_answers_the_same(live):
    """With the compiled path off (another database, or a host's connection) the core reads."""
    plain, full, tomb = people(live.crm)
    client = live.client(["read"])
    fast = {c: client.get(f"/customers/{c}") for c in (plain.id, full.id, tomb.id, 10**9)}
    reader = live.app.state["ecrm"].reader
    reader.fast = False
    try:
        for cid, before in fast.items():
            r = client.get(f"/customers/{cid}")
            assert (r.status_code, r.json(), r.headers.get("Content-Location")) == (
                before.status_code,
                before.json(),
                before.headers.get("Content-Location"),
            )
    finally:
        reader.fast = True


def test_a_changed_customer_is_read_fresh(live):
    plain, _full, _tomb = people(live.crm)
    client = live.client(["read"])
    assert client.get(f"/customers/{plain.id}").json()["name"] is None
    live.crm.customers.update(plain.id, name="Now Named", attributes={"k": "v"})
    body = client.get(f"/customers/{plain.id}").json()
    assert body["name"] == "Now Named" and body["attributes"] == {"k": "v"}
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None
    assert datetime.fromisoformat(body["updated_at"]) <= datetime.now(UTC)


STORED = {  # stored forms the core never writes today (older rows, hand-written SQL): the core's path decides
    "short status": {"consent": '{"email": "granted"}'},
    "a boolean": {"consent": '{"email": true}'},
    "a naive time": {"consent": '{"email": {"status": "granted", "at": "2024-05-01T12:00:00", "source": null}}'},
    "an offset time": {"consent": '{"email": {"status": "denied", "at": "2024-05-01T12:00:00+09:00", "source": "x"}}'},
    "a Z time": {"consent": '{"email": {"status": "granted", "at": "2024-05-01T12:00:00Z", "source": null}}'},
    "no time": {"consent": '{"sms:promo": {"status": "granted", "at": null, "source": null}}'},
    "a missing key": {"consent": '{"email": {"status": "granted"}}'},
    "an unknown status": {"consent": '{"email": {"status": "maybe", "at": null, "source": null}}'},
    "a bad channel": {"consent": '{"E mail": {"status": "granted", "at": null, "source": null}}'},
    "an extra key": {"consent": '{"email": {"status": "granted", "at": null, "source": null, "ip": "1.2.3.4"}}'},
    "empty": {"consent": "{}"},
    "a control character": {"consent": '{"email": {"status": "granted", "at": null, "source": "a\\u0007b"}}'},
    "a long source": {"consent": '{"email": {"status": "granted", "at": null, "source": "' + "s" * 600 + '"}}'},
    "a huge integer": {"attributes": '{"n": 123456789012345678901234567890}'},
    "floats": {"attributes": '{"x": 1e300, "y": -0.0, "z": 0.1}'},
    "unicode escapes": {"attributes": '{"s": "\\u00e9\\ud83d\\ude00"}'},
}


@pytest.mark.parametrize("stored", list(STORED.values()), ids=list(STORED))
def test_stored_forms_answer_as_the_core_reads_them(live, stored):
    """The compiled read decodes the common stored form itself (msgspec) and hands any other to
    the core's conversion: whatever is stored, both paths answer the same status and body."""
    import sqlalchemy as sa

    c = live.crm.customers.create(email="stored@example.com")
    t = live.crm.db.tables["customers"]
    with live.crm.db.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.id == c.id).values(**{k: sa.text(f"'{v}'") for k, v in stored.items()}))
    client = live.client(["read"])
    fast = client.get(f"/customers/{c.id}")
    reader = live.app.state["ecrm"].reader
    reader.fast = False
    try:
        slow = client.get(f"/customers/{c.id}")
    finally:
        reader.fast = True
    assert fast.status_code == slow.status_code
    if slow.status_code == 200:
        assert fast.json() == slow.json()
