"""The campaign routes, served by ecrm-api over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ecrm_campaigns import plugin

from ecrm_core import CRM
from ecrm_core.testing.channels import MemoryChannel

from .test_model import FULL

pytest.importorskip("ecrm_api")


def test_crud_lifecycle_and_problems(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]) -> None:
    from ecrm_api import plugin as api_plugin

    chan = MemoryChannel(name="capture", capabilities=("templates",))
    crm = crm_factory(plugins=[api_plugin, plugin, chan.plugin()])
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1")
    crm.offers.create("deal", "10 % off", status="active")
    crm.offers.create("gift", "A gift", status="active")
    api = live_api_factory(crm)
    http = api.client()

    r = http.post("/campaigns", json={"yaml": FULL})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["status"] == "draft"
    r = http.post("/campaigns/spring/start")
    assert r.json()["status"] == "live"
    r = http.put("/campaigns/spring", json={"yaml": FULL.replace("We miss you", "Back")})
    assert r.json()["version"] == 2 and r.json()["versions"] == [1, 2]
    assert http.get("/campaigns/spring/export", params={"version": 1}).text == FULL
    assert [c["key"] for c in http.get("/campaigns").json()["items"]] == ["spring"]
    ada = crm.customers.create(email="ada@x.org", consent={"capture": "granted"})
    r = http.post("/campaigns/spring/trigger", json={"customer_ids": [ada.id]})
    assert r.status_code == 200 and r.json()["skipped"] == {"not_in_audience": 1}, r.text  # never bought

    bad = FULL.replace("key: spring", "key: bad").replace("  until: 09:00", "  duration: -1d")
    r = http.post("/campaigns", json={"yaml": bad})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "body.yaml.steps.later.duration"
    r = http.post("/campaigns", json={"yaml": FULL, "extra": 1})
    assert r.status_code in (400, 422) and "extra" in r.text
    r = http.post("/campaigns", json={"yaml": FULL, "definition": {}})
    assert r.status_code == 422
    r = http.put("/campaigns/other", json={"yaml": FULL})
    assert r.status_code == 404
    assert http.get("/campaigns/nope").status_code == 404
    assert http.post("/campaigns/spring/resume").status_code == 409  # live, not paused
    assert http.post("/campaigns/spring/trigger", json={"customer_ids": []}).status_code in (400, 422)

    report = http.get("/campaigns/spring/report")
    assert report.status_code == 200 and [a["name"] for a in report.json()["arms"]] == ["holdout", "plain", "gift"]
    assert http.get("/campaigns/spring/report", params={"confidence": 2}).status_code == 400

    spec = http.get("/docs/openapi.json").json()
    assert "/campaigns/{campaign}" in spec["paths"] and "/campaigns/{campaign}/trigger" in spec["paths"]
    schemas = spec["components"]["schemas"]
    # declared the way the core's own bodies are (whatever ecrm-api makes of forbid_unknown_fields)
    assert schemas["CampaignIn"].get("additionalProperties") == schemas["OfferIn"].get("additionalProperties")
    yaml_schema = schemas["CampaignIn"]["properties"]["yaml"]  # a string, or null (msgspec's anyOf)
    assert 1_000_000 in [s.get("maxLength") for s in yaml_schema.get("anyOf", [yaml_schema])]
