"""Every list the assembled API answers is paged, whatever is stored (review, round 25).

``GET /personalize/placements`` listed every placement whole: 20 placements
of 600 KB each (a PUT accepted 100 greetings, tones and layouts of 2,000
characters) made a 12 MB answer, and more placements a larger one.  The
generic test serves the app with every bundled plugin, calls each ``GET``
route without path parameters, and requires every answer that lists
``items`` to take a ``limit`` with a declared maximum: a route added later is
checked by construction.  The placement test stores the largest placements
there can be and walks the pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ecrm_core import CRM

pytest.importorskip("ecrm_api")
pytest.importorskip("ecrm_personalize")

#: list routes not paged yet (found by this review, not fixed in it): each must go, not grow
KNOWN_UNPAGED: dict[str, str] = {}
#: lists of what is registered in the code, not stored: as long as the installed plugins make them
REGISTERED = {"/plugins", "/analytics/reports"}


@pytest.fixture
def everything(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]):
    from ecrm_analytics import plugin as analytics
    from ecrm_api import plugin as api
    from ecrm_campaigns import plugin as campaigns
    from ecrm_personalize import plugin as personalize

    crm = crm_factory(plugins=[api, analytics, campaigns, personalize], secret="s" * 48)
    return live_api_factory(crm, rate_limit=None)


def test_every_list_answer_takes_a_bounded_limit(everything) -> None:
    live = everything
    http = live.client(["admin"])
    doc = httpx.get(f"{live.url}/docs/openapi.json", timeout=120).json()
    lists, unpaged = [], []
    for path, item in doc["paths"].items():
        op = item.get("get")
        if op is None or "{" in path or path.startswith("/docs") or path in REGISTERED:
            continue
        r = http.get(path)
        if r.status_code != 200 or not r.headers["content-type"].startswith("application/json"):
            continue
        if not isinstance(r.json().get("items"), list):
            continue
        lists.append(path)
        limit = [p for p in op.get("parameters", []) if p["in"] == "query" and p["name"] == "limit"]
        maximum = limit[0]["schema"].get("maximum") if limit else None
        if maximum is None or maximum > 1000:
            unpaged.append(path)
    assert "/personalize/placements" in lists and "/customers" in lists
    assert sorted(set(unpaged) - set(KNOWN_UNPAGED)) == [], "list routes without a bounded limit"
    assert set(KNOWN_UNPAGED) <= set(unpaged), "a known unpaged route is paged now: remove it from KNOWN_UNPAGED"


def test_placements_are_bounded_and_paged(everything) -> None:
    from ecrm_personalize.routes import PLACEMENTS_PAGE
    from ecrm_personalize.service import MAX_PLACEMENT_BYTES

    http = everything.client(["admin"])
    huge = {
        "greetings": {f"l{i}": "Hi " * 600 for i in range(100)},
        "tones": {f"t{i}": "y" * 2000 for i in range(100)},
        "layouts": {f"a{i}": "z" * 2000 for i in range(100)},
        "options": {f"s{i}": {f"k{j}": "v" * 500 for j in range(20)} for i in range(20)},
        "alternatives": [{"name": f"a{i}", "label": "x" * 200, "variant": {"layout": "q" * 1900}} for i in range(20)],
    }
    for field, value in huge.items():  # each field at its largest: refused, naming the placement's size
        r = http.put("/personalize/placements/big", json={field: value})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.placement", (field, r.text[:300])
        assert len(r.content) < 2000
    largest = {"greetings": {f"l{i}": "Hello {{ first_name }} " * 4 for i in range(100)}}
    assert http.put("/personalize/placements/p000", json=largest).status_code == 200
    size = len(json.dumps(http.get("/personalize/placements/p000").json()).encode())
    assert 5_000 < size <= MAX_PLACEMENT_BYTES + 1000
    for n in range(1, PLACEMENTS_PAGE + 5):
        assert http.put(f"/personalize/placements/p{n:03}", json=largest).status_code == 200
    r = http.get("/personalize/placements", params={"limit": PLACEMENTS_PAGE + 1})
    assert r.status_code in (400, 422)
    names, after, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": PLACEMENTS_PAGE}
        if after:
            params["after"] = after
        r = http.get("/personalize/placements", params=params)
        assert r.status_code == 200 and len(r.content) <= PLACEMENTS_PAGE * (MAX_PLACEMENT_BYTES + 1000)
        body = r.json()
        names += [p["name"] for p in body["items"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
    assert names == [f"p{n:03}" for n in range(PLACEMENTS_PAGE + 5)] and pages == 2


def test_segments_are_listed_a_page_at_a_time(everything) -> None:
    crm = everything.crm
    for n in range(7):
        crm.segments.create(f"s{n}", "purchase.count(30d) >= 1")
    http = everything.client(["admin"])
    assert [s["slug"] for s in http.get("/segments").json()["items"]] == [f"s{n}" for n in range(7)]
    slugs, after = [], None
    while True:
        body = http.get("/segments", params={"limit": 3, **({"after": after} if after else {})}).json()
        assert len(body["items"]) <= 3
        slugs += [s["slug"] for s in body["items"]]
        after = body["next"]
        if after is None:
            break
    assert slugs == [f"s{n}" for n in range(7)]
    assert http.get("/segments", params={"limit": 1001}).status_code in (400, 422)


def test_active_offers_are_the_highest_priority_first_at_most_limit(everything) -> None:
    crm = everything.crm
    for n in range(5):
        crm.offers.create(f"o{n}", f"Offer {n}", priority=n)
    http = everything.client(["admin"])
    assert [o["code"] for o in http.get("/offers/active").json()["items"]] == ["o4", "o3", "o2", "o1", "o0"]
    assert [o["code"] for o in http.get("/offers/active", params={"limit": 2}).json()["items"]] == ["o4", "o3"]
    assert http.get("/offers/active", params={"limit": 1001}).status_code in (400, 422)
