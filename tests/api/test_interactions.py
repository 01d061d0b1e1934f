"""Interactions over real HTTP: ingest one and many, read, timeline, 360° view, bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest


@pytest.fixture
def ingest(live_api):
    return live_api.client(["ingest"])


@pytest.fixture
def reader(live_api):
    return live_api.client(["read"])


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _problem(r, status, field=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert field in fields, (field, body)
    return body


def test_post_one_then_read_it(live_api, ingest, reader):
    r = ingest.post(
        "/interactions",
        json={
            "kind": "purchase",
            "email": "Ada@Example.com",
            "channel": "web",
            "amount": "19.90",
            "currency": "eur",
            "properties": {"sku": "A-1", "tags": ["x", "y"]},
            "occurred_at": "2024-05-01T12:00:00+09:00",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert Decimal(body["amount"]) == Decimal("19.90") and body["currency"] == "EUR"
    assert body["occurred_at"] == "2024-05-01T03:00:00Z"
    assert body["properties"] == {"sku": "A-1", "tags": ["x", "y"]}
    got = reader.get(f"/interactions/{body['id']}")
    assert got.status_code == 200 and got.json() == body
    assert live_api.crm.customers.find(email="ada@example.com").id == body["customer_id"]


def test_amount_as_a_number_is_exact(ingest, live_api):
    c = live_api.crm.customers.create(email="n@example.com")
    r = ingest.post("/interactions", json={"kind": "purchase", "customer_id": c.id, "amount": 0.1, "currency": "USD"})
    assert r.status_code == 201 and r.json()["amount"] == "0.1"
    r = ingest.post(
        "/interactions", json={"kind": "purchase", "customer_id": c.id, "amount": 123456789012.5, "currency": "USD"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.amount"  # >= 10^11


def test_idempotent_replay_and_conflict(live_api, ingest):
    item = {"kind": "purchase", "email": "k@example.com", "amount": 5, "currency": "EUR", "idempotency_key": "o-1"}
    first = ingest.post("/interactions", json=item)
    assert first.status_code == 201
    again = ingest.post("/interactions", json=item)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    conflict = ingest.post("/interactions", json={**item, "amount": 6})
    body = _problem(conflict, 409)
    assert body["type"] == "urn:ecrm:problem:idempotency-conflict" and body["key"] == "o-1"
    assert live_api.crm.interactions.count() == 1


def test_unknown_kind_suggests(live_api, ingest):
    body = _problem(ingest.post("/interactions", json={"kind": "purchse", "email": "x@example.com"}), 422, "body.kind")
    assert "did you mean 'purchase'?" in body["errors"][0]["fix"]
    assert live_api.crm.interactions.count() == 0


def test_unknown_customer_is_404(live_api, ingest):
    _problem(ingest.post("/interactions", json={"kind": "click", "customer_id": 12345}), 404)
    assert live_api.crm.interactions.count() == 0


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"occurred_at": "2024-05-01T12:00:00"}, 400, "body.occurred_at"),  # naive
        ({"occurred_at": "0001-01-01T00:00:00Z"}, 422, "body.occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59Z"}, 422, "body.occurred_at"),
        ({"occurred_at": "2150-01-01T00:00:00Z"}, 422, "body.occurred_at"),  # far future
        ({"customer_id": 2**63}, 400, "body.customer_id"),
        ({"customer_id": 2**80}, 400, "body.customer_id"),
        ({"amount": 2**70, "currency": "EUR"}, 422, "body.amount"),
        ({"amount": "1e400", "currency": "EUR"}, 422, "body.amount"),
        ({"amount": "NaN", "currency": "EUR"}, 422, "body.amount"),
        ({"properties": {"a": "x\u0000y"}}, 422, "body.properties.a"),
        ({"properties": {"k\u0000": 1}}, 422, None),
        ({"properties": {"a": _nested(40)}}, 422, None),
        ({"properties": ["not", "a", "mapping"]}, 400, "body.properties"),
        ({"unknown": 1}, 400, "body.unknown"),
    ],
)
def test_bad_input_is_rejected_and_nothing_stored(live_api, ingest, payload, status, field):
    c = live_api.crm.customers.create(email=f"bad{abs(hash(json.dumps(payload, default=str))) % 10**6}@example.com")
    item = {"kind": "click", "customer_id": c.id, **payload}
    _problem(ingest.post("/interactions", json=item), status, field)
    assert live_api.crm.interactions.count() == 0


def test_raw_bad_bodies(live_api, ingest):
    c = live_api.crm.customers.create(email="raw@example.com")
    headers = {"content-type": "application/json"}
    deep = b'{"kind":"click","customer_id":%d,"properties":' % c.id + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    assert 400 <= ingest.post("/interactions", content=deep, headers=headers).status_code < 500
    deep_list = b'{"kind":"click","customer_id":%d,"properties":{"a":' % c.id + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    assert 400 <= ingest.post("/interactions", content=deep_list, headers=headers).status_code < 500
    lone = b'{"kind":"click","customer_id":%d,"properties":{"a":"\\ud800"}}' % c.id
    _problem(ingest.post("/interactions", content=lone, headers=headers), 400)
    _problem(ingest.post("/interactions", content=b'{"kind": "click",', headers=headers), 400)
    r = ingest.post("/interactions", content=b"kind=click", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500
    assert live_api.crm.interactions.count() == 0


def test_batch_skip_stores_the_good_rows(live_api, ingest):
    c = live_api.crm.customers.create(email="b@example.com")
    future = (live_api.crm.now() + timedelta(days=30)).isoformat()
    items = [
        {"kind": "click", "customer_id": c.id},
        {"kind": "clck", "customer_id": c.id},
        {"kind": "signup", "email": "new@example.com", "idempotency_key": "s-1"},
        {"kind": "signup", "email": "new@example.com", "idempotency_key": "s-1"},
        {"kind": "click", "customer_id": c.id, "occurred_at": future},
        {"kind": "click", "customer_id": 999_999},
    ]
    r = ingest.post("/interactions/batch", params={"on_error": "skip"}, json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stored"], body["duplicates"], body["created_customers"]) == (2, 1, 1)
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [
        (1, "body.items[1].kind"),
        (4, "body.items[4].occurred_at"),
        (5, "body.items[5].customer_id"),
    ]
    assert all(x["problem"] and x["fix"] for x in body["rejected"])
    assert live_api.crm.interactions.count() == 2


def test_batch_raise_lists_every_bad_row_and_stores_nothing(live_api, ingest):
    c = live_api.crm.customers.create(email="r@example.com")
    future = (live_api.crm.now() + timedelta(days=30)).isoformat()
    items = [
        {"kind": "click", "customer_id": c.id},
        {"kind": "clck", "customer_id": c.id},
        {"kind": "click", "customer_id": c.id, "occurred_at": future},
        {"kind": "click", "customer_id": c.id, "properties": {"a": "\u0000"}},
        {"kind": "click", "email": "fresh@example.com"},
        {"kind": "purchase", "customer_id": c.id, "amount": "1.5"},
    ]
    body = _problem(ingest.post("/interactions/batch", json={"items": items}), 422)
    assert [e["field"] for e in body["errors"]] == [
        "body.items[1].kind",
        "body.items[2].occurred_at",
        "body.items[3].properties.a",
        "body.items[5].currency",
    ]
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 5]
    assert "nothing was stored" in body["detail"]
    assert live_api.crm.interactions.count() == 0
    assert live_api.crm.customers.find(email="fresh@example.com") is None  # no prospect either
    ok = ingest.post("/interactions/batch", json={"items": [items[0], items[4]]})
    assert ok.status_code == 200 and ok.json()["stored"] == 2 and ok.json()["rejected"] == []


def test_batch_limits(live_api, ingest):
    c = live_api.crm.customers.create(email="l@example.com")
    r = ingest.post("/interactions/batch", json={"items": [{"kind": "click", "customer_id": c.id}] * 10_001})
    assert r.status_code in (413, 422)
    if r.status_code == 422:
        assert r.json()["errors"][0]["field"] == "body.items"
    assert ingest.post("/interactions/batch", json={"items": []}).json()["stored"] == 0
    _problem(
        ingest.post("/interactions/batch", params={"on_error": "ignore"}, json={"items": []}), 400, "query.on_error"
    )
    _problem(ingest.post("/interactions/batch", json=[{"kind": "click"}]), 400)
    _problem(
        ingest.post("/interactions/batch", json={"items": [{"kind": "click", "customer_id": "abc"}]}),
        400,
        "body.items[0].customer_id",
    )
    assert live_api.crm.interactions.count() == 0


def test_a_large_batch_goes_through_the_fast_path(live_api, ingest):
    c = live_api.crm.customers.create(email="big@example.com")
    items = [{"kind": "page_view", "customer_id": c.id, "properties": {"n": i}} for i in range(5000)]
    r = ingest.post("/interactions/batch", json={"items": items})
    assert r.status_code == 200 and r.json()["stored"] == 5000
    assert live_api.crm.interactions.count() == 5000


def test_timeline_pages_without_duplicates_or_gaps(live_api, ingest, reader):
    crm = live_api.crm
    c = crm.customers.create(email="t@example.com")
    base = crm.now() - timedelta(days=1)
    items = [
        {
            "kind": "click" if i % 3 else "purchase",
            "customer_id": c.id,
            "occurred_at": (base + timedelta(minutes=i // 2)).isoformat(),  # pairs share a timestamp
            **({"amount": "1", "currency": "EUR"} if i % 3 == 0 else {}),
        }
        for i in range(53)
    ]
    assert ingest.post("/interactions/batch", json={"items": items}).json()["stored"] == 53
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        r = reader.get(f"/customers/{c.id}/timeline", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 6
    ids = [i["id"] for i in seen]
    assert len(ids) == len(set(ids)) == 53
    keys = [(i["occurred_at"], i["id"]) for i in seen]
    assert keys == sorted(keys, reverse=True)
    # filters
    only = reader.get(f"/customers/{c.id}/timeline", params={"kinds": "purchase", "limit": 1000}).json()
    assert len(only["items"]) == 18 and {i["kind"] for i in only["items"]} == {"purchase"}
    _problem(reader.get(f"/customers/{c.id}/timeline", params={"kinds": "purchse"}), 422, "query.kinds[0]")
    # a cursor is bound to its listing: filters, customer, workspace
    first = reader.get(f"/customers/{c.id}/timeline", params={"limit": 5}).json()
    _problem(
        reader.get(
            f"/customers/{c.id}/timeline", params={"limit": 5, "kinds": "click", "cursor": first["next_cursor"]}
        ),
        400,
        "query.cursor",
    )


def test_forged_cursors_and_bad_limits(live_api, reader):
    c = live_api.crm.customers.create(email="f@example.com")
    url = f"/customers/{c.id}/timeline"
    for cursor in ["garbage", "WyIyMDI0IiwxXQ", "A" * 3000, "' OR 1=1 --"]:
        r = reader.get(url, params={"cursor": cursor})
        assert r.status_code in (400, 422), (cursor, r.text)
        assert r.json()["errors"][0]["field"] == "query.cursor"
    for limit in (0, 1001, -1, 2**64):
        _problem(reader.get(url, params={"limit": limit}), 400)
    _problem(reader.get(f"/customers/{2**63}/timeline"), 400)
    _problem(reader.get("/customers/999999/timeline"), 404)
    _problem(reader.get(f"/interactions/{2**64}"), 400)


def test_customer_view(live_api, ingest, reader):
    c = live_api.crm.customers.create(email="v@example.com", name="Vera")
    for amount in ("10.50", "4.50"):
        ingest.post(
            "/interactions",
            json={"kind": "purchase", "customer_id": c.id, "amount": amount, "currency": "EUR", "channel": "web"},
        )
    ingest.post("/interactions", json={"kind": "click", "customer_id": c.id, "channel": "email"})
    r = reader.get(f"/customers/{c.id}/view", params={"recent": 2})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["customer"]["name"] == "Vera" and view["customer"]["email"] == "v@example.com"
    assert {"kind": "email", "value": "v@example.com"} in view["aliases"]
    purchases = next(s for s in view["summary"] if s["kind"] == "purchase")
    assert purchases["count"] == 2 and Decimal(purchases["amount"]) == Decimal("15")
    assert len(view["recent"]) == 2
    _problem(reader.get("/customers/424242/view"), 404)


def test_scopes(live_api, ingest):
    c = live_api.crm.customers.create(email="s@example.com")
    r = ingest.post("/interactions", json={"kind": "click", "customer_id": c.id})
    assert r.status_code == 201
    _problem(ingest.get(f"/interactions/{r.json()['id']}"), 403)
    _problem(ingest.get(f"/customers/{c.id}/timeline"), 403)
    reader = live_api.client(["read"])
    _problem(reader.post("/interactions", json={"kind": "click", "customer_id": c.id}), 403)
    _problem(reader.post("/interactions/batch", json={"items": []}), 403)
    _problem(live_api.client(scopes=None).post("/interactions", json={"kind": "click"}), 401)
    assert live_api.crm.interactions.count() == 1


def test_other_workspace_ids_are_404(live_api):
    a_ingest = live_api.client(["ingest", "read"], workspace="a")
    b_reader = live_api.client(["ingest", "read"], workspace="b")
    stored = a_ingest.post("/interactions", json={"kind": "click", "email": "ws@example.com"}).json()
    assert a_ingest.get(f"/interactions/{stored['id']}").status_code == 200
    _problem(b_reader.get(f"/interactions/{stored['id']}"), 404)
    _problem(b_reader.get(f"/customers/{stored['customer_id']}/timeline"), 404)
    _problem(b_reader.get(f"/customers/{stored['customer_id']}/view"), 404)
    _problem(b_reader.post("/interactions", json={"kind": "click", "customer_id": stored["customer_id"]}), 404)
    # a cursor of workspace a is refused in workspace b
    for _ in range(3):
        a_ingest.post("/interactions", json={"kind": "click", "customer_id": stored["customer_id"]})
    page = a_ingest.get(f"/customers/{stored['customer_id']}/timeline", params={"limit": 1}).json()
    b_cust = b_reader.post("/interactions", json={"kind": "click", "email": "wsb@example.com"}).json()["customer_id"]
    _problem(b_reader.get(f"/customers/{b_cust}/timeline", params={"cursor": page["next_cursor"]}), 400, "query.cursor")
    assert live_api.crm.in_workspace("b").interactions.count() == 1
