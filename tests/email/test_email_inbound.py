"""What comes back without a browser: the provider webhook (signed, Stripe
style) and bounces/complaints delivered by mail (DSN, ARF), parsed directly
and through a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import smtplib
from pathlib import Path
from string import Template

import pytest
from ecrm_email.inbound import (
    InboundMailHandler,
    handle,
    parse_inbound_mail,
    serve_inbound,
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


# ---------------------------------------------------------------------------
# Bounces and complaints by mail
# ---------------------------------------------------------------------------


def fixture(name: str, **values: str) -> bytes:
    values.setdefault("feedback_type", "abuse")
    return Template((FIXTURES / name).read_bytes().decode("ascii")).substitute(values).encode()


def test_dsn_5_1_1_for_a_sent_message_suppresses_the_address(crm, sent):
    [event] = parse_inbound_mail(fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=sent.id))
    assert (event.type, event.message_id, event.address) == ("bounced", sent.id, "ada@example.com")
    assert event.key == "dsn:20260601120500.4F1A2B3C4D@mx.example.net:ada@example.com"
    assert event.detail.startswith("5.1.1 smtp; 550 5.1.1") and "\n" not in event.detail
    assert [e.customer_id for e in crm.messages.apply_events([event])] == [sent.customer_id]
    [entry] = crm.messages.suppressions()
    assert (entry.address, entry.scope, entry.reason) == ("ada@example.com", "all", "hard_bounce")
    assert "5.1.1" in entry.detail
    assert crm.messages.send("email", sent.customer_id, Content(body="x")).reason == "suppressed"
    assert crm.messages.apply_events([event]) == []


def test_dsn_message_id_falls_back_to_the_message_id_header(crm, sent):
    raw = fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=sent.id)
    raw = raw.replace(f"X-Ecrm-Message: {sent.id}\r\n".encode(), b"")
    [event] = parse_inbound_mail(raw)
    assert event.message_id == sent.id


def test_delayed_dsn_is_a_soft_bounce_and_suppresses_nothing(crm, sent):
    [event] = parse_inbound_mail(fixture("dsn_delayed.eml", address="ada@example.com", message_id=sent.id))
    assert (event.type, event.message_id, event.address) == ("soft_bounced", sent.id, "ada@example.com")
    assert len(crm.messages.apply_events([event])) == 1
    assert crm.messages.suppressions() == []
    assert "bounce" in kinds(crm, sent.customer_id)


def test_arf_abuse_report_is_a_complaint(crm, sent):
    [event] = parse_inbound_mail(fixture("arf_abuse.eml", address="ada@example.com", message_id=sent.id))
    assert (event.type, event.message_id, event.address) == ("complained", sent.id, "ada@example.com")
    assert event.key == "dsn:arf-20260602-0001@fbl.mailbox.example:ada@example.com"
    crm.messages.apply_events([event])
    assert suppressions(crm) == {("ada@example.com", "marketing", "complaint")}
    assert crm.customers.get(sent.customer_id).consent["email"].status == "denied"
    # marketing is blocked, a receipt still goes out
    assert crm.messages.send("email", sent.customer_id, Content(body="x")).status == "blocked"
    assert crm.messages.send("email", sent.customer_id, Content(body="x"), purpose="transactional").status == "queued"


def test_arf_original_rcpt_to_wins_over_the_quoted_to(sent):
    raw = fixture("arf_abuse.eml", address="list@example.org", message_id=sent.id)
    raw = raw.replace(b"Version: 1\r\n", b"Version: 1\r\nOriginal-Rcpt-To: <ada@example.com>\r\n")
    [event] = parse_inbound_mail(raw)
    assert event.address == "ada@example.com"


def test_mail_that_is_not_a_report_gives_no_events():
    assert (
        parse_inbound_mail(fixture("arf_abuse.eml", address="a@example.com", message_id="m", feedback_type="not-spam"))
        == []
    )
    assert (
        parse_inbound_mail(b"From: ada@example.com\r\nTo: bounces@shop.example\r\nSubject: hello\r\n\r\nthanks!\r\n")
        == []
    )
    assert parse_inbound_mail(b"") == []
    assert parse_inbound_mail(b"\x00\xff garbage \r\n\r\n\r\n") == []


# ---------------------------------------------------------------------------
# A real SMTP server for the bounce address
# ---------------------------------------------------------------------------


@pytest.fixture
def inbound_server(crm):
    controller = serve_inbound(crm, "127.0.0.1", 0)
    try:
        yield controller
    finally:
        controller.stop()


def test_dsn_delivered_to_the_inbound_server_suppresses_the_address(crm, sent, inbound_server):
    assert isinstance(inbound_server.handler, InboundMailHandler)
    assert inbound_server.port != 0
    raw = fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=sent.id)
    with smtplib.SMTP("127.0.0.1", inbound_server.port, timeout=10) as smtp:
        refused = smtp.sendmail("", ["bounces@shop.example"], raw)
        assert refused == {}
        # delivered twice (an MTA retry): recorded once
        smtp.sendmail("", ["bounces@shop.example"], raw)
        # mail that is not a report is accepted and dropped (never bounce a bounce)
        assert smtp.sendmail("ada@example.com", ["bounces@shop.example"], b"Subject: hi\r\n\r\nthanks\r\n") == {}
    # the server answers DATA after the handler ran: the suppression is there now
    assert suppressions(crm) == {("ada@example.com", "all", "hard_bounce")}
    assert kinds(crm, sent.customer_id).count("bounce") == 1


def test_a_database_failure_asks_the_sender_to_retry(crm, sent, inbound_server, monkeypatch):
    def broken(events):
        raise RuntimeError("database is down")

    monkeypatch.setattr(crm.messages, "apply_events", broken)
    raw = fixture("arf_abuse.eml", address="ada@example.com", message_id=sent.id)
    with (
        smtplib.SMTP("127.0.0.1", inbound_server.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPDataError) as info,
    ):
        smtp.sendmail("", ["abuse@shop.example"], raw)
    assert info.value.smtp_code == 451


def test_mailto_unsubscribe_through_the_inbound_server(crm, sent, inbound_server):
    [event] = parse_inbound_mail(f"From: ada@example.com\r\nSubject: unsubscribe {sent.id}\r\n\r\n".encode())
    assert (event.type, event.message_id, event.purpose) == ("unsubscribed", sent.id, None)
    with smtplib.SMTP("127.0.0.1", inbound_server.port, timeout=10) as smtp:
        for subject in (f"Unsubscribe {sent.id}", "unsubscribe " + "0" * 32, f"Re: unsubscribe {sent.id}"):
            mail = f"From: Ada <ada@example.com>\r\nTo: unsubscribe@shop.example\r\nSubject: {subject}\r\n\r\n"
            assert smtp.sendmail("ada@example.com", ["unsubscribe@shop.example"], mail.encode()) == {}
    # narrowed to the message's purpose, like the one-click link (same key: a later click is a replay)
    state = {k: v.status for k, v in crm.customers.get(sent.customer_id).consent.items()}
    assert state == {"email": "granted", "email:marketing": "denied"}
    assert kinds(crm, sent.customer_id).count("unsubscribe") == 1
    links = Links(crm.signer, BASE)
    token = links.unsubscribe_url(message_id=sent.id, purpose="marketing").rsplit("/", 1)[1]
    click = handle(
        crm,
        links,
        InboundRequest(
            route="unsubscribe/{token}", method="POST", params={"token": token}, body=b"List-Unsubscribe=One-Click"
        ),
        webhook_secret=None,
    )
    assert crm.messages.apply_events(click.events) == []
