"""``ecrm campaigns ...`` through the real ``ecrm`` command line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from ecrm_campaigns import plugin

from ecrm_core.cli import make_cli
from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import MemoryChannel

from .test_model import FULL


def test_apply_list_show_lifecycle_export(tmp_path: Path) -> None:
    chan = MemoryChannel(name="capture", capabilities=("templates",))
    db = tmp_path / "cli.db"
    crm = make_crm(db, plugins=[plugin, chan.plugin()])
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1")
    crm.offers.create("deal", "10 % off", status="active")
    crm.offers.create("gift", "A gift", status="active")
    crm.close()
    cli = make_cli(plugins=[plugin, chan.plugin()], entrypoints=False)
    run = CliRunner()
    base = ["--db", f"sqlite:///{db}", "campaigns"]
    spec = tmp_path / "spring.yaml"
    spec.write_text(FULL)

    r = run.invoke(cli, [*base, "apply", "-f", str(spec)])
    assert r.exit_code == 0, r.output
    assert "spring: created (version 1, draft)" in r.output
    r = run.invoke(cli, [*base, "apply", "-f", str(spec), "--start"])
    assert "unchanged (version 1, live)" in r.output, r.output
    spec.write_text(FULL.replace("We miss you", "Come back"))
    r = run.invoke(cli, [*base, "create", "-f", str(spec)])
    assert "new version (version 2, live)" in r.output, r.output
    r = run.invoke(cli, [*base, "export", "spring", "--version", "1"])
    assert r.output == FULL
    r = run.invoke(cli, [*base, "list", "--json"])
    assert '"status": "live"' in r.output and '"version": 2' in r.output
    for verb, status in (("pause", "paused"), ("resume", "live"), ("stop", "stopped")):
        r = run.invoke(cli, [*base, verb, "spring"])
        assert r.exit_code == 0 and f"spring: {status}" in r.output, r.output
    r = run.invoke(cli, [*base, "show", "spring"])
    assert "stopped, version 2" in r.output
    r = run.invoke(cli, [*base, "report", "spring", "--json"])
    assert r.exit_code == 0, r.output
    assert '"goal": "purchase"' in r.output and '"name": "holdout"' in r.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        FULL.replace("key: spring", "key: bad")
        .replace("duration", "x")
        .replace("- id: later\n  type: wait\n  until: 09:00", "- id: later\n  type: wait\n  duration: -2d")
    )
    r = run.invoke(cli, [*base, "apply", "-f", str(bad)])
    assert r.exit_code == 1
    assert "steps.later.duration: negative wait" in r.output, r.output
    r = run.invoke(cli, [*base, "show", "nope"])
    assert r.exit_code == 1 and "nope" in r.output


def test_report_with_a_chart_and_simulate(tmp_path: Path) -> None:
    chan = MemoryChannel(name="capture", capabilities=("templates",))
    db = tmp_path / "cli.db"
    crm = make_crm(db, plugins=[plugin, chan.plugin()])
    crm.segments.create("lapsed", rule="purchase.count(365d) >= 1")
    crm.offers.create("deal", "10 % off", status="active")
    crm.offers.create("gift", "A gift", status="active")
    ids = [crm.customers.create(email=f"c{i}@x.org", consent={"capture": "granted"}).id for i in range(4)]
    crm.close()
    cli = make_cli(plugins=[plugin, chan.plugin()], entrypoints=False)
    run = CliRunner()
    base = ["--db", f"sqlite:///{db}", "campaigns"]
    spec = tmp_path / "spring.yaml"
    spec.write_text(FULL)
    assert run.invoke(cli, [*base, "apply", "-f", str(spec), "--start"]).exit_code == 0

    r = run.invoke(cli, [*base, "report", "spring", "--chart", str(tmp_path / "uplift.svg")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "uplift.svg").read_bytes().startswith(b"<?xml") and "by arm" in r.output
    r = run.invoke(cli, [*base, "report", "spring", "--chart", str(tmp_path / "f.png"), "--chart-kind", "funnel"])
    assert r.exit_code == 0 and (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    r = run.invoke(cli, [*base, "report", "spring", "--chart", str(tmp_path / "f.gif")])
    assert r.exit_code == 1 and ".svg or .png" in r.output

    args = [*base, "simulate", "spring", "--days", "3", *(x for cid in ids for x in ("--customer", str(cid)))]
    r = run.invoke(cli, [*args, "--chart", str(tmp_path / "sim.svg")])
    assert r.exit_code == 0, r.output
    assert "simulated 3" in r.output and (tmp_path / "sim.svg").exists()
    r = run.invoke(cli, [*args, "--json"])
    assert r.exit_code == 0 and '"entered_total"' in r.output
    r = run.invoke(cli, [*base, "simulate", "spring", "--days", "0"])
    assert r.exit_code == 2
