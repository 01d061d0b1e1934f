"""The e-mail plugin's public pages in a real browser.

A real message goes through the pipeline to aiosmtpd on 127.0.0.1; the links
are taken from the mail as received (List-Unsubscribe, the HTML part's
footer and its click-tracked links), and headless Chromium (the OS package,
driven by Playwright) follows them against ecrm-api served by uvicorn on
127.0.0.1: the preference page, the unsubscribe confirmation and its button,
the error page for a tampered link, and the click redirect.  The pages must
work without JavaScript (a mail reader's browser may have none) and be
usable with assistive technology (labels, lang, title).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import lxml.html
import pytest
from ecrm_api import plugin as api_plugin
from ecrm_api.app import create_app
from ecrm_api.testing import serve_in_thread
from ecrm_email import plugin as email_plugin
from ecrm_email.testing import smtp_config

from ecrm_core import hookimpl
from ecrm_core.channels import Purpose
from ecrm_core.testing import make_crm

pytest_plugins = ["browser_kit"]


def template(target: str) -> dict[str, str]:
    return {
        "subject": "Spring offers",
        "html": """{% extends "layouts/base.html" %}{% block content %}
<p>Hi {{ customer.name }}, <a href="TARGET">see the sale</a></p>
{% endblock %}""".replace("TARGET", target),
        "text": "Hi {{ customer.name }}: " + target,
    }


class Newsletter:
    @hookimpl
    def ecrm_register_message_purposes(self):
        return [Purpose(name="newsletter", description="the weekly newsletter")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shop:
    """The CRM, its SMTP server, the served API, the shop's site (another
    local origin) and Ada's received mail."""

    def __init__(self, crm: Any, server: Any, base: str, site: Any) -> None:
        self.crm, self.server, self.base, self.site = crm, server, base, site
        self.target = site.url("shop", "/sale?x=1")
        self.template = template(self.target)
        self.ada = crm.customers.create(email="ada@example.com", name="Ada Lovelace", consent={"email": "granted"})
        self.record = crm.messages.send("email", self.ada.id, self.template)
        assert crm.messages.dispatch().sent == 1
        [self.mail] = server.messages
        assert self.mail["X-Ecrm-Message"] == self.record.id
        # the links, as a mail reader sees them
        self.unsubscribe_url = str(self.mail["List-Unsubscribe"]).strip().strip("<>")
        html = lxml.html.fromstring(self.mail.get_body(("html",)).get_content())
        hrefs = [a.get("href") for a in html.iter("a")]
        [self.preferences_url] = [h for h in hrefs if "/channels/email/preferences/" in h]
        self.click_urls = [h for h in hrefs if "/channels/email/click/" in h]
        assert self.target not in hrefs  # only the signed redirect is in the mail
        footer_unsubscribe = [h for h in hrefs if "/channels/email/unsubscribe/" in h]
        assert footer_unsubscribe == [self.unsubscribe_url]
        for url in (self.unsubscribe_url, self.preferences_url, *self.click_urls):
            assert url.startswith(f"{base}/channels/email/"), url

    def consent(self, target: str) -> str | None:
        state = self.crm.customers.get(self.ada.id).consent.get(target)
        return None if state is None else state.status

    def kinds(self) -> list[str]:
        return sorted(i.kind for i in self.crm.interactions.timeline(self.ada.id))


@pytest.fixture
def shop(tmp_path, smtp_server, local_site):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    crm = make_crm(
        tmp_path / "shop.db",
        plugins=[email_plugin, api_plugin, Newsletter()],
        secret="browser-secret-0123456789abcdef",
        channels={"email": {"from": "Shop <news@shop.example>", "base_url": base, "smtp": smtp_config(smtp_server)}},
    )
    url, stop = serve_in_thread(create_app(crm, rate_limit=None), port=port)
    assert url == base
    try:
        yield Shop(crm, smtp_server, base, local_site)
    finally:
        stop()
        crm.close()


@pytest.fixture(params=["js", "no-js"])
def any_page(request):
    """The same test with JavaScript on, and off."""
    return request.getfixturevalue("page" if request.param == "js" else "nojs_page")


def tampered(url: str) -> str:
    """``url`` with its token's signature changed (same length, same alphabet)."""
    return url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB")


def checkbox_states(page) -> dict[str, bool]:
    boxes = page.locator("input[type=checkbox]")
    return {boxes.nth(i).get_attribute("name"): boxes.nth(i).is_checked() for i in range(boxes.count())}


def test_preference_page_untick_a_purpose(shop, any_page):
    page = any_page
    before = shop.kinds()
    response = page.goto(shop.preferences_url)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert page.get_by_role("heading", level=1).inner_text() == "E-mail preferences"
    assert "ada@example.com" in page.content()
    assert checkbox_states(page) == {"purpose:marketing": True, "purpose:newsletter": True, "unsubscribe_all": False}
    assert shop.kinds() == before  # looking changes nothing

    page.get_by_label("Newsletter").uncheck()
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Save preferences").click()
    saved = nav.value
    assert saved.status == 200 and saved.request.method == "POST"
    assert page.get_by_text("Your preferences are saved.").is_visible()
    assert checkbox_states(page) == {"purpose:marketing": True, "purpose:newsletter": False, "unsubscribe_all": False}

    # the CRM: newsletter denied, nothing else touched
    assert shop.consent("email:newsletter") == "denied"
    assert shop.consent("email:marketing") is None and shop.consent("email") == "granted"
    assert shop.kinds().count("unsubscribe") == before.count("unsubscribe") + 1

    # a fresh visit shows the stored state; ticking it again resubscribes
    assert page.goto(shop.preferences_url).status == 200
    assert checkbox_states(page)["purpose:newsletter"] is False
    page.get_by_label("Newsletter").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save preferences").click()
    assert shop.consent("email:newsletter") == "granted"

    # "unsubscribe from all"
    page.get_by_label("Unsubscribe from all e-mail").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save preferences").click()
    assert shop.consent("email") == "denied"
    assert page.context.blocked_requests == []


def test_unsubscribe_confirm_then_button(shop, any_page):
    page = any_page
    before = shop.kinds()
    response = page.goto(shop.unsubscribe_url)
    assert response.status == 200
    assert page.get_by_text("Nothing changes until you press the button.").is_visible()
    assert "Marketing" in page.locator("main").inner_text()
    # a GET (a person, a link scanner, a prefetcher) changes nothing
    page.reload()
    assert shop.consent("email:marketing") is None
    assert shop.kinds() == before

    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Unsubscribe").click()
    done = nav.value
    assert done.status == 200 and done.request.method == "POST"
    assert page.get_by_role("heading", level=1).inner_text() == "You are unsubscribed"
    assert "You will no longer receive" in page.locator("main").inner_text()
    assert shop.consent("email:marketing") == "denied"
    assert shop.consent("email") == "granted"  # only this purpose
    assert shop.kinds().count("unsubscribe") == before.count("unsubscribe") + 1

    # the page leads to the preference page, which shows marketing unticked
    with page.expect_navigation():
        page.get_by_role("link", name="e-mail preferences").click()
    assert page.url.startswith(f"{shop.base}/channels/email/preferences/")
    assert checkbox_states(page) == {"purpose:marketing": False, "purpose:newsletter": True, "unsubscribe_all": False}
    # the next marketing mail is not sent
    assert shop.crm.messages.send("email", shop.ada.id, shop.template).reason == "opted_out"
    assert page.context.blocked_requests == []


@pytest.mark.parametrize("which", ["unsubscribe", "preferences", "click"])
def test_tampered_link_shows_error_page_and_changes_nothing(shop, any_page, which):
    page = any_page
    url = {"unsubscribe": shop.unsubscribe_url, "preferences": shop.preferences_url, "click": shop.click_urls[0]}[which]
    before = shop.kinds()
    response = page.goto(tampered(url))
    assert 400 <= response.status < 500, response.status
    assert response.status == 403  # a bad signature
    assert response.headers["content-type"].startswith("text/html")
    assert page.url == tampered(url)  # no redirect anywhere
    assert page.get_by_role("heading", level=1).inner_text() == "This link is not valid"
    assert page.locator("form").count() == 0 and page.locator("button").count() == 0
    assert shop.kinds() == before
    assert shop.consent("email:marketing") is None and shop.consent("email") == "granted"
    assert page.context.blocked_requests == []


def test_click_link_redirects_to_the_signed_target_only(shop, page):
    [click] = shop.click_urls
    evil = shop.site.url("evil", "/")
    response = page.goto(f"{click}?url={quote(evil, safe='')}&next={quote(evil, safe='')}")
    assert response.status == 200 and page.url == shop.target
    assert shop.site.visits == [(f"shop.localhost:{shop.site.port}", "/sale?x=1")]  # never evil.localhost
    hop = response.request.redirected_from
    assert hop is not None and hop.url.startswith(click) and hop.redirected_from is None
    assert hop.response().status == 303
    assert shop.kinds().count("click") == 1
    # the same link again: followed, recorded once
    page.goto(click)
    assert page.url == shop.target and len(shop.site.visits) == 2
    assert shop.kinds().count("click") == 1
    assert page.context.blocked_requests == []


def _assert_accessible(page) -> None:
    lang = page.locator("html").get_attribute("lang")
    assert lang and lang.strip(), "the page has no lang"
    assert page.title().strip(), "the page has no title"
    assert page.locator("main").count() == 1 and page.get_by_role("heading", level=1).count() == 1
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(el => el.type !== 'hidden')
            .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
            .map(el => el.outerHTML)"""
    )
    assert unlabelled == [], unlabelled
    tree = page.locator("body").aria_snapshot()
    for line in tree.splitlines():
        role = line.strip().lstrip("- ").split(" ", 1)[0].rstrip(":")
        if role in ("checkbox", "button", "link", "textbox"):
            assert '"' in line, f"{role} without an accessible name: {line.strip()}"


def test_pages_are_accessible(shop, page):
    page.goto(shop.preferences_url)
    _assert_accessible(page)
    assert page.get_by_role("group", name="Send me these e-mails").count() == 1
    assert page.get_by_role("checkbox").count() == 3
    for name in ("Marketing", "Newsletter", "Unsubscribe from all e-mail"):
        assert page.get_by_role("checkbox", name=name).count() == 1, name

    page.goto(shop.unsubscribe_url)
    _assert_accessible(page)
    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe").click()
    _assert_accessible(page)  # the "unsubscribed" page

    assert page.goto(tampered(shop.preferences_url)).status == 403
    _assert_accessible(page)  # the error page
    assert "not valid" in page.title()


def test_pages_carry_no_script_and_cannot_be_framed(shop, nojs_page, page):
    for url in (shop.preferences_url, shop.unsubscribe_url, tampered(shop.unsubscribe_url)):
        response = nojs_page.goto(url)
        assert nojs_page.locator("script").count() == 0
        assert nojs_page.locator("[onclick], [onsubmit], [onload]").count() == 0
        csp = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src" not in csp.replace("default-src 'none'", "")

    # another site framing the one-click page (clickjacking) gets nothing
    page.goto(shop.site.url("evil", "/framer"))
    page.set_content(f'<!DOCTYPE html><iframe src="{shop.unsubscribe_url}" width="400" height="300"></iframe>')
    [framed] = [f for f in page.frames if f is not page.main_frame]
    framed.wait_for_load_state()
    assert framed.locator("button").count() == 0, "the unsubscribe page shows inside another site's frame"
    page.set_content(f'<!DOCTYPE html><iframe src="{shop.site.url("shop", "/")}"></iframe>')  # a control
    [control] = [f for f in page.frames if f is not page.main_frame]
    control.wait_for_load_state()
    assert control.locator("h1").inner_text() == "landed"
    assert shop.consent("email:marketing") is None
