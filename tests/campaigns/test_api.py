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


def test_simulate_and_charts_over_http(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]) -> None:
    from ecrm_api import plugin as api_plugin

    chan = MemoryChannel(name="capture", capabilities=("templates",))
    crm = crm_factory(plugins=[api_plugin, plugin, chan.plugin()])
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1")
    crm.offers.create("deal", "10 % off", status="active")
    crm.offers.create("gift", "A gift", status="active")
    api = live_api_factory(crm)
    http = api.client()
    assert http.post("/campaigns", json={"yaml": FULL}).status_code == 200
    ids = [crm.customers.create(email=f"s{i}@x.org", consent={"capture": "granted"}).id for i in range(3)]
    for cid in ids:
        crm.interactions.track("purchase", customer_id=cid, amount="5.00", currency="EUR")
    messages_before = len(crm.messages.list(limit=1000))

    r = http.post("/campaigns/spring/simulate", json={"days": 3, "customer_ids": ids, "details": True})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["days"]) == 3 and data["entered_total"] == 3 and len(data["entries"]) == 3
    assert len(crm.messages.list(limit=1000)) == messages_before  # nothing sent
    assert http.post("/campaigns/spring/simulate", json={"days": 0}).status_code in (400, 422)
    assert http.post("/campaigns/spring/simulate", json={"every": "1m"}).status_code == 422
    assert http.post("/campaigns/nope/simulate", json={}).status_code == 404

    svg = http.get("/campaigns/spring/chart")  # the uplift (the campaign has a holdout)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.content.startswith(b"<?xml")
    png = http.get("/campaigns/spring/chart", params={"kind": "funnel", "format": "png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    sim = http.get("/campaigns/spring/chart", params={"kind": "simulation", "days": 2, "format": "json"})
    assert sim.status_code == 200 and sim.json()["kind"] == "line" and len(sim.json()["categories"]) == 2
    assert http.get("/campaigns/spring/chart", params={"kind": "pie"}).status_code == 400
    spec = http.get("/docs/openapi.json").json()
    assert "post" in spec["paths"]["/campaigns/{campaign}/simulate"]
    chart = spec["paths"]["/campaigns/{campaign}/chart"]["get"]
    kinds = next(p for p in chart["parameters"] if p["name"] == "kind")
    assert set(kinds["schema"].get("enum", [])) == {"uplift", "funnel", "simulation"}
