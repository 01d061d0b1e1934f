"""Signed e-mail links and the public pages behind them (ecrm_email.links,
ecrm_email.inbound.handle): unsubscribe (RFC 8058), click, open, preferences.

A real SQLite CRM with the core's MemoryChannel registered as "email" gives
the messages the links refer to; handle() is called directly with
InboundRequest objects and the events it returns are applied by the core.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import lxml.html
import pytest
from ecrm_email import inbound
from ecrm_email.inbound import PIXEL_GIF, ROUTES, error_response, handle
from ecrm_email.links import Links

from ecrm_core import CRM, hookimpl
from ecrm_core.channels import Content, InboundRejected, InboundRequest, Purpose
from ecrm_core.errors import ValidationError
from ecrm_core.signing import Signer
from ecrm_core.testing.channels import FakeClock, MemoryChannel

BASE = "http://127.0.0.1:8000/crm"
SECRET = "x" * 32


class Purposes:
    @hookimpl
    def ecrm_register_message_purposes(self):
        return [Purpose(name="newsletter", description="weekly <b>news</b> & tips")]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def crm(tmp_path, clock):
    memory = MemoryChannel(name="email")
    crm = CRM(
        f"sqlite:///{tmp_path / 'c.db'}",
        load_entrypoints=False,
        secret=SECRET,
        plugins=[memory.plugin(), Purposes()],
        clock=clock,
    )
    crm.upgrade()
    yield crm
    crm.close()


@pytest.fixture
def links(crm):
    return Links(crm.signer, BASE)


@pytest.fixture
def sent(crm):
    """A marketing e-mail sent to Ada (consent granted)."""
    ada = crm.customers.create(email="ada@example.com", name="Ada", consent={"email": "granted"})
    record = crm.messages.send("email", ada.id, Content(body="hi"))
    assert crm.messages.dispatch().sent == 1
    return crm.messages.get(record.id)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def req(route: str, method: str = "GET", token: str | None = None, **kw) -> InboundRequest:
    params = {"token": token} if token is not None else {}
    return InboundRequest(route=route, method=method, params=params, **kw)


def call(crm, links, request):
    return handle(crm, links, request, webhook_secret=None)


def tamper(token: str) -> str:
    i = 3  # inside the payload: the signature no longer matches
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


def consent(crm, cid):
    return {k: v.status for k, v in crm.customers.get(cid).consent.items()}


def kinds(crm, cid):
    return [i.kind for i in crm.interactions.timeline(cid)]


def checkboxes(html: str) -> dict[str, bool]:
    doc = lxml.html.fromstring(html)
    return {el.get("name"): el.get("checked") is not None for el in doc.xpath("//input[@type='checkbox']")}


# ---------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------


def test_routes_are_declared():
    assert {r.name: r.methods for r in ROUTES} == {
        "unsubscribe/{token}": ("GET", "HEAD", "POST"),
        "click/{token}": ("GET", "HEAD"),
        "open/{token}": ("GET", "HEAD"),
        "preferences/{token}": ("GET", "HEAD", "POST"),
        "webhook": ("POST",),
    }


def test_each_kind_round_trips_under_its_route(links):
    urls = {
        "unsubscribe": links.unsubscribe_url(message_id="m1", purpose="marketing"),
        "click": links.click_url(message_id="m1", url="https://shop.example/p/1?a=1&b=2"),
        "open": links.open_url(message_id="m1"),
        "preferences": links.preferences_url(customer_id=7, workspace="default"),
    }
    for kind, url in urls.items():
        assert url.startswith(f"{BASE}/channels/email/{kind}/")
        assert urlsplit(url).query == ""  # nothing but the token
    assert links.verify("unsubscribe", token_of(urls["unsubscribe"])) == {"message_id": "m1", "purpose": "marketing"}
    assert links.verify("click", token_of(urls["click"])) == {
        "message_id": "m1",
        "url": "https://shop.example/p/1?a=1&b=2",
    }
    assert links.verify("open", token_of(urls["open"])) == {"message_id": "m1"}
    assert links.verify("preferences", token_of(urls["preferences"])) == {"customer_id": 7, "workspace": "default"}
    # a whole-channel unsubscribe link
    assert (
        links.verify("unsubscribe", token_of(links.unsubscribe_url(message_id="m1", purpose=None)))["purpose"] is None
    )


def test_tokens_are_not_guessable_ids(links):
    a = token_of(links.open_url(message_id="m1"))
    b = token_of(Links(Signer("another-secret-0123456789"), BASE).open_url(message_id="m1"))
    assert a != b  # keyed by the secret, not derived from the id alone
    assert len(a) > 40


def test_a_token_of_another_kind_is_rejected(links):
    click = token_of(links.click_url(message_id="m1", url="https://shop.example/"))
    for kind in ("unsubscribe", "open", "preferences"):
        with pytest.raises(InboundRejected) as info:
            links.verify(kind, click)
        assert info.value.status == 403


def test_a_tampered_token_is_rejected(links):
    token = token_of(links.unsubscribe_url(message_id="m1", purpose="marketing"))
    with pytest.raises(InboundRejected) as info:
        links.verify("unsubscribe", tamper(token))
    assert info.value.status == 403
    with pytest.raises(InboundRejected) as info:
        links.verify("unsubscribe", token[:-1] + ("A" if token[-2] != "A" else "B") + token[-1])
    assert info.value.status == 403


def test_an_expired_token_is_rejected_with_410(crm, monkeypatch):
    links = Links(crm.signer, BASE, max_age=3600)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)
    old = token_of(links.unsubscribe_url(message_id="m1", purpose="marketing"))
    monkeypatch.setattr(time, "time", real)
    fresh = token_of(links.unsubscribe_url(message_id="m1", purpose="marketing"))
    assert links.verify("unsubscribe", fresh)["message_id"] == "m1"
    with pytest.raises(InboundRejected) as info:
        links.verify("unsubscribe", old)
    assert info.value.status == 410
    # the same token is fine for a link that lives longer
    assert Links(crm.signer, BASE, max_age=3 * 3600).verify("unsubscribe", old)["purpose"] == "marketing"


def test_malformed_tokens_are_400(crm, links):
    for token in ("", "x" * 5000):
        with pytest.raises(InboundRejected) as info:
            links.verify("open", token)
        assert info.value.status == 400
    # correctly signed, but not the payload a link carries
    odd = crm.signer.sign("email-click", {"m": "m1", "u": "javascript:alert(1)"})
    with pytest.raises(InboundRejected) as info:
        links.verify("click", odd)
    assert info.value.status == 400
    with pytest.raises(InboundRejected) as info:
        links.verify("preferences", crm.signer.sign("email-preferences", ["not", "a", "dict"]))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "ftp://shop.example/file",
        "/relative/path",
        "https://shop.example/a\r\nSet-Cookie: x=1",
        "https://shop.example/a b",
        "https:///no-host",
        "data:text/html,<script>",
        None,
        "https://shop.example/" + "a" * 3000,
    ],
)
def test_only_http_targets_can_be_tracked(links, target):
    with pytest.raises(ValidationError) as info:
        links.click_url(message_id="m1", url=target)
    assert info.value.field == "url"


def test_bad_base_url_and_arguments_are_named(crm):
    for base in ("127.0.0.1:8000", "ftp://x", "https://x/crm?a=1", ""):
        with pytest.raises(ValidationError) as info:
            Links(crm.signer, base)
        assert info.value.field == "base_url"
    links = Links(crm.signer, BASE + "/")
    assert links.open_url(message_id="m").startswith(BASE + "/channels/email/open/")
    with pytest.raises(ValidationError, match="customer_id"):
        links.preferences_url(customer_id=0, workspace="default")
    with pytest.raises(ValidationError, match="message_id"):
        links.open_url(message_id="")
    assert SECRET not in repr(links) and SECRET not in repr(crm.signer)


# ---------------------------------------------------------------------------
# Unsubscribe (RFC 8058)
# ---------------------------------------------------------------------------


def test_get_on_the_unsubscribe_url_changes_nothing(crm, links, sent):
    token = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    before = (consent(crm, sent.customer_id), kinds(crm, sent.customer_id))
    response = call(crm, links, req("unsubscribe/{token}", "GET", token))
    assert response.status == 200 and not response.events
    assert response.content_type.startswith("text/html")
    doc = lxml.html.fromstring(response.body)
    [form] = doc.xpath("//form")
    assert form.get("method") == "post"
    assert form.get("action") == f"{BASE}/channels/email/unsubscribe/{token}"
    fields = {i.get("name"): i.get("value") for i in form.xpath(".//input")}
    assert fields == {"List-Unsubscribe": "One-Click", "token": token}
    assert "Marketing" in response.body
    assert (consent(crm, sent.customer_id), kinds(crm, sent.customer_id)) == before


def test_one_click_post_unsubscribes_once(crm, links, sent):
    token = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    request = req(
        "unsubscribe/{token}",
        "POST",
        token,
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"List-Unsubscribe=One-Click",
    )
    response = call(crm, links, request)
    [event] = response.events
    assert (event.type, event.message_id, event.purpose, event.key) == (
        "unsubscribed",
        sent.id,
        "marketing",
        f"unsub:{sent.id}:marketing",
    )
    assert len(crm.messages.apply_events(response.events)) == 1
    assert consent(crm, sent.customer_id)["email:marketing"] == "denied"
    assert consent(crm, sent.customer_id)["email"] == "granted"  # only the purpose
    assert crm.messages.send("email", sent.customer_id, Content(body="again")).reason == "opted_out"
    # the page links to the customer's preference page
    doc = lxml.html.fromstring(response.body)
    [link] = [a.get("href") for a in doc.xpath("//a") if "/preferences/" in a.get("href")]
    assert links.verify("preferences", token_of(link)) == {"customer_id": sent.customer_id, "workspace": "default"}
    # replayed: a second POST of the same link changes nothing
    history = crm.customers.consent_history(sent.customer_id)
    again = call(crm, links, request)
    assert crm.messages.apply_events(again.events) == []
    assert kinds(crm, sent.customer_id).count("unsubscribe") == 1
    assert crm.customers.consent_history(sent.customer_id) == history


def test_the_confirmation_form_and_multipart_bodies_unsubscribe(crm, links, sent):
    token = token_of(links.unsubscribe_url(message_id=sent.id, purpose=None))
    form = call(
        crm, links, req("unsubscribe/{token}", "POST", token, form={"List-Unsubscribe": "One-Click", "token": token})
    )
    [event] = form.events
    assert event.purpose is None and event.detail == "unsubscribe page"
    boundary = "xYzZY"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--{boundary}--\r\n'
    ).encode()
    multipart = call(
        crm,
        links,
        req(
            "unsubscribe/{token}",
            "POST",
            token,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            body=body,
        ),
    )
    assert [e.key for e in multipart.events] == [f"unsub:{sent.id}:*"]
    crm.messages.apply_events(form.events)
    assert consent(crm, sent.customer_id)["email"] == "denied"  # the whole channel
    assert crm.messages.apply_events(multipart.events) == []


@pytest.mark.parametrize(
    ("body", "form", "status"),
    [
        (b"", {}, 400),  # a POST without List-Unsubscribe=One-Click
        (b"List-Unsubscribe=Yes", {}, 400),
        (b"", {"List-Unsubscribe": "One-Click", "token": "someone-elses"}, 403),
    ],
)
def test_bad_unsubscribe_posts_change_nothing(crm, links, sent, body, form, status):
    token = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("unsubscribe/{token}", "POST", token, body=body, form=form))
    assert info.value.status == status
    assert "email:marketing" not in consent(crm, sent.customer_id)


def test_tampered_expired_or_foreign_unsubscribe_links_change_nothing(crm, links, sent, monkeypatch):
    good = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    click = token_of(links.click_url(message_id=sent.id, url="https://shop.example/"))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 100 * 86400)
    expired = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    monkeypatch.setattr(time, "time", real)
    for token, status in ((tamper(good), 403), (click, 403), (expired, 410)):
        for method in ("GET", "POST"):
            with pytest.raises(InboundRejected) as info:
                call(crm, links, req("unsubscribe/{token}", method, token, body=b"List-Unsubscribe=One-Click"))
            assert info.value.status == status
    assert "email:marketing" not in consent(crm, sent.customer_id)
    assert "unsubscribe" not in kinds(crm, sent.customer_id)


def test_unsubscribe_link_of_an_unknown_message_is_404(crm, links):
    token = token_of(links.unsubscribe_url(message_id="0" * 32, purpose="marketing"))
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("unsubscribe/{token}", "POST", token, body=b"List-Unsubscribe=One-Click"))
    assert info.value.status == 404


# ---------------------------------------------------------------------------
# Click and open tracking
# ---------------------------------------------------------------------------


def test_click_redirects_only_to_the_signed_target(crm, links, sent):
    target = "https://shop.example/p/42?utm_source=mail"
    token = token_of(links.click_url(message_id=sent.id, url=target))
    request = req("click/{token}", "GET", token, query={"url": "http://evil.example/", "next": "http://evil.example/"})
    response = call(crm, links, request)
    assert response.status == 303
    assert response.headers["location"] == target
    [event] = response.events
    assert (event.type, event.message_id, event.url) == ("clicked", sent.id, target)
    assert len(crm.messages.apply_events(response.events)) == 1
    [click] = [i for i in crm.interactions.timeline(sent.customer_id) if i.kind == "click"]
    assert click.properties["url"] == target and click.properties["message"] == sent.id
    # the same link again is recorded once
    assert crm.messages.apply_events(call(crm, links, request).events) == []
    assert kinds(crm, sent.customer_id).count("click") == 1


def test_a_bad_click_token_does_not_redirect(crm, links, sent):
    token = token_of(links.click_url(message_id=sent.id, url="https://shop.example/"))
    unsub = token_of(links.unsubscribe_url(message_id=sent.id, purpose="marketing"))
    for bad in (tamper(token), unsub):
        with pytest.raises(InboundRejected) as info:
            call(crm, links, req("click/{token}", "GET", bad, query={"url": "http://evil.example/"}))
        assert info.value.status == 403
    assert "click" not in kinds(crm, sent.customer_id)


def test_open_pixel(crm, links, sent):
    token = token_of(links.open_url(message_id=sent.id))
    response = call(crm, links, req("open/{token}", "GET", token))
    assert response.status == 200
    assert response.content_type == "image/gif"
    assert response.body == PIXEL_GIF and PIXEL_GIF.startswith(b"GIF89a\x01\x00\x01\x00")
    assert "no-store" in {k.lower(): v for k, v in response.headers.items()}["cache-control"]
    [event] = response.events
    assert (event.type, event.message_id) == ("opened", sent.id)
    crm.messages.apply_events(response.events)
    assert crm.messages.apply_events(call(crm, links, req("open/{token}", "GET", token)).events) == []
    assert kinds(crm, sent.customer_id).count("email_open") == 1
    with pytest.raises(InboundRejected):
        call(crm, links, req("open/{token}", "GET", tamper(token)))


def test_wrong_methods_and_unknown_routes(crm, links, sent):
    token = token_of(links.click_url(message_id=sent.id, url="https://shop.example/"))
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("click/{token}", "POST", token))
    assert info.value.status == 405
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("bogus/{token}", "GET", token))
    assert info.value.status == 404
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("click/{token}", "GET"))
    assert info.value.status == 400
    # a concrete route (no params) works too
    assert call(crm, links, InboundRequest(route=f"click/{token}", method="GET")).status == 303


# ---------------------------------------------------------------------------
# The preference page
# ---------------------------------------------------------------------------


def prefs_token(links, cid):
    return token_of(links.preferences_url(customer_id=cid, workspace="default"))


def test_preference_page_shows_the_purposes_and_their_state(crm, links, sent):
    cid = sent.customer_id
    crm.customers.set_consent(cid, "email:newsletter", False)
    token = prefs_token(links, cid)
    response = call(crm, links, req("preferences/{token}", "GET", token))
    assert response.status == 200 and not response.events
    # every non-transactional purpose; "transactional" cannot be opted out of
    assert checkboxes(response.body) == {
        "purpose:newsletter": False,
        "purpose:marketing": True,
        "unsubscribe_all": False,
    }
    doc = lxml.html.fromstring(response.body)
    [form] = doc.xpath("//form")
    assert form.get("action") == f"{BASE}/channels/email/preferences/{token}"
    assert form.xpath(".//input[@name='token']/@value") == [token]
    # purpose descriptions from plugins are escaped
    assert "weekly &lt;b&gt;news&lt;/b&gt; &amp; tips" in response.body
    assert "ada@example.com" in response.body


def test_preference_form_changes_consent(crm, links, sent):
    cid = sent.customer_id
    token = prefs_token(links, cid)
    crm.customers.set_consent(cid, "email:newsletter", False)
    # opt out of marketing, back into the newsletter
    response = call(
        crm, links, req("preferences/{token}", "POST", token, form={"token": token, "purpose:newsletter": "on"})
    )
    assert sorted((e.type, e.purpose) for e in response.events) == [
        ("resubscribed", "newsletter"),
        ("unsubscribed", "marketing"),
    ]
    assert all(e.customer_id == cid and e.workspace == "default" for e in response.events)
    assert checkboxes(response.body) == {
        "purpose:newsletter": True,
        "purpose:marketing": False,
        "unsubscribe_all": False,
    }
    assert "saved" in response.body
    crm.messages.apply_events(response.events)
    state = consent(crm, cid)
    assert (state["email:marketing"], state["email:newsletter"], state["email"]) == ("denied", "granted", "granted")
    assert crm.messages.send("email", cid, Content(body="x"), purpose="newsletter").status == "queued"
    assert crm.messages.send("email", cid, Content(body="x"), purpose="marketing").reason == "opted_out"
    # the same form again: nothing left to change
    again = call(
        crm, links, req("preferences/{token}", "POST", token, form={"token": token, "purpose:newsletter": "on"})
    )
    assert again.events == []
    # unsubscribe from all e-mail, then back
    off = call(crm, links, req("preferences/{token}", "POST", token, form={"token": token, "unsubscribe_all": "on"}))
    assert [(e.type, e.purpose) for e in off.events] == [("unsubscribed", "newsletter"), ("unsubscribed", None)]
    crm.messages.apply_events(off.events)
    assert consent(crm, cid)["email"] == "denied"
    assert crm.messages.send("email", cid, Content(body="x"), purpose="newsletter").reason == "no_consent"
    assert crm.messages.send("email", cid, Content(body="x"), purpose="transactional").status == "queued"
    on = call(crm, links, req("preferences/{token}", "POST", token, form={"token": token, "purpose:marketing": "on"}))
    assert sorted((e.type, e.purpose or "*") for e in on.events) == [
        ("resubscribed", "*"),
        ("resubscribed", "marketing"),
    ]
    crm.messages.apply_events(on.events)
    assert consent(crm, cid)["email"] == "granted" and consent(crm, cid)["email:marketing"] == "granted"


@pytest.mark.parametrize(
    ("form", "status", "match"),
    [
        ({"purpose:bogus": "on"}, 400, "bogus"),
        ({"purpose:transactional": "on"}, 400, "transactional"),
        ({"purpose:marketing": "on", "token": None}, 400, "token"),
        ({"purpose:marketing": "on", "token": "forged"}, 403, "token"),
    ],
)
def test_bad_preference_forms_change_nothing(crm, links, sent, form, status, match):
    token = prefs_token(links, sent.customer_id)
    form = {"token": token, **form}
    form = {k: v for k, v in form.items() if v is not None}
    before = consent(crm, sent.customer_id)
    with pytest.raises(InboundRejected, match=match) as info:
        call(crm, links, req("preferences/{token}", "POST", token, form=form))
    assert info.value.status == status
    assert consent(crm, sent.customer_id) == before


def test_preference_links_are_checked(crm, links, sent):
    token = prefs_token(links, sent.customer_id)
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("preferences/{token}", "GET", tamper(token)))
    assert info.value.status == 403
    with pytest.raises(InboundRejected) as info:
        call(crm, links, req("preferences/{token}", "GET", prefs_token(links, 999)))
    assert info.value.status == 404


def test_error_page_escapes_the_reason():
    response = error_response(InboundRejected("bad <script>", status=410))
    assert response.status == 410 and response.content_type.startswith("text/html")
    assert "bad &lt;script&gt;" in response.body and "expired" in response.body


# ---------------------------------------------------------------------------
# A replay under a moving clock (the real world: the second request comes later)
# ---------------------------------------------------------------------------


def test_a_replayed_link_a_minute_later_changes_nothing(crm, links, sent, clock):
    token = token_of(links.click_url(message_id=sent.id, url="https://shop.example/"))
    crm.messages.apply_events(call(crm, links, req("click/{token}", "GET", token)).events)
    clock.advance(seconds=60)
    assert crm.messages.apply_events(call(crm, links, req("click/{token}", "GET", token)).events) == []


def test_module_exports():
    assert set(inbound.__all__) >= {"ROUTES", "handle", "sign_webhook", "parse_inbound_mail", "InboundMailHandler"}
