"""The admin in a real browser: headless Chromium (the OS package) driven by
Playwright (tests/browser_kit.py) against a live uvicorn server on 127.0.0.1.

Screenshots of the main pages are saved under ``$ECRM_ARTIFACTS/admin``
(default ``artifacts/admin`` in the working directory) as test artefacts.
Every page is also checked for Content-Security-Policy violations reported
by the browser: with the strict policy, any inline script or style would show
up here.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ecrm_core import CRM

pytest_plugins = ["browser_kit"]

CAMPAIGN = """\
key: spring
name: Spring <b>sale</b>
trigger:
  type: segment_entered
  segment: buyers
goal:
  kind: purchase
  within: 14d
holdout: 20
steps:
- id: pause
  type: wait
  duration: 1d
"""


def artefacts() -> Path:
    folder = Path(os.environ.get("ECRM_ARTIFACTS") or "artifacts") / "admin"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artefacts() / f"{name}.png"), full_page=True)


@pytest.fixture
def shop(admin_crm: CRM) -> dict[str, Any]:
    crm = admin_crm
    ada = crm.customers.create(email="ada@example.com", name="Ada Lovelace", external_id="u-1", consent={"email": True})
    crm.customers.create(email="eve@example.com", name='<script>alert("x")</script>')
    for n in range(4):
        crm.customers.create(email=f"c{n}@example.com", name=f"Customer {n}")
    for n in range(3):
        crm.interactions.track("purchase", customer_id=ada.id, amount="20.00", currency="EUR", idempotency_key=f"o{n}")
    crm.segments.create("buyers", "purchase.count(365d) >= 1", name="Buyers")
    return {"ada": ada}


@pytest.fixture
def server(live_admin: Any, shop: dict[str, Any]) -> Any:
    return live_admin()


def watch(page: Any) -> dict[str, list[str]]:
    """Collect CSP violations, page errors and dialogs (an executed alert())."""
    seen: dict[str, list[str]] = {"csp": [], "errors": [], "dialogs": []}
    page.on(
        "console",
        lambda m: seen["csp"].append(m.text) if "Content Security Policy" in m.text or "Refused to" in m.text else None,
    )
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def dialog(d: Any) -> None:
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    return seen


def login(page: Any, url: str, user: str = "admin") -> None:
    page.goto(f"{url}/admin/")
    assert "/admin/login" in page.url
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/admin/")


def test_log_in_find_a_customer_and_read_the_360_view(page: Any, server: Any, shop: dict[str, Any]) -> None:
    seen = watch(page)
    login(page, server.url)
    assert page.locator("#n-customers").inner_text() == "6"
    page.locator("figure.chart img").first.wait_for()
    shot(page, "dashboard")
    page.get_by_role("link", name="Customers").click()
    page.get_by_label("Find").fill("ada@example.com")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Ada Lovelace").click()
    page.wait_for_url(re.compile(rf".*/customers/{shop['ada'].id}$"))
    for heading in ("Profile", "Aliases", "Segments", "Consent and purposes", "Timeline (all channels)", "Messages"):
        assert page.locator("main").get_by_role("heading", name=heading, exact=True).is_visible()
    assert page.locator(".c-name").inner_text() == "Ada Lovelace"
    assert page.get_by_role("link", name="buyers").is_visible()
    assert page.locator("#h-timeline + table tbody tr").count() == 3
    shot(page, "customer-360")
    page.goto(f"{server.url}/admin/customers?q=eve@example.com")
    page.get_by_role("link", name='<script>alert("x")</script>').click()
    assert page.locator(".c-name").inner_text() == '<script>alert("x")</script>'
    assert seen == {"csp": [], "errors": [], "dialogs": []}
    assert page.context.blocked_requests == []


def test_build_a_segment_and_watch_its_count(page: Any, server: Any) -> None:
    seen = watch(page)
    login(page, server.url, "admin")
    page.goto(f"{server.url}/admin/segments/new")
    page.get_by_label("Slug").fill("big_buyers")
    page.get_by_label("Name").fill("Big buyers")
    rule = page.get_by_label("Rule")
    rule.press_sequentially("purchase.count(365d) >=", delay=15)
    page.locator("#rule-error").wait_for()
    assert "^" in page.locator("#rule-caret").inner_text()
    rule.press_sequentially(" 3", delay=15)
    page.wait_for_selector('#rule-count[data-count="1"]')
    assert page.locator("#rule-sample").inner_text().strip() == "Ada Lovelace"
    assert "SELECT" in (page.locator("#rule-sql").text_content() or "").upper()
    rule.fill("purchase.count(365d) >= 0")
    rule.dispatch_event("input")
    page.wait_for_selector('#rule-count[data-count="6"]')
    shot(page, "segment-builder")
    page.get_by_role("button", name="Save segment").click()
    page.wait_for_url(re.compile(r".*/segments/big_buyers\?saved=1$"))
    assert "6 members" in page.locator("main").inner_text()
    assert seen == {"csp": [], "errors": [], "dialogs": []}


def test_edit_a_template_and_preview_it(page: Any, server: Any) -> None:
    seen = watch(page)
    login(page, server.url, "marketer")
    page.goto(f"{server.url}/admin/templates/new")
    page.get_by_label("Name", exact=True).fill("welcome")
    page.get_by_label("Subject").fill("Welcome, {{ customer.name }}")
    page.get_by_label("HTML").fill('<h1 style="color:#c00">Hello {{ customer.name }}</h1><script>alert(1)</script>')
    page.get_by_label("HTML").press("End")
    page.get_by_label("HTML").press_sequentially(" ")
    frame = page.frame_locator("iframe[name=preview]")
    frame.locator("h1").wait_for()
    assert "Hello" in frame.locator("h1").inner_text()
    assert "Subject: Welcome," in frame.locator("p").first.inner_text()
    shot(page, "template-preview")
    page.get_by_role("button", name="Save template").click()
    page.wait_for_url(re.compile(r".*/templates/edit/welcome\?saved=1$"))
    assert page.get_by_role("status").inner_text() == "Saved."
    assert seen["dialogs"] == [] and seen["errors"] == []
    # the preview frame's own policy blocks the template's script (reported), the admin's pages report nothing
    assert all("about:srcdoc" not in m for m in seen["csp"])


def test_a_campaigns_pages(page: Any, server: Any) -> None:
    seen = watch(page)
    login(page, server.url, "marketer")
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_label("Definition").fill(CAMPAIGN)
    page.get_by_role("button", name="Save campaign").click()
    page.wait_for_url(re.compile(r".*/campaigns/spring$"))
    assert "draft" in page.locator("#campaign-status").inner_text()
    assert "holdout 20" in page.locator("#campaign-status").inner_text()
    assert page.locator("#campaign-name").inner_text() == "Spring <b>sale</b>"
    assert page.get_by_role("heading", name="Journey").is_visible()
    assert page.get_by_role("cell", name="pause", exact=True).is_visible()
    page.get_by_role("button", name="start").click()
    page.wait_for_url(re.compile(r".*/campaigns/spring$"))
    assert "live" in page.locator("#campaign-status").inner_text()
    assert page.get_by_role("heading", name="Results").is_visible()
    assert "Spring <b>sale</b>" in page.locator("pre").last.inner_text()
    page.get_by_label("Days").fill("14")
    page.get_by_role("button", name="Simulate").click()
    page.locator("#simulation").wait_for()
    assert page.locator("#simulation table").count() == 2
    shot(page, "campaign")
    page.goto(f"{server.url}/admin/campaigns")
    assert page.get_by_role("cell", name="Spring <b>sale</b>").is_visible()
    assert seen == {"csp": [], "errors": [], "dialogs": []}


def _tab_to(page: Any, predicate: str, limit: int = 60) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(predicate):
            return
    raise AssertionError(f"Tab never reached {predicate}")


def test_keyboard_only_navigation(page: Any, server: Any, shop: dict[str, Any]) -> None:
    seen = watch(page)
    page.goto(f"{server.url}/admin/")
    # the login form: the user name has the focus; type, Tab, type, Enter
    page.keyboard.type("agent")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/admin/")
    # the skip link comes first and moves the focus to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.goto(f"{server.url}/admin/")
    _tab_to(page, "document.activeElement.textContent === 'Customers'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/admin/customers")
    _tab_to(page, "document.activeElement.id === 'q'")
    page.keyboard.type("ada@example.com")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*q=ada%40example\.com.*"))
    _tab_to(page, "document.activeElement.textContent === 'Ada Lovelace'")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf".*/customers/{shop['ada'].id}$"))
    _tab_to(page, "document.activeElement.textContent === 'Segments'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/admin/segments")
    _tab_to(page, "document.activeElement.textContent === 'buyers'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/admin/segments/buyers")
    shot(page, "keyboard-segment")
    # every form control of the main pages has a label
    for path in ("/", "/customers", "/segments/buyers", "/messages"):
        page.goto(f"{server.url}/admin{path}")
        unlabeled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)"""
        )
        assert unlabeled == [], path
    assert seen == {"csp": [], "errors": [], "dialogs": []}


def test_throttled_logins_and_an_ended_session_are_explained(page: Any, live_admin: Any, admin_crm: CRM) -> None:
    import sqlalchemy as sa

    server = live_admin(login_failures_per_account=2, login_window_minutes=15)
    seen = watch(page)
    page.goto(f"{server.url}/admin/login")
    for _ in range(2):
        page.get_by_label("User name").fill("agent")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Log in").click()
        assert page.get_by_role("alert").inner_text() == "Wrong user name or password."
    page.get_by_label("User name").fill("agent")
    page.get_by_label("Password").fill("correct horse battery")
    with page.expect_response(lambda r: r.url.endswith("/admin/login") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 429 and 840 < int(answer.value.headers["retry-after"]) <= 900
    assert page.get_by_role("alert").inner_text() == "Too many failed logins for this account. Try again in 15 minutes."
    shot(page, "login-throttled")
    # another account logs in; its session then sits unused past the idle time (30 minutes)
    login(page, server.url, "marketer")
    t = admin_crm.db.tables["admin_sessions"]
    with admin_crm.db.write() as conn:
        conn.execute(sa.update(t).values(seen_at=admin_crm.now() - timedelta(minutes=31)))
    page.get_by_role("link", name="Customers").click()
    page.wait_for_url(re.compile(r".*/admin/login\?next=/admin/customers&ended=1$"))
    assert "Your session has ended" in page.get_by_role("status").inner_text()
    assert seen == {"csp": [], "errors": [], "dialogs": []}
