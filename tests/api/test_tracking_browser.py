"""Segment's browser SDK, analytics.js (``@segment/analytics-next``), against a live ecrm.

The real SDK (the npm package's UMD build, vendored in
tests/fixtures/analytics-next) runs in Chromium (tests/browser_kit.py) on a
page of another origin (``http://site.localhost:<port>``), loads its
settings from ecrm (``cdnURL``) and sends to ecrm's short routes
(``/v1/p``, ``/v1/i``, ``/v1/t``, ``/v1/b``) with the write key in the body,
``text/plain`` bodies and CORS.  The plain-HTTP tests check the write key
rules, CORS and that nothing is stored on errors.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ecrm_core.domain import Alias

pytest_plugins = ["browser_kit"]

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "analytics-next" / "analytics-next.umd.js"

# What a host puts in its page (docs/http/tracking.md, "Browser (analytics.js)").
SNIPPET = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title>
<script src="/analytics-next.umd.js"></script>
<script>
  window.analytics = AnalyticsNext.AnalyticsBrowser.load(
    { writeKey: %(write_key)s, cdnURL: %(crm_url)s },
    %(options)s
  )
</script>
</head><body><h1>shop</h1></body></html>
"""


class Site:
    """The host's web site on 127.0.0.1: a page with the snippet, and the analytics.js bundle."""

    def __init__(self) -> None:
        self.page = b""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/analytics-next.umd.js":
                    data, ctype = BUNDLE.read_bytes(), "application/javascript"
                elif path == "/":
                    data, ctype = site.page, "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="shop-site", daemon=True)
        self._thread.start()

    def origin(self, name: str = "shop") -> str:
        return f"http://{name}.localhost:{self.port}"

    def serve(self, write_key: str, crm_url: str, options: dict[str, Any] | None = None) -> None:
        self.page = (
            SNIPPET
            % {
                "write_key": json.dumps(write_key),
                "crm_url": json.dumps(crm_url),
                "options": json.dumps(options or {}),
            }
        ).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def site() -> Iterator[Site]:
    if not BUNDLE.is_file():  # pragma: no cover - the fixture is in the repository
        pytest.fail(f"missing {BUNDLE}")
    s = Site()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def crm_for_shop(api_crm, live_api_factory, site):
    """ecrm served on 127.0.0.1, taking analytics.js from the shop's origin."""
    return live_api_factory(api_crm, tracking_origins=[site.origin()])


def _wait_for(check, what: str, seconds: float = 15.0):
    """Poll ``check`` until it returns a true value (the SDK sends asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not stored: {what}")
        time.sleep(0.05)


def _requests_to(page, base: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    page.on(
        "request",
        lambda r: seen.append((r.method, urlsplit(r.url).path)) if r.url.startswith(base) else None,
    )
    return seen


# ----------------------------------------------------------------------
# the real SDK in a real browser
# ----------------------------------------------------------------------
def test_analytics_js_page_identify_track_are_stored(crm_for_shop, site, page):
    live = crm_for_shop
    crm = live.crm
    write_key = live.token(["ingest"], name="website")
    site.serve(write_key, live.url)
    sent = _requests_to(page, live.url)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    page.goto(site.origin() + "/?utm_source=newsletter&utm_campaign=spring")
    results = page.evaluate(
        """async () => {
            const a = window.analytics
            const failed = (ctx) => ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null
            const out = []
            out.push(failed(await a.page('Shop', 'Home', { section: 'front' })))
            const anonymousId = (await a.user()).anonymousId()
            out.push(failed(await a.identify('user-42', {
                email: 'ann@example.com', firstName: 'Ann', lastName: 'Lee', plan: 'pro' })))
            out.push(failed(await a.track('Order Completed', { revenue: 19.99, currency: 'EUR', order_id: 'o-1' })))
            // the same messageId twice (an SDK retry): stored once
            out.push(failed(await a.track('Product Viewed', { sku: 'S1' }, { messageId: 'browser-dup-1' })))
            out.push(failed(await a.track('Product Viewed', { sku: 'S1' }, { messageId: 'browser-dup-1' })))
            return { out, anonymousId }
        }"""
    )
    assert results["out"] == [None] * 5, (results, console_errors)
    anonymous_id = results["anonymousId"]
    assert anonymous_id

    ann = _wait_for(lambda: crm.customers.find(external_id="user-42"), "the identified customer")
    timeline = _wait_for(
        lambda: (t := crm.interactions.timeline(ann.id, limit=50)) and len(t) >= 4 and t,
        "four interactions of user-42",
    )
    assert ann.email == "ann@example.com" and ann.name == "Ann Lee" and ann.attributes["plan"] == "pro"
    # the anonymous page view was stitched to the identified customer
    assert crm.customers.find(alias=Alias("anonymous", anonymous_id)).id == ann.id
    assert sorted(i.kind for i in timeline) == ["identify", "page_view", "product_view", "purchase"]
    [view] = [i for i in timeline if i.kind == "page_view"]
    assert view.channel == "web"
    assert view.properties["name"] == "Home" and view.properties["category"] == "Shop"
    assert view.properties["section"] == "front" and view.properties["path"] == "/"
    assert view.properties["campaign"] == {"source": "newsletter", "name": "spring"}
    [purchase] = [i for i in timeline if i.kind == "purchase"]
    assert purchase.amount == Decimal("19.99") and purchase.currency == "EUR"
    assert purchase.properties["order_id"] == "o-1"
    [viewed] = [i for i in timeline if i.kind == "product_view"]
    assert viewed.idempotency_key == "segment:browser-dup-1"
    assert all(i.idempotency_key.startswith("segment:ajs-") for i in timeline if i is not viewed)
    assert crm.interactions.count() == 4

    # what the SDK asked ecrm for: its settings, then the short routes (and CORS preflights)
    posts = [p for m, p in sent if m == "POST"]
    assert ("GET", f"/v1/projects/{write_key}/settings") in sent
    assert posts == ["/v1/p", "/v1/i", "/v1/t", "/v1/t", "/v1/t"]
    assert page.context.blocked_requests == []  # nothing went to Segment (or anywhere else)


def test_analytics_js_batching_mode_posts_to_v1_b(crm_for_shop, site, page):
    live = crm_for_shop
    write_key = live.token(["ingest"], name="website")
    batching = {"strategy": "batching", "config": {"size": 3, "timeout": 200}}
    site.serve(write_key, live.url, {"integrations": {"Segment.io": {"deliveryStrategy": batching}}})
    sent = _requests_to(page, live.url)
    page.goto(site.origin() + "/")
    anonymous_id = page.evaluate(
        """async () => {
            const a = window.analytics
            await a.track('Signed Up', { plan: 'free' })
            await a.track('Wishlist Shared', { items: 2 })
            await a.page('Pricing')
            return (await a.user()).anonymousId()
        }"""
    )
    crm = live.crm
    _wait_for(lambda: crm.interactions.count() == 3, "the three batched events")
    assert ("POST", "/v1/b") in sent and ("POST", "/v1/t") not in sent
    visitor = crm.customers.find(alias=Alias("anonymous", anonymous_id))
    kinds = sorted(i.kind for i in crm.interactions.timeline(visitor.id, limit=10))
    assert kinds == ["event", "page_view", "signup"]
    assert page.context.blocked_requests == []


def test_analytics_js_from_an_origin_not_allowed_sends_nothing(crm_for_shop, site, page):
    live = crm_for_shop
    write_key = live.token(["ingest"])
    site.serve(write_key, live.url)
    # the same page, from an origin that is not in tracking_origins
    page.goto(site.origin("elsewhere") + "/")
    outcome = page.evaluate(
        """async () => {
            try {
                const [a] = await window.analytics
                const ctx = await a.track('Order Completed', { revenue: 5 })
                return ctx.failedDelivery() ? 'not delivered' : 'delivered'
            } catch (e) {
                return 'load failed'
            }
        }"""
    )
    assert outcome == "load failed"  # its settings could not be read (no CORS answer)
    assert live.crm.interactions.count() == 0
    assert live.crm.customers.count() == 0


# ----------------------------------------------------------------------
# plain HTTP: the write key, CORS, text/plain, nothing stored on errors
# ----------------------------------------------------------------------
def _post(live, path: str, body: Any, **headers: str) -> httpx.Response:
    headers.setdefault("content-type", "text/plain")
    return httpx.post(f"{live.url}{path}", content=json.dumps(body), headers=headers, timeout=30)


def _stored(live) -> tuple[int, int]:
    return live.crm.interactions.count(), live.crm.customers.count()


def test_text_plain_bodies_with_the_write_key_in_the_body(crm_for_shop):
    live = crm_for_shop
    key = live.token(["ingest"])
    msg = {"writeKey": key, "type": "track", "event": "Signed Up", "anonymousId": "c-1", "messageId": "m-1"}
    r = _post(live, "/v1/t", msg)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": [],
        "notes": [],
        "rejected_total": 0,
    }
    # the same message again, as JSON this time: a duplicate
    r = _post(live, "/v1/t", msg, **{"content-type": "application/json"})
    assert r.json()["duplicates"] == 1
    # the same messageId through the Basic-auth route: the same dedupe
    basic = base64.b64encode(f"{key}:".encode()).decode()
    r = _post(live, "/v1/track", msg, authorization=f"Basic {basic}")
    assert r.status_code == 200 and r.json()["duplicates"] == 1
    # with another payload: a conflict, as on /v1/track
    r = _post(live, "/v1/t", {**msg, "event": "Signed In"})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "body.messageId"
    # every call letter
    for path, body in [
        ("/v1/p", {"name": "Home"}),
        ("/v1/s", {"name": "Cart"}),
        ("/v1/i", {"traits": {"email": "c1@example.com"}, "userId": "u-1"}),
        ("/v1/g", {"groupId": "acme", "userId": "u-1"}),
        ("/v1/a", {"previousId": "c-1", "userId": "u-1"}),
    ]:
        r = _post(live, path, {"writeKey": key, "anonymousId": "c-1", **body})
        assert r.status_code == 200 and r.json()["accepted"] == 1, (path, r.text)
    u1 = live.crm.customers.find(external_id="u-1")
    assert u1.email == "c1@example.com" and u1.attributes["group"]["id"] == "acme"
    assert live.crm.customers.find(alias=Alias("anonymous", "c-1")).id == u1.id
    # a batch, the write key once for all (newer analytics.js repeat it as Basic auth: accepted)
    r = _post(
        live,
        "/v1/b",
        {
            "writeKey": key,
            "sentAt": "2024-05-01T10:00:05Z",
            "batch": [
                {"type": "track", "event": "E", "userId": "u-1", "timestamp": "2024-05-01T10:00:00Z"},
                {"type": "track", "userId": "u-1"},  # no event: rejected, the rest stored
            ],
        },
        authorization=f"Basic {basic}",
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["field"] == "body.batch[1].event"


def test_the_key_lands_in_its_own_workspace(crm_for_shop):
    live = crm_for_shop
    key = live.token(["ingest"], workspace="brand-b")
    r = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u-b"})
    assert r.status_code == 200
    assert live.crm.customers.find(external_id="u-b") is None
    assert live.crm.in_workspace("brand-b").customers.find(external_id="u-b") is not None


@pytest.mark.parametrize(
    ("body_key", "status", "says"),
    [
        (None, 401, "no write key"),
        ("", 401, "no write key"),
        ("ecrm_nope_nope", 401, "not valid"),
        ("not-a-key", 401, "not valid"),
        (42, 401, "not a key"),
    ],
)
def test_missing_or_invalid_write_keys_store_nothing(crm_for_shop, body_key, status, says):
    live = crm_for_shop
    body = {"event": "E", "userId": "u-1"}
    if body_key is not None:
        body["writeKey"] = body_key
    for path in ("/v1/t", "/v1/b"):
        payload = body if path == "/v1/t" else {"writeKey": body.get("writeKey"), "batch": [body]}
        r = _post(live, path, payload)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert says in r.json()["detail"]
    assert _stored(live) == (0, 0)


def test_revoked_write_key_is_refused(crm_for_shop):
    live = crm_for_shop
    new = live.keys.create("site", scopes=["ingest"])
    live.keys.revoke(new.key.key_id)
    r = _post(live, "/v1/t", {"writeKey": new.token, "event": "E", "userId": "u"})
    assert r.status_code == 401
    assert _stored(live) == (0, 0)


@pytest.mark.parametrize(
    ("scopes", "says"),
    [
        (["admin"], "more scopes than 'ingest'"),
        (["ingest", "read"], "more scopes than 'ingest'"),
        (["ingest", "write"], "more scopes than 'ingest'"),
        (["read"], "lacks the 'ingest' scope"),
    ],
)
def test_keys_with_other_scopes_are_refused(crm_for_shop, scopes, says):
    live = crm_for_shop
    key = live.token(scopes)
    r = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u"})
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "urn:ecrm:problem:forbidden" and says in r.json()["detail"]
    r = httpx.get(f"{live.url}/v1/projects/{key}/settings")
    assert r.status_code == 403
    assert _stored(live) == (0, 0)


def test_a_body_key_and_another_header_key_are_refused(crm_for_shop):
    live = crm_for_shop
    one, other = live.token(["ingest"]), live.token(["ingest"])
    basic = base64.b64encode(f"{other}:".encode()).decode()
    r = _post(live, "/v1/t", {"writeKey": one, "event": "E", "userId": "u"}, authorization=f"Basic {basic}")
    assert r.status_code == 401 and "not the key in the Authorization header" in r.json()["detail"]
    # an admin key in the header (no key in the body) is refused too: these routes take ingest-only keys
    admin = live.token(["admin"])
    r = _post(live, "/v1/t", {"event": "E", "userId": "u"}, authorization=f"Bearer {admin}")
    assert r.status_code == 403
    assert _stored(live) == (0, 0)


def test_basic_auth_routes_still_need_the_header(crm_for_shop):
    live = crm_for_shop
    key = live.token(["ingest"])
    r = _post(live, "/v1/track", {"writeKey": key, "event": "E", "userId": "u"})
    assert r.status_code == 401
    assert _stored(live) == (0, 0)


def test_malformed_bodies_store_nothing(crm_for_shop):
    live = crm_for_shop
    key = live.token(["ingest"])
    r = httpx.post(f"{live.url}/v1/t", content=b"{not json", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    r = _post(live, "/v1/t", {"writeKey": key, "userId": "u"})  # no event
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.event"
    r = _post(live, "/v1/b", {"writeKey": key, "batch": "nope"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body.batch"
    r = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u"}, **{"content-type": "text/html"})
    assert r.status_code == 415
    big = {"writeKey": key, "event": "E", "userId": "u", "properties": {"x": "y" * 600_000}}
    assert _post(live, "/v1/b", {"writeKey": key, "batch": [big]}).status_code == 413
    assert _stored(live) == (0, 0)


def test_cors_preflight_for_allowed_and_other_origins(crm_for_shop, site):
    live = crm_for_shop
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,authorization"}
    for path in ("/v1/t", "/v1/p", "/v1/i", "/v1/g", "/v1/a", "/v1/s", "/v1/b"):
        r = httpx.options(f"{live.url}{path}", headers={"origin": site.origin(), **ask})
        assert r.status_code == 204, (path, r.text)
        assert r.headers["access-control-allow-origin"] == site.origin()
        assert "POST" in r.headers["access-control-allow-methods"]
        assert {"content-type", "authorization"} <= set(r.headers["access-control-allow-headers"].lower().split(", "))
        assert "access-control-allow-credentials" not in r.headers
    r = httpx.options(f"{live.url}/v1/t", headers={"origin": site.origin("evil"), **ask})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # the answer of a POST names the allowed origin only
    key = live.token(["ingest"])
    ok = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u"}, origin=site.origin())
    assert ok.headers["access-control-allow-origin"] == site.origin()
    other = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u"}, origin=site.origin("evil"))
    assert "access-control-allow-origin" not in other.headers
    # errors carry the CORS headers too (the SDK must read the status to stop retrying)
    bad = _post(live, "/v1/t", {"writeKey": "nope", "event": "E"}, origin=site.origin())
    assert bad.status_code == 401 and bad.headers["access-control-allow-origin"] == site.origin()
    # CORS is for the browser routes only: not the Basic-auth or REST routes
    for path in ("/v1/track", "/customers"):
        r = httpx.options(f"{live.url}{path}", headers={"origin": site.origin(), **ask})
        assert "access-control-allow-origin" not in r.headers, path


def test_without_tracking_origins_there_is_no_cors(api_crm, live_api_factory):
    live = live_api_factory(api_crm)
    key = live.token(["ingest"])
    origin = "http://shop.localhost:1234"
    ask = {"origin": origin, "access-control-request-method": "POST"}
    r = httpx.options(f"{live.url}/v1/t", headers=ask)
    assert "access-control-allow-origin" not in r.headers
    r = _post(live, "/v1/t", {"writeKey": key, "event": "E", "userId": "u"}, origin=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # a browser would not read it
    r = httpx.get(f"{live.url}/v1/projects/{key}/settings", headers={"origin": origin})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_settings_document(crm_for_shop, site, api_crm, live_api_factory):
    live = crm_for_shop
    key = live.token(["ingest"])
    r = httpx.get(f"{live.url}/v1/projects/{key}/settings", headers={"origin": site.origin()})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == site.origin()
    host = urlsplit(live.url).netloc
    assert r.json() == {
        "integrations": {"Segment.io": {"apiKey": key, "apiHost": f"{host}/v1", "protocol": "http"}},
        "metrics": {"sampleRate": 0, "host": f"{host}/v1"},
    }
    for bad in ("nope", "ecrm_nope_nope"):
        r = httpx.get(f"{live.url}/v1/projects/{bad}/settings")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    # behind a proxy: the URL browsers use, from the config
    other = live_api_factory(api_crm, tracking_public_url="https://crm.example.com")
    key = other.token(["ingest"])
    doc = httpx.get(f"{other.url}/v1/projects/{key}/settings").json()
    assert doc["integrations"]["Segment.io"] == {"apiKey": key, "apiHost": "crm.example.com/v1", "protocol": "https"}


def test_tracking_origins_are_validated():
    from ecrm_api.config import ApiConfig

    from ecrm_core.errors import ValidationError

    assert ApiConfig(tracking_origins=["https://Shop.example.com", "*"]).tracking_origins == (
        "https://shop.example.com",
        "*",
    )
    for bad in ("https://shop.example.com", ["https://shop.example.com/"], ["shop.example.com"], [""]):
        with pytest.raises(ValidationError):
            ApiConfig(tracking_origins=bad)
    with pytest.raises(ValidationError):
        ApiConfig(tracking_public_url="https://crm.example.com/")


def test_browser_routes_are_rate_limited_per_address(api_crm, live_api_factory):
    """One site key is shared by every visitor: the limit counts per client address, whatever the key."""
    live = live_api_factory(api_crm, rate_limit=("minute", 2))
    keys = [live.token(["ingest"]) for _ in range(3)]
    answers = [_post(live, "/v1/t", {"writeKey": k, "event": "E", "userId": "u"}).status_code for k in keys]
    assert answers == [200, 200, 429]
    r = _post(live, "/v1/t", {"writeKey": keys[0], "event": "E", "userId": "u"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert live.crm.interactions.count() == 2
