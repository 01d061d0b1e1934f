"""Bad input against every write route of the app, over real HTTP.

Each JSON-taking route (from the route table, so new routes are covered) gets
malformed JSON, the wrong content type, nesting 100,000 deep, a lone
surrogate, a NUL byte, integers beyond 2^63 and a body over the size limit.
Every answer must be a 4xx problem document (no 500, no traceback) and
nothing may be stored.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ecrm_api.app import route_table

# Ids in paths: the customer/segment/offer made by the fixture.
FILL = {
    "customer_id": "C",
    "interaction_id": "I",
    "ref": "R",
    "kind": "email",
    "value": "x@example.com",
    "channel": "email",
}

BAD_BODIES = {
    "malformed": (b'{"email": "ada@example.com",', "application/json"),
    "not-json-content-type": (b'{"email": "ada@example.com"}', "text/plain"),
    "deep-nesting": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json"),
    "lone-surrogate": (
        b'{"name": "\\ud800", "email": "x@example.com", "event": "\\ud800", "kind": "\\ud800"}',
        "application/json",
    ),
    "nul-byte": (
        b'{"name": "a\\u0000b", "email": "a\\u0000@example.com", "kind": "purchase\\u0000"}',
        "application/json",
    ),
    "huge-int": (
        b'{"customer_id": 123456789012345678901234567890, "into": 18446744073709551616, "amount": 1e400}',
        "application/json",
    ),
    "array-instead-of-object": (b"[1, 2, 3]", "application/json"),
    "empty-body": (b"", "application/json"),
}


def _rows(crm) -> dict[str, int]:
    out = {}
    with crm.db.read() as conn:
        for name, table in sorted(crm.db.tables.items()):
            if name != "api_keys":
                out[name] = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return out


@pytest.fixture
def target(api_crm, live_api_factory):
    crm = api_crm
    c = crm.customers.create(email="ada@example.com", name="Ada")
    i = crm.interactions.track("purchase", customer_id=c.id, amount="1.00", currency="EUR")
    crm.segments.create("static-list", static=True, customer_ids=[c.id])
    crm.offers.create("promo", "Promo")
    live = live_api_factory(crm, rate_limit=None, max_body_bytes=2_000_000, tracking_sync=True)
    return live, {"C": str(c.id), "I": str(i.id)}


def _write_routes(app):
    """Routes that take a JSON body (routes without one, like refresh, ignore bodies)."""
    for path, method, handler in route_table(app):
        if method in ("POST", "PUT", "PATCH") and "data" in handler.parsed_fn_signature.parameters:
            yield method, path


def _url(path: str, ids: dict) -> str:
    import re

    def one(m):
        value = FILL[m.group(1)]
        if value == "R":
            return "static-list" if path.startswith("/segments") else "promo"
        return ids.get(value, value)

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_are_4xx_problems_and_store_nothing(target, case):
    live, ids = target
    client = live.client(["admin"])
    before = _rows(live.crm)
    body, content_type = BAD_BODIES[case]
    seen = 0
    for method, path in _write_routes(live.app):
        url = _url(path, ids)
        r = client.request(method, url, content=body, headers={"Content-Type": content_type})
        assert 400 <= r.status_code < 500, f"{case}: {method} {url} -> {r.status_code} {r.text[:300]}"
        if case == "not-json-content-type":
            assert r.status_code == 415, (method, url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), (method, url, r.headers)
        problem = r.json()
        assert problem["status"] == r.status_code and problem["type"].startswith("urn:ecrm:problem:")
        assert "Traceback" not in r.text and 'File "' not in r.text
        seen += 1
    assert seen >= 10
    assert _rows(live.crm) == before


def test_oversized_body_is_413_before_it_is_read(api_crm, live_api_factory):
    live = live_api_factory(api_crm, rate_limit=None, tracking_sync=True)
    client = live.client(["admin"])
    big = b'{"name": "' + b"x" * 1_100_000 + b'"}'
    r = client.post("/customers", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["type"] == "urn:ecrm:problem:too-large"
    assert api_crm.customers.count() == 0


def test_a_server_bug_is_a_500_problem_without_internals(api_crm, live_api_factory, caplog):
    from litestar import get

    @get("/boom", opt={"scope": "read"})
    async def boom() -> dict:
        raise RuntimeError("secret internal detail")

    from ecrm_api.app import create_app
    from ecrm_api.testing import serve_in_thread

    app = create_app(api_crm, route_handlers=[boom], rate_limit=None)
    url, stop = serve_in_thread(app)
    try:
        import httpx

        token = app.state["ecrm"].keys.create("t", scopes=["read"]).token
        r = httpx.get(f"{url}/boom", headers={"Authorization": f"Bearer {token}"})
    finally:
        stop()
    assert r.status_code == 500
    body = r.json()
    assert body["type"] == "urn:ecrm:problem:internal" and body["error_id"]
    assert "secret internal detail" not in r.text and "Traceback" not in r.text
    assert any(body["error_id"] in rec.getMessage() for rec in caplog.records)
