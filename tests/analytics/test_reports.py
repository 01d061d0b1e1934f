"""Reports: churn and cohorts, the CLI (tables, SVG/PNG charts, JSON), the API over real HTTP, the demo stage."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from ecrm_analytics import plugin, report
from ecrm_analytics.churn import risk_of
from ecrm_analytics.cli import analytics as cli

from ecrm_core import CRM

from .conftest import NOW, Shop


def _shop(shop: Shop) -> list[int]:
    ids = [shop.customer(f"c{i}", email=f"c{i}@example.com") for i in range(12)]
    rows = []
    for i, c in enumerate(ids):
        for k in range(1 + i % 4):
            rows.append((c, 30 * k + 7 * i + 1, 20 + i))
    shop.history(rows)
    shop.buy(ids[0], 400, "15")
    shop.buy(ids[0], 380, "15", kind="complaint", channel="email")
    return ids


def _plain(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for v in value.values():
            _plain(v)
    elif isinstance(value, list):
        for v in value:
            _plain(v)


def test_risk_rules() -> None:
    assert risk_of(10, None, None) == "low" and risk_of(100, None, None) == "medium"
    assert risk_of(200, None, None) == "high" and risk_of(40, 10, 0.9) == "high"
    assert risk_of(20, 10, 0.9) == "medium" and risk_of(5, 10, 0.2) == "high"


def test_churn_and_cohorts(shop: Shop) -> None:
    ids = _shop(shop)
    shop.analytics.refresh(full=True, clv=True)
    churn = report(shop.crm, "churn", risk="high", top=50)
    assert churn.summary["customers"] == 12
    assert sum(churn.summary[f"risk_{r}"] for r in ("high", "medium", "low")) == 12
    assert 0 <= churn.summary["repeat_purchase_rate"] <= 1
    cohorts = report(shop.crm, "cohorts", months=24)
    assert cohorts.chart is not None and cohorts.chart.kind == "heatmap"
    for row in cohorts.rows:
        assert row[2] == 1.0  # month 0: everyone by definition
    _plain(churn.to_dict())
    _plain(cohorts.to_dict())
    lapsed = [r for r in report(shop.crm, "churn", risk="high", top=50).records() if r["customer_id"] == ids[0]]
    if lapsed:
        assert "complaint" in lapsed[0]["before the lapse"]


def test_reports_on_an_empty_database(shop: Shop) -> None:
    shop.analytics.refresh(full=True, clv=True)
    for name in ("rfm", "clv", "churn", "cohorts"):
        data = report(shop.crm, name).to_dict()
        _plain(data)
        json.dumps(data, allow_nan=False)


def test_cli_commands_write_charts(shop: Shop, tmp_path) -> None:
    _shop(shop)
    runner = CliRunner()
    out = runner.invoke(cli, ["refresh", "--full"], obj=shop.crm)
    assert out.exit_code == 0 and "recomputed 12 customer(s)" in out.output, out.output
    for name, ext in (("clv", "png"), ("churn", "svg"), ("cohorts", "png"), ("clv-holdout", "svg")):
        path = tmp_path / f"{name}.{ext}"
        args = [name.replace("-", "_"), "--chart", str(path)]
        if name == "clv-holdout":
            args += ["--holdout-days", "30"]
        out = runner.invoke(cli, args, obj=shop.crm)
        assert out.exit_code == 0, out.output
        assert path.read_bytes()[:4] in (b"\x89PNG", b"<?xm")
    out = runner.invoke(cli, ["cohorts", "--months", "1"], obj=shop.crm)
    assert out.exit_code != 0 and "months" in out.output
    out = runner.invoke(cli, ["rates", "--currency", "USD", "--rate", "EUR=1.1"], obj=shop.crm)
    assert out.exit_code == 0 and json.loads(out.output) == {"currency": "USD", "rates": {"EUR": 1.1}}
    out = runner.invoke(cli, ["rates", "--rate", "EUR=-1"], obj=shop.crm)
    assert out.exit_code != 0 and "positive" in out.output
    out = runner.invoke(cli, ["customer", "999999"], obj=shop.crm)
    assert out.exit_code != 0 and "not found" in out.output


def test_api_routes(crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any]) -> None:
    pytest.importorskip("ecrm_api")
    from ecrm_api import plugin as api_plugin

    from ecrm_core.testing import FakeClock

    crm = crm_factory(plugins=[api_plugin, plugin], clock=FakeClock(NOW))
    ids = _shop(Shop(crm, FakeClock(NOW)))
    http = live_api_factory(crm).client()
    r = http.post("/analytics/refresh", params={"full": "true"})
    assert r.status_code == 200 and r.json()["customers"] == 12, r.text
    names = [i["name"] for i in http.get("/analytics/reports").json()["items"]]
    assert {"rfm", "clv", "clv_holdout", "churn", "cohorts"} <= set(names)
    r = http.get("/analytics/reports/rfm", params={"group": "champions", "top": 3})
    assert r.status_code == 200 and r.json()["name"] == "rfm", r.text
    r = http.get("/analytics/reports/rfm/chart")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    r = http.get("/analytics/reports/cohorts/chart", params={"format": "png"})
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    r = http.get("/analytics/reports/rfm", params={"top": "many"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.top", r.text
    r = http.get("/analytics/reports/rfm", params={"colour": "red"})
    assert r.status_code == 400 and "colour" in r.text  # the API refuses unknown query parameters
    assert http.get("/analytics/reports/nope").status_code == 404
    assert http.get("/analytics/reports/rfm/chart", params={"format": "gif"}).status_code == 422
    r = http.get(f"/analytics/customers/{ids[3]}")
    assert r.status_code == 200 and r.json()["rfm"]["orders"] >= 1
    assert http.get("/analytics/customers/999999").status_code == 404


def test_demo_stage_shows_champions_and_who_is_slipping(crm_factory: Callable[..., CRM]) -> None:
    from rich.console import Console

    from ecrm_core.demo import build_demo
    from ecrm_core.demo_stages import run_demo_stages

    crm = crm_factory(plugins=[plugin])
    build_demo(crm, customers=150, months=12)
    [outcome] = run_demo_stages(crm, only=["analytics.value"])
    assert outcome.ok, outcome.error
    console = Console(width=160, record=True)
    console.print(outcome.output)
    text = console.export_text()
    assert "champions" in text and "cant_lose_them" in text
    again = run_demo_stages(crm, only=["analytics.value"])  # safe to run again
    assert again[0].ok
