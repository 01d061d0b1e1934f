"""Every built-in page answers for the roles that may see it, over the whole request pipeline."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ecrm_core import CRM, HOOK_API_VERSION


@pytest.fixture
def shop(admin_crm: CRM) -> dict[str, Any]:
    crm = admin_crm
    ada = crm.customers.create(email="ada@example.com", name="Ada Lovelace", external_id="u-1", consent={"email": True})
    bob = crm.customers.create(email="bob@example.com", name="Bob", external_id="u-2")
    for n in range(3):
        crm.interactions.track("purchase", customer_id=ada.id, amount="20.00", currency="EUR", idempotency_key=f"o-{n}")
    crm.interactions.track("page_view", customer_id=bob.id)
    crm.segments.create("buyers", "purchase.count(365d) >= 1", name="Buyers")
    return {"ada": ada, "bob": bob}


def test_dashboard_customers_and_360(admin_client: Any, shop: dict[str, Any]) -> None:
    b = admin_client("agent")
    page = b.get("/")
    assert page.status_code == 200, page.text
    assert "Customers" in page.text and 'id="n-customers">2<' in page.text
    assert "data:image/svg+xml;base64," in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    found = b.get("/customers", params={"q": "ada@example.com"})
    assert found.status_code == 200 and "Ada Lovelace" in found.text and "Bob" not in found.text
    view = b.get(f"/customers/{shop['ada'].id}")
    assert view.status_code == 200, view.text
    for part in ("Profile", "Aliases", "Consent and purposes", "Timeline", "purchase", "buyers", "Messages"):
        assert part in view.text
    assert b.get("/customers/999999").status_code == 404


def test_segments_offers_messages_plugins(admin_client: Any, shop: dict[str, Any]) -> None:
    b = admin_client("admin")
    assert b.get("/segments").status_code == 200
    seg = b.get("/segments/buyers")
    assert seg.status_code == 200 and "1</strong> customers match" in seg.text
    check = b.post("/segments/check", {"rule": "purchase.count(365d) >= 1 and"})
    assert check.status_code == 200 and "Not valid" in check.text and "^" in check.text
    good = b.post("/segments/check", {"rule": "purchase.count(365d) >= 1 or page_view.count(365d) >= 1"})
    assert 'data-count="2"' in good.text and "SELECT" in good.text.upper()
    assert b.get("/offers").status_code == 200
    assert b.get("/messages").status_code == 200
    assert b.get("/messages", params={"status": "dead"}).status_code == 200
    assert b.get("/messages", params={"status": "nonsense"}).status_code == 400
    assert b.get("/messages", params={"before": "1; drop"}).status_code == 400
    plugins = b.get("/plugins")
    assert plugins.status_code == 200 and HOOK_API_VERSION in plugins.text and "admin" in plugins.text
    assert b.get("/users").status_code == 200
    assert b.get("/static/admin.js").status_code == 200


def test_the_sql_is_for_admins_and_messages_page_by_keyset(admin_client: Any, admin_crm: CRM) -> None:
    import sqlalchemy as sa

    marketer = admin_client("marketer")
    check = marketer.post("/segments/check", {"rule": "purchase.count(365d) >= 1"})
    assert 'data-count="0"' in check.text and "rule-sql" not in check.text
    c = admin_crm.customers.create(email="m@example.com")
    t = admin_crm.db.tables["messages"]
    now = admin_crm.now()
    with admin_crm.db.write() as conn:
        conn.execute(
            sa.insert(t),
            [
                {
                    "workspace_id": "default",
                    "uid": f"msg-{n:03d}",
                    "channel": "email",
                    "customer_id": c.id,
                    "purpose": "marketing",
                    "content": {},
                    "meta": {},
                    "status": "dead" if n % 2 else "sent",
                    "attempts": 1,
                    "max_attempts": 5,
                    "transactional": False,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(120)
            ],
        )
    first = marketer.get("/messages")
    assert first.text.count('href="/admin/messages/msg-') == 50 and "msg-119" in first.text
    older = re.search(r'href="(/admin/messages\?before=\d+)"', first.text).group(1)
    second = marketer.client.get(older)
    assert "msg-069" in second.text and "msg-070" not in second.text
    dead = marketer.get("/messages", params={"status": "dead"})
    assert "msg-119" in dead.text and "msg-118" not in dead.text


def test_customer_list_pages_by_keyset_and_filters(admin_client: Any, admin_crm: CRM) -> None:
    ids = [admin_crm.customers.create(email=f"p{n}@example.com", name=f"P {n:02d}").id for n in range(60)]
    b = admin_client("agent")
    first = b.get("/customers")
    assert first.text.count('<tr><td><a href="/admin/customers/') == 50
    nxt = re.search(r'rel="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    second = b.client.get(nxt)
    assert second.text.count('<tr><td><a href="/admin/customers/') == 10 and f">{ids[-1]}<" in second.text
    assert 'rel="next"' not in second.text
    assert "P 07" in b.get("/customers", params={"q": str(ids[7])}).text
    assert (
        "not a valid" in b.get("/customers", params={"q": "x@"}).text
        or "error-box" in b.get("/customers", params={"q": "x@"}).text
    )
    assert "error-box" in b.get("/customers", params={"stage": "nonsense"}).text
    assert "error-box" in b.get("/customers", params={"after": "1 or 1=1"}).text
    assert b.get("/customers", params={"stage": "prospect"}).text.count('<tr><td><a href="/admin/customers/') == 50


def test_a_dead_letter_is_replayed_from_its_page(admin_client: Any, admin_crm: CRM) -> None:
    import sqlalchemy as sa

    c = admin_crm.customers.create(email="dead@example.com")
    t = admin_crm.db.tables["messages"]
    now = admin_crm.now()
    with admin_crm.db.write() as conn:
        conn.execute(
            sa.insert(t).values(
                workspace_id="default",
                uid="dead-1",
                channel="email",
                customer_id=c.id,
                purpose="marketing",
                content={"body": "<b>hi</b>"},
                meta={},
                status="dead",
                reason="smtp 550",
                attempts=5,
                max_attempts=5,
                transactional=False,
                created_at=now,
                updated_at=now,
            )
        )
    b = admin_client("marketer")
    page = b.get("/messages/dead-1")
    assert page.status_code == 200 and "smtp 550" in page.text and "&lt;b&gt;hi&lt;/b&gt;" in page.text
    done = b.post("/messages/dead-1/replay")
    assert done.status_code == 303 and done.headers["location"] == "/admin/messages/dead-1?replayed=1"
    assert admin_crm.messages.get("dead-1").status == "queued"
    again = b.post("/messages/dead-1/replay")
    assert again.status_code == 409 and "only dead letters can be replayed" in again.text
    assert b.get("/messages/nope").status_code == 404


def test_offers_are_created_with_their_rule_checked(admin_client: Any, admin_crm: CRM) -> None:
    b = admin_client("marketer")
    ok = b.post("/offers", {"code": "spring10", "name": "Spring <10>", "eligibility": "purchase.count(365d) >= 1"})
    assert ok.status_code == 303
    offer = admin_crm.offers.get("spring10")
    assert offer.name == "Spring <10>" and offer.eligibility is not None
    assert "Spring &lt;10&gt;" in b.get("/offers").text
    bad = b.post("/offers", {"code": "bad", "name": "Bad", "eligibility": "purchase.count(365d) >="})
    assert bad.status_code == 400 and "error-box" in bad.text and 'value="bad"' in bad.text
    taken = b.post("/offers", {"code": "spring10", "name": "Again"})
    assert taken.status_code == 400 and "already used" in taken.text
