"""Segments over real HTTP: CRUD, preview, members, static lists, refresh, rules, bad input."""

from __future__ import annotations

import pytest


@pytest.fixture
def writer(live_api):
    return live_api.client(["read", "write"])


@pytest.fixture
def people(live_api):
    crm = live_api.crm
    out = []
    for i in range(7):
        c = crm.customers.create(email=f"p{i}@example.com")
        if i % 2 == 0:
            crm.interactions.track("purchase", customer_id=c.id, amount="20", currency="EUR")
        out.append(c.id)
    return out


def _problem(r, status, field=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def _slugs(live_api, workspace=None):
    crm = live_api.crm if workspace is None else live_api.crm.in_workspace(workspace)
    return [s.slug for s in crm.segments.list()]


def test_dynamic_segment_crud(live_api, writer, people):
    r = writer.post("/segments", json={"slug": "buyers", "rule": "purchase.count() >= 1", "name": "Buyers"})
    assert r.status_code == 201, r.text
    seg = r.json()
    assert seg["kind"] == "dynamic" and seg["member_count"] == 4 and seg["text"] == "purchase.count() >= 1"
    assert writer.get("/segments/buyers").json() == writer.get(f"/segments/{seg['id']}").json()
    assert [s["slug"] for s in writer.get("/segments").json()["items"]] == ["buyers"]
    tree = {"event": {"kind": "purchase", "agg": "sum"}, "op": "gt", "value": 10}
    r = writer.patch("/segments/buyers", json={"rule": tree, "description": "spent > 10"})
    assert r.status_code == 200 and r.json()["rule"] == tree and r.json()["description"] == "spent > 10"
    _problem(writer.post("/segments", json={"slug": "buyers", "rule": "purchase.count() >= 1"}), 409)
    body = _problem(writer.get("/segments/buyer"), 404)
    assert 'did you mean "buyers"?' in body["detail"]
    assert writer.delete("/segments/buyers").status_code == 204
    _problem(writer.get("/segments/buyers"), 404)
    assert _slugs(live_api) == []


def test_preview_stores_nothing(live_api, writer, people):
    r = writer.post("/segments/preview", json={"rule": "purchase.count() >= 1", "sample": 2})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["count"] == 4 and p["sample"] == people[0:3:2] and "SELECT" in p["sql"] and p["text"]
    attrs = writer.post("/segments/preview", json={"rule": 'attributes.country == "KR"'}).json()
    assert attrs["count"] == 0 and any("reads every row" in w for w in attrs["warnings"])
    _problem(writer.post("/segments/preview", json={"rule": "purchase.count() >= 1", "sample": 1001}), 400)
    assert _slugs(live_api) == []
    # preview needs only read
    assert live_api.client(["read"]).post("/segments/preview", json={"rule": "email exists"}).status_code == 200


def test_members_pagination(live_api, writer, people):
    writer.post("/segments", json={"slug": "all", "rule": "email exists"})
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = writer.get("/segments/all/members", params=params).json()
        seen += [m["customer_id"] for m in page["items"]]
        assert all(m["entered_at"] for m in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(people)
    for forged in ("xyz", cursor or "WzFd", "' OR 1=1"):
        r = writer.get("/segments/all/members", params={"cursor": forged})
        assert r.status_code in (400, 422) and r.json()["errors"][0]["field"] == "query.cursor"
    writer.post("/segments", json={"slug": "other", "rule": "email exists"})
    first = writer.get("/segments/all/members", params={"limit": 1}).json()["next_cursor"]
    _problem(writer.get("/segments/other/members", params={"cursor": first}), 400, "query.cursor")
    _problem(writer.get("/segments/all/members", params={"limit": 0}), 400)


def test_static_lists(live_api, writer, people):
    r = writer.post("/segments", json={"slug": "beta", "static": True, "customer_ids": people[:2]})
    assert r.status_code == 201 and r.json()["member_count"] == 2
    r = writer.post("/segments/beta/members", json={"customer_ids": people[1:4]})
    assert r.status_code == 200 and r.json()["entered"] == people[2:4]
    r = writer.request("DELETE", "/segments/beta/members", json={"customer_ids": [people[0], people[6]]})
    assert r.status_code == 200 and r.json()["exited"] == [people[0]] and r.json()["segment"]["member_count"] == 3
    _problem(
        writer.post("/segments/beta/members", json={"customer_ids": [people[0], 999_999]}), 422, "body.customer_ids[1]"
    )
    _problem(writer.post("/segments/beta/members", json={"customer_ids": [2**63]}), 400)
    _problem(writer.post("/segments/beta/members", json={"customer_ids": []}), 400)
    assert live_api.crm.segments.count("beta") == 3  # nothing changed by the rejected requests
    writer.post("/segments", json={"slug": "dyn", "rule": "email exists"})
    _problem(writer.post("/segments/dyn/members", json={"customer_ids": people[:1]}), 422, "path.ref")
    _problem(
        writer.post("/segments", json={"slug": "s2", "static": True, "customer_ids": [999_999]}),
        422,
        "body.customer_ids[0]",
    )
    _problem(writer.post("/segments", json={"slug": "s3", "static": True, "rule": "email exists"}), 422, "body.rule")
    _problem(writer.patch("/segments/beta", json={"rule": "email exists"}), 422, "body.rule")
    assert _slugs(live_api) == ["beta", "dyn"]


def test_refresh(live_api, writer, people):
    writer.post("/segments", json={"slug": "buyers", "rule": "purchase.count() >= 1"})
    with live_api.crm.segments.paused():
        live_api.crm.interactions.track("purchase", customer_id=people[1], amount="1", currency="EUR")
    r = writer.post("/segments/buyers/refresh")
    assert r.status_code == 200, r.text
    assert r.json()["entered"] == 1 and r.json()["changes"][0]["entered"] == [people[1]]
    _problem(live_api.client(["read"]).post("/segments/buyers/refresh"), 403)
    _problem(writer.post("/segments/nope/refresh"), 404)


def test_rule_errors(live_api, writer, people):
    body = _problem(
        writer.post("/segments", json={"slug": "typo", "rule": 'purchase.count() >= 1 and\n  contry == "KR"'}),
        422,
        "body.rule",
    )
    err = body["errors"][0]
    assert (err["line"], err["column"]) == (2, 3) and err["context"].splitlines()[1].strip() == "^"
    assert err["path"] == "all[1].field"
    body = _problem(
        writer.post("/segments", json={"slug": "typo", "rule": {"any": [{"field": "email", "op": "like"}]}}),
        422,
        "body.rule",
    )
    assert body["errors"][0]["path"] == "any[0].op" and "line" not in body["errors"][0]
    for rule in (
        "id; drop table customers",
        "email == 'x' or 1=1; --",
        "(" * 3000 + "email exists" + ")" * 3000,
        "not " * 3000 + "email exists",
        "",
    ):
        _problem(writer.post("/segments", json={"slug": "sql", "rule": rule}), 422, "body.rule")
    deep: dict = {"field": "email", "op": "exists"}
    for _ in range(200):
        deep = {"not": deep}
    _problem(writer.post("/segments", json={"slug": "deep", "rule": deep}), 422, "body.rule")
    raw = b'{"slug": "deep", "rule": ' + b'{"not": ' * 10_000 + b'{"field": "email", "op": "exists"}' + b"}" * 10_001
    r = writer.post("/segments", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    r = writer.post(
        "/segments/preview", content=raw.replace(b'"slug": "deep", ', b""), headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500
    _problem(writer.post("/segments", json={"slug": "self", "rule": 'segment("self")'}), 422, "body.rule")
    _problem(writer.post("/segments", json={"slug": "preview", "rule": "email exists"}), 422, "body.slug")
    _problem(writer.post("/segments", json={"slug": "Bad Slug", "rule": "email exists"}), 400, "body.slug")
    assert _slugs(live_api) == []


def test_cycles_and_dependencies(live_api, writer, people):
    writer.post("/segments", json={"slug": "a", "rule": "purchase.count() >= 1"})
    writer.post("/segments", json={"slug": "b", "rule": 'segment("a")'})
    body = _problem(writer.patch("/segments/a", json={"rule": 'segment("b")'}), 422, "body.rule")
    assert "a → b → a" in body["errors"][0]["problem"]
    body = _problem(writer.delete("/segments/a"), 409)
    assert "used by b" in body["detail"]
    writer.post("/offers", json={"code": "o", "name": "O", "eligibility": 'segment("b")'})
    assert "offer o" in _problem(writer.delete("/segments/b"), 409)["detail"]
    assert live_api.crm.segments.get("a").rule == {
        "event": {"kind": "purchase", "agg": "count"},
        "op": "ge",
        "value": 1,
    }


def test_scopes_and_workspaces(live_api, people):
    a = live_api.client(["read", "write"], workspace="a")
    b = live_api.client(["read", "write"], workspace="b")
    seg = a.post("/segments", json={"slug": "mine", "static": True}).json()
    for ref in (seg["id"], "mine"):
        _problem(b.get(f"/segments/{ref}"), 404)
        _problem(b.patch(f"/segments/{ref}", json={"name": "x"}), 404)
        _problem(b.delete(f"/segments/{ref}"), 404)
        _problem(b.get(f"/segments/{ref}/members"), 404)
        _problem(b.post(f"/segments/{ref}/members", json={"customer_ids": [1]}), 404)
        _problem(b.post(f"/segments/{ref}/refresh"), 404)
    assert b.get("/segments").json()["items"] == []
    # a's customers are not b's: people live in the default workspace
    _problem(a.post("/segments/mine/members", json={"customer_ids": people[:1]}), 422, "body.customer_ids[0]")
    reader = live_api.client(["read"], workspace="a")
    _problem(reader.post("/segments", json={"slug": "x", "static": True}), 403)
    _problem(reader.delete("/segments/mine"), 403)
    ingest = live_api.client(["ingest"], workspace="a")
    _problem(ingest.get("/segments"), 403)
    assert _slugs(live_api, "a") == ["mine"] and _slugs(live_api, "b") == []
