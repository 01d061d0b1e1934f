"""The admin's pages and its sessions on a real PostgreSQL server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ecrm_core import CRM

pytestmark = pytest.mark.postgres


def test_pages_and_sessions_on_postgresql(pg_crm_factory: Any, admin_build: Any) -> None:
    from ecrm_admin import Users
    from ecrm_admin import plugin as admin_plugin
    from litestar.testing import TestClient

    crm: CRM = pg_crm_factory(plugins=[admin_plugin], secret="s")
    Users(crm).create("pg", "a long passphrase", role="admin")
    ada = crm.customers.create(email="ada@example.com", name="Ada")
    for n in range(3):
        crm.interactions.track("purchase", customer_id=ada.id, amount="12.50", currency="EUR", idempotency_key=f"o{n}")
    with TestClient(admin_build(crm), base_url="https://shop.local") as client:
        form = client.get("/admin/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
        done = client.post(
            "/admin/login",
            data={"_csrf": token, "username": "pg", "password": "a long passphrase"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        home = client.get("/admin/")
        assert home.status_code == 200 and 'id="n-customers">1<' in home.text and "37.5" in home.text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)
        view = client.get(f"/admin/customers/{ada.id}")
        assert view.status_code == 200 and view.text.count("<td>purchase</td>") == 4  # 3 in the timeline, 1 summary
        assert "Ada" in client.get("/admin/customers", params={"q": "ada@example.com"}).text
        check = client.post(
            "/admin/segments/check",
            data={"rule": "purchase.count(365d) >= 3"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        assert 'data-count="1"' in check.text
        for path in ("/admin/segments", "/admin/offers", "/admin/messages", "/admin/plugins", "/admin/users"):
            assert client.get(path).status_code == 200, path
