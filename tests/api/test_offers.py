"""Offers over real HTTP: CRUD, live offers, a customer's eligible offers, rules, bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest


@pytest.fixture
def writer(live_api):
    return live_api.client(["read", "write"])


def _problem(r, status, field=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def _count(live_api):
    return len(live_api.crm.offers.list())


def test_crud(live_api, writer):
    r = writer.post(
        "/offers",
        json={
            "code": "spring-sale",
            "name": "Spring sale",
            "kind": "discount",
            "content": {"percent": 10},
            "priority": 5,
            "channels": ["email", "web"],
            "eligibility": "purchase.count() >= 1",
        },
    )
    assert r.status_code == 201, r.text
    offer = r.json()
    assert offer["eligibility"] == {"event": {"kind": "purchase", "agg": "count"}, "op": "ge", "value": 1}
    assert offer["eligibility_text"] == "purchase.count() >= 1"
    assert writer.get(f"/offers/{offer['id']}").json() == offer
    assert writer.get("/offers/spring-sale").json() == offer
    _problem(writer.post("/offers", json={"code": "spring-sale", "name": "again"}), 409)
    patched = writer.patch("/offers/spring-sale", json={"priority": 7, "eligibility": None, "status": "paused"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["priority"] == 7 and patched.json()["eligibility"] is None
    assert [o["code"] for o in writer.get("/offers", params={"status": "paused"}).json()["items"]] == ["spring-sale"]
    assert writer.get("/offers", params={"status": "active"}).json()["items"] == []
    _problem(writer.get("/offers", params={"status": "gone"}), 400)
    assert writer.delete(f"/offers/{offer['id']}").status_code == 204
    _problem(writer.get("/offers/spring-sale"), 404)
    _problem(writer.delete("/offers/spring-sale"), 404)


def test_active_and_eligible(live_api, writer):
    crm = live_api.crm
    now = crm.now()
    buyer = crm.customers.create(email="buyer@example.com")
    other = crm.customers.create(email="other@example.com")
    crm.interactions.track("purchase", customer_id=buyer.id, amount="30", currency="EUR")
    for body in (
        {
            "code": "for-buyers",
            "name": "B",
            "eligibility": {"event": {"kind": "purchase", "agg": "count"}, "op": "ge", "value": 1},
            "priority": 2,
        },
        {"code": "everyone", "name": "E", "channels": ["web"]},
        {"code": "later", "name": "L", "valid_from": (now + timedelta(days=10)).isoformat()},
        {"code": "draft-one", "name": "D", "status": "draft"},
    ):
        assert writer.post("/offers", json=body).status_code == 201
    active = [o["code"] for o in writer.get("/offers/active").json()["items"]]
    assert active == ["for-buyers", "everyone"]
    assert [o["code"] for o in writer.get("/offers/active", params={"channel": "email"}).json()["items"]] == [
        "for-buyers"
    ]
    later = (now + timedelta(days=11)).isoformat()
    assert "later" in [o["code"] for o in writer.get("/offers/active", params={"at": later}).json()["items"]]
    assert [o["code"] for o in writer.get(f"/customers/{buyer.id}/offers").json()["items"]] == [
        "for-buyers",
        "everyone",
    ]
    assert [o["code"] for o in writer.get(f"/customers/{other.id}/offers").json()["items"]] == ["everyone"]
    assert [
        o["code"] for o in writer.get(f"/customers/{other.id}/offers", params={"channel": "email"}).json()["items"]
    ] == []
    _problem(writer.get("/customers/999999/offers"), 404)
    _problem(writer.get("/offers/active", params={"at": "2024-01-01T00:00:00"}), 422, "query.at")
    _problem(writer.get("/offers/active", params={"at": "9999-01-01T00:00:00Z"}), 422, "query.at")
    _problem(writer.get("/offers/active", params={"at": "yesterday"}), 422, "query.at")
    _problem(writer.get("/offers/active", params={"at": "1.7e-242"}), 422, "query.at")  # no Unix-time guessing
    _problem(writer.get(f"/customers/{buyer.id}/offers", params={"at": "2024-01-01"}), 422, "query.at")
    _problem(writer.get("/offers/active", params={"channel": "Not A Channel"}), 422, "query.channel")


def test_eligibility_rules_are_validated(live_api, writer):
    body = _problem(
        writer.post("/offers", json={"code": "x", "name": "X", "eligibility": "purchase.cont() > 1"}),
        422,
        "body.eligibility",
    )
    err = body["errors"][0]
    assert (err["line"], err["column"]) == (1, 10) and "^" in err["context"]
    assert 'did you mean "count"?' in err["fix"]
    body = _problem(
        writer.post(
            "/offers",
            json={"code": "x", "name": "X", "eligibility": {"all": [{"field": "email", "op": "matches", "value": 1}]}},
        ),
        422,
        "body.eligibility",
    )
    assert body["errors"][0]["path"] == "all[0].op"
    _problem(writer.post("/offers", json={"code": "x", "name": "X", "eligibility": "id; drop table offers"}), 422)
    nested = "(" * 5000 + "purchase.count() >= 1" + ")" * 5000
    _problem(writer.post("/offers", json={"code": "x", "name": "X", "eligibility": nested}), 422, "body.eligibility")
    writer.post("/offers", json={"code": "ok", "name": "OK"})
    _problem(writer.patch("/offers/ok", json={"eligibility": "nope("}), 422, "body.eligibility")
    assert _count(live_api) == 1 and live_api.crm.offers.get("ok").eligibility is None


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"code": "Bad Code"}, 422, "body.code"),
        ({"code": "active"}, 422, "body.code"),
        ({"valid_from": "2024-01-01T00:00:00"}, 400, "body.valid_from"),
        ({"valid_from": "0001-01-01T00:00:00Z"}, 422, "body.valid_from"),
        ({"valid_from": "2025-01-02T00:00:00Z", "valid_until": "2025-01-01T00:00:00Z"}, 422, "body.valid_until"),
        ({"priority": 2**63}, 400, "body.priority"),
        ({"content": {"a": "\u0000"}}, 422, "body.content.a"),
        ({"status": "live"}, 400, "body.status"),
        ({"surprise": 1}, 400, "body.surprise"),
    ],
)
def test_bad_offers_store_nothing(live_api, writer, payload, status, field):
    _problem(writer.post("/offers", json={"code": "c", "name": "N", **payload}), status, field)
    assert _count(live_api) == 0


def test_bad_refs(writer):
    _problem(writer.get(f"/offers/{2**64}"), 422, "path.ref")
    _problem(writer.get("/offers/UPPER"), 400)
    _problem(writer.get("/offers/12345"), 404)


def test_scopes_and_workspaces(live_api):
    a = live_api.client(["read", "write"], workspace="a")
    b = live_api.client(["read", "write"], workspace="b")
    offer = a.post("/offers", json={"code": "mine", "name": "Mine"}).json()
    for ref in (offer["id"], "mine"):
        _problem(b.get(f"/offers/{ref}"), 404)
        _problem(b.patch(f"/offers/{ref}", json={"priority": 1}), 404)
        _problem(b.delete(f"/offers/{ref}"), 404)
    assert b.get("/offers").json()["items"] == [] and b.get("/offers/active").json()["items"] == []
    reader = live_api.client(["read"], workspace="a")
    _problem(reader.post("/offers", json={"code": "x", "name": "X"}), 403)
    _problem(reader.patch("/offers/mine", json={"priority": 1}), 403)
    _problem(reader.delete("/offers/mine"), 403)
    _problem(live_api.client(["ingest"], workspace="a").get("/offers"), 403)
    assert live_api.crm.in_workspace("a").offers.get("mine").priority == 0
