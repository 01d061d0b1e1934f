"""Workspace isolation over HTTP: a key of one workspace never sees or changes another's data.

The matrix is built from the app's own route table, so a route added later
is covered (or the test fails, asking for a way to fill its parameters):
every route that names a resource by id is called with the ids of workspace
"a" and a key of workspace "b" (admin scope, so only the workspace can stop
it).  Reads must answer 404 — as for ids that do not exist, so ids cannot be
probed — and writes must change nothing in "a".
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from ecrm_api.app import route_table
from ecrm_api.auth import route_policy

# A plausible body per write route, so the answer is about the id, not the body.
BODIES = {
    ("PATCH", "/customers/{customer_id:int}"): {"name": "changed by b"},
    ("POST", "/customers/{customer_id:int}/aliases"): {"kind": "email", "value": "b@example.com"},
    ("POST", "/customers/{customer_id:int}/merge"): {"into": "B_CUSTOMER"},
    ("PUT", "/customers/{customer_id:int}/consent/{channel:str}"): {"granted": False},
    ("PATCH", "/offers/{ref:str}"): {"name": "changed by b"},
    ("PATCH", "/segments/{ref:str}"): {"description": "changed by b"},
    ("POST", "/segments/{ref:str}/members"): {"customer_ids": ["B_CUSTOMER"]},
    ("DELETE", "/segments/{ref:str}/members"): {"customer_ids": ["A_CUSTOMER"]},
}


def _snapshot(crm) -> dict[str, list]:
    """Every row of workspace "a" in every core table that has a workspace."""
    out = {}
    with crm.db.read() as conn:
        for name, table in sorted(crm.db.tables.items()):
            if "workspace_id" not in table.c or name == "api_keys":
                continue
            rows = conn.execute(sa.select(table).where(table.c.workspace_id == "a")).all()
            out[name] = sorted(repr(tuple(r)) for r in rows)
    return out


@pytest.fixture
def two_workspaces(api_crm, live_api_factory):
    a = api_crm.in_workspace("a")
    b = api_crm.in_workspace("b")
    ada = a.customers.create(email="ada@example.com", name="Ada", external_id="ada-1")
    a.customers.add_alias(ada.id, "anonymous", "cookie-a")
    hit = a.interactions.track("purchase", customer_id=ada.id, amount="12.50", currency="EUR")
    offer = a.offers.create("a-offer", "A's offer")
    seg = a.segments.create("a-static", static=True, customer_ids=[ada.id])
    a.segments.create("a-buyers", "purchase.count(365d) >= 1")
    bob = b.customers.create(email="bob@example.com", name="Bob")
    live = live_api_factory(api_crm, rate_limit=None, tracking_sync=True)
    ids = {
        "customer_id": ada.id,
        "interaction_id": hit.id,
        "offer_ref": offer.code,
        "offer_id": offer.id,
        "segment_ref": seg.slug,
        "segment_id": seg.id,
        "A_CUSTOMER": ada.id,
        "B_CUSTOMER": bob.id,
    }
    return live, ids


def _fill(path: str, ids: dict, variant: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "customer_id":
            return str(ids["customer_id"])
        if name == "interaction_id":
            return str(ids["interaction_id"])
        if name == "ref":
            kind = "offer" if path.startswith("/offers") else "segment"
            return str(ids[f"{kind}_id"] if variant == "id" else ids[f"{kind}_ref"])
        if name == "kind":
            return "anonymous"
        if name == "value":
            return "cookie-a"
        if name == "channel":
            return "email"
        raise AssertionError(f"test_workspaces does not know how to fill {{{name}}} in {path}; add it")

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def _body(method: str, path: str, ids: dict):
    body = BODIES.get((method, path))
    if body is None:
        return None

    def sub(v):
        if isinstance(v, list):
            return [sub(x) for x in v]
        return ids[v] if isinstance(v, str) and v in ids else v

    return {k: sub(v) for k, v in body.items()}


def test_a_key_of_another_workspace_gets_404_on_every_resource(two_workspaces):
    live, ids = two_workspaces
    before = _snapshot(live.crm)
    assert before["customers"] and before["interactions"] and before["offers"] and before["segments"]
    b_admin = live.client(["admin"], workspace="b")
    a_admin = live.client(["admin"], workspace="a")
    checked = []
    for path, method, _handler in route_table(live.app):
        if method in ("OPTIONS", "HEAD") or "{" not in path or path.startswith("/docs"):
            continue
        if (
            route_policy(_handler)[0] == "public"
        ):  # no caller key to cross (analytics.js settings: a write key in the path)
            continue
        for variant in ("ref", "id") if "{ref" in path else ("ref",):
            url = _fill(path, ids, variant)
            body = _body(method, path, ids)
            r = b_admin.request(method, url, json=body)
            assert r.status_code == 404, f"{method} {url} with a key of workspace b: {r.status_code} {r.text[:300]}"
            assert r.headers["content-type"].startswith("application/problem+json")
            checked.append((method, path))
            if method == "GET":
                # the same id with a key of its own workspace works: the 404 above is the workspace's doing
                assert a_admin.get(url).status_code == 200, url
    assert len({p for _, p in checked}) >= 10
    assert _snapshot(live.crm) == before


def test_listings_and_rules_do_not_cross_workspaces(two_workspaces):
    live, _ids = two_workspaces
    before = _snapshot(live.crm)
    b = live.client(["admin"], workspace="b")
    customers = b.get("/customers").json()["items"]
    assert [c["email"] for c in customers] == ["bob@example.com"]
    assert b.get("/customers", params={"email": "ada@example.com"}).json()["items"] == []
    assert all(s["slug"] not in ("a-static", "a-buyers") for s in b.get("/segments").json()["items"])
    assert all(o["code"] != "a-offer" for o in b.get("/offers").json()["items"])
    r = b.post("/segments/preview", json={"rule": 'segment = "a-static"'})
    assert r.status_code == 422, r.text
    # tracking with a's external id creates b's own customer; a is untouched
    r = b.post(
        "/v1/track",
        json={
            "userId": "ada-1",
            "event": "Order Completed",
            "messageId": "m-1",
            "properties": {"revenue": 5, "currency": "EUR"},
        },
    )
    assert r.status_code == 200, r.text
    assert live.crm.in_workspace("b").customers.find(external_id="ada-1") is not None
    assert _snapshot(live.crm) == before
