"""Needs-analysis and sales reports through the CLI (table, SVG/PNG), the API over real HTTP, and the demo stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from ecrm_analytics import plugin
from ecrm_analytics.cli import analytics as cli

from ecrm_core import CRM

from .conftest import NOW, Shop

NEEDS_REPORTS = ("basket", "clusters", "affinity", "sales", "attribution")


def _shop(shop: Shop) -> list[int]:
    ids = [shop.customer(f"c{i}") for i in range(10)]
    for i, cid in enumerate(ids):
        shop.crm.interactions.track(
            "email_open",
            customer_id=cid,
            channel="email",
            occurred_at=NOW.replace(day=1, hour=1),
            properties={"campaign": "may"},
        )
        for k in range(1 + i % 3):
            shop.buy(
                cid,
                1 + 20 * k + i,
                10 * (i + 1),
                channel="web" if i % 2 else "app",
                properties={"skus": ["A", "B"] if i % 2 else ["A", "C"]},
            )
    shop.crm.segments.create("buyers", "purchase.count() >= 1")
    return ids


def test_cli_prints_tables_and_writes_charts(shop: Shop, tmp_path) -> None:
    _shop(shop)
    runner = CliRunner()
    for name, args in (
        ("basket", ["--min-support", "0.1"]),
        ("sales", ["--by", "period,channel"]),
        ("attribution", ["--by", "campaign"]),
        ("clusters", ["--k", "2", "--save", "true"]),
        ("affinity", ["--by", "cluster", "--level", "product", "--min-items", "1"]),
    ):
        path = tmp_path / f"{name}.{'png' if name == 'sales' else 'svg'}"
        out = runner.invoke(cli, [name, *args, "--chart", str(path)], obj=shop.crm)
        assert out.exit_code == 0, out.output
        assert path.read_bytes()[:4] in (b"\x89PNG", b"<?xm"), name
    out = runner.invoke(cli, ["sales", "--by", "country"], obj=shop.crm)
    assert out.exit_code != 0 and "not a dimension" in out.output
    out = runner.invoke(cli, ["basket", "--json", "--min-support", "0.1"], obj=shop.crm)
    assert json.loads(out.output)["summary"]["baskets"] == 19


def test_api_routes(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]) -> None:
    pytest.importorskip("ecrm_api")
    from ecrm_api import plugin as api_plugin

    from ecrm_core.testing import FakeClock

    crm = crm_factory(plugins=[api_plugin, plugin], clock=FakeClock(NOW))
    _shop(Shop(crm, FakeClock(NOW)))
    http = live_api_factory(crm).client()
    names = {i["name"] for i in http.get("/analytics/reports").json()["items"]}
    assert set(NEEDS_REPORTS) <= names
    r = http.get("/analytics/reports/sales", params={"by": "channel,currency"})
    assert r.status_code == 200 and r.json()["columns"][:2] == ["channel", "currency"], r.text
    r = http.get("/analytics/reports/basket", params={"min_support": "0.1", "level": "product"})
    assert r.status_code == 200 and r.json()["rows"], r.text
    r = http.get("/analytics/reports/attribution/chart", params={"format": "png"})
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    r = http.get("/analytics/reports/basket", params={"min_support": "2"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.min_support", r.text
    r = http.get("/analytics/reports/clusters", params={"k": "2"})
    assert r.status_code == 200 and r.json()["summary"]["k"] == 2
    # a GET never writes: the storing parameters are refused there, and taken by the POST route
    from ecrm_analytics import basket, clusters

    for path, flag in (("clusters", "save"), ("basket", "save_rules")):
        r = http.get(f"/analytics/reports/{path}", params={flag: "true"})
        assert r.status_code == 400 and flag in r.text, r.text
    assert clusters.model(crm) is None and not basket.stored(crm)
    r = http.post("/analytics/reports/clusters", params={"k": "2", "save": "true"})
    assert r.status_code == 200 and r.json()["summary"]["k"] == 2, r.text
    assert clusters.model(crm) is not None
    r = http.post("/analytics/reports/basket", params={"min_support": "0.1", "save_rules": "true"})
    assert r.status_code == 200 and basket.stored(crm), r.text
    assert http.post("/analytics/reports/rfm").status_code in (404, 405)  # nothing to store: no POST route
    catalogue = {i["name"]: i for i in http.get("/analytics/reports").json()["items"]}
    assert [p["name"] for p in catalogue["clusters"]["params"] if p["writes"]] == ["save"]
    # the OpenAPI document says the same: GET without the storing parameters, POST (scope write) with them
    import httpx

    doc = httpx.get(f"{http.base_url}/docs/openapi.json", timeout=120).json()
    for path, flag in (("/analytics/reports/clusters", "save"), ("/analytics/reports/basket", "save_rules")):
        item = doc["paths"][path]
        assert set(item) >= {"get", "post"}
        assert flag not in {q["name"] for q in item["get"].get("parameters", [])}
        assert flag in {q["name"] for q in item["post"].get("parameters", [])}
        assert "k" in {q["name"] for q in doc["paths"]["/analytics/reports/clusters"]["post"]["parameters"]}
    assert set(doc["paths"]["/analytics/reports/rfm"]) == {"get"}


def test_demo_stage(crm_factory: Callable[..., CRM]) -> None:
    pytest.importorskip("sklearn")
    from rich.console import Console

    from ecrm_core.demo import build_demo
    from ecrm_core.demo_stages import run_demo_stages

    crm = crm_factory(plugins=[plugin])
    build_demo(crm, customers=150, months=12)
    [outcome] = run_demo_stages(crm, only=["analytics.needs"])
    assert outcome.ok, outcome.error
    console = Console(width=200, record=True)
    console.print(outcome.output)
    text = console.export_text()
    assert "Sales by channel" in text and "Attribution" in text and "category rules" in text
    assert "Customer clusters" in text
    assert run_demo_stages(crm, only=["analytics.needs"])[0].ok  # safe to run again


def test_progress_only_on_an_interactive_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import click
    from ecrm_analytics.progress import cli_progress

    with cli_progress("outside a command") as progress:
        assert progress is None  # the API, the worker, Python code: nothing shown
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with click.Context(click.Command("x")), cli_progress("reading") as progress:
        assert progress is not None
        progress(5, 10)
        progress(10, 10)
