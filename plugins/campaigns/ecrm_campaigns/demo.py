"""The plugin's stage of ``ecrm demo`` (hook ``ecrm_register_demo_stages``): a win-back campaign
replayed on the sample shop, then its report.

The stage never changes the demo's database.  On SQLite it takes a
consistent copy (``sqlite3``'s backup API) into a temporary folder and
works there:

1. the clock goes back ``REPLAY_DAYS`` days; the interactions since are
   taken out of the copy, and its purchases are *replayed* day by day;
2. a segment of lapsed buyers (bought in the last two years, not in the
   last 90 days) and a live win-back campaign on it — a 15 % offer, a
   reminder three days later, the goal a purchase within 30 days, **20 %
   held out** — with a capturing channel that mirrors each customer's
   e-mail consent;
3. each replayed day: that day's purchases are recorded, the segment is
   refreshed (as the worker's ``segments.refresh`` job does), and the
   worker's campaign and delivery jobs run;
4. the report compares the arms with the holdout.

The copy is deleted afterwards, so the stage can run again and again.  On
another database (no file to copy) the stage shows the campaign's
*simulation* instead, which is read-only.  A replay cannot show an effect
of the e-mails (the purchases happened without them): the uplift's
interval straddles zero, and the report says so.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["REPLAY_DAYS", "winback_stage"]

#: How many days the demo replays.
REPLAY_DAYS = 35
SEGMENT = "demo_lapsed"
OFFER = "demo_comeback15"
CHANNEL = "demo_mail"

CAMPAIGN: dict[str, Any] = {
    "key": "demo_winback",
    "name": "Win back lapsed buyers (demo)",
    "trigger": {"type": "segment_entered", "segment": SEGMENT},
    "offers": [{"code": OFFER, "limit": 1}],
    "goal": {"kind": "purchase", "within": "30d"},
    "holdout": 20,
    "steps": [
        {
            "id": "offer",
            "type": "send",
            "channel": CHANNEL,
            "offer": OFFER,
            "template": {"subject": "We miss you, {{ customer.name }}: 15 % off", "body": "Come back and save."},
            "next": "pause",
        },
        {"id": "pause", "type": "wait", "duration": "3d", "next": "remind"},
        {
            "id": "remind",
            "type": "send",
            "channel": CHANNEL,
            "template": {"subject": "Your 15 % are waiting", "body": "Still thinking about it?"},
        },
    ],
}


def _sqlite_file(crm: CRM) -> Path | None:
    url = crm.db.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def winback_stage(crm: CRM, progress: Any = None) -> Any:
    """Replay a win-back campaign with a 20 % holdout on a copy of the demo shop; return its report."""
    source = _sqlite_file(crm)
    if source is None:
        return _simulated(crm)
    tmp = Path(tempfile.mkdtemp(prefix="ecrm-demo-campaign-"))
    try:
        copy = tmp / "replay.db"
        with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        return _replay(crm, copy, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replay(origin: CRM, path: Path, progress: Any) -> Any:
    from ecrm_core.crm import CRM
    from ecrm_core.testing import CapturingChannel, FakeClock
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor
    from rich.console import Group
    from rich.table import Table

    from . import campaigns, plugin

    now = origin.now()
    start = now - timedelta(days=REPLAY_DAYS)
    clock = FakeClock(start)
    mail = CapturingChannel(CHANNEL)
    crm = CRM(
        f"sqlite:///{path}",
        workspace=origin.workspace,
        load_entrypoints=False,
        plugins=[plugin, mail.plugin()],
        clock=clock,
        live_segments=False,
    )
    try:
        # No upgrade here: the copy has the demo database's schema, which the
        # demo's own CRM brought up to date with every installed plugin's
        # migrations (this CRM knows only two plugins' revisions).
        i, cu = crm.db.tables["interactions"], crm.db.tables["customers"]
        with crm.db.write() as conn:
            # the purchases of the replayed days come back one day at a time
            later = conn.execute(
                sa.select(i.c.customer_id, i.c.amount, i.c.currency, i.c.occurred_at, i.c.properties).where(
                    i.c.workspace_id == crm.workspace, i.c.kind == "purchase", i.c.occurred_at >= start
                )
            ).all()
            conn.execute(sa.delete(i).where(i.c.workspace_id == crm.workspace, i.c.occurred_at >= start))
            # the demo channel follows each customer's e-mail consent
            for cid, consent in conn.execute(
                sa.select(cu.c.id, cu.c.consent).where(cu.c.workspace_id == crm.workspace)
            ):
                data = json.loads(consent) if isinstance(consent, str) else dict(consent or {})
                if "email" in data:
                    data[CHANNEL] = data["email"]
                    conn.execute(sa.update(cu).where(cu.c.id == cid).values(consent=data))
        for slug in (SEGMENT,):
            try:
                crm.segments.delete(slug)
            except Exception:
                pass
        crm.segments.create(SEGMENT, rule="purchase.count(730d) >= 1 and purchase.count(90d) == 0")
        crm.segments.refresh(SEGMENT)
        try:
            crm.offers.create(OFFER, "15 % off to welcome you back", kind="discount", status="active")
        except Exception:
            pass
        svc = campaigns(crm)
        svc.save(CAMPAIGN)
        if svc.get(CAMPAIGN["key"]).status == "draft":
            svc.start(CAMPAIGN["key"])
        runner = JobRunner(crm, jobs=["campaigns.*", "messages.*"])
        by_day: dict[int, list[dict[str, Any]]] = {}
        for r in later:
            day = int((r.occurred_at - start) // timedelta(days=1))
            by_day.setdefault(day, []).append(
                {
                    "kind": "purchase",
                    "customer_id": r.customer_id,
                    "amount": r.amount,
                    "currency": r.currency,
                    "occurred_at": r.occurred_at,
                    "properties": r.properties,
                }
            )
        if progress is not None:
            progress.start("campaigns: replaying days", REPLAY_DAYS)
        for day in range(REPLAY_DAYS):
            clock.now = start + timedelta(days=day + 1)
            if by_day.get(day):
                crm.interactions.track_many(by_day[day], on_error="skip")
            crm.segments.refresh(SEGMENT)
            InProcessExecutor(runner).run(once=True)
            if progress is not None:
                progress.advance(1)
        report = svc.evaluate(CAMPAIGN["key"])
        table = Table(
            title=f"win-back replayed over {REPLAY_DAYS} days, 20 % held out (goal: a purchase within 30 days)"
        )
        for col in ("arm", "entered", "messaged", "converted", "rate", "revenue/customer"):
            table.add_column(col, justify="left" if col == "arm" else "right")
        for a in report.arms:
            table.add_row(
                a.name, str(a.entered), str(a.messaged), str(a.converted), f"{a.rate:.1%}", str(a.revenue_per_customer)
            )
        lines = [
            f"{len(mail.sent)} e-mails handed to the channel (captured, nothing was sent); "
            f"the demo's database is unchanged (the replay ran on a copy).",
            *report.summary(),
            "A replay of past purchases cannot show an effect of the e-mails: expect an interval around zero.",
        ]
        return Group(table, *lines)
    finally:
        crm.close()


def _simulated(crm: CRM) -> Any:
    from rich.console import Group

    from . import campaigns

    svc = campaigns(crm)
    try:
        svc.get(CAMPAIGN["key"])
    except Exception:
        return "the campaign replay needs the demo on SQLite (ecrm demo --db sqlite:///demo.db)"
    return Group("simulated, read-only (the demo is not on SQLite):", svc.simulate(CAMPAIGN["key"], days=30).table())
