"""Channels' inbound routes mounted by ecrm-api, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
from ecrm_api import plugin as api_plugin

from ecrm_core.testing.channels import MemoryChannel, sign_body

SECRET = "receipt-secret-0123456789"


def test_inbound_route_verifies_and_applies_once(crm_factory, live_api_factory):
    memory = MemoryChannel(name="memory")
    crm = crm_factory(
        plugins=[api_plugin, memory.plugin()],
        secret="s" * 32,
        channels={"memory": {"webhook_secret": SECRET}},
    )
    ada = crm.customers.create(email="ada@example.com", consent={"memory": "granted"})
    sent = crm.messages.send("memory", ada.id, {"body": "hi"})
    crm.messages.dispatch()
    live = live_api_factory(crm, rate_limit=None)
    body = json.dumps({"type": "delivered", "message_id": sent.id, "id": "r1"}).encode()
    url = f"{live.url}/channels/memory/receipt"

    forged = httpx.post(url, content=body, headers={"x-signature": "0" * 64})
    assert forged.status_code == 401
    problem = forged.json()
    assert problem["type"] == "urn:ecrm:problem:inbound-rejected" and "X-Signature" in problem["detail"]
    assert [i.kind for i in crm.interactions.timeline(ada.id)] == ["message_sent"]

    good = httpx.post(url, content=body, headers={"x-signature": sign_body(SECRET, body)})
    assert good.status_code == 204
    again = httpx.post(url, content=body, headers={"x-signature": sign_body(SECRET, body)})
    assert again.status_code == 204
    kinds = [i.kind for i in crm.interactions.timeline(ada.id)]
    assert sorted(kinds) == ["message_delivered", "message_sent"]

    assert httpx.get(url).status_code == 405
    assert httpx.post(url, content=b"x" * (1024 * 1024 + 1), headers={"x-signature": "x"}).status_code == 413
    doc = httpx.get(f"{live.url}/docs/openapi.json").json()
    assert "/channels/memory/receipt" in doc["paths"]
    assert "security" not in doc["paths"]["/channels/memory/receipt"]["post"]
