"""Triggers: the core's events enroll customers; the ``campaigns.schedule`` job runs schedules and dates.

* ``ecrm_segment_entered`` / ``_exited``: the whole set of customers is
  enrolled at once in every live campaign triggered by that segment;
* ``ecrm_interactions_recorded``: customers with an interaction of the
  trigger's kind (matching its ``where`` filter) are enrolled; the same
  batch wakes journeys waiting on an event;
* ``campaigns.schedule`` (exclusive): schedule triggers enroll their
  audience when due; date triggers enroll the customers whose date (a date
  attribute, or the first purchase) falls today in their own timezone, once
  the local time has reached the trigger's ``time``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from ecrm_core.registry import JobContext, JobResult

from .model import Campaign
from .schema import CAMPAIGNS, ENROLLMENTS, VERSIONS
from .service import Campaigns, _next_run
from .validate import event_rule

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import InteractionBatch

log = logging.getLogger("ecrm.campaigns")


def _live(crm: CRM, trigger_types: Sequence[str]) -> list[tuple[int, Campaign]]:
    """Live campaigns of these trigger types with their current definitions (one query)."""
    if "campaigns" not in crm.db.tables:
        return []
    ct, vt = crm.db.tables[CAMPAIGNS], crm.db.tables[VERSIONS]
    q = (
        sa.select(ct.c.id, vt.c.definition)
        .join(vt, sa.and_(vt.c.campaign_id == ct.c.id, vt.c.version == ct.c.version))
        .where(ct.c.workspace_id == crm.workspace, ct.c.status == "live", ct.c.trigger_type.in_(trigger_types))
    )
    with crm.db.read() as conn:
        return [(r.id, Campaign.from_dict(r.definition)) for r in conn.execute(q)]


def on_segment(crm: CRM, slug: str, customer_ids: Sequence[int], entered: bool) -> None:
    kind = "segment_entered" if entered else "segment_exited"
    svc = Campaigns(crm)
    for cid, c in _live(crm, (kind,)):
        if c.trigger.segment == slug:
            report = svc.enroll(cid, list(customer_ids))
            log.info("campaign %s: %s %s -> %s", c.key, kind, slug, report)


#: Every trigger type (a journey of any of them may wait on an event).
_ALL_TRIGGERS = ("segment_entered", "segment_exited", "interaction", "schedule", "date", "api")


def on_interactions(crm: CRM, batch: InteractionBatch) -> None:
    kinds = batch.kinds
    live = _live(crm, _ALL_TRIGGERS)  # one read for the triggers and the waits
    campaigns = [x for x in live if x[1].trigger.type == "interaction" and x[1].trigger.kind in kinds]
    if campaigns:
        rows = list(batch.rows)
        svc = Campaigns(crm)
        for cid, c in campaigns:
            rule = crm.segments.compile(event_rule(c.trigger.kind or "", c.trigger.where)) if c.trigger.where else None
            ids = {r["customer_id"] for r in rows if r["kind"] == c.trigger.kind and (rule is None or _holds(rule, r))}
            if ids:
                svc.enroll(cid, sorted(ids))
    _wake_waiters(crm, batch, live)


class _Row:
    __slots__ = ("amount", "channel", "currency", "kind", "occurred_at", "properties")
    properties: Any

    def __init__(self, m: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, m.get(k))
        if isinstance(self.properties, str):  # the core's bulk path hands the stored JSON text
            import json

            self.properties = json.loads(self.properties)


def _holds(rule: Any, row: Any) -> bool:
    from ecrm_core.rules import EvalContext

    return bool(rule.evaluate(EvalContext(customer=None, interactions=[_Row(row)], now=row["occurred_at"])))


def _wake_waiters(crm: CRM, batch: InteractionBatch, live: Sequence[tuple[int, Campaign]]) -> None:
    """Journeys waiting on an event of a kind in the batch become due now (the tick decides)."""
    if "campaign_enrollments" not in crm.db.tables:
        return
    et = crm.db.tables[ENROLLMENTS]
    waiting: list[tuple[int, int, str]] = []
    for cid, c in live:
        for s in c.steps:
            if s.type == "wait" and s.event in batch.kinds:
                waiting.append((cid, 0, s.id))
    if not waiting:
        return
    ids = sorted(batch.customer_ids)
    if not ids:
        return
    now = crm.now()
    with crm.db.write() as conn:
        for cid, _v, step in waiting:
            for i in range(0, len(ids), 5000):
                # due now, timeout kept: the tick sees the event and takes on_event (see Runner._wait).
                conn.execute(
                    sa.update(et)
                    .where(
                        et.c.campaign_id == cid,
                        et.c.status == "active",
                        et.c.step == step,
                        et.c.timeout_at.is_not(None),
                        et.c.customer_id.in_(ids[i : i + 5000]),
                    )
                    .values(due_at=now)
                )


def run_schedules(ctx: JobContext) -> JobResult:
    """The ``campaigns.schedule`` job: schedule and date triggers that are due."""
    crm = ctx.crm
    ct = crm.db.tables[CAMPAIGNS]
    now = crm.now()
    done = 0
    notes = []
    for cid, c in _live(crm, ("schedule", "date")):
        with crm.db.read() as conn:
            row = conn.execute(sa.select(ct.c.next_run_at, ct.c.state).where(ct.c.id == cid)).one()
        if row.next_run_at is None or row.next_run_at > now:
            continue
        svc = Campaigns(crm)
        if c.trigger.type == "schedule":
            with crm.db.read() as conn:
                ids = sorted(svc.audience_ids(c, conn, None))
            report = svc.enroll(cid, ids, audience_checked=True)
            nxt = _next_run(c, now + timedelta(microseconds=1)) if c.trigger.every else None
            state = dict(row.state or {})
        else:
            from .dates import ensure_built

            ensure_built(crm, cid, c)
            ids = date_matches(crm, c, now)
            report = svc.enroll(cid, ids)
            nxt = now + timedelta(minutes=15)
            state = dict(row.state or {})
        with crm.db.write() as conn:
            conn.execute(sa.update(ct).where(ct.c.id == cid).values(next_run_at=nxt, state=state, updated_at=now))
        done += report.entered + report.held_out
        notes.append(f"{c.key}: {report.entered} entered, {report.held_out} held out")
    return JobResult(done=done, message="; ".join(notes) or None)


def date_candidates(crm: CRM, c: Campaign, start: datetime, end: datetime) -> list[tuple[int, str | None, date]]:
    """``(customer, timezone, date)`` of the customers whose trigger date may fall between ``start``
    and ``end``: through the indexed ``campaign_dates`` once the source is built, else (a campaign
    never run yet, for a read-only simulation) by reading the customers."""
    from . import dates

    ct = crm.db.tables[CAMPAIGNS]
    with crm.db.read() as conn:
        built = {
            (st or {}).get("dates_built")
            for st in conn.scalars(sa.select(ct.c.state).where(ct.c.workspace_id == crm.workspace))
        }
    source = dates.source_of(c)
    if source in built:
        return dates.candidates(crm, c, start, end)
    cu = crm.db.tables["customers"]
    out: list[tuple[int, str | None, date]] = []
    with crm.db.read() as conn:
        if source == dates.FIRST_PURCHASE:
            i = crm.db.tables["interactions"]
            q: Any = (
                sa.select(i.c.customer_id, cu.c.timezone, sa.func.min(i.c.occurred_at))
                .join(cu, cu.c.id == i.c.customer_id)
                .where(i.c.workspace_id == crm.workspace, i.c.kind == "purchase", cu.c.merged_into.is_(None))
                .group_by(i.c.customer_id, cu.c.timezone)
            )
        else:
            q = sa.select(cu.c.id, cu.c.timezone, cu.c.attributes).where(
                cu.c.workspace_id == crm.workspace, cu.c.merged_into.is_(None)
            )
        for cid, tz, value in conn.execute(q):
            if source != dates.FIRST_PURCHASE:
                value = (value or {}).get(source) if isinstance(value, dict) else None
            day = dates.as_date(value, tz)
            if day is not None:
                out.append((cid, tz, day))
    return out


def date_matches(crm: CRM, c: Campaign, now: datetime) -> list[int]:
    """Customers whose trigger date (shifted by ``offset`` days) is today in their timezone, past ``time``.

    Set-based: the candidates come from the indexed ``campaign_dates`` (three month-days around
    today's UTC date), then each one's local day and time is checked.  Customers who entered within
    the last 20 hours are left out (the job runs every 15 minutes); yearly repeats need
    ``reentry: always`` or a cooldown.
    """
    from . import dates

    t = c.trigger
    at = time.fromisoformat(t.time) if t.time else time(9, 0)
    shift = timedelta(days=t.offset or 0)
    et, ct = crm.db.tables[ENROLLMENTS], crm.db.tables[CAMPAIGNS]
    out: list[int] = []
    found = date_candidates(crm, c, now, now)
    for cid, tz, day in found:
        try:
            local = now.astimezone(ZoneInfo(tz or "UTC"))
        except Exception:
            local = now
        target = local.date() - shift
        if t.attribute == dates.FIRST_PURCHASE and day >= target:
            continue  # an anniversary is at least a year after
        if dates.falls_on(day, target) and local.time() >= at:
            out.append(cid)
    if not out:
        return out
    with crm.db.read() as conn:
        campaign = sa.select(ct.c.id).where(ct.c.workspace_id == crm.workspace, ct.c.key == c.key).scalar_subquery()
        recent: set[int] = set()
        for k in range(0, len(out), 5000):
            recent |= set(
                conn.scalars(
                    sa.select(et.c.customer_id).where(
                        et.c.campaign_id == campaign,
                        et.c.customer_id.in_(out[k : k + 5000]),
                        et.c.entered_at > now - timedelta(hours=20),
                    )
                )
            )
    return [cid for cid in out if cid not in recent]


def on_merged(crm: CRM, conn: sa.Connection, source_id: int, target_id: int) -> None:
    """Journeys follow a merge, on ``conn`` (the merge's transaction): the source's enrollments
    move to the target, except in campaigns where the target has its own (the target's journey
    is kept, the source's is dropped)."""
    if "campaign_enrollments" not in crm.db.tables:
        return
    et = crm.db.tables[ENROLLMENTS]
    taken = sa.select(et.c.campaign_id).where(et.c.customer_id == target_id).scalar_subquery()
    conn.execute(
        sa.update(et)
        .where(et.c.customer_id == source_id, et.c.campaign_id.notin_(taken))
        .values(customer_id=target_id, updated_at=crm.now())
    )
    conn.execute(sa.delete(et).where(et.c.customer_id == source_id))


def on_deleted(crm: CRM, conn: sa.Connection, customer_ids: Sequence[int]) -> None:
    """Journey state goes with the customer, on ``conn`` (the delete's
    transaction; the foreign key cascades too: this covers databases without it)."""
    if "campaign_enrollments" not in crm.db.tables:
        return
    et = crm.db.tables[ENROLLMENTS]
    ids = list(customer_ids)
    for i in range(0, len(ids), 5000):
        conn.execute(sa.delete(et).where(et.c.customer_id.in_(ids[i : i + 5000])))
