"""The customers resource over real HTTP: CRUD, upsert, search and cursors, aliases, merge, consent, bad input."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from ecrm_core import hookimpl
from ecrm_core.registry import AttributeDef

SORTS = ["id", "created_at", "updated_at", "name", "email"]


class Country:
    @hookimpl
    def ecrm_register_attributes(self):
        return [AttributeDef(name="country", type="string")]


@pytest.fixture
def live(crm_factory, live_api_factory):
    from ecrm_api import plugin

    return live_api_factory(crm_factory(plugins=[plugin, Country()]), rate_limit=None)


@pytest.fixture
def rw(live):
    return live.client(["read", "write"])


def stored(crm, workspace=None):
    """Every customer row (any workspace, tombstones included)."""
    t = crm.db.tables["customers"]
    q = sa.select(t.c.id, t.c.workspace_id, t.c.name, t.c.email)
    if workspace:
        q = q.where(t.c.workspace_id == workspace)
    with crm.db.read() as conn:
        return conn.execute(q.order_by(t.c.id)).all()


def problem_field(r):
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return [e["field"] for e in r.json().get("errors", [])]


# ---------------------------------------------------------------------------
# happy paths
# ---------------------------------------------------------------------------
def test_create_get_patch_delete(rw, live):
    body = {
        "email": "Ada@Example.com",
        "name": "Ada",
        "external_id": "u-1",
        "attributes": {"country": "KR", "plan": "pro"},
        "consent": {"email": {"status": "granted", "source": "signup"}},
        "timezone": "Asia/Seoul",
        "locale": "ko-KR",
        "aliases": [{"kind": "anonymous", "value": "cookie-1"}],
    }
    r = rw.post("/customers", json=body)
    assert r.status_code == 201, r.text
    ada = r.json()
    assert ada["email"] == "ada@example.com" and ada["attributes"] == {"country": "KR", "plan": "pro"}
    assert ada["consent"]["email"]["status"] == "granted" and ada["consent"]["email"]["source"] == "signup"
    assert set(ada) == {
        "id", "external_id", "email", "phone", "name", "attributes", "consent",
        "lifecycle_stage", "timezone", "locale", "created_at", "updated_at",
    }  # fmt: skip

    r = rw.post("/customers", json={"email": "ada@example.com"})
    assert r.status_code == 409 and "upsert" in r.json()["detail"]
    assert len(stored(live.crm)) == 1

    assert rw.get(f"/customers/{ada['id']}").json() == ada
    r = rw.patch(f"/customers/{ada['id']}", json={"name": None, "attributes": {"plan": None, "vip": True}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] is None and r.json()["attributes"] == {"country": "KR", "vip": True}
    r = rw.patch(f"/customers/{ada['id']}", json={"attributes": None, "lifecycle_stage": "active"})
    assert r.json()["attributes"] == {} and r.json()["lifecycle_stage"] == "active"
    r = rw.patch(f"/customers/{ada['id']}", json={"lifecycle_stage": None})
    assert r.status_code == 400 and problem_field(r) == ["body.lifecycle_stage"]

    live.crm.interactions.track("purchase", customer_id=ada["id"], amount="5", currency="EUR")
    assert rw.delete(f"/customers/{ada['id']}").status_code == 204
    assert rw.get(f"/customers/{ada['id']}").status_code == 404
    assert rw.delete(f"/customers/{ada['id']}").status_code == 404
    assert stored(live.crm) == [] and live.crm.interactions.count() == 0


def test_upsert_creates_then_updates(rw):
    r = rw.post("/customers/upsert", json={"external_id": "erp-7", "name": "Bo"})
    assert r.status_code == 201
    r2 = rw.post("/customers/upsert", json={"external_id": "erp-7", "email": "bo@example.com"})
    assert r2.status_code == 200 and r2.json()["id"] == r.json()["id"]
    assert r2.json()["name"] == "Bo" and r2.json()["email"] == "bo@example.com"
    r3 = rw.post("/customers/upsert", json={"name": "no identity"})
    assert r3.status_code == 422 and problem_field(r3) == ["body.external_id"]
    other = rw.post("/customers", json={"email": "x@example.com"}).json()
    r4 = rw.post("/customers/upsert", json={"external_id": "erp-7", "email": "x@example.com"})
    assert r4.status_code == 409 and f"customer {other['id']}" in r4.json()["detail"]


def test_merge_and_the_merged_id_answers_with_the_survivor(rw):
    a = rw.post("/customers", json={"email": "a@example.com"}).json()
    b = rw.post("/customers", json={"phone": "+82 10 1234 5678", "name": "Bee"}).json()
    r = rw.post(f"/customers/{b['id']}/merge", json={"into": a["id"], "reason": "same person"})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert (rec["source_id"], rec["target_id"], rec["reason"]) == (b["id"], a["id"], "same person")
    assert rec["actor"].startswith("api-key:")
    r = rw.get(f"/customers/{b['id']}")
    assert r.status_code == 200 and r.json()["id"] == a["id"] and r.json()["name"] == "Bee"
    assert r.headers["Content-Location"] == f"/customers/{a['id']}"
    assert "Content-Location" not in rw.get(f"/customers/{a['id']}").headers
    r = rw.patch(f"/customers/{b['id']}", json={"name": "x"})
    assert r.status_code == 409 and f"merged into {a['id']}" in r.json()["detail"]
    r = rw.post(f"/customers/{a['id']}/merge", json={"into": a["id"]})
    assert r.status_code == 422 and problem_field(r) == ["body.into"]
    assert rw.post(f"/customers/{a['id']}/merge", json={"into": 10**9}).status_code == 404
    r = rw.delete(f"/customers/{b['id']}")
    assert r.status_code == 409
    assert rw.delete(f"/customers/{a['id']}").status_code == 204
    assert rw.get(f"/customers/{b['id']}").status_code == 404  # the tombstone went too


def test_aliases(rw):
    a = rw.post("/customers", json={"email": "a@example.com"}).json()
    b = rw.post("/customers", json={"email": "b@example.com"}).json()
    r = rw.post(f"/customers/{a['id']}/aliases", json={"kind": "anonymous", "value": "cookie-9"})
    assert r.status_code == 201 and r.json() == {"kind": "anonymous", "value": "cookie-9"}
    assert rw.post(f"/customers/{a['id']}/aliases", json={"kind": "anonymous", "value": "cookie-9"}).status_code == 201
    items = rw.get(f"/customers/{a['id']}/aliases").json()["items"]
    assert items == [{"kind": "anonymous", "value": "cookie-9"}, {"kind": "email", "value": "a@example.com"}]
    r = rw.post(f"/customers/{b['id']}/aliases", json={"kind": "anonymous", "value": "cookie-9"})
    assert r.status_code == 409
    assert r.json()["owner_id"] == a["id"] and f"/customers/{b['id']}/merge" in r.json()["detail"]
    r = rw.post(f"/customers/{b['id']}/aliases", json={"kind": "email", "value": "not an address"})
    assert r.status_code == 422 and problem_field(r) == ["body.value"]
    r = rw.post(f"/customers/{b['id']}/aliases", json={"kind": "Bad Kind", "value": "x"})
    assert r.status_code == 400 and problem_field(r) == ["body.kind"]
    r = rw.delete(f"/customers/{a['id']}/aliases/email/a@example.com")
    assert r.status_code == 409 and f"PATCH /customers/{a['id']}" in r.json()["detail"]
    assert rw.delete(f"/customers/{a['id']}/aliases/anonymous/cookie-9").status_code == 204
    assert rw.delete(f"/customers/{a['id']}/aliases/anonymous/cookie-9").status_code == 404
    assert [i["kind"] for i in rw.get(f"/customers/{a['id']}/aliases").json()["items"]] == ["email"]


def test_consent(rw, live):
    a = rw.post("/customers", json={"email": "a@example.com"}).json()
    r = rw.put(f"/customers/{a['id']}/consent/email", json={"granted": True, "source": "form"})
    assert r.status_code == 200 and r.json()["consent"]["email"]["status"] == "granted"
    r = rw.put(f"/customers/{a['id']}/consent/email", json={"granted": False, "source": "unsubscribe"})
    assert r.json()["consent"]["email"] == {**r.json()["consent"]["email"], "status": "denied", "source": "unsubscribe"}
    history = live.crm.customers.consent_history(a["id"])
    assert [h["status"] for h in history] == ["granted", "denied"]
    r = rw.put(f"/customers/{a['id']}/consent/Not-A-Channel", json={"granted": True})
    assert r.status_code == 400 and problem_field(r) == ["path.channel"]
    assert rw.put("/customers/999/consent/email", json={"granted": True}).status_code == 404


# ---------------------------------------------------------------------------
# search and pagination
# ---------------------------------------------------------------------------
def seed(crm, n=26):
    """Customers with NULL and repeated names and e-mails, several per timestamp."""
    rows = [
        {
            "external_id": f"u{k}",
            "email": None if k % 4 == 0 else f"c{k % 5}-{k}@example.com",
            "name": None if k % 3 == 0 else f"Name {k % 4}",
            "attributes": {"country": "KR" if k % 2 else "JP"},
        }
        for k in range(n)
    ]
    for i in range(0, n, 5):  # one transaction (one timestamp) per five customers
        crm.customers.upsert_many(rows[i : i + 5])
    return [c.id for c in crm.customers.list(limit=1000)]


def direct(crm, sort):
    t = crm.db.tables["customers"]
    col = t.c[sort.lstrip("-")]
    if sort.startswith("-"):
        order = [col.desc().nulls_first(), t.c.id.desc()]
    else:
        order = [col.asc().nulls_last(), t.c.id.asc()]
    with crm.db.read() as conn:
        return list(conn.scalars(sa.select(t.c.id).where(t.c.merged_into.is_(None)).order_by(*order)))


@pytest.mark.parametrize("sort", [*SORTS, *(f"-{s}" for s in SORTS)])
def test_pagination_in_every_sort_visits_everyone_once(live, sort):
    seed(live.crm)
    client = live.client(["read"])
    seen, cursor, pages = [], None, 0
    while True:
        params = {"sort": sort, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/customers", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [c["id"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages >= 7
    assert len(seen) == len(set(seen)) == 26
    assert seen == direct(live.crm, sort)


def test_filters_and_where(live, rw):
    ids = seed(live.crm, 10)
    live.crm.interactions.track("purchase", customer_id=ids[1], amount="5", currency="EUR")
    live.crm.interactions.track("purchase", customer_id=ids[2], amount="5", currency="EUR")

    def found(**params):
        r = rw.get("/customers", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    assert found(where='country = "KR" and purchase.count(90d) >= 1') == [ids[1]]
    assert found(where='country = "KR"') == ids[1::2]
    assert found(external_id="u3") == [ids[3]]
    assert found(email="C1-1@example.com") == [ids[1]]
    assert found(lifecycle_stage="prospect") == [i for i in ids if i not in (ids[1], ids[2])]
    assert found(created_after="2000-01-01T00:00:00Z", created_before="2000-01-02T00:00:00+09:00") == []
    assert len(found(updated_after="2000-01-01T00:00:00Z")) == 10
    live.crm.segments.create("japan", 'country = "JP"')
    seg = live.crm.segments.get("japan")
    assert found(segment="japan") == ids[0::2] == found(segment=str(seg.id))
    assert found(segment="japan", where='country = "KR"') == []
    r = rw.get("/customers", params={"segment": "nope"})
    assert r.status_code == 422 and problem_field(r) == ["query.segment"]


def test_cursors_are_bound_to_filters_sort_and_workspace(live):
    seed(live.crm, 6)
    seed(live.crm.in_workspace("b"), 6)
    a, b = live.client(["read"]), live.client(["read"], workspace="b")
    cursor = a.get("/customers", params={"limit": 2, "sort": "name"}).json()["next_cursor"]
    assert a.get("/customers", params={"limit": 2, "sort": "name", "cursor": cursor}).status_code == 200
    bad = {
        "forged": "WzEsMV0AAAAAAAAAAAAAAAAAAAAA",
        "garbage": "not a cursor!",
        "altered": cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB"),
    }
    for why, c in bad.items():
        r = a.get("/customers", params={"limit": 2, "sort": "name", "cursor": c})
        assert r.status_code == 400 and problem_field(r) == ["query.cursor"], why
    for params in ({"sort": "-name"}, {"sort": "email"}, {"sort": "name", "where": 'country = "KR"'}):
        r = a.get("/customers", params={"limit": 2, "cursor": cursor, **params})
        assert r.status_code == 400 and problem_field(r) == ["query.cursor"], params
    r = b.get("/customers", params={"limit": 2, "sort": "name", "cursor": cursor})
    assert r.status_code == 400 and problem_field(r) == ["query.cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "password"}, "query.sort"),
        ({"sort": "id; DROP TABLE ecrm_customers"}, "query.sort"),
        ({"sort": "name desc"}, "query.sort"),
        ({"where": "1; DROP TABLE ecrm_customers; --"}, "query.where"),
        ({"where": "email = '' OR 1=1"}, "query.where"),
        ({"where": "__import__('os').system('true')"}, "query.where"),
        ({"password_hash": "x"}, "query.password_hash"),
        ({"limit": "0"}, "query.limit"),
        ({"limit": "1001"}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"created_after": "2026-01-01T00:00:00"}, "query.created_after"),
        ({"updated_after": "yesterday"}, "query.updated_after"),
        ({"email": "nobody"}, "query.email"),
        ({"lifecycle_stage": "no-such"}, "query.lifecycle_stage"),
        ({"name": "x\x00"}, "query.name"),
    ],
)
def test_search_rejects_what_is_not_whitelisted(live, params, field):
    seed(live.crm, 3)
    r = live.client(["read"]).get("/customers", params=params)
    assert 400 <= r.status_code < 500, r.text
    assert problem_field(r) == [field]
    if field == "query.sort":
        assert "created_at" in r.json()["errors"][0]["fix"]
    assert len(stored(live.crm)) == 3  # the table is still there, nothing executed


# ---------------------------------------------------------------------------
# workspaces, scopes, bad input
# ---------------------------------------------------------------------------
def test_other_workspace_ids_are_not_found(live):
    a, b = live.client(["read", "write"], workspace="a"), live.client(["read", "write"], workspace="b")
    mine = a.post("/customers", json={"email": "a@example.com", "name": "A"}).json()
    cid = mine["id"]
    other = b.post("/customers", json={"email": "b@example.com"}).json()
    assert b.get(f"/customers/{cid}").status_code == 404
    assert b.patch(f"/customers/{cid}", json={"name": "stolen"}).status_code == 404
    assert b.delete(f"/customers/{cid}").status_code == 404
    assert b.get(f"/customers/{cid}/aliases").status_code == 404
    assert b.post(f"/customers/{cid}/aliases", json={"kind": "anonymous", "value": "x"}).status_code == 404
    assert b.delete(f"/customers/{cid}/aliases/email/a@example.com").status_code == 404
    assert b.put(f"/customers/{cid}/consent/email", json={"granted": True}).status_code == 404
    assert b.post(f"/customers/{other['id']}/merge", json={"into": cid}).status_code == 404
    assert b.post(f"/customers/{cid}/merge", json={"into": other["id"]}).status_code == 404
    assert [c["id"] for c in b.get("/customers").json()["items"]] == [other["id"]]
    assert b.get("/customers", params={"email": "a@example.com"}).json()["items"] == []
    # the same e-mail may exist in each workspace
    assert b.post("/customers", json={"email": "a@example.com"}).status_code == 201
    assert a.get(f"/customers/{cid}").json() == mine


def test_scopes(live):
    read = live.client(["read"])
    ingest = live.client(["ingest"])
    cid = live.crm.customers.create(email="a@example.com").id
    for method, path, body in [
        ("POST", "/customers", {"email": "b@example.com"}),
        ("POST", "/customers/upsert", {"email": "b@example.com"}),
        ("PATCH", f"/customers/{cid}", {"name": "x"}),
        ("DELETE", f"/customers/{cid}", None),
        ("POST", f"/customers/{cid}/aliases", {"kind": "anonymous", "value": "c"}),
        ("DELETE", f"/customers/{cid}/aliases/email/a@example.com", None),
        ("PUT", f"/customers/{cid}/consent/email", {"granted": True}),
        ("POST", f"/customers/{cid}/merge", {"into": cid}),
    ]:
        r = read.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.status_code)
    assert ingest.get("/customers").status_code == 403
    assert ingest.get(f"/customers/{cid}").status_code == 403
    assert live.client(scopes=None).get("/customers").status_code == 401
    assert [(r.id, r.name) for r in stored(live.crm)] == [(cid, None)]
    assert len(live.crm.customers.aliases(cid)) == 1


def _deep(n):
    value = {}
    for _ in range(n - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "field"),
    [
        ("POST", "/customers", {"name": "Ada\x00"}, 422, "body.name"),
        ("POST", "/customers", {"name": "Ada", "password": "x"}, 400, "body.password"),
        ("POST", "/customers", {"email": 5}, 400, "body.email"),
        ("POST", "/customers", {"name": "x" * 201}, 400, "body.name"),
        ("POST", "/customers", {"email": "a@example.com", "attributes": _deep(33)}, 422, "body.attributes"),
        ("POST", "/customers", {"email": "a@example.com", "attributes": {"k": [[[[1]]]], "d": _deep(31)}}, 201, None),
        (
            "POST",
            "/customers",
            {"email": "a@example.com", "attributes": {f"k{i}": i for i in range(1001)}},
            422,
            "body.attributes",
        ),
        ("POST", "/customers", {"email": "a@example.com", "attributes": {"n": 2**64}}, 422, "body.attributes.n"),
        ("POST", "/customers", {"email": "a@example.com", "attributes": {"a\x00": 1}}, 422, None),
        ("POST", "/customers", {"email": "a@example.com", "attributes": [1]}, 400, "body.attributes"),
        (
            "POST",
            "/customers",
            {"email": "a@example.com", "consent": {"email": {"status": "granted", "at": "2026-01-01T00:00:00"}}},
            400,
            None,
        ),
        ("POST", "/customers", {"email": "a@example.com", "timezone": "Mars/Olympus"}, 422, "body.timezone"),
        ("POST", "/customers", {"email": "a@example.com", "lifecycle_stage": "nope"}, 422, "body.lifecycle_stage"),
        ("POST", "/customers", b'{"name": "\\ud800"}', 400, None),
        ("POST", "/customers", b'{"name": "Ada"', 400, None),
        ("POST", "/customers", b"[" * 100_000 + b"]" * 100_000, 400, None),
        ("POST", "/customers/upsert", {"email": "a@example.com", "aliases": [{"kind": "x"}]}, 400, None),
        ("GET", "/customers/9223372036854775808", None, 400, "path.customer_id"),
        ("GET", "/customers/99999999999999999999999999", None, 400, "path.customer_id"),
        ("GET", "/customers/0", None, 400, "path.customer_id"),
        ("PATCH", "/customers/9223372036854775808", {"name": "x"}, 400, "path.customer_id"),
        ("DELETE", "/customers/-1", None, 400, "path.customer_id"),
        ("POST", "/customers/1/merge", {"into": 2**63}, 400, "body.into"),
    ],
)
def test_bad_input_is_a_precise_4xx_and_stores_nothing(live, method, path, content, status, field):
    rw = live.client(["read", "write"])
    kwargs = {}
    if isinstance(content, bytes):
        kwargs = {"content": content, "headers": {"content-type": "application/json"}}
    elif content is not None:
        kwargs = {"json": content}
    r = rw.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    if status == 201:
        return
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in r.text
    if field is not None:
        fields = problem_field(r)
        assert len(fields) == 1 and fields[0].startswith(field), r.json()
    assert stored(live.crm) == []


def test_a_body_must_be_json_415_otherwise(rw, live):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", ""):
        r = rw.post("/customers", content=json.dumps({"name": "x"}), headers={"content-type": ctype})
        assert r.status_code == 415, (ctype, r.text)
        assert problem_field(r) == ["header.content-type"]
    r = rw.post("/customers", content=json.dumps({"email": "a@example.com"}),
                headers={"content-type": "application/json; charset=utf-8"})  # fmt: skip
    assert r.status_code == 201
    assert len(stored(live.crm)) == 1


def test_openapi_lists_the_customer_routes(live):
    spec = live.client(scopes=None).get("/docs/openapi.json").json()
    paths = spec["paths"]
    assert {"get", "post"} <= set(paths["/customers"])
    assert {"get", "patch", "delete"} <= set(paths["/customers/{customer_id}"])
    assert "409" in paths["/customers"]["post"]["responses"]
    params = {p["name"] for p in paths["/customers"]["get"]["parameters"]}
    assert {"where", "sort", "cursor", "limit", "segment"} <= params


def test_delete_with_a_failing_plugin_erasure_is_a_500_that_changes_nothing_and_leaks_nothing(rw, live):
    class Archive:
        @hookimpl
        def ecrm_customers_deleting(self, conn):
            raise RuntimeError("connect to postgresql://archive:s3cret@db/archive failed")

    cid = rw.post("/customers", json={"email": "keep@example.com"}).json()["id"]
    live.crm.register_plugin(Archive(), name="archive")
    try:
        r = rw.delete(f"/customers/{cid}")
    finally:
        live.crm.unregister_plugin("archive")
    assert r.status_code == 500 and r.json()["type"] == "urn:ecrm:problem:plugin-failed", r.text
    assert r.json()["plugin"] == "archive" and "nothing was changed" in r.json()["detail"]
    assert "s3cret" not in r.text
    assert rw.get(f"/customers/{cid}").status_code == 200
    assert rw.delete(f"/customers/{cid}").status_code == 204
