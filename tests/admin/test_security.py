"""The issue's bad-input list, each with a test: script in names, rules and
templates is shown as text; forged or missing CSRF tokens; session fixation;
a role reaching above itself (403); a plugin page or widget that raises."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from markupsafe import Markup

from ecrm_core import CRM, AdminPage, AdminWidget, hookimpl

SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_script_in_a_customer_name_is_text(admin_client: Any, admin_crm: CRM) -> None:
    c = admin_crm.customers.create(email="eve@example.com", name=SCRIPT, attributes={"note": SCRIPT})
    b = admin_client("agent")
    for page in (b.get(f"/customers/{c.id}"), b.get("/customers", params={"q": "eve@example.com"})):
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text


def test_script_in_rule_text_is_text(admin_client: Any) -> None:
    b = admin_client("marketer")
    answer = b.post("/segments/check", {"rule": f'name == "{SCRIPT}" and'})
    assert answer.status_code == 200 and "Not valid" in answer.text
    assert "<script>" not in answer.text and "&lt;script&gt;" in answer.text
    made = b.post("/segments/new", {"slug": "x1", "name": SCRIPT, "rule": 'email == "a@b.co"'})
    assert made.status_code == 303
    listing = b.get("/segments")
    assert "<script>alert" not in listing.text and "&lt;script&gt;" in listing.text


def test_script_in_template_sources_is_text_and_the_preview_is_sandboxed(admin_client: Any) -> None:
    b = admin_client("marketer")
    saved = b.post("/templates/new", {"name": "evil", "subject": "Hi {{ customer.name }}", "html": f"<p>{SCRIPT}</p>"})
    assert saved.status_code == 303, saved.text
    edit = b.get("/templates/edit/evil")
    assert edit.status_code == 200 and "<script>alert" not in edit.text and "&lt;script&gt;" in edit.text
    preview = b.post("/templates/preview", {"subject": "Hi {{ customer.name }}", "html": f"<p>{SCRIPT}</p>"})
    assert preview.status_code == 200
    csp = preview.headers["content-security-policy"]
    assert "sandbox" in csp and "script-src" not in csp and "default-src 'none'" in csp
    bad = b.post("/templates/preview", {"subject": "x", "html": "{{ customer.__class__.__mro__ }}"})
    assert bad.status_code == 200 and "mro" not in bad.text.split("</pre>")[-1]
    broken = b.post("/templates/new", {"name": "broken", "subject": "x", "html": "{% if %}"})
    assert broken.status_code == 400 and "error-box" in broken.text


def test_missing_and_forged_csrf_tokens_are_refused(admin_client: Any, admin_crm: CRM) -> None:
    b = admin_client("admin")
    rule = 'email == "a@b.co"'
    missing = b.post("/segments/new", {"slug": "nocsrf", "rule": rule}, csrf=None)
    forged = b.post("/segments/new", {"slug": "forged", "rule": rule}, csrf="A" * 43)
    assert missing.status_code == forged.status_code == 403
    assert [s.slug for s in admin_crm.segments.list()] == []
    other = admin_client("marketer")  # another user's token does not work either
    assert b.post("/segments/new", {"slug": "cross", "rule": rule}, csrf=other.csrf()).status_code == 403
    htmx = b.client.post("/admin/segments/check", data={"rule": rule}, headers={"HX-Request": "true"})
    assert htmx.status_code == 403
    ok = b.client.post(
        "/admin/segments/check", data={"rule": rule}, headers={"HX-Request": "true", "X-CSRF-Token": b.csrf()}
    )
    assert ok.status_code == 200
    assert b.post("/segments/new", {"slug": "fine", "rule": rule}).status_code == 303


def test_login_form_needs_its_token(admin_client: Any) -> None:
    b = admin_client(None)
    r = b.client.post("/admin/login", data={"username": "admin", "password": "correct horse battery"})
    assert r.status_code == 403 and "ecrm_admin=" not in r.headers.get("set-cookie", "").replace("ecrm_admin_pre", "")


def test_session_fixation_and_rotation(admin_client: Any, admin_crm: CRM, admin_build: Any) -> None:
    b = admin_client(None)
    planted = "attacker-chosen-value-0123456789"
    b.client.cookies.set("ecrm_admin", planted, domain="testserver.local", path="/admin")
    r = b.login("admin")
    assert r.status_code == 303
    issued = r.cookies.get("ecrm_admin")
    assert issued and issued != planted
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("ecrm_admin=")).lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie and "path=/admin" in cookie
    # the planted value never became a session
    from litestar.testing import TestClient

    with TestClient(admin_build(admin_crm), base_url="https://testserver.local") as attacker:
        attacker.cookies.set("ecrm_admin", planted, domain="testserver.local", path="/admin")
        assert attacker.get("/admin/", follow_redirects=False).status_code == 303
        # a stolen pre-login session does not survive the victim's next login either
        attacker.cookies.set("ecrm_admin", issued, domain="testserver.local", path="/admin")
        assert attacker.get("/admin/", follow_redirects=False).status_code == 200
        b.client.cookies.clear()
        b.client.cookies.set("ecrm_admin", issued, domain="testserver.local", path="/admin")
        again = b.login("admin")
        assert again.cookies.get("ecrm_admin") not in (None, issued)
        assert attacker.get("/admin/", follow_redirects=False).status_code == 303


def test_open_redirect_after_login_is_refused(admin_client: Any) -> None:
    import re

    b = admin_client(None)
    for target in ("https://evil.example/", "//evil.example/x", "/elsewhere"):
        page = b.client.get("/admin/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
        r = b.client.post(
            "/admin/login",
            data={"_csrf": token, "username": "agent", "password": "correct horse battery", "next": target},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/admin/"


def test_roles_cannot_reach_above_themselves(admin_client: Any, admin_crm: CRM) -> None:
    agent = admin_client("agent")
    assert agent.get("/plugins").status_code == 403
    assert agent.get("/users").status_code == 403
    assert agent.get("/templates").status_code == 403
    r = agent.post("/users", {"action": "create", "username": "mallory", "password": "x" * 12, "role": "admin"})
    assert r.status_code == 403
    assert agent.post("/users", {"action": "update", "username": "agent", "role": "admin"}).status_code == 403
    assert agent.post("/segments/new", {"slug": "nope", "rule": 'email == "a@b.co"'}).status_code == 403
    assert agent.post("/offers", {"code": "nope", "name": "No"}).status_code == 403
    assert agent.post("/messages/m-1/replay").status_code == 403
    marketer = admin_client("marketer")
    assert marketer.post("/users", {"action": "update", "username": "marketer", "role": "admin"}).status_code == 403
    assert marketer.get("/plugins").status_code == 403
    from ecrm_admin import Users

    assert {u.username: u.role for u in Users(admin_crm).list()} == {
        "admin": "admin",
        "agent": "agent",
        "marketer": "marketer",
    }
    assert [s.slug for s in admin_crm.segments.list()] == [] and admin_crm.offers.list() == []
    # a demotion takes effect at once, on the running session
    admin = admin_client("admin")
    assert admin.get("/plugins").status_code == 200
    Users(admin_crm).update("admin", role="agent")
    assert admin.get("/plugins", follow_redirects=False).status_code == 303  # their sessions ended


class Broken:
    @hookimpl
    def ecrm_register_admin_pages(self) -> list[AdminPage]:
        def boom(request: Any) -> Any:
            raise RuntimeError("the loyalty database is down")

        return [
            AdminPage(path="/broken", title="Broken", handler=boom, nav_section="Loyalty"),
            AdminPage(path="/fine", title="Fine", handler=lambda r: Markup("<b>fine</b>"), nav_section="Loyalty"),
        ]

    @hookimpl
    def ecrm_register_admin_widgets(self) -> list[AdminWidget]:
        def explode(crm: Any, customer: Any) -> Any:
            raise ValueError("no points for you")

        return [
            AdminWidget(name="points", title="Points", render=explode),
            AdminWidget(name="tier", title="Tier", render=lambda crm, c: f"gold {c.name}"),
        ]


def test_a_plugin_page_or_widget_that_raises_is_isolated_and_shown(admin_client: Any, admin_crm: CRM) -> None:
    admin_crm.register_plugin(Broken(), name="loyalty")
    c = admin_crm.customers.create(email="z@example.com", name="<Zed>")
    b = admin_client("admin")
    broken = b.get("/broken")
    assert broken.status_code == 500 and "This page failed" in broken.text and "loyalty" in broken.text
    assert "the loyalty database is down" not in broken.text  # the details are for admins, on the plugins page
    assert b.get("/fine").status_code == 200 and "<b>fine</b>" in b.get("/fine").text
    assert b.get("/").status_code == 200
    view = b.get(f"/customers/{c.id}")
    assert view.status_code == 200 and "This widget failed" in view.text and "gold &lt;Zed&gt;" in view.text
    plugins = b.get("/plugins")
    assert "the loyalty database is down" in plugins.text and "admin page /broken" in plugins.text
    assert "no points for you" in plugins.text and "admin widget points" in plugins.text


def test_htmx_is_the_vendored_registry_file() -> None:
    import ecrm_admin

    folder = Path(ecrm_admin.__file__).parent / "static" / "vendor" / "htmx-2.0.11"
    meta = json.loads((folder / "VENDOR.json").read_text())
    data = (folder / "htmx.min.js").read_bytes()
    assert meta["package"] == "htmx.org" and meta["version"] == "2.0.11"
    assert hashlib.sha256(data).hexdigest() == meta["file_sha256"]
    assert b'version:"2.0.11"' in data


def test_every_page_sends_the_strict_csp(admin_client: Any) -> None:
    b = admin_client("admin")
    for path in ("/", "/customers", "/segments", "/segments/new", "/offers", "/templates", "/messages", "/plugins"):
        r = b.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "<script>" not in r.text and " on" + "click=" not in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
