"""The analytics and personalization pages and widgets, added through the admin hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ecrm_core import CRM

pytest.importorskip("ecrm_analytics")
pytest.importorskip("ecrm_personalize")


@pytest.fixture
def crm(crm_factory: Callable[..., CRM]) -> CRM:
    from ecrm_admin import Users
    from ecrm_admin import plugin as admin_plugin
    from ecrm_analytics import plugin as analytics_plugin
    from ecrm_personalize import plugin as personalize_plugin

    crm = crm_factory(plugins=[admin_plugin, analytics_plugin, personalize_plugin], secret="s")
    Users(crm).create("mo", "a long passphrase", role="marketer")
    return crm


def test_analytics_and_personalization_pages_and_widgets(crm: CRM, admin_build: Any) -> None:
    import re

    from ecrm_analytics import analytics
    from ecrm_personalize import personalize
    from litestar.testing import TestClient

    ada = crm.customers.create(email="ada@example.com", name="Ada")
    for n in range(3):
        crm.interactions.track("purchase", customer_id=ada.id, amount="25", currency="EUR", idempotency_key=f"o{n}")
    analytics(crm).refresh(full=True)
    p = personalize(crm)
    p.define("home", k=2, control=0.1)
    p.set_preferences(ada.id, interests=["<shoes>"])
    assert {"/analytics", "/personalize"} <= set(crm.registry.admin_pages)
    with TestClient(admin_build(crm), base_url="https://shop.local") as client:
        form = client.get("/admin/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
        client.post("/admin/login", data={"_csrf": token, "username": "mo", "password": "a long passphrase"})
        home = client.get("/admin/")
        assert 'href="/admin/analytics"' in home.text and 'href="/admin/personalize"' in home.text
        reports = client.get("/admin/analytics")
        assert reports.status_code == 200 and 'href="/admin/analytics/rfm"' in reports.text
        rfm = client.get("/admin/analytics/rfm")
        assert rfm.status_code == 200, rfm.text
        assert client.get("/admin/analytics/nope").status_code in (400, 404)
        view = client.get(f"/admin/customers/{ada.id}")
        assert "Value (analytics)" in view.text and "RFM group" in view.text
        assert "Preferences" in view.text and "&lt;shoes&gt;" in view.text
        placements = client.get("/admin/personalize")
        assert 'href="/admin/personalize/home"' in placements.text
        assert client.get("/admin/personalize/home").status_code == 200
        assert client.get("/admin/personalize/missing").status_code == 404


def test_the_uplift_chart_of_a_campaign() -> None:
    pytest.importorskip("ecrm_campaigns")
    from decimal import Decimal

    from ecrm_admin.contrib.campaigns import _uplift_chart
    from ecrm_admin.render import chart_img
    from ecrm_campaigns.evaluate import Arm, Evaluation, Uplift

    arms = (
        Arm(name="holdout", entered=100, messaged=0, converted=2, revenue=Decimal("40")),
        Arm(name="<b>A</b>", entered=900, messaged=900, converted=45, revenue=Decimal("900")),
    )
    lift = Uplift(arm="<b>A</b>", points=3.0, low=0.5, high=5.5, p_value=0.02, confidence=0.95)
    chart = _uplift_chart(Evaluation(campaign="spring", goal="purchase", arms=arms, uplifts=(lift,)))
    assert chart.kind == "interval" and chart.categories == ("<b>A</b>",) and chart.reference == 0
    html = chart_img(chart)
    assert html.startswith('<figure class="chart"><img src="data:image/svg+xml;base64,')
    assert "&lt;b&gt;A&lt;/b&gt; lifts conversion by 3.0 pts" in html
    assert _uplift_chart(Evaluation(campaign="spring", goal=None, arms=arms, uplifts=())) is None


def test_a_report_page_never_saves_whatever_its_query_string(crm: CRM, admin_build: Any) -> None:
    """Every report with a saving parameter (the whole catalogue, not one example):
    a GET of its page by the lowest role with that parameter set is refused, and
    no table changes; the form does not offer it."""
    import re

    import sqlalchemy as sa
    from ecrm_admin import Users
    from ecrm_analytics.reports import specs
    from litestar.testing import TestClient

    Users(crm).create("ann", "a long passphrase", role="agent")
    for n in range(12):
        c = crm.customers.create(email=f"c{n}@example.com")
        for k in range(1 + n % 3):
            crm.interactions.track(
                "purchase", customer_id=c.id, amount=str(10 + n), currency="EUR", idempotency_key=f"o{n}-{k}",
                properties={"skus": ["A", "B"] if k % 2 else ["A"]},
            )  # fmt: skip

    def counts() -> dict[str, int]:
        with crm.db.read() as conn:
            return {
                name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for name, t in crm.db.tables.items()
                if name.startswith("analytics_")
            }

    saving = {s.name: [p.name for p in s.params if p.writes] for s in specs().values()}
    saving = {k: v for k, v in saving.items() if v}
    assert saving, "the catalogue has reports that can save (clusters, basket)"
    with TestClient(admin_build(crm), base_url="https://shop.local") as client:
        form = client.get("/admin/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)
        client.post("/admin/login", data={"_csrf": token, "username": "ann", "password": "a long passphrase"})
        before = counts()
        for report, params in saving.items():
            page = client.get(f"/admin/analytics/{report}")
            assert page.status_code == 200, page.text
            for name in params:
                assert f'name="{name}"' not in page.text
                r = client.get(f"/admin/analytics/{report}", params={name: "true"})
                assert r.status_code == 400 and "a read cannot do" in r.text, (report, name, r.status_code)
                assert client.get(f"/admin/analytics/{report}", params={name: "false"}).status_code == 200
        assert counts() == before
