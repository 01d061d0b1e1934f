"""The e-mail channel end to end: real SMTP (aiosmtpd) and real HTTP (ecrm-api on uvicorn),
both on 127.0.0.1.  Messages are parsed back and their headers, parts and links followed."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from ecrm_api import plugin as api_plugin
from ecrm_api.app import create_app
from ecrm_api.testing import serve_in_thread
from ecrm_email import plugin as email_plugin
from ecrm_email.testing import smtp_config

from ecrm_core.testing import make_crm

TEMPLATE = {
    "subject": "{{ customer.first_name }}, {{ offer.name }}",
    "html": """{% extends "layouts/base.html" %}{% block content %}
<p style="color: red">Hi {{ customer.name }}</p>
<a href="https://shop.example/sale?x=1">the sale</a>
<a href="mailto:help@shop.example">help</a>
{% endblock %}""",
    "text": "Hi {{ customer.name }}: https://shop.example/sale\nUnsubscribe: {{ unsubscribe_url }}",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shop(tmp_path, smtp_server):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    crm = make_crm(
        tmp_path / "shop.db",
        plugins=[email_plugin, api_plugin],
        secret="end-to-end-secret-0123456789",
        channels={"email": {"from": "Shop <news@shop.example>", "base_url": base, "smtp": smtp_config(smtp_server)}},
    )
    crm.offers.create(code="spring", name="20% off", kind="discount")
    url, stop = serve_in_thread(create_app(crm, rate_limit=None), port=port)
    assert url == base
    yield crm, smtp_server, base
    stop()
    crm.close()


def _links(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


def test_send_parse_back_click_open_unsubscribe(shop):
    crm, server, base = shop
    ada = crm.customers.create(email="ada@example.com", name="Ada Lovelace", consent={"email": "granted"})
    record = crm.messages.send("email", ada.id, TEMPLATE, offer="spring")
    assert crm.messages.dispatch().sent == 1
    [msg] = server.messages
    [envelope] = server.envelopes
    assert list(envelope.rcpt_tos) == ["ada@example.com"]
    assert envelope.mail_from == crm.channels.get("email").returns.return_path(record.id, now=crm.now().timestamp())
    assert envelope.mail_from.startswith(f"news+{record.id}.") and envelope.mail_from.endswith("@shop.example")

    # headers
    assert msg["Subject"] == "Ada, 20% off"
    assert msg["From"] == "Shop <news@shop.example>" and msg["To"] == "ada@example.com"
    assert msg["Message-ID"] == f"<{record.id}@shop.example>" and msg["X-Ecrm-Message"] == record.id
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [unsubscribe] = re.findall(r"<(https?://[^>]+)>", msg["List-Unsubscribe"])
    assert unsubscribe.startswith(f"{base}/channels/email/unsubscribe/")

    # parts: text and html, CSS inlined, links rewritten, pixel added
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hi Ada Lovelace" in text and unsubscribe in text
    assert 'style="color: red"' in html or "color: red" in html
    links = _links(html)
    tracked = [u for u in links if "/channels/email/click/" in u]
    assert tracked and "mailto:help@shop.example" in links
    assert "https://shop.example/sale?x=1" not in links  # only the signed redirect is in the mail
    [pixel] = re.findall(r'src="([^"]+/channels/email/open/[^"]+)"', html)

    # click: a 303 to the signed target, recorded once per token
    with httpx.Client(follow_redirects=False) as http:
        click = http.get(tracked[0].replace("&amp;", "&"), params={"url": "http://evil.example"})
        assert click.status_code == 303 and click.headers["location"] == "https://shop.example/sale?x=1"
        http.get(tracked[0].replace("&amp;", "&"))
        opened = http.get(pixel.replace("&amp;", "&"))
        assert opened.status_code == 200 and opened.headers["content-type"].startswith("image/gif")
        # tampered link: rejected, nothing recorded
        bad = http.get(tracked[0][:-3] + ("AAA" if not tracked[0].endswith("AAA") else "BBB"))
        assert bad.status_code in (400, 403)

        # GET on the one-click URL changes nothing; the POST of RFC 8058 unsubscribes
        page = http.get(unsubscribe)
        assert page.status_code == 200 and "<form" in page.text
        assert crm.customers.get(ada.id).consent.get("email:marketing") is None
        done = http.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200
        replay = http.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert replay.status_code == 200

    consent = crm.customers.get(ada.id).consent
    assert consent["email:marketing"].status == "denied" and consent["email"].status == "granted"
    kinds = [i.kind for i in crm.interactions.timeline(ada.id)]
    assert kinds.count("click") == 1 and kinds.count("email_open") == 1 and kinds.count("unsubscribe") == 1
    assert len(crm.customers.consent_history(ada.id)) == 2  # granted at creation, denied once
    # the next marketing mail is blocked, a receipt still goes out
    assert crm.messages.send("email", ada.id, TEMPLATE, offer="spring").reason == "opted_out"
    receipt = crm.messages.send("email", ada.id, {"subject": "Receipt", "text": "Paid"}, purpose="transactional")
    crm.messages.dispatch()
    assert server.messages[-1]["X-Ecrm-Message"] == receipt.id
    assert server.messages[-1]["List-Unsubscribe"] is None


def test_preference_page_over_http(shop):
    crm, server, _ = shop
    bob = crm.customers.create(email="bob@example.com", name="Bob", consent={"email": "granted"})
    crm.messages.send("email", bob.id, TEMPLATE, offer="spring")
    crm.messages.dispatch()
    html = server.messages[0].get_body(("html",)).get_content()
    [prefs] = [u.replace("&amp;", "&") for u in _links(html) if "/channels/email/preferences/" in u] or [None]
    if prefs is None:  # the footer link may be click-tracked: follow the redirect target
        tracked = [u.replace("&amp;", "&") for u in _links(html) if "/channels/email/click/" in u]
        targets = [httpx.get(u, follow_redirects=False).headers["location"] for u in tracked]
        [prefs] = [t for t in targets if "/channels/email/preferences/" in t]
    page = httpx.get(prefs)
    assert page.status_code == 200 and "marketing" in page.text.lower()
    token = prefs.rsplit("/", 1)[1]
    saved = httpx.post(prefs, data={"token": token})  # every box unticked: opt out of each purpose
    assert saved.status_code == 200
    assert crm.customers.get(bob.id).consent["email:marketing"].status == "denied"


def test_smtp_outage_is_retried_then_dead_lettered_never_lost(shop):
    crm, server, _ = shop
    cid = crm.customers.create(email="cy@example.com", consent={"email": "granted"}).id
    record = crm.messages.send("email", cid, {"subject": "Hi", "text": "Hello"})
    server.drop_next(at="data")
    assert crm.messages.dispatch().retrying == 1
    assert crm.messages.get(record.id).status == "queued"
    # every attempt has its own attempt id; the message id (Message-ID) stays
    attempts = crm.messages.attempts(record.id)
    assert [a.status for a in attempts] == ["deferred"] and attempts[0].reason
    assert server.messages == []


def test_a_rejected_post_answers_a_browser_with_a_page_and_a_machine_with_a_problem(shop):
    crm, server, _base = shop
    ada = crm.customers.create(email="ada@example.com", consent={"email": "granted"})
    crm.messages.send("email", ada.id, TEMPLATE, offer="spring")
    assert crm.messages.dispatch().sent == 1
    [unsubscribe] = re.findall(r"<(https?://[^>]+)>", server.messages[0]["List-Unsubscribe"])
    tampered = unsubscribe[:-3] + ("AAA" if not unsubscribe.endswith("AAA") else "BBB")
    form = {"List-Unsubscribe": "One-Click"}
    # a person submitting the page's form (say, after the link expired): an HTML page
    page = httpx.post(tampered, data=form, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "<h1>" in page.text and "not valid" in page.text
    # a mail provider's one-click POST (no HTML wanted): a problem document
    machine = httpx.post(tampered, data=form)
    assert machine.status_code == 403 and machine.headers["content-type"].startswith("application/problem+json")
    assert crm.customers.get(ada.id).consent["email"].status == "granted"  # nothing changed either way
