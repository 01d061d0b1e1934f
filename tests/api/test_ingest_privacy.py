"""A person's messages waiting in the ingest inbox or kept in ingest_rejected go
with the customer's deletion, and follow merges (SQLite and real PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from ecrm_api import plugin as api_plugin
from ecrm_api.erasure import erase_identities, message_identities, raw_identities
from ecrm_api.ingest import rejected_entries, replay
from ecrm_api.processor import process_inbox

from ecrm_core import Alias

NOW = datetime.now(UTC).replace(microsecond=0)


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


@pytest.fixture(params=["sqlite", "postgresql"])
def crm(request):
    if request.param == "sqlite":
        return request.getfixturevalue("api_crm")
    crm = request.getfixturevalue("pg_crm_factory")(plugins=[api_plugin])
    crm.upgrade()
    return crm


def put(crm, *messages, call: str | None = None) -> None:
    """An inbox row as the gateway writes it (a batch document, or one single call's message)."""
    payload = messages[0] if call else {"batch": list(messages), "sentAt": _iso(NOW)}
    with crm.db.write() as conn:
        conn.execute(
            crm.db.tables["ingest_inbox"].insert(),
            {
                "workspace_id": crm.workspace,
                "received_at": crm.now(),
                "call": call,
                "count": len(messages),
                "payload": json.dumps(payload).encode(),
            },
        )


def put_raw(crm, payload: bytes) -> None:
    with crm.db.write() as conn:
        conn.execute(
            crm.db.tables["ingest_inbox"].insert(),
            {"workspace_id": crm.workspace, "received_at": crm.now(), "call": None, "count": 1, "payload": payload},
        )


def ev(mid: str, *, user: str | None = None, anon: str | None = None, event: str = "Product Viewed", **props):
    m = {"type": "track", "event": event, "messageId": mid, "timestamp": _iso(NOW - timedelta(minutes=1))}
    if user:
        m["userId"] = user
    if anon:
        m["anonymousId"] = anon
    if props:
        m["properties"] = props
    return m


def drain(crm) -> None:
    while process_inbox(crm).rows:
        pass


def inbox(crm) -> list[tuple[int, list[str]]]:
    """(count, messageIds) per inbox row, in order."""
    t = crm.db.tables["ingest_inbox"]
    with crm.db.read() as conn:
        rows = conn.execute(sa.select(t.c.call, t.c.count, t.c.payload).order_by(t.c.id)).all()
    out = []
    for call, count, payload in rows:
        try:
            doc = json.loads(bytes(payload))
        except ValueError:
            out.append((count, ["<unreadable>"]))
            continue
        msgs = [doc] if call else doc["batch"]
        out.append((count, [m.get("messageId") for m in msgs]))
    return out


def stored_keys(crm) -> set[str]:
    t = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        return {k for (k,) in conn.execute(sa.select(t.c.idempotency_key)) if k}


def identity_rows(crm) -> set[tuple[str, str]]:
    t = crm.db.tables["ingest_rejected_ids"]
    with crm.db.read() as conn:
        return {(k, v) for k, v in conn.execute(sa.select(t.c.kind, t.c.value))}


def test_deleting_a_customer_erases_their_waiting_and_rejected_messages(crm):
    # Alice is known: her identify linked a cookie and an e-mail.
    put(
        crm,
        {
            "type": "identify",
            "userId": "alice",
            "anonymousId": "cookie-a",
            "traits": {"email": "Alice@Example.com"},
            "messageId": "i-alice",
        },
        ev("a-0", user="alice"),
        ev("b-0", user="bob"),
    )
    drain(crm)
    alice = crm.customers.find(external_id="alice")
    assert alice is not None and alice.email == "alice@example.com"
    # Rejected: a conflict of Alice's (same messageId, other payload), one of Bob's, an unreadable row naming her.
    put(crm, ev("a-0", user="alice", colour="red"), ev("b-0", user="bob", colour="red"))
    put_raw(crm, b'{"batch": [{"type": "track", "userId": "alice", "event": ')
    drain(crm)
    assert sorted(e.reason for e in rejected_entries(crm)) == ["conflict", "conflict", "unreadable"]
    assert {("external", "alice"), ("external", "bob")} <= identity_rows(crm)
    # Waiting: her messages by every identity she has, mixed with others' in one row, and alone.
    put(
        crm,
        ev("a-1", user="alice"),
        ev("b-1", user="bob"),
        ev("a-2", anon="cookie-a"),
        {"type": "identify", "userId": "carol", "traits": {"email": "ALICE@example.com"}, "messageId": "c-1"},
        {"type": "alias", "userId": "dave", "previousId": "cookie-a", "messageId": "d-1"},
        ev("b-2", user="bob"),
    )
    put(crm, {"userId": 7, "event": "Signed In", "messageId": "n-1"}, call="track")  # an integer userId
    put(crm, ev("a-3", user="alice"), call="track")
    put(crm, ev("a-4", anon="cookie-a"), ev("a-5", user="  alice "))
    assert [n for n, _ in inbox(crm)] == [6, 1, 1, 2]

    assert crm.customers.delete(alice.id) == (alice.id,)

    # Bob's messages wait still, in their order; hers are gone (the identify naming her e-mail too).
    assert inbox(crm) == [(2, ["b-1", "b-2"]), (1, ["n-1"])]
    assert [(e.reason, e.message_id) for e in rejected_entries(crm, include_replayed=True)] == [("conflict", "b-0")]
    assert ("external", "alice") not in identity_rows(crm) and ("external", "bob") in identity_rows(crm)
    drain(crm)
    assert crm.customers.find(external_id="alice") is None
    assert crm.customers.find(alias=Alias("anonymous", "cookie-a")) is None
    assert crm.customers.find(email="alice@example.com") is None
    assert stored_keys(crm) == {"segment:b-0", "segment:b-1", "segment:b-2", "segment:n-1"}
    # erasing again finds nothing
    again = erase_identities(crm, [Alias("external", "alice"), Alias("anonymous", "cookie-a")])
    assert (again.messages, again.rejected) == (0, 0)


def test_a_row_rewritten_after_the_processor_read_it_is_read_again(api_crm, monkeypatch):
    """The processor reads rows before taking SQLite's write lock; an erasure in
    between rewrites a row: the processor must not store the old copy."""
    import ecrm_api.processor as processor

    crm = api_crm
    crm.customers.create(external_id="alice")
    put(crm, ev("a-1", user="alice"), ev("b-1", user="bob"))
    real = processor._prepare
    erased = []

    def prepare(*args, **kw):
        out = real(*args, **kw)
        if not erased:
            [gone] = [c.id for c in [crm.customers.find(external_id="alice")] if c]
            erased.append(crm.customers.delete(gone))
        return out

    monkeypatch.setattr(processor, "_prepare", prepare)
    first = process_inbox(crm)
    assert erased and first.stored == 0  # the row changed under it: left for the next tick
    drain(crm)
    assert stored_keys(crm) == {"segment:b-1"}
    assert crm.customers.find(external_id="alice") is None


def test_a_deletion_while_the_processor_holds_a_claimed_batch_drops_its_messages(crm, monkeypatch):
    """The erasure has not reached a row the processor claimed (read before its
    write lock on SQLite, locked on PostgreSQL): the tombstones recorded first
    make the processor drop that person's messages, stored and rejected ones,
    instead of storing them onto a new prospect; what arrives later is new."""
    import ecrm_api.erasure as erasure
    import ecrm_api.processor as processor

    crm.customers.create(external_id="alice")
    bad_sale = ev("a-2", user="alice", event="Order Completed", revenue="lots")  # rejected when read
    put(crm, ev("a-1", user="alice"), ev("b-1", user="bob"), bad_sale)
    real = processor._prepare
    deleted = []

    def prepare(*args, **kw):
        out = real(*args, **kw)
        if not deleted:
            # The hook ran up to its tombstones; the inbox's rewrite has not come to this row yet.
            monkeypatch.setattr(erasure, "_erase_inbox", lambda crm, wanted: (0, 0, 0))
            deleted.append(crm.customers.delete(crm.customers.find(external_id="alice").id))
        return out

    monkeypatch.setattr(processor, "_prepare", prepare)
    first = process_inbox(crm)
    assert deleted and (first.stored, first.erased, first.rejected) == (1, 2, 0)
    assert stored_keys(crm) == {"segment:b-1"}
    assert crm.customers.find(external_id="alice") is None
    assert rejected_entries(crm, include_replayed=True) == []
    # A message received after the deletion is a new one: stored.
    monkeypatch.setattr(processor, "_prepare", real)
    put(crm, ev("a-9", user="alice"))
    assert process_inbox(crm).stored == 1
    assert crm.customers.find(external_id="alice") is not None
    # Tombstones go once no waiting row is older (and TOMBSTONE_KEEP passed).
    tombstones = crm.db.tables["ingest_tombstones"]
    with crm.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tombstones)).scalar() == 1
    monkeypatch.setattr(erasure, "TOMBSTONE_KEEP", timedelta(0))
    put(crm, ev("b-9", user="bob"))
    drain(crm)
    with crm.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tombstones)).scalar() == 0


def test_unreadable_rows_are_indexed_by_the_identities_they_seem_to_name(crm):
    """An inbox row that is not JSON is rejected whole and indexed by the ids,
    e-mails and phones its bytes seem to name: a deletion finds it even where
    the bytes hold the value in another case or it is too short to look for."""
    put_raw(crm, b'{"batch": [{"userId": "ab", "traits": {"email": "Alice@Example.COM"}, "event": ')
    put_raw(crm, b'{"batch": [{"anonymousId": "zz", "event": ')
    drain(crm)
    assert [e.reason for e in rejected_entries(crm)] == ["unreadable", "unreadable"]
    assert {("external", "ab"), ("email", "alice@example.com"), ("anonymous", "zz")} <= identity_rows(crm)
    customer = crm.customers.create(external_id="ab", email="alice@example.com")
    crm.customers.delete(customer.id)
    assert [e.message for e in rejected_entries(crm)] == ['{"batch": [{"anonymousId": "zz", "event": ']
    assert identity_rows(crm) == {("anonymous", "zz")}


def test_raw_identities():
    assert raw_identities(b'{"userId":"u\\u00e9", "previousId" : 42, "phone": "+1 415 555 0100", x') == {
        ("external", "u\u00e9"),
        ("external", "42"),
        ("anonymous", "42"),
        ("phone", "+14155550100"),
    }
    assert raw_identities(b"not json at all") == set()


def test_waiting_and_replayed_messages_of_a_merged_identity_land_on_the_survivor(crm):
    # A visitor (cookie-v) and a known customer; the visitor's events wait, one is rejected.
    visitor = crm.customers.upsert(aliases=[Alias("anonymous", "cookie-v")])
    survivor = crm.customers.create(external_id="vera", email="vera@example.com")
    put(crm, ev("v-1", anon="cookie-v"))
    drain(crm)
    put(crm, ev("v-1", anon="cookie-v", colour="other"))  # a conflict: rejected
    drain(crm)
    [rejected] = rejected_entries(crm)
    put(crm, ev("v-2", anon="cookie-v"), ev("v-3", anon="cookie-v"))
    crm.customers.merge(visitor.id, into=survivor.id)
    drain(crm)
    events = {i.idempotency_key for i in crm.interactions.timeline(survivor.id, limit=20)}
    assert {"segment:v-1", "segment:v-2", "segment:v-3"} <= events
    assert crm.customers.count() == 1
    # the rejected one, replayed after the merge (as a new message), lands on the survivor too
    t = crm.db.tables["ingest_rejected"]
    fixed = json.dumps({**rejected.message, "messageId": "v-4"}).encode()
    with crm.db.write() as conn:
        conn.execute(t.update().where(t.c.id == rejected.id).values(message=fixed))
    assert replay(crm, ids=[rejected.id]) == 1
    drain(crm)
    events = {i.idempotency_key for i in crm.interactions.timeline(survivor.id, limit=20)}
    assert "segment:v-4" in events and crm.customers.count() == 1
    # deleting the survivor erases what still waits under the merged-away identity
    put(crm, ev("v-5", anon="cookie-v"), ev("x-1", user="xavier"))
    crm.customers.delete(survivor.id)
    assert inbox(crm) == [(1, ["x-1"])]


def test_message_identities():
    assert message_identities({"userId": 12, "anonymousId": " a ", "traits": {"email": "X@Y.org"}}) == {
        ("external", "12"),
        ("anonymous", "a"),
        ("email", "x@y.org"),
    }
    assert message_identities({"type": "alias", "userId": "u", "previousId": "p"}) == {
        ("external", "u"),
        ("external", "p"),
        ("anonymous", "p"),
    }
    assert message_identities({"context": {"traits": {"phone": "not a phone", "email": 3}}}) == set()
    assert message_identities(["not", "an", "object"]) == set()


def _long_email(n: int) -> str:
    """A valid e-mail address of exactly ``n`` characters (labels of at most 63)."""
    for local in range(5, 60):
        parts, left = ["com"], n - local - 1 - 3
        while left >= 2:
            size = min(63, left - 1)
            parts.insert(0, "d" * size)
            left -= size + 1
        if left == 0:
            return "a" * local + "@" + ".".join(parts)
    raise AssertionError(n)


@pytest.mark.parametrize("length", [17, 199, 200, 201, 254])
def test_identities_of_any_length_are_erased_from_rejected_entries_and_tombstones(crm, length):
    """An identity is never cut to a prefix where a deletion looks for it
    (``identity_key``): a rejected message naming a long e-mail goes, and the
    processor holding a claimed batch drops such a message."""
    from ecrm_api.erasure import identity_key

    email = "alice@example.com" if length == 17 else _long_email(length)
    assert len(email) == length
    person = crm.customers.create(email=email)
    m = ev("m-1", anon="anon-1", colour="blue")
    m["context"] = {"traits": {"email": email}}
    put(crm, m)
    drain(crm)
    put(crm, {**m, "properties": {"colour": "red"}})  # same messageId, other payload: rejected, names her e-mail
    drain(crm)
    assert len(rejected_entries(crm)) == 1
    crm.customers.delete(person.id)
    assert rejected_entries(crm, include_replayed=True) == []
    tombstones = crm.db.tables["ingest_tombstones"]
    with crm.db.read() as conn:
        kept = set(conn.execute(sa.select(tombstones.c.kind, tombstones.c.value)).all())
    assert ("email", identity_key(email)) in kept
    assert all(len(v) <= 200 for _k, v in kept)
    # The processor finds her among the dead (it looks identities up by their key).
    from ecrm_api.erasure import dead_identities

    with crm.db.read() as conn:
        dead = dead_identities(crm, conn, NOW - timedelta(days=1))
    assert ("email", identity_key(email)) in dead
