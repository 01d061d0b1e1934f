"""The campaigns stage of ``ecrm demo``: a win-back with a 20 % holdout replayed on a copy of the shop."""

from __future__ import annotations

import re
from collections.abc import Callable

import sqlalchemy as sa
from ecrm_campaigns import plugin
from rich.console import Console

from ecrm_core import CRM
from ecrm_core.demo import build_demo
from ecrm_core.demo_stages import run_demo_stages


def _counts(crm: CRM) -> dict[str, int]:
    with crm.db.read() as conn:
        return {n: conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0 for n, t in crm.db.tables.items()}


def test_the_demo_replays_a_winback_and_leaves_the_shop_as_it_was(crm_factory: Callable[..., CRM]) -> None:
    crm = crm_factory(plugins=[plugin])
    build_demo(crm, 300, months=24)
    before = _counts(crm)
    assert "campaigns.winback" in crm.registry.demo_stages
    for _ in range(2):  # safe to run again
        [outcome] = run_demo_stages(crm, only=["campaigns.winback"])
        assert outcome.ok, outcome.error
        console = Console(width=140, record=True)
        console.print(outcome.output)
        text = console.export_text()
        assert "holdout" in text and "e-mails handed to the channel" in text and "main" in text
        assert "held out and sent nothing" in text
        assert _counts(crm) == before  # the replay ran on a copy
    assert re.search(r"main\s*│\s*[1-9]", text), text  # customers entered the replayed campaign


def test_the_demo_stage_runs_beside_other_plugins_migrations(crm_factory: Callable[..., CRM]) -> None:
    """The demo database also carries the revisions of every other installed plugin
    (the admin's, analytics'...): the replay's copy must not try to upgrade with
    only the campaigns plugin, which cannot locate them."""
    crm = crm_factory(plugins=[plugin])
    build_demo(crm, 200, months=6)
    with crm.db.write() as conn:
        conn.execute(sa.text(f"INSERT INTO {crm.db.naming.version_table} (version_num) VALUES ('other_plugin_0001')"))
    [outcome] = run_demo_stages(crm, only=["campaigns.winback"])
    assert outcome.ok, outcome.error
