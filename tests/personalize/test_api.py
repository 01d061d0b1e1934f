"""The HTTP routes over real HTTP on 127.0.0.1 (ecrm-api's live server): decisions, cookies,
outcomes, placements, preferences, evaluation; bad input is a 4xx problem, never a 5xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ecrm_core import CRM

pytest.importorskip("ecrm_api")

from ecrm_api import plugin as api_plugin
from ecrm_personalize import plugin

from .conftest import PRODUCTS, SECRET, Shop


@pytest.fixture
def served(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]) -> tuple[Shop, Any]:
    from ecrm_core.testing import FakeClock

    crm = crm_factory(plugins=[plugin, api_plugin], secret=SECRET)
    shop = Shop(crm, FakeClock())
    shop.p.add_products(PRODUCTS)
    shop.history()
    shop.p.refresh()
    live = live_api_factory(crm, rate_limit=None, docs=False)
    return shop, live


def test_decide_sets_a_visitor_cookie_and_recognises_it(served: tuple[Shop, Any]) -> None:
    _shop, live = served
    client = live.client(scopes=("read", "write"))
    r = client.put("/personalize/placements/home", json={"k": 3, "alternatives": ["grid", "list"]})
    assert r.status_code == 200, r.text
    r = client.post("/personalize/decide", json={"placement": "home"})
    assert r.status_code == 200, r.text
    body = r.json()
    cookie = r.cookies.get("ecrm_visitor")
    assert cookie and body["visitor"] == cookie and body["items"][0]["sku"] == "S3"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=lax" in r.headers["set-cookie"]
    client.cookies.set("ecrm_visitor", cookie)
    r = client.post("/personalize/decide", json={"placement": "home"})
    assert r.status_code == 200 and r.json()["visitor"] is None and r.json()["fallback"] is None
    forged = cookie[:-2] + ("aa" if not cookie.endswith("aa") else "bb")
    client.cookies.clear()
    r = client.post("/personalize/decide", json={"placement": "home", "visitor": forged})
    assert r.status_code == 200 and r.json()["fallback"] == "invalid_visitor" and r.json()["customer_id"] is None


def test_outcomes_identify_preferences_and_reports(served: tuple[Shop, Any]) -> None:
    shop, live = served
    client = live.client(scopes=("read", "write"))
    client.put("/personalize/placements/home", json={"k": 3, "alternatives": ["grid", "list"], "control": 0})
    cid = shop.customer(name="Ada", timezone="Europe/Paris")
    shop.buy(cid, "S1")
    d = client.post(
        "/personalize/decide", json={"placement": "home", "customer_id": cid, "context": {"device": "mobile"}}
    ).json()
    assert d["customer_id"] == cid and d["items"][0]["sku"] == "S2" and d["variant"]["greeting"]
    out = [{"decision": d["id"], "event": "impression"}, {"decision": d["id"], "event": "click", "item": "list"}]
    r = client.post("/personalize/outcomes", json={"outcomes": out})
    assert [x["status"] for x in r.json()["results"]] == ["recorded", "recorded"]
    r = client.post("/personalize/outcomes", json={"outcomes": [*out, {"decision": "forged", "event": "click"}]})
    assert [x["status"] for x in r.json()["results"]] == ["duplicate", "duplicate", "rejected"]
    arms = client.get("/personalize/placements/home/arms").json()["segments"]
    assert arms[d["segment"]]["list"] == {"trials": 1, "wins": 1}
    up = client.get("/personalize/placements/home/uplift").json()
    assert up["groups"]["personalized"]["impression"] == 1
    r = client.put(f"/personalize/preferences/{cid}", json={"interests": ["hats"], "channels": {"email": True}})
    assert r.status_code == 200 and r.json()["preferences"]["interests"] == ["hats"]
    assert client.get(f"/personalize/preferences/{cid}").json()["preferences"]["channels"] == {"email": True}
    visitor = client.post("/personalize/decide", json={"placement": "home"}).json()["visitor"]
    r = client.post("/personalize/identify", json={"visitor": visitor, "customer_id": cid})
    assert r.status_code == 200 and r.json()["merged"] is None
    r = client.post("/personalize/decide", json={"placement": "home", "visitor": visitor})
    assert r.json()["customer_id"] == cid
    shop.crm.interactions.track("purchase", anonymous_id="ajs-123", properties={"skus": ["S1"]})
    r = client.post("/personalize/decide", json={"placement": "home", "anonymous_id": "ajs-123"})
    assert r.json()["customer_id"] is not None and r.json()["items"][0]["sku"] == "S2" and r.json()["visitor"] is None
    assert [p["name"] for p in client.get("/personalize/placements").json()["items"]] == ["home"]
    assert client.get("/personalize/placements/home").json()["k"] == 3
    ev = client.get("/personalize/evaluation", params={"k": 3})
    assert ev.status_code == 200 and ev.json()["scores"][0]["recommender"] == "popular"
    svg = client.get("/personalize/evaluation", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml")


BAD = (
    ("post", "/personalize/decide", {"placement": "Bad Name"}, 400),
    ("post", "/personalize/decide", {"placement": "home", "customer_id": -1}, 400),
    ("post", "/personalize/decide", {"placement": "home", "extra": 1}, 400),
    ("post", "/personalize/decide", {"placement": "home", "context": {"sku": "x" * 600}}, 422),
    ("post", "/personalize/decide", {"placement": "home", "customer_id": 99999}, 200),
    ("post", "/personalize/decide", {"placement": "nowhere"}, 200),
    ("post", "/personalize/outcomes", {"outcomes": []}, 400),
    ("post", "/personalize/outcomes", {"outcomes": [{"decision": "x", "event": "purchase"}]}, 400),
    ("post", "/personalize/identify", {"visitor": "forged", "customer_id": 1}, 422),
    ("post", "/personalize/identify", {"visitor": "x", "customer_id": 0}, 400),
    ("put", "/personalize/placements/home", {"k": 1000}, 422),
    ("put", "/personalize/placements/home", {"strategies": ["nope"]}, 422),
    ("put", "/personalize/preferences/1", {"frequency": "hourly"}, 400),
    ("put", "/personalize/preferences/424242", {"interests": ["a"]}, 404),
    ("get", "/personalize/placements/nowhere", None, 404),
    ("get", "/personalize/preferences/424242", None, 404),
)


def test_bad_input_is_a_client_error(served: tuple[Shop, Any]) -> None:
    shop, live = served
    shop.customer()
    client = live.client(scopes=("read", "write"))
    client.put("/personalize/placements/home", json={"k": 3})
    for method, path, body, status in BAD:
        r = (
            client.request(method.upper(), path, json=body)
            if body is not None
            else client.request(method.upper(), path)
        )
        assert r.status_code < 500, (path, body, r.text)
        assert r.status_code == status, (path, body, r.text)


def test_routes_need_a_key_with_the_scope(served: tuple[Shop, Any]) -> None:
    _shop, live = served
    assert live.client(scopes=None).post("/personalize/decide", json={"placement": "home"}).status_code == 401
    reader = live.client(scopes=("read",))
    assert (
        reader.post("/personalize/outcomes", json={"outcomes": [{"decision": "x", "event": "click"}]}).status_code
        == 403
    )


def test_decide_runs_on_the_event_loop_unless_an_integration_may_block(
    served: tuple[Shop, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the decision runs on the server's event loop (no thread hop); with a
    ``personalize_unavailable`` integration (a remote inventory may block) in a worker thread."""
    import asyncio

    from ecrm_personalize import engine

    from ecrm_core import hookimpl

    shop, live = served
    client = live.client(scopes=("read", "write"))
    client.put("/personalize/placements/home", json={"k": 3})
    cid = shop.customer()
    shop.buy(cid, "S1")
    on_loop: list[bool] = []
    real = engine.decide

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "decide", spy)
    first = client.post("/personalize/decide", json={"placement": "home", "customer_id": cid}).json()
    assert on_loop == [True] and "S2" in [i["sku"] for i in first["items"]]

    class Stock:
        @hookimpl
        def personalize_unavailable(self, skus):  # type: ignore[no-untyped-def]
            return {"S2"}

    shop.crm.register_plugin(Stock(), name="stock")
    r = client.post("/personalize/decide", json={"placement": "home", "customer_id": cid})
    assert r.status_code == 200 and on_loop == [True, False]
    assert "S2" not in [i["sku"] for i in r.json()["items"]]


def test_the_arms_listing_is_paged_whatever_the_number_of_segments(served: tuple[Shop, Any]) -> None:
    """A placement segmented by an attribute has one segment per value: the
    listing is bounded (``limit``, 1-1,000) and pages with ``next``/``after``."""
    shop, live = served
    shop.p.define("banner", alternatives=["a", "b"], segment_by="attribute:team")
    for n in range(7):
        cid = shop.customer(attributes={"team": f"t{n}"})
        shop.p.report(shop.p.decide(cid, "banner").id, "impression")
    client = live.client(["read"])
    seen: list[str] = []
    after = None
    while True:
        r = client.get(
            "/personalize/placements/banner/arms", params={"limit": 3, **({"after": after} if after else {})}
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["segments"]) <= 3
        seen += list(page["segments"])
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(f"t{n}" for n in range(7))
    assert all(set(v) == {"a", "b"} for v in shop.p.arms("banner").values())
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": "x" * 129}):
        assert client.get("/personalize/placements/banner/arms", params=bad).status_code == 400


def test_a_placement_the_workspace_does_not_have_is_a_404_on_every_placement_route(served: tuple[Shop, Any]) -> None:
    """Unknown, or another workspace's: the placement, its arms and its uplift answer 404 alike
    (the arms and the uplift answered 200 with empty data)."""
    shop, live = served
    shop.p.define("mine", alternatives=["a", "b"])
    other = live.client(["read"], workspace="other")
    ours = live.client(["read"])
    for path in ("/personalize/placements/{}", "/personalize/placements/{}/arms", "/personalize/placements/{}/uplift"):
        assert ours.get(path.format("mine")).status_code == 200, path
        for client, name in ((ours, "nowhere"), (other, "mine")):
            r = client.get(path.format(name))
            assert r.status_code == 404, (path, name, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
