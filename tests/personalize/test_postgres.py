"""On a real PostgreSQL server: two CRMs (as two API processes or workers would be) report the
same outcomes at once, and every bandit count is exact; decisions and preferences work there too."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from ecrm_personalize import personalize, plugin

from ecrm_core import CRM

from .conftest import PRODUCTS, SECRET

pytestmark = pytest.mark.postgres

N = 150


def test_concurrent_reporters_on_postgres_lose_no_increment(pg_crm_factory: Any) -> None:
    first = pg_crm_factory(plugins=[plugin], secret=SECRET)
    url = first.db.engine.url.render_as_string(hide_password=False)
    second = CRM(url, load_entrypoints=False, plugins=[plugin], secret=SECRET)
    try:
        p = personalize(first)
        p.add_products(PRODUCTS)
        p.define("home", alternatives=["a", "b"], segment_by="none")
        decisions = [p.decide(None, "home").id for _ in range(N)]
        errors: list[BaseException] = []

        def work(crm: CRM, part: list[str]) -> None:
            try:
                svc = personalize(crm)
                for did in part:
                    svc.report_many(
                        [{"decision": did, "event": "impression"}, {"decision": did, "event": "click", "item": "a"}]
                    )
            except BaseException as exc:  # pragma: no cover - shown by the assertion
                errors.append(exc)

        # every decision reported by both CRMs, from two threads each: four reporters racing
        threads = [
            threading.Thread(target=work, args=(crm, decisions[::-1] if i % 2 else decisions))
            for crm in (first, second)
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        arms = p.arms("home")["all"]
        assert arms["a"] == {"trials": N, "wins": N}
        assert arms["b"] == {"trials": N, "wins": 0}
    finally:
        second.close()


def test_decide_preferences_and_erasure_on_postgres(pg_crm_factory: Any) -> None:
    crm = pg_crm_factory(plugins=[plugin], secret=SECRET)
    p = personalize(crm)
    p.add_products(PRODUCTS)
    for n in range(3):
        c = crm.customers.create(email=f"pg{n}@example.com")
        crm.interactions.track("purchase", customer_id=c.id, properties={"skus": ["S1", "S2"]})
    p.refresh()
    p.define("home", k=3)
    ada = crm.customers.create(email="ada@example.com", name="Ada", timezone="Europe/Paris")
    crm.interactions.track("purchase", customer_id=ada.id, properties={"skus": ["S1"]})
    d = p.decide(ada.id, "home")
    assert d.items[0].sku == "S2" and d.variant["greeting"].startswith("Good")
    p.set_preferences(ada.id, interests=["hats"], channels={"email": True})
    p.report(d.id, "impression")
    assert p.report(d.id, "impression").status == "duplicate"
    crm.customers.delete(ada.id)
    assert p.uplift("home")["groups"]["personalized"]["impression"] == 0
