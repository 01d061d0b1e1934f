"""``ecrm segments …`` and ``ecrm lifecycle …`` with click's CliRunner on SQLite files."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ecrm_core import CRM
from ecrm_core.cli import make_cli


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def crm(url: str) -> Iterator[CRM]:
    crm = CRM(url, load_entrypoints=False)
    crm.upgrade()
    ada = crm.customers.create(email="ada@example.com", name="Ada", attributes={"country": "KR"})
    bob = crm.customers.create(email="bob@example.com", name="Bob", attributes={"country": "US"})
    for who, n in ((ada, 3), (bob, 1)):
        for _ in range(n):
            crm.interactions.track("purchase", customer_id=who.id, amount="60", currency="EUR")
    yield crm
    crm.close()


@pytest.fixture
def run(url: str, crm: CRM) -> Callable[..., Result]:
    def invoke(*args: str, input: str | None = None) -> Result:
        cli = make_cli(entrypoints=False)
        return CliRunner().invoke(cli, ["--db", url, *args], input=input, catch_exceptions=False)

    return invoke


def test_help_teaches_with_examples(run):
    for args in (["segments"], ["segments", "create"], ["segments", "preview"], ["lifecycle"], ["lifecycle", "set"]):
        result = run(*args, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output, args


def test_preview_counts_and_shows_sql_as_json(run, crm):
    result = run("segments", "preview", "purchase.count() >= 3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ada = crm.customers.find(email="ada@example.com")
    assert doc["count"] == 1 and doc["sample"] == [ada.id] and "SELECT" in doc["sql"] and doc["plan"]
    table = run("segments", "preview", "purchase.count() >= 1", "--sql")
    assert "2 customers match" in table.output and "plan:" in table.output


def test_preview_reports_rule_errors_with_a_caret(run):
    result = run("segments", "preview", 'purchase.count() >= 1 and contry == "KR"')
    assert result.exit_code == 1
    assert 'unknown field "contry"' in result.output and 'did you mean "country"' not in result.output
    assert "^" in result.output


def test_create_list_show_members_refresh_delete(run, crm, tmp_path):
    rule_file = tmp_path / "rule.txt"
    rule_file.write_text('purchase.sum(365d) > 100 and attributes.country == "KR"\n')
    created = run("segments", "create", "kr-spenders", f"@{rule_file}", "--name", "KR spenders")
    assert created.exit_code == 0 and "1 members" in created.output
    listed = json.loads(run("segments", "list", "--json").output)
    assert [(s["slug"], s["members"], s["rule"]) for s in listed] == [
        ("kr-spenders", 1, 'purchase.sum(365d) > 100 and attributes.country == "KR"')
    ]
    assert "KR spenders" in run("segments", "show", "kr-spenders").output
    ada = crm.customers.find(email="ada@example.com")
    assert run("segments", "members", "kr-spenders", "--format", "ids").output.split() == [str(ada.id)]
    csv_out = run("segments", "members", "kr-spenders", "--format", "csv").output.splitlines()
    assert csv_out[0] == "customer_id,email,name,entered_at" and csv_out[1].startswith(f"{ada.id},ada@example.com,Ada,")
    refreshed = run("segments", "refresh")
    assert refreshed.exit_code == 0 and "refreshed all customers" in refreshed.output
    assert "refreshed 1 customers" in run("segments", "refresh", "--customers", str(ada.id)).output
    assert run("segments", "delete", "kr-spenders", input="n\n").exit_code == 1  # asked, declined
    assert run("segments", "delete", "kr-spenders", "--yes").exit_code == 0
    assert "no segments yet" in run("segments", "list").output


def test_static_segment_from_stdin_ids(run, crm):
    ids = [c.id for c in crm.customers.list()]
    result = run("segments", "create", "beta", "--static", "--customers", "-", input="\n".join(map(str, ids)) + "\n")
    assert result.exit_code == 0 and f"{len(ids)} members" in result.output
    bad = run("segments", "create", "beta2", "--static", "--customers", "1,x")
    assert bad.exit_code == 2 and "'x' is not a customer id" in bad.output
    usage = run("segments", "create", "nothing")
    assert usage.exit_code == 2 and "give a RULE" in usage.output


def test_lifecycle_show_set_reset(run):
    shown = json.loads(run("lifecycle", "show", "--json").output)
    by_stage = {row["stage"]: row for row in shown}
    assert by_stage["new"]["customers"] == 2 and by_stage["new"]["phase"] == "acquisition"
    assert by_stage["won_back"]["position"] == 0
    result = run("lifecycle", "set", "active=purchase.count() >= 2", "prospect=purchase.count() == 0")
    assert result.exit_code == 0 and "1 customers changed stage" in result.output
    assert {r["stage"]: r["customers"] for r in json.loads(run("lifecycle", "show", "--json").output)}["active"] == 1
    bad = run("lifecycle", "set", "activ=purchase.count() >= 2")
    assert bad.exit_code == 1 and "did you mean 'active'?" in bad.output
    assert run("lifecycle", "set", "--reset").exit_code == 0
    assert "customers changed stage" in run("lifecycle", "refresh").output
    table = run("lifecycle", "show").output
    assert "acquisition" in table and "won_back" in table and "█" in table
