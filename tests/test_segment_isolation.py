"""A stored segment that fails to evaluate is isolated: recorded, shown, skipped.

Scenarios (SQLite and PostgreSQL): a rule stored by a direct table write
that no longer validates (over the limits, or naming a condition type whose
plugin is gone), and a condition type whose SQL the database refuses at run
time.  ``refresh`` and live refresh go on for the other segments, report the
failures, record them on the segments (API and CLI show them) and clear them
once the rule evaluates again.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from ecrm_core import ConditionType, hookimpl

BROKEN = {
    # nested deeper (and/or alternating) than the limits allow: stored before the fix
    "too-deep": {
        "all": [
            {"field": "email", "op": "exists"},
            {
                "any": [
                    {
                        "all": [
                            {
                                "any": [
                                    {
                                        "all": [
                                            {
                                                "any": [
                                                    {
                                                        "all": [
                                                            {
                                                                "any": [
                                                                    {
                                                                        "all": [
                                                                            {
                                                                                "any": [
                                                                                    {
                                                                                        "all": [
                                                                                            {
                                                                                                "any": [
                                                                                                    {
                                                                                                        "all": [
                                                                                                            {
                                                                                                                "any": [
                                                                                                                    {
                                                                                                                        "field": "name",
                                                                                                                        "op": "eq",
                                                                                                                        "value": "x",
                                                                                                                    },
                                                                                                                    {
                                                                                                                        "field": "name",
                                                                                                                        "op": "exists",
                                                                                                                    },
                                                                                                                ]
                                                                                                            },
                                                                                                            {
                                                                                                                "field": "name",
                                                                                                                "op": "exists",
                                                                                                            },
                                                                                                        ]
                                                                                                    },
                                                                                                    {
                                                                                                        "field": "name",
                                                                                                        "op": "exists",
                                                                                                    },
                                                                                                ]
                                                                                            },
                                                                                            {
                                                                                                "field": "name",
                                                                                                "op": "exists",
                                                                                            },
                                                                                        ]
                                                                                    },
                                                                                    {"field": "name", "op": "exists"},
                                                                                ]
                                                                            },
                                                                            {"field": "name", "op": "exists"},
                                                                        ]
                                                                    },
                                                                    {"field": "name", "op": "exists"},
                                                                ]
                                                            },
                                                            {"field": "name", "op": "exists"},
                                                        ]
                                                    },
                                                    {"field": "name", "op": "exists"},
                                                ]
                                            },
                                            {"field": "name", "op": "exists"},
                                        ]
                                    },
                                    {"field": "name", "op": "exists"},
                                ]
                            },
                            {"field": "name", "op": "exists"},
                        ]
                    },
                    {"field": "name", "op": "exists"},
                ]
            },
        ]
    },
    "plugin-gone": {"condition": "uninstalled", "args": {}},
    "db-refuses": {"condition": "explodes", "args": {}},
}


class Explodes:
    @hookimpl
    def ecrm_register_condition_types(self):
        def compile(args, ctx):
            return sa.text("no_such_function_anywhere(1) = 1")

        return [ConditionType(name="explodes", compile=compile, evaluate=lambda args, ctx: True)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shop(request):
    factory = request.getfixturevalue("crm_factory" if request.param == "sqlite" else "pg_crm_factory")
    return factory(plugins=[Explodes()], live_segments=True)


def _break(crm, slug, rule):
    crm.segments.create(slug, "email exists")
    s = crm.db.tables["segments"]
    with crm.db.write() as conn:
        conn.execute(sa.update(s).where(s.c.workspace_id == crm.workspace, s.c.slug == slug).values(rule=rule))


def test_a_failing_segment_never_stops_the_others(shop):
    ada = shop.customers.create(email="ada@example.com")
    shop.segments.create("emails", "email exists")
    for slug, rule in BROKEN.items():
        _break(shop, slug, rule)
    shop.segments.create("named", 'name == "Bob"')
    report = shop.segments.refresh()
    assert sorted(f.slug for f in report.failed) == sorted(BROKEN)
    for slug in BROKEN:
        seg = shop.segments.get(slug)
        assert seg.error and seg.error_at is not None, slug
    assert "limit 'nesting'" in shop.segments.get("too-deep").error
    assert "no_such_function_anywhere" in shop.segments.get("db-refuses").error
    # live refresh goes on for the others
    bob = shop.customers.create(email="bob@example.com", name="Bob")
    assert shop.segments.is_member("emails", bob.id) and shop.segments.is_member("named", bob.id)
    assert shop.segments.is_member("emails", ada.id)
    # fixed: evaluates again, the error is cleared
    s = shop.db.tables["segments"]
    with shop.db.write() as conn:
        conn.execute(sa.update(s).where(s.c.slug == "plugin-gone").values(rule={"field": "name", "op": "exists"}))
    report = shop.segments.refresh()
    assert "plugin-gone" not in {f.slug for f in report.failed}
    assert shop.segments.get("plugin-gone").error is None
    assert shop.segments.members("plugin-gone") and shop.segments.count("plugin-gone") == 1


def test_a_failing_lifecycle_rule_is_skipped_and_recorded(shop):
    shop.customers.create(email="ada@example.com")
    shop.lifecycle.set_rules({"active": "email exists", "new": "explodes()"})
    report = shop.segments.refresh()
    assert [f.slug for f in report.failed] == ["lifecycle:new"]
    assert "new" in shop.lifecycle.errors()


def test_the_error_is_shown_by_api_and_cli(crm_factory, tmp_path, live_api_factory):
    from ecrm_api import plugin

    from ecrm_core.cli import make_cli

    crm = crm_factory(plugins=[plugin, Explodes()])
    crm.customers.create(email="ada@example.com")
    crm.segments.create("ok", "email exists")
    _break(crm, "bad", BROKEN["db-refuses"])
    api = live_api_factory(crm, rate_limit=None)
    writer = api.client(["read", "write"])
    r = writer.post("/segments/ok/refresh")
    assert r.status_code == 200
    r = writer.post("/segments/bad/refresh")
    assert r.status_code == 200 and [f["slug"] for f in r.json()["failed"]] == ["bad"]
    one = writer.get("/segments/bad").json()
    assert "no_such_function_anywhere" in one["error"] and one["error_at"]
    listed = {s["slug"]: s for s in writer.get("/segments").json()["items"]}
    assert listed["ok"]["error"] is None and listed["bad"]["error"] == one["error"]
    url = str(crm.db.engine.url)
    cli = make_cli(entrypoints=False)
    for args in (["segments", "list"], ["segments", "show", "bad"]):
        out = CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)
        assert "FAILED bad" in out.output and "no_such_function_anywhere" in out.output, (args, out.output)
    # the CLI runs without the plugin: the rule no longer validates there
    out = CliRunner().invoke(cli, ["--db", url, "segments", "refresh"], catch_exceptions=False)
    assert out.exit_code == 1 and "1 failed" in out.output and "FAILED bad" in out.output, out.output
    assert "no longer validates" in crm.segments.get("bad").error
