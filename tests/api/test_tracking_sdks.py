"""The real Segment and RudderStack Python SDKs (from PyPI) pointed at a live ecrm on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import rudderstack.analytics as rudder  # rudder-sdk-python (tox.ini deps)
import segment.analytics as segment  # segment-analytics-python (tox.ini deps)

from ecrm_core.domain import Alias


@pytest.fixture
def segment_module(live_api):
    """``segment.analytics`` configured as a site would: write key, host, sync mode."""
    errors: list[object] = []
    saved = {k: getattr(segment, k) for k in ("write_key", "host", "sync_mode", "on_error", "default_client")}
    segment.write_key = live_api.token(["ingest"], name="segment")
    segment.host = live_api.url
    segment.sync_mode = True
    segment.on_error = lambda exc, batch: errors.append(exc)
    segment.default_client = None
    yield segment, errors
    for k, v in saved.items():
        setattr(segment, k, v)


def _kinds(crm, customer):
    return sorted(i.kind for i in crm.interactions.timeline(customer.id, limit=100))


def test_segment_sdk_every_call(live_api, segment_module):
    analytics, errors = segment_module
    crm = live_api.crm
    analytics.page(anonymous_id="cookie-1", name="Home", category="Shop", properties={"path": "/"})
    analytics.identify(
        "user-1",
        {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee", "plan": "pro"},
        anonymous_id="cookie-1",
    )
    analytics.track("user-1", "Order Completed", {"revenue": 19.99, "currency": "EUR", "order_id": "o-1"})
    analytics.track("user-1", "Wishlist Shared", {"items": 3})
    analytics.screen("user-1", category="App", name="Cart")
    analytics.group("user-1", "acme", {"name": "Acme Inc"})
    analytics.track("old-id", "Legacy Event")
    analytics.alias("old-id", "user-1")
    analytics.flush()
    assert errors == []
    live_api.wait_ingested()  # a 200 is "in the inbox"; the server's processor stores it shortly after
    ann = crm.customers.find(external_id="user-1")
    assert ann.email == "ann@example.com" and ann.name == "Ann Lee" and ann.attributes["plan"] == "pro"
    assert ann.attributes["group"] == {"id": "acme", "traits": {"name": "Acme Inc"}}
    # the anonymous page view was stitched to the identified customer, the old id merged in
    assert crm.customers.find(alias=Alias("anonymous", "cookie-1")).id == ann.id
    assert crm.customers.find(external_id="old-id").id == ann.id
    assert _kinds(crm, ann) == [
        "event",
        "event",
        "event",
        "identify",
        "identify",
        "page_view",
        "purchase",
        "screen_view",
    ]
    [purchase] = [i for i in crm.interactions.timeline(ann.id) if i.kind == "purchase"]
    assert purchase.amount == Decimal("19.99") and purchase.currency == "EUR"
    assert purchase.properties["order_id"] == "o-1"
    assert all(i.idempotency_key.startswith("segment:") for i in crm.interactions.timeline(ann.id))


def test_segment_sdk_batches_gzip_and_dedupes(live_api):
    """The SDK's own queue: a batch per flush, gzip on, fixed messageIds sent twice store once."""
    errors: list[object] = []
    client = segment.Client(
        live_api.token(["ingest"]),
        host=live_api.url,
        gzip=True,
        on_error=lambda e, b: errors.append(e),
        upload_size=100,
    )
    when = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
    for _round in range(2):
        for i in range(150):
            client.track(f"bulk-{i % 10}", "Item Viewed", {"i": i}, timestamp=when, message_id=f"bulk-msg-{i}")
        client.flush()
    client.shutdown()
    assert errors == []
    live_api.wait_ingested()
    crm = live_api.crm
    assert crm.interactions.count() == 150
    first = crm.customers.find(external_id="bulk-0")
    # skew-corrected (receivedAt - (sentAt - timestamp)): within the latency of the given time
    assert all(abs((i.occurred_at - when).total_seconds()) < 10 for i in crm.interactions.timeline(first.id))


def test_segment_sdk_with_a_read_only_key_reports_errors(live_api):
    errors: list[object] = []
    client = segment.Client(
        live_api.token(["read"]), host=live_api.url, sync_mode=True, on_error=lambda e, b: errors.append(e)
    )
    with pytest.raises(segment.request.APIError) as info:  # sync mode raises what the server answered
        client.track("x", "E")
    assert info.value.status == 403
    assert live_api.crm.interactions.count() == 0


def test_rudderstack_sdk_every_call_gzip(live_api):
    """rudder-sdk-python: module-level API, dataPlaneUrl, gzip bodies (its default)."""
    errors: list[object] = []
    saved = {k: getattr(rudder, k) for k in ("write_key", "dataPlaneUrl", "on_error", "default_client", "sync_mode")}
    rudder.write_key = live_api.token(["ingest"], name="rudder")
    rudder.dataPlaneUrl = live_api.url
    rudder.on_error = lambda exc, batch: errors.append(exc)
    rudder.default_client = None
    try:
        rudder.page(anonymous_id="r-cookie", name="Landing", properties={"path": "/l"})
        rudder.identify("r-user", {"email": "rudy@example.com", "name": "Rudy"}, anonymous_id="r-cookie")
        rudder.track("r-user", "Product Viewed", {"sku": "S1"})
        rudder.track("r-user", "Order Completed", {"total": 5, "currency": "USD"})
        rudder.screen("r-user", name="Home", category="App")
        rudder.group("r-user", "team-1", {"size": 4})
        rudder.alias("r-old", "r-user")
        rudder.flush()
        assert rudder.default_client.gzip is True
    finally:
        if rudder.default_client is not None:
            rudder.default_client.shutdown()
        for k, v in saved.items():
            setattr(rudder, k, v)
    assert errors == []
    live_api.wait_ingested()
    crm = live_api.crm
    rudy = crm.customers.find(external_id="r-user")
    assert rudy.email == "rudy@example.com" and rudy.name == "Rudy"
    assert crm.customers.find(alias=Alias("anonymous", "r-cookie")).id == rudy.id
    assert crm.customers.find(alias=Alias("anonymous", "r-old")).id == rudy.id
    assert _kinds(crm, rudy) == [
        "event",
        "identify",
        "identify",
        "page_view",
        "product_view",
        "purchase",
        "screen_view",
    ]
    [purchase] = [i for i in crm.interactions.timeline(rudy.id) if i.kind == "purchase"]
    assert purchase.amount == Decimal(5) and purchase.currency == "USD"
    # RudderStack marks server-side messages with channel "server"
    assert {i.channel for i in crm.interactions.timeline(rudy.id) if i.kind != "page_view"} == {"server"}
