"""What comes back without a browser: the provider webhook (signed, Stripe
style).  Mail to the bounce address: ``test_email_inbound_mail.py``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from ecrm_email.inbound import (
    handle,
    sign_webhook,
    verify_webhook_signature,
)
from ecrm_email.links import Links

from ecrm_core import CRM
from ecrm_core.channels import Content, InboundRejected, InboundRequest
from ecrm_core.testing.channels import FakeClock, MemoryChannel

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
BASE = "http://127.0.0.1:8000/crm"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def crm(tmp_path, clock):
    crm = CRM(
        f"sqlite:///{tmp_path / 'c.db'}",
        load_entrypoints=False,
        secret="x" * 32,
        plugins=[MemoryChannel(name="email").plugin()],
        clock=clock,
    )
    crm.upgrade()
    yield crm
    crm.close()


@pytest.fixture
def links(crm):
    return Links(crm.signer, BASE)


def send_to(crm, email: str):
    c = crm.customers.create(email=email, consent={"email": "granted"})
    record = crm.messages.send("email", c.id, Content(body="hi"))
    crm.messages.dispatch()
    assert crm.messages.get(record.id).status == "sent"
    return crm.messages.get(record.id)


@pytest.fixture
def sent(crm):
    return send_to(crm, "ada@example.com")


def suppressions(crm):
    return {(s.address, s.scope, s.reason) for s in crm.messages.suppressions()}


def kinds(crm, cid):
    return [i.kind for i in crm.interactions.timeline(cid)]


# ---------------------------------------------------------------------------
# The webhook
# ---------------------------------------------------------------------------


def webhook_request(body: bytes, signature: str | None) -> InboundRequest:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["x-ecrm-signature"] = signature
    return InboundRequest(route="webhook", method="POST", headers=headers, body=body)


def now_ts(clock) -> int:
    return int(clock().timestamp())


def post(crm, links, body: bytes, signature: str | None, secret=WEBHOOK_SECRET):
    return handle(crm, links, webhook_request(body, signature), webhook_secret=secret)


def test_sign_webhook_header_format():
    header = sign_webhook("s" * 20, b'{"events": []}', timestamp=1700000000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    assert v1.startswith("v1=") and len(v1) == 3 + 64
    int(v1[3:], 16)
    # the MAC covers the timestamp and the body
    assert sign_webhook("s" * 20, b'{"events": []}', timestamp=1700000001) != header
    assert sign_webhook("s" * 20, b'{"events":[]}', timestamp=1700000000) != header
    assert verify_webhook_signature("s" * 20, b'{"events": []}', header, now=1700000100) == 1700000000


def test_signed_webhook_bounce_and_complaint_suppress(crm, links, sent, clock):
    other = send_to(crm, "bob@example.com")
    body = json.dumps(
        {
            "events": [
                {
                    "id": "evt-1",
                    "type": "bounced",
                    "message_id": sent.id,
                    "address": "ada@example.com",
                    "detail": "550 5.1.1 user unknown",
                    "occurred_at": "2026-06-01T11:59:00Z",
                },
                {"id": "evt-2", "type": "complained", "message_id": other.id, "address": "bob@example.com"},
                {"id": "evt-3", "type": "delivered", "message_id": other.id},
                {"id": "evt-4", "type": "clicked", "message_id": other.id, "url": "https://shop.example/p/1"},
            ]
        }
    ).encode()
    response = post(crm, links, body, sign_webhook(WEBHOOK_SECRET, body, now_ts(clock)))
    assert response.status == 200 and json.loads(response.body) == {"received": 4}
    assert [e.key for e in response.events] == ["webhook:evt-1", "webhook:evt-2", "webhook:evt-3", "webhook:evt-4"]
    assert response.events[0].occurred_at.isoformat() == "2026-06-01T11:59:00+00:00"
    assert len(crm.messages.apply_events(response.events)) == 4
    assert suppressions(crm) == {
        ("ada@example.com", "all", "hard_bounce"),
        ("bob@example.com", "marketing", "complaint"),
    }
    assert crm.customers.get(other.customer_id).consent["email"].status == "denied"
    assert "bounce" in kinds(crm, sent.customer_id)
    assert {"complaint", "message_delivered", "click"} <= set(kinds(crm, other.customer_id))
    assert (
        crm.messages.send("email", sent.customer_id, Content(body="x"), purpose="transactional").reason == "suppressed"
    )
    # the provider retries the same delivery later: applied once
    clock.advance(seconds=90)
    again = post(crm, links, body, sign_webhook(WEBHOOK_SECRET, body, now_ts(clock)))
    assert crm.messages.apply_events(again.events) == []
    assert kinds(crm, sent.customer_id).count("bounce") == 1


def test_webhook_signature_rotation(crm, links, sent, clock):
    body = json.dumps({"events": [{"id": "e1", "type": "delivered", "message_id": sent.id}]}).encode()
    t = now_ts(clock)
    old = sign_webhook("old-secret-0123456789", body, t)
    new = sign_webhook(WEBHOOK_SECRET, body, t)
    # the provider sends both signatures while it rotates; we know the new secret
    both = f"{old},v1={new.split('v1=')[1]}"
    assert len(post(crm, links, body, both).events) == 1
    # we know both secrets while we rotate; the provider still signs with the old one
    assert len(post(crm, links, body, old, secret=["old-secret-0123456789", WEBHOOK_SECRET]).events) == 1
    with pytest.raises(InboundRejected) as info:
        post(crm, links, body, old)
    assert info.value.status == 403


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("missing", 401),
        ("garbage", 401),
        ("no-v1", 401),
        ("wrong-secret", 403),
        ("body-changed", 403),
        ("too-old", 403),
        ("from-the-future", 403),
    ],
)
def test_bad_webhook_signatures_are_rejected_with_no_events(crm, links, sent, clock, case, status, caplog):
    body = json.dumps({"events": [{"id": "e1", "type": "bounced", "address": "ada@example.com"}]}).encode()
    t = now_ts(clock)
    signature = {
        "missing": None,
        "garbage": "sha256=abc",
        "no-v1": f"t={t}",
        "wrong-secret": sign_webhook("another-secret-0123456", body, t),
        "body-changed": sign_webhook(WEBHOOK_SECRET, body.replace(b"ada", b"eve"), t),
        "too-old": sign_webhook(WEBHOOK_SECRET, body, t - 301),
        "from-the-future": sign_webhook(WEBHOOK_SECRET, body, t + 301),
    }[case]
    with caplog.at_level(logging.DEBUG), pytest.raises(InboundRejected) as info:
        post(crm, links, body, signature)
    assert info.value.status == status
    assert WEBHOOK_SECRET not in str(info.value) and WEBHOOK_SECRET not in caplog.text
    assert suppressions(crm) == set()


def test_webhook_within_tolerance_is_accepted(crm, links, sent, clock):
    body = json.dumps({"events": [{"id": "e1", "type": "delivered", "message_id": sent.id}]}).encode()
    assert post(crm, links, body, sign_webhook(WEBHOOK_SECRET, body, now_ts(clock) - 299)).status == 200


def test_webhook_without_a_secret_is_not_configured(crm, links):
    body = b'{"events": []}'
    for secret in (None, ""):
        with pytest.raises(InboundRejected, match="not configured") as info:
            post(crm, links, body, sign_webhook(WEBHOOK_SECRET, body), secret=secret)
        assert info.value.status == 404


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{not json", "body: not valid JSON"),
        (b"\xff\xfe", "body: not valid JSON"),
        (b"[]", "body: expected a JSON object"),
        (b'{"events": {}}', "events: not a list"),
        (b'{"events": [1]}', r"events\[0\]: not an object"),
        (
            b'{"events": [{"id": "a", "type": "delivered", "message_id": "m"},'
            b' {"id": "b", "type": "bounced", "address": "x@example.com"},'
            b' {"id": "c", "type": "exploded", "address": "x@example.com"}]}',
            r"events\[2\]\.type: unknown event type 'exploded'",
        ),
        (b'{"events": [{"type": "bounced", "address": "x@example.com"}]}', r"events\[0\]\.id: missing"),
        (b'{"events": [{"id": 5, "type": "bounced", "address": "x@example.com"}]}', r"events\[0\]\.id: not a string"),
        (b'{"events": [{"id": "a", "type": "bounced"}]}', r"events\[0\]: needs message_id or address"),
        (b'{"events": [{"id": "a", "type": "bounced", "address": "nobody"}]}', r"events\[0\]\.address"),
        (
            b'{"events": [{"id": "a", "type": "bounced", "address": "x@example.com", "occurred_at": "2026-06-01T10:00:00"}]}',
            r"events\[0\]\.occurred_at: .*timezone",
        ),
        (
            b'{"events": [{"id": "a", "type": "clicked", "message_id": "m", "url": "javascript:alert(1)"}]}',
            r"events\[0\]\.url",
        ),
        (
            b'{"events": [{"id": "a\\r\\nX: y", "type": "bounced", "address": "x@example.com"}]}',
            r"events\[0\]\.id: contains line breaks",
        ),
    ],
)
def test_malformed_webhook_bodies_name_the_field(crm, links, clock, payload, match):
    with pytest.raises(InboundRejected, match=match) as info:
        post(crm, links, payload, sign_webhook(WEBHOOK_SECRET, payload, now_ts(clock)))
    assert info.value.status == 400
    assert suppressions(crm) == set()


def test_webhook_only_accepts_post(crm, links):
    with pytest.raises(InboundRejected) as info:
        handle(crm, links, InboundRequest(route="webhook", method="GET"), webhook_secret=WEBHOOK_SECRET)
    assert info.value.status == 405
