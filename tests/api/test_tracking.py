"""The Segment Tracking API endpoints over real HTTP (raw httpx, loopback)."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from ecrm_core.domain import Alias


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


@pytest.fixture
def live_api(api_crm, live_api_factory):
    """The synchronous contract (``tracking_sync=True``): a 200 once stored, with
    duplicates and conflicts per message.  The inbox path is tests/api/test_ingest*.py."""
    return live_api_factory(api_crm, rate_limit=None, tracking_sync=True)


@pytest.fixture
def seg(live_api):
    """An httpx client sending an ingest key as the write key (Basic auth, empty password)."""
    token = live_api.token(["ingest"], name="write key")
    client = httpx.Client(base_url=live_api.url, auth=(token, ""), timeout=30)
    client.token = token  # type: ignore[attr-defined]
    yield client
    client.close()


def _timeline(crm, customer):
    return crm.interactions.timeline(customer.id, limit=100)


def _count(crm):
    return crm.interactions.count()


def test_every_call_type_is_stored(live_api, seg):
    crm = live_api.crm
    calls = {
        "identify": {"userId": "u1", "traits": {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"}},
        "track": {"userId": "u1", "event": "Newsletter Read", "properties": {"issue": 7}},
        "page": {"userId": "u1", "name": "Pricing", "category": "Docs", "properties": {"url": "https://x.test/p"}},
        "screen": {"userId": "u1", "name": "Cart", "properties": {"items": 2}},
        "group": {"userId": "u1", "groupId": "acme", "traits": {"plan": "enterprise"}},
        "alias": {"userId": "u1", "previousId": "old-cookie"},
    }
    for call, body in calls.items():
        r = seg.post(f"/v1/{call}", json={**body, "messageId": f"m-{call}"})
        assert r.status_code == 200, (call, r.text)
        assert r.json()["success"] is True and r.json()["accepted"] == 1
    ann = crm.customers.find(external_id="u1")
    assert ann is not None and ann.email == "ann@example.com" and ann.name == "Ann Lee"
    assert ann.attributes["group"] == {"id": "acme", "traits": {"plan": "enterprise"}}
    assert Alias("anonymous", "old-cookie") in crm.customers.aliases(ann.id)
    by_kind = {i.kind: i for i in _timeline(crm, ann)}
    assert set(by_kind) == {"identify", "event", "page_view", "screen_view"}
    events = [i for i in _timeline(crm, ann) if i.kind == "event"]
    assert {e.properties["event"] for e in events} == {"Newsletter Read", "group"}
    page = by_kind["page_view"]
    assert page.properties["name"] == "Pricing" and page.properties["category"] == "Docs" and page.channel == "web"
    assert by_kind["screen_view"].properties == {"name": "Cart", "items": 2}
    assert by_kind["screen_view"].channel == "app"
    assert {i.idempotency_key for i in _timeline(crm, ann)} >= {"segment:m-track", "segment:m-page"}


def test_order_completed_is_a_purchase_with_amount(live_api, seg):
    r = seg.post(
        "/v1/track",
        json={"userId": "buyer", "event": "Order Completed", "properties": {"revenue": 42.5, "currency": "eur"}},
    )
    assert r.status_code == 200
    buyer = live_api.crm.customers.find(external_id="buyer")
    [purchase] = _timeline(live_api.crm, buyer)
    assert purchase.kind == "purchase" and purchase.amount == Decimal("42.5") and purchase.currency == "EUR"
    assert purchase.properties["event"] == "Order Completed"
    r = seg.post("/v1/track", json={"userId": "buyer", "event": "Order Completed", "properties": {"total": 10}})
    assert r.status_code == 200
    assert {i.currency for i in _timeline(live_api.crm, buyer)} == {"EUR", "USD"}  # Segment's default currency


def test_message_id_dedupe_and_conflict(live_api, seg):
    crm = live_api.crm
    msg = {"userId": "d1", "event": "Clicked", "messageId": "dup-1", "timestamp": _iso(crm.now())}
    assert seg.post("/v1/track", json=msg).json()["accepted"] == 1
    again = seg.post("/v1/track", json=msg)
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["accepted"] == 0
    assert _count(crm) == 1
    changed = seg.post("/v1/track", json={**msg, "properties": {"x": 1}})
    assert changed.status_code == 409
    body = changed.json()
    assert body["errors"][0]["field"] == "body.messageId" and "different payload" in body["errors"][0]["problem"]
    assert _count(crm) == 1
    # In a batch: the duplicate is counted, the conflict reported per message, the new one stored.
    batch = {
        "batch": [
            {**msg, "type": "track"},
            {**msg, "type": "track", "event": "Other"},
            {"type": "track", "userId": "d1", "event": "New", "messageId": "dup-2"},
            {"type": "track", "userId": "d1", "event": "New", "messageId": "dup-2"},
        ]
    }
    r = seg.post("/v1/batch", json=batch).json()
    assert r["accepted"] == 1 and r["duplicates"] == 2
    assert [(x["index"], x["messageId"], x["field"]) for x in r["rejected"]] == [
        (1, "dup-1", "body.batch[1].messageId")
    ]
    assert _count(crm) == 2
    # identify is deduplicated too (customer changes are not redone)
    ident = {"userId": "d1", "traits": {"plan": "a"}, "messageId": "id-1"}
    assert seg.post("/v1/identify", json=ident).json()["accepted"] == 1
    assert seg.post("/v1/identify", json=ident).json()["duplicates"] == 1
    assert seg.post("/v1/identify", json={**ident, "traits": {"plan": "b"}}).status_code == 409
    assert crm.customers.find(external_id="d1").attributes["plan"] == "a"


def test_retry_with_a_new_sent_at_is_a_duplicate(live_api, seg):
    """SDKs set sentAt per attempt: the corrected time moves by the latency, the retry still dedupes."""
    now = live_api.crm.now()
    msg = {"type": "track", "userId": "r1", "event": "E", "messageId": "retry-1", "timestamp": _iso(now)}
    first = seg.post("/v1/batch", json={"batch": [msg], "sentAt": _iso(now + timedelta(seconds=1))}).json()
    second = seg.post("/v1/batch", json={"batch": [msg], "sentAt": _iso(now + timedelta(seconds=3))}).json()
    assert (first["accepted"], second["accepted"], second["duplicates"]) == (1, 0, 1)


def test_clock_skew_is_corrected(live_api, seg):
    crm = live_api.crm
    real = crm.now()
    ahead = real + timedelta(hours=1)  # the device's clock is an hour fast
    r = seg.post(
        "/v1/track",
        json={"userId": "s1", "event": "E", "timestamp": _iso(ahead - timedelta(seconds=30)), "sentAt": _iso(ahead)},
    )
    assert r.status_code == 200
    # batch-level sentAt applies to its messages
    r = seg.post(
        "/v1/batch",
        json={
            "sentAt": _iso(ahead),
            "batch": [
                {"type": "page", "userId": "s1", "name": "P", "originalTimestamp": _iso(ahead - timedelta(minutes=5))}
            ],
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1
    s1 = crm.customers.find(external_id="s1")
    times = {i.kind: i.occurred_at for i in _timeline(crm, s1)}
    assert abs(times["event"] - (real - timedelta(seconds=30))) < timedelta(seconds=5)
    assert abs(times["page_view"] - (real - timedelta(minutes=5))) < timedelta(seconds=5)
    # no sentAt: the time is taken as sent; no time at all: received
    past = datetime(2023, 3, 1, 12, 0, tzinfo=UTC)
    seg.post("/v1/track", json={"userId": "s2", "event": "Old", "timestamp": _iso(past)})
    seg.post("/v1/track", json={"userId": "s2", "event": "Now"})
    s2 = crm.customers.find(external_id="s2")
    times = {i.properties["event"]: i.occurred_at for i in _timeline(crm, s2)}
    assert times["Old"] == past and abs(times["Now"] - crm.now()) < timedelta(seconds=10)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("timestamp", "2024-05-01T10:00:00", "no time zone"),
        ("timestamp", "1999-12-31T23:59:59Z", "before 2000"),
        ("timestamp", "2999-01-01T00:00:00Z", "in the future"),
        ("timestamp", "yesterday", "not an ISO 8601 time"),
        ("sentAt", 17, "not a time"),
        ("userId", {"id": 1}, "not a string"),
        ("messageId", "", "printable"),
        ("properties", [1, 2], "not an object"),
    ],
)
def test_bad_values_are_422_naming_the_field(live_api, seg, field, value, problem):
    r = seg.post("/v1/track", json={"userId": "b1", "event": "E", field: value})
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == f"body.{field}" and problem in err["problem"]
    assert _count(live_api.crm) == 0 and live_api.crm.customers.count() == 0


def test_missing_required_fields(live_api, seg):
    cases = [
        ("/v1/track", {"userId": "x"}, "body.event"),
        ("/v1/track", {"event": "E"}, "body.userId"),
        ("/v1/group", {"userId": "x"}, "body.groupId"),
        ("/v1/alias", {"userId": "x"}, "body.previousId"),
        ("/v1/identify", {"userId": "x", "traits": {"email": "not-an-email"}}, "body.traits.email"),
        ("/v1/identify", {"type": "track", "userId": "x"}, "body.type"),
    ]
    for path, body, field in cases:
        r = seg.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"][0]["field"] == field
    assert _count(live_api.crm) == 0 and live_api.crm.customers.count() == 0


def test_identity_stitching_anonymous_to_identified(live_api, seg):
    crm = live_api.crm
    # A visitor browses anonymously: a prospect known by the cookie id.
    seg.post("/v1/page", json={"anonymousId": "anon-1", "name": "Home"})
    prospect = crm.customers.find(alias=Alias("anonymous", "anon-1"))
    assert prospect is not None and prospect.external_id is None
    # They sign up: identify links the cookie to the user (same customer, no merge needed).
    r = seg.post("/v1/identify", json={"userId": "user-1", "anonymousId": "anon-1", "traits": {"plan": "free"}})
    assert r.status_code == 200
    user = crm.customers.find(external_id="user-1")
    assert user.id == prospect.id and user.attributes["plan"] == "free"
    # Another device: anonymous events first, while the user already exists -> merged in.
    seg.post("/v1/track", json={"anonymousId": "anon-2", "event": "Viewed"})
    other = crm.customers.find(alias=Alias("anonymous", "anon-2"))
    assert other.id != user.id
    seg.post("/v1/identify", json={"userId": "user-1", "anonymousId": "anon-2"})
    assert crm.customers.find(alias=Alias("anonymous", "anon-2")).id == user.id
    assert crm.customers.get(other.id, follow_merged=False).merged_into == user.id
    kinds = sorted(i.kind for i in _timeline(crm, user))
    assert kinds == ["event", "identify", "identify", "page_view"]
    # Later anonymous events of that device land on the user.
    seg.post("/v1/track", json={"anonymousId": "anon-2", "event": "Again"})
    assert len(_timeline(crm, user)) == 5


def test_anonymous_id_of_another_identified_customer_is_not_stolen(live_api, seg):
    crm = live_api.crm
    seg.post("/v1/identify", json={"userId": "alice", "anonymousId": "shared-device"})
    r = seg.post("/v1/identify", json={"userId": "bob", "anonymousId": "shared-device"}).json()
    assert r["accepted"] == 1 and "another identified customer" in r["notes"][0]
    alice = crm.customers.find(external_id="alice")
    assert crm.customers.find(alias=Alias("anonymous", "shared-device")).id == alice.id
    assert crm.customers.get(alice.id).merged_into is None


def test_traits_email_of_another_customer_keeps_the_rest(live_api, seg):
    crm = live_api.crm
    crm.customers.create(email="taken@example.com")
    r = seg.post("/v1/identify", json={"userId": "u9", "traits": {"email": "taken@example.com", "plan": "x"}})
    assert r.status_code == 200 and "email" in r.json()["notes"][0]
    u9 = crm.customers.find(external_id="u9")
    assert u9.email is None and u9.attributes["plan"] == "x"


def test_alias_merges_previous_into_user(live_api, seg):
    crm = live_api.crm
    seg.post("/v1/track", json={"userId": "old-login", "event": "E1"})
    seg.post("/v1/track", json={"userId": "new-login", "event": "E2"})
    old = crm.customers.find(external_id="old-login")
    r = seg.post("/v1/alias", json={"previousId": "old-login", "userId": "new-login"})
    assert r.status_code == 200
    new = crm.customers.find(external_id="new-login")
    assert crm.customers.get(old.id, follow_merged=False).merged_into == new.id
    assert crm.customers.find(external_id="old-login").id == new.id
    assert {i.properties.get("event") for i in _timeline(crm, new)} >= {"E1", "E2"}
    # An unknown previousId is linked as an alias; an alias to a new user creates it.
    seg.post("/v1/alias", json={"previousId": "cookie-9", "userId": "fresh"})
    fresh = crm.customers.find(external_id="fresh")
    assert crm.customers.find(alias=Alias("anonymous", "cookie-9")).id == fresh.id


def test_batch_stores_valid_messages_and_reports_invalid_ones(live_api, seg):
    crm = live_api.crm
    batch = [
        {"type": "track", "userId": "b1", "event": "Ok 1", "messageId": "ok-1"},
        {"type": "track", "userId": "b1", "messageId": "no-event"},
        {"type": "unknown", "userId": "b1"},
        "not an object",
        {"type": "page", "anonymousId": "a-b1", "name": "Home"},
        {"type": "identify", "userId": "b1", "traits": {"email": "b1@example.com"}},
        {"type": "track", "userId": "b1", "event": "Late", "timestamp": "2999-01-01T00:00:00Z", "messageId": "late"},
        {"type": "track", "userId": "b1", "event": "Big", "properties": {"blob": "x" * 40_000}},
    ]
    r = seg.post("/v1/batch", json={"batch": batch, "context": {"library": {"name": "test"}}})
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 3
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [
        (1, "body.batch[1].event"),
        (2, "body.batch[2].type"),
        (3, "body.batch[3]"),
        (6, "body.batch[6].timestamp"),
        (7, "body.batch[7]"),
    ]
    assert body["rejected"][0]["messageId"] == "no-event"
    assert "32768 bytes" in body["rejected"][4]["problem"]
    assert _count(crm) == 3
    assert crm.customers.find(external_id="b1").email == "b1@example.com"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"batch": {"type": "track"}}', "body.batch"),
        (b'{"messages": []}', "body.batch"),
        (b'{"batch": [{"type": "track", "userId": "x", "event": "\\ud800"}]}', "body"),
        (
            b'{"batch": [{"type": "track", "userId": "x", "event": "E"}], "sentAt": "2024-01-01T00:00:00"}',
            "body.sentAt",
        ),
        (b'{"batch": [{"type": "track", "userId": "x", "event": "E"}]} trailing', "body"),
        (b"\xff\xfe{}", "body"),
    ],
)
def test_malformed_batch_is_400_and_stores_nothing(live_api, seg, content, field):
    r = seg.post("/v1/batch", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == field
    assert _count(live_api.crm) == 0 and live_api.crm.customers.count() == 0


def test_sizes_are_limited(live_api, seg):
    crm = live_api.crm
    big = {"batch": [{"type": "track", "userId": "x", "event": "E", "properties": {"p": "y" * 20_000}}] * 30}
    r = seg.post("/v1/batch", json=big)
    assert r.status_code == 413 and r.json()["type"] == "urn:ecrm:problem:too-large"
    r = seg.post("/v1/track", json={"userId": "x", "event": "E", "properties": {"p": "y" * 40_000}})
    assert r.status_code == 413
    # chunked (no Content-Length): cut off while streaming
    r = seg.post("/v1/batch", content=iter([json.dumps(big).encode()]), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _count(crm) == 0


def test_gzip_bodies_and_zip_bombs(live_api, seg):
    crm = live_api.crm
    payload = {"batch": [{"type": "track", "userId": "gz", "event": f"E{i}"} for i in range(50)]}
    r = seg.post("/v1/batch", content=gzip.compress(json.dumps(payload).encode()), headers={"content-encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 50
    # 100 MB of spaces inside valid JSON, compressed to ~100 KB: refused once 500 KB were inflated.
    bomb = gzip.compress(b'{"batch": [], "pad": "' + b" " * 100_000_000 + b'"}', compresslevel=9)
    assert len(bomb) < 512_000
    r = seg.post("/v1/batch", content=bomb, headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert r.status_code == 413 and "decompressed" in r.json()["detail"]
    r = seg.post("/v1/batch", content=b"not gzip at all", headers={"content-encoding": "gzip"})
    assert r.status_code == 400
    r = seg.post("/v1/batch", content=b"{}", headers={"content-encoding": "br"})
    assert r.status_code == 415
    assert _count(crm) == 50


def test_content_types(live_api, seg):
    body = json.dumps({"userId": "ct", "event": "E"})
    assert seg.post("/v1/track", content=body, headers={"content-type": "text/plain"}).status_code == 200
    r = seg.post("/v1/track", content=body, headers={"content-type": "application/xml"})
    assert r.status_code == 415
    assert _count(live_api.crm) == 1


def test_write_keys(live_api, seg):
    msg = {"userId": "k", "event": "E"}
    url = f"{live_api.url}/v1/track"
    assert httpx.post(url, json=msg).status_code == 401
    assert httpx.post(url, json=msg, auth=("ecrm_nope_nope", "")).status_code == 401
    revoked = live_api.keys.create("old", scopes=["ingest"])
    live_api.keys.revoke(revoked.key.key_id)
    assert httpx.post(url, json=msg, auth=(revoked.token, "")).status_code == 401
    read_only = live_api.token(["read"])
    r = httpx.post(url, json=msg, auth=(read_only, ""))
    assert r.status_code == 403 and "ingest" in r.json()["detail"]
    # writeKey in the body (Segment's SDKs send it too) must match the key that authenticated
    assert seg.post("/v1/track", json={**msg, "writeKey": seg.token}).status_code == 200
    other = live_api.token(["ingest"])
    r = seg.post("/v1/batch", json={"batch": [{**msg, "type": "track"}], "writeKey": other})
    assert r.status_code == 401
    # a Bearer ingest key works as well
    bearer = live_api.client(["ingest"])
    assert bearer.post("/v1/track", json=msg).status_code == 200
    assert _count(live_api.crm) == 2


def test_keys_of_another_workspace_write_there(live_api):
    token = live_api.token(["ingest"], workspace="shop2")
    r = httpx.post(f"{live_api.url}/v1/track", json={"userId": "w", "event": "E"}, auth=(token, ""))
    assert r.status_code == 200
    assert live_api.crm.customers.find(external_id="w") is None
    other = live_api.crm.in_workspace("shop2")
    assert other.customers.find(external_id="w") is not None


def test_openapi_documents_the_tracking_bodies(live_api):
    spec = live_api.client(["read"]).get("/docs/openapi.json").json()
    for call in ("identify", "track", "page", "screen", "group", "alias", "batch"):
        op = spec["paths"][f"/v1/{call}"]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
        assert "413" in op["responses"] and "401" in op["responses"]
    batch = spec["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["required"] == ["batch"]


def test_many_messages_in_one_batch_use_one_set_based_call(live_api, seg, monkeypatch):
    crm = live_api.crm
    calls = []
    original = type(crm.interactions).track_many

    def spy(self, rows, **kw):
        rows = list(rows)
        calls.append(len(rows))
        return original(self, rows, **kw)

    monkeypatch.setattr(type(crm.interactions), "track_many", spy)
    batch = [
        {"type": "track" if i % 2 else "page", "userId": f"p{i % 7}", "event": "E", "messageId": str(uuid.uuid4())}
        for i in range(100)
    ]
    r = seg.post("/v1/batch", json={"batch": batch})
    assert r.json()["accepted"] == 100
    assert calls == [100]
