"""The API's foundation: app factory, keys, auth, guards, problems — over real HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ecrm_api.app import create_app, route_table
from ecrm_api.auth import route_policy
from litestar import get


def test_health_is_public_and_me_needs_a_key(live_api):
    anon = live_api.client(scopes=None)
    assert anon.get("/health").json() == {"status": "ok"}
    r = anon.get("/me")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == "urn:ecrm:problem:unauthorized"
    assert "ecrm keys create" in body["detail"]
    assert "WWW-Authenticate" in r.headers
    me = live_api.client(["read"]).get("/me").json()
    assert me["scopes"] == ["read"] and me["workspace"] == "default"


def test_ready_reports_schema(live_api):
    r = live_api.client(scopes=None).get("/ready")
    assert r.status_code == 200 and r.json()["schema_up_to_date"] is True


def test_scope_is_enforced(live_api):
    ingest_only = live_api.client(["ingest"])
    r = ingest_only.get("/plugins")
    assert r.status_code == 403
    assert "'read' scope" in r.json()["detail"]
    plugins = live_api.client(["read"]).get("/plugins").json()
    assert any(p["name"] == "api" for p in plugins["plugins"])


def test_revoked_expired_and_forged_keys_are_401(live_api):
    new = live_api.keys.create("temp", scopes=["read"])
    client = live_api.client(token=new.token)
    assert client.get("/me").status_code == 200
    live_api.keys.revoke(new.key.key_id)
    assert client.get("/me").status_code == 401
    forged = new.token[:-2] + ("AA" if not new.token.endswith("AA") else "BB")
    assert live_api.client(token=forged).get("/me").status_code == 401
    assert live_api.client(token="not-a-key").get("/me").status_code == 401
    expired = live_api.keys.create("old", scopes=["read"], expires_at=live_api.crm.now() - timedelta(seconds=1))
    assert live_api.client(token=expired.token).get("/me").status_code == 401


def test_basic_auth_with_the_key_as_user_name(live_api):
    import httpx

    token = live_api.token(["read"])
    r = httpx.get(f"{live_api.url}/me", auth=(token, ""))
    assert r.status_code == 200


def test_rotation_keeps_the_old_key_for_the_grace_period(live_api):
    old = live_api.keys.create("ci", scopes=["read", "write"])
    new = live_api.keys.rotate(old.key.key_id, grace=timedelta(hours=1))
    assert new.key.scopes == old.key.scopes and new.key.rotated_from == old.key.key_id
    assert live_api.client(token=old.token).get("/me").status_code == 200
    assert live_api.client(token=new.token).get("/me").status_code == 200
    now_rotated = live_api.keys.rotate(new.key.key_id)
    assert live_api.client(token=new.token).get("/me").status_code == 401
    assert live_api.client(token=now_rotated.token).get("/me").status_code == 200


def test_keys_are_stored_hashed(live_api):
    new = live_api.keys.create("x", scopes=["read"])
    t = live_api.crm.db.tables["api_keys"]
    import sqlalchemy as sa

    with live_api.crm.db.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t))]
    secret = new.token.rsplit("_", 1)[1]
    assert all(secret not in str(v) for row in rows for v in row.values())


def test_every_route_declares_a_policy(live_api):
    table = list(route_table(live_api.app))
    assert table
    for path, method, handler in table:
        kind, _value = route_policy(handler)
        assert kind in ("scope", "public"), (path, method)


def test_a_handler_without_a_policy_is_refused(api_crm):
    @get("/naked")
    async def naked() -> dict:
        return {}

    with pytest.raises(ValueError, match="declares no access policy"):
        create_app(api_crm, route_handlers=[naked])


def test_unknown_route_is_a_problem(live_api):
    r = live_api.client().get("/nope")
    assert r.status_code == 404 and r.json()["type"] == "urn:ecrm:problem:not-found"


def test_openapi_is_3_1_and_public(live_api):
    r = live_api.client(scopes=None).get("/docs/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.1")
    assert "/me" in spec["paths"]
    page = live_api.client(scopes=None).get("/docs")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_rate_limit_answers_429_with_retry_after(api_crm, live_api_factory):
    live = live_api_factory(api_crm, rate_limit=("minute", 3))
    client = live.client(["read"])
    codes = [client.get("/me").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = client.get("/me")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["type"] == "urn:ecrm:problem:rate-limited"
    # another key has its own budget
    assert live.client(["read"]).get("/me").status_code == 200
