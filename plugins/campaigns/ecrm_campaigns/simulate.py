"""Simulation: what a campaign would do over the next days, on the real data, without sending.

``campaigns(crm).simulate(key, days=30)`` replays the campaign on a fake
clock that starts now.  It reads the database and writes nothing:

* **who enters when** — a dynamic segment trigger evaluates the segment's
  rule at every ``every`` (default one day, as a refresh would) and enrolls
  who enters (or exits); a schedule runs at its times; a date trigger
  enrolls each customer on their day, at the trigger's time in their
  timezone; an interaction trigger replays the last ``days`` of that kind
  of interaction shifted forward (the future's interactions are unknown);
  ``customer_ids`` enter at the start whatever the trigger (an explicit
  trigger, or "what if these customers entered now").  The audience, the
  re-entry policy and the existing enrollments are applied as a real run
  would, and the arms are the same deterministic hash;
* **the journey** — each group runs at the exact time it falls due, with
  the engine's own timing (waits, ``until``, the send window in each
  customer's timezone); branches on rules are evaluated at the simulated
  time; the customers already mid-journey of a live campaign continue
  from their step;
* **sends** — each send asks the delivery pipeline's read-only
  ``crm.messages.screen`` what ``send_many`` would decide at that moment,
  with the simulation's earlier messages counted against the caps: queued
  (and when quiet hours would hand it to the channel), or blocked by
  consent, suppression or a frequency cap; the campaign's offers are
  checked for validity, eligibility, per-customer limit and budget.

What cannot be known is assumed, and said in ``notes``: nobody converts,
opens, clicks or produces the awaited event (waits on events time out).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from ecrm_core.errors import EcrmError, ValidationError

from . import assign
from .engine import local_zone, offer_usage, rule_ids, split_hits, wait_end, window_opens
from .model import Campaign, Step, parse_duration
from .schema import ENROLLMENTS, VERSIONS
from .simulation import MAX_LISTED, OfferBudget, PlannedMessage, Simulation

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["MAX_DAYS", "MAX_LISTED", "OfferBudget", "PlannedMessage", "Simulation", "simulate"]

#: The longest simulation, in days.
MAX_DAYS = 366
#: Most segment evaluations one simulation may do (``days / every``): bounds its cost.
MAX_EVALUATIONS = 2_000
#: Queue items that end a wait are named after it with this prefix.
_AFTER = "\x00after:"


# ---------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------


class _State:
    __slots__ = ("arm", "entered_at", "entry", "status", "version")

    def __init__(self, arm: str, entered_at: datetime, entry: int, status: str, version: int) -> None:
        self.arm, self.entered_at, self.entry, self.status, self.version = arm, entered_at, entry, status, version


class _Simulator:
    def __init__(self, crm: CRM, key: str, days: int, every: timedelta, customer_ids: Sequence[int] | None) -> None:
        from .service import Campaigns

        self.crm = crm
        self.svc = Campaigns(crm)
        info = self.svc.get(key)
        self.info = info
        self.c = info.definition
        self.start = crm.now()
        self.end = self.start + timedelta(days=days)
        self.days = days
        self.every = every
        self.customer_ids = customer_ids
        self.notes: list[str] = []
        self.entries: list[tuple[int, datetime, str]] = []
        self.messages: list[PlannedMessage] = []
        self.reached: dict[str, int] = {}
        self.window_delays: dict[str, int] = {}
        self.state: dict[int, _State] = {}
        self.defs: dict[int, Campaign] = {info.version: self.c}
        self.queue: list[tuple[datetime, int, int, str, list[int]]] = []
        self.seq = itertools.count()
        self.tz: dict[int, str | None] = {}
        self.planned: dict[str, dict[int, list[datetime]]] = {}
        self.offer_sent: dict[str, dict[int, int]] = {}
        self.offer_total: dict[str, int] = {}
        self.offer_skips: dict[str, dict[str, int]] = {}
        self.offer_exhausted: dict[str, datetime] = {}
        self.offer_before: dict[str, int] = {}

    # -- set-up ----------------------------------------------------------------------------
    def load_existing(self) -> None:
        """The campaign's enrollments: re-entry decisions, and live journeys that continue."""
        et, vt = self.crm.db.tables[ENROLLMENTS], self.crm.db.tables[VERSIONS]
        with self.crm.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    et.c.customer_id,
                    et.c.arm,
                    et.c.entered_at,
                    et.c.entry,
                    et.c.status,
                    et.c.version,
                    et.c.step,
                    et.c.due_at,
                    et.c.timeout_at,
                ).where(et.c.campaign_id == self.info.id)
            ).all()
            versions = {r.version for r in rows} - set(self.defs)
            for v in versions:
                data = conn.scalar(
                    sa.select(vt.c.definition).where(vt.c.campaign_id == self.info.id, vt.c.version == v)
                )
                self.defs[v] = Campaign.from_dict(data)
        live = self.info.status == "live"
        going = 0
        for r in rows:
            self.state[r.customer_id] = _State(r.arm, r.entered_at, r.entry, r.status, r.version)
            if live and r.status == "active" and r.step is not None:
                when = max(r.due_at or self.start, self.start)
                try:
                    waiting = self.defs[r.version].step(r.step).type == "wait" and r.timeout_at is not None
                except KeyError:
                    waiting = False
                # a wait already begun ends at its due time; any other step runs when due
                self._push(when, r.version, f"{_AFTER}{r.step}" if waiting else r.step, [r.customer_id])
                going += 1
        if going:
            self.notes.append(f"{going} customer(s) already mid-journey continue from their step")
        if self.info.status in ("paused", "stopped"):
            self.notes.append(f"the campaign is {self.info.status}: the simulation runs it as if it were live")

    def _push(self, when: datetime, version: int, step: str | None, ids: list[int]) -> None:
        if step is None or not ids:
            return
        heapq.heappush(self.queue, (when, next(self.seq), version, step, ids))

    # -- who enters when --------------------------------------------------------------------
    def arrivals(self) -> list[tuple[datetime, list[int]]]:
        t = self.c.trigger
        out: list[tuple[datetime, list[int]]] = []
        if self.customer_ids is not None:
            out.append((self.start, list(self.customer_ids)))
        if t.type in ("segment_entered", "segment_exited"):
            out += self._segment_arrivals(t.segment or "", entered=t.type == "segment_entered")
        elif t.type == "schedule":
            out += self._schedule_arrivals()
        elif t.type == "date":
            out += self._date_arrivals()
        elif t.type == "interaction":
            out += self._interaction_arrivals()
        elif self.customer_ids is None:
            self.notes.append("an api trigger enrolls only on explicit calls: pass customer_ids to simulate some")
        return out

    def _segment_arrivals(self, slug: str, *, entered: bool) -> list[tuple[datetime, list[int]]]:
        try:
            seg = self.crm.segments.get(slug)
        except EcrmError:
            self.notes.append(f"segment {slug!r} does not exist: nobody enters")
            return []
        if seg.rule is None:
            self.notes.append(f"{slug!r} is a static segment: nobody enters it by itself (pass customer_ids)")
            return []
        m = self.crm.db.tables["segment_members"]
        with self.crm.db.read() as conn:
            before = set(conn.scalars(sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)))
        out = []
        when = self.start + self.every
        while when < self.end:
            with self.crm.db.read() as conn:
                now = rule_ids(self.crm, conn, seg.rule, None, now=when)
            moved = sorted(now - before if entered else before - now)
            if moved:
                out.append((when, moved))
            before = now
            when += self.every
        self.notes.append(
            f"segment {slug!r} is evaluated every {_span(self.every)} (as its refresh would): "
            "entries are at those times; interactions yet to come are not known"
        )
        return out

    def _schedule_arrivals(self) -> list[tuple[datetime, list[int]]]:
        t = self.c.trigger
        assert t.at is not None
        times: list[datetime] = []
        if t.every is None:
            if self.start <= t.at < self.end:
                times.append(t.at)
        else:
            step = parse_duration(t.every, "trigger.every")
            when = t.at
            if when < self.start:
                when += step * -(-(self.start - when) // step)
            while when < self.end and len(times) < 10_000:
                times.append(when)
                when += step
        out = []
        for when in times:
            with self.crm.db.read() as conn:
                ids = self._audience(conn, None, when)
            out.append((when, sorted(ids)))
        return out

    def _date_arrivals(self) -> list[tuple[datetime, list[int]]]:
        from .dates import falls_on
        from .triggers import date_candidates

        t = self.c.trigger
        at = time.fromisoformat(t.time) if t.time else time(9, 0)
        shift = timedelta(days=t.offset or 0)
        by_when: dict[datetime, list[int]] = {}
        for cid, tz, day in date_candidates(self.crm, self.c, self.start, self.end):
            zone = local_zone(tz)
            first = self.start.astimezone(zone).date()
            for k in range(self.days + 2):
                local_day = first + timedelta(days=k)
                target = local_day - shift
                if not falls_on(day, target):
                    continue
                if t.attribute == "first_purchase" and day >= target:
                    continue
                when = datetime.combine(local_day, at, zone).astimezone(self.start.tzinfo)
                if self.start <= when < self.end:
                    by_when.setdefault(when, []).append(cid)
        self.notes.append("date triggers enroll each customer at the trigger's time on their day, in their timezone")
        return sorted(by_when.items())

    def _interaction_arrivals(self) -> list[tuple[datetime, list[int]]]:
        from .engine import _matches
        from .validate import event_rule

        t = self.c.trigger
        i = self.crm.db.tables["interactions"]
        span = self.end - self.start
        rule = self.crm.segments.compile(event_rule(t.kind or "", t.where)) if t.where else None
        by_when: dict[datetime, list[int]] = {}
        with self.crm.db.read() as conn:
            q = sa.select(
                i.c.customer_id, i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties
            ).where(
                i.c.workspace_id == self.crm.workspace,
                i.c.kind == t.kind,
                i.c.occurred_at >= self.start - span,
                i.c.occurred_at < self.start,
            )
            for r in conn.execute(q):
                if rule is None or _matches(rule, r, r.occurred_at):
                    by_when.setdefault(r.occurred_at + span, []).append(r.customer_id)
        self.notes.append(
            f"future {t.kind!r} interactions are not known: the last {self.days} days of them are replayed, "
            f"shifted {self.days} days forward"
        )
        return sorted(by_when.items())

    def _audience(self, conn: sa.Connection, restrict: Sequence[int] | None, when: datetime) -> set[int]:
        """The campaign's audience at ``when`` (dynamic segments and rules evaluated then)."""
        cu = self.crm.db.tables["customers"]
        q = sa.select(cu.c.id).where(cu.c.workspace_id == self.crm.workspace, cu.c.merged_into.is_(None))
        ids: set[int] = set()
        if restrict is None:
            ids = set(conn.scalars(q))
        else:
            for k in range(0, len(restrict), 5000):
                ids |= set(conn.scalars(q.where(cu.c.id.in_(restrict[k : k + 5000]))))
        aud = self.c.audience
        if aud is None or not ids:
            return ids
        if aud.segment:
            try:
                seg = self.crm.segments.get(aud.segment)
            except EcrmError:
                return set()
            if seg.rule is not None:
                ids &= rule_ids(self.crm, conn, seg.rule, sorted(ids), now=when)
            else:
                m = self.crm.db.tables["segment_members"]
                ids &= set(conn.scalars(sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)))
        if aud.rule and ids:
            ids &= rule_ids(self.crm, conn, aud.rule, sorted(ids), now=when)
        return ids

    def enroll(self, when: datetime, ids: Sequence[int]) -> None:
        c = self.c
        with self.crm.db.read() as conn:
            audience = self._audience(conn, sorted(set(ids)), when)
        cooldown = parse_duration(c.reentry.cooldown, "reentry.cooldown") if c.reentry.cooldown else None
        fresh: list[int] = []
        for cid in sorted(audience):
            s = self.state.get(cid)
            if s is not None:
                if s.status == "active" or c.reentry.policy == "never":
                    continue
                if cooldown is not None and s.entered_at > when - cooldown:
                    continue
            arm = assign.arm(c.key, cid, c.holdout, c.variants)
            entry = (s.entry + 1) if s is not None else 1
            held = arm == assign.HOLDOUT
            self.state[cid] = _State(arm, when, entry, "holdout" if held else "active", self.info.version)
            self.entries.append((cid, when, arm))
            if not held:
                fresh.append(cid)
        self._push(when, self.info.version, c.first, fresh)

    # -- the journey ---------------------------------------------------------------------------
    def run_all(self) -> None:
        arrivals = sorted(self.arrivals(), key=lambda x: x[0])
        k = 0
        while True:
            next_arrival = arrivals[k][0] if k < len(arrivals) else None
            next_step = self.queue[0][0] if self.queue else None
            if next_arrival is not None and (next_step is None or next_arrival <= next_step):
                if next_arrival >= self.end:
                    break
                self.enroll(*arrivals[k])
                k += 1
                continue
            if next_step is None or next_step >= self.end:
                break
            when, _seq, version, step_id, ids = heapq.heappop(self.queue)
            # everything due at the same time on the same step is one group, as a tick's claim would be
            while self.queue and self.queue[0][0] == when and self.queue[0][2:4] == (version, step_id):
                ids = ids + heapq.heappop(self.queue)[4]
            c = self.defs[version]
            if step_id.startswith(_AFTER):  # a wait ends (waits on events time out)
                self.goto(when, c, version, c.step(step_id.removeprefix(_AFTER)).next, ids)
            else:
                self.execute(when, c, version, step_id, ids)

    def execute(self, now: datetime, c: Campaign, version: int, step_id: str, ids: list[int]) -> None:
        try:
            step = c.step(step_id)
        except KeyError:
            self._end(ids, "failed")
            return
        self.reached[step.id] = self.reached.get(step.id, 0) + len(ids)
        if step.type == "send":
            self.send(now, c, version, step, ids)
        elif step.type == "wait":
            self.wait(now, version, step, ids)
        elif step.type == "branch":
            self.branch(now, c, version, step, ids)
        elif step.type in ("update", "action"):
            self.goto(now, c, version, step.next, ids)
        elif step.type == "exit":
            self._end(ids, "exited")

    def _end(self, ids: Iterable[int], status: str) -> None:
        for cid in ids:
            self.state[cid].status = status

    def goto(self, now: datetime, c: Campaign, version: int, target: str | None, ids: list[int]) -> None:
        if target is None:
            self._end(ids, "done")
            return
        step = c.step(target)
        if step.type == "wait":
            self.reached[step.id] = self.reached.get(step.id, 0) + len(ids)
            self.wait(now, version, step, ids)
        else:
            self._push(now, version, target, ids)

    def wait(self, now: datetime, version: int, step: Step, ids: list[int]) -> None:
        if step.until is not None:
            self._timezones(ids)
            by: dict[datetime, list[int]] = {}
            for cid in ids:
                by.setdefault(wait_end(step, now, self.tz.get(cid)), []).append(cid)
        else:
            by = {wait_end(step, now, None): ids}
        for when, part in by.items():
            self._push_after_wait(when, version, step, part)

    def _push_after_wait(self, when: datetime, version: int, step: Step, ids: list[int]) -> None:
        # the wait's end is a step of its own in the queue: at ``when`` the group moves on (waits on
        # events time out: the simulation cannot know who will produce the event)
        heapq.heappush(self.queue, (when, next(self.seq), version, f"{_AFTER}{step.id}", ids))

    def branch(self, now: datetime, c: Campaign, version: int, step: Step, ids: list[int]) -> None:
        left = set(ids)
        for case in step.cases:
            if not left:
                break
            if case.variant is not None:
                hit = {cid for cid in left if self.state[cid].arm == case.variant}
            elif case.split is not None:
                hit = split_hits(c, step, case, left)
            elif case.rule is not None:
                with self.crm.db.read() as conn:
                    hit = rule_ids(self.crm, conn, case.rule, sorted(left), now=now)
            else:
                hit = set()  # nobody is assumed to open or click
            self.goto(now, c, version, case.next, sorted(hit & left))
            left -= hit
        if left:
            self.goto(now, c, version, step.otherwise, sorted(left))

    def send(self, now: datetime, c: Campaign, version: int, step: Step, ids: list[int]) -> None:
        if c.window is not None:
            self._timezones(ids)
            later: dict[datetime, list[int]] = {}
            for cid in ids:
                opens = window_opens(c, now, self.tz.get(cid))
                if opens is not None:
                    later.setdefault(opens, []).append(cid)
            for when, part in later.items():
                self._push(when, version, step.id, part)
                self.window_delays[step.id] = self.window_delays.get(step.id, 0) + len(part)
                self.reached[step.id] -= len(part)  # counted when the window opens
            moved = {cid for part in later.values() for cid in part}
            ids = [cid for cid in ids if cid not in moved]
            if not ids:
                return
        channel = step.channel or ""
        skips = self._offer_skips(now, c, step, ids) if step.offer is not None else {}
        targets = [cid for cid in ids if cid not in skips]
        for cid, why in skips.items():
            self.messages.append(
                PlannedMessage(customer_id=cid, step=step.id, channel=channel, at=now, decision="skip", reason=why)
            )
        if targets:
            planned = self.planned.setdefault(channel, {})
            screening = self.crm.messages.screen(
                channel, targets, purpose=step.purpose or "marketing", at=now, planned=planned
            )
            for cid in targets:
                d = screening.decisions.get(cid)
                if d is None:
                    continue  # not a live customer (deleted or merged meanwhile): send_many skips them too
                self.messages.append(
                    PlannedMessage(
                        customer_id=cid,
                        step=step.id,
                        channel=channel,
                        at=now,
                        decision=d.decision,
                        reason=d.reason,
                        due_at=d.due_at,
                        scheduled=d.scheduled,
                    )
                )
                if d.decision == "queue":
                    planned.setdefault(cid, []).append(now)
                    if step.offer is not None:
                        per = self.offer_sent.setdefault(step.offer, {})
                        per[cid] = per.get(cid, 0) + 1
                        self.offer_total[step.offer] = self.offer_total.get(step.offer, 0) + 1
        self.goto(now, c, version, step.next, ids)

    def _offer_skips(self, now: datetime, c: Campaign, step: Step, ids: list[int]) -> dict[int, str]:
        code = step.offer or ""
        skips = self.offer_skips.setdefault(code, {})
        out: dict[int, str] = {}
        try:
            offer = self.crm.offers.get(code)
        except EcrmError:
            out = dict.fromkeys(ids, "offer_missing")
        else:
            if not offer.is_active_at(now):
                out = dict.fromkeys(ids, "offer_not_live")
            else:
                if offer.eligibility:
                    with self.crm.db.read() as conn:
                        ok = rule_ids(self.crm, conn, offer.eligibility, ids, now=now)
                    out.update({cid: "offer_not_eligible" for cid in ids if cid not in ok})
                ref = next((o for o in c.offers if o.code == code), None)
                if ref is not None and (ref.limit is not None or ref.budget is not None):
                    with self.crm.db.read() as conn:
                        counts, used = offer_usage(
                            self.crm, conn, self.info.id, code, ids, total_too=ref.budget is not None
                        )
                    if code not in self.offer_before and ref.budget is not None:
                        self.offer_before[code] = used
                    sim = self.offer_sent.get(code, {})
                    if ref.limit is not None:
                        for cid in ids:
                            if cid not in out and counts.get(cid, 0) + sim.get(cid, 0) >= ref.limit:
                                out[cid] = "offer_limit"
                    if ref.budget is not None:
                        left = max(ref.budget - used - self.offer_total.get(code, 0), 0)
                        for cid in sorted(cid for cid in ids if cid not in out):
                            if left > 0:
                                left -= 1
                            else:
                                out[cid] = "offer_budget"
                                self.offer_exhausted.setdefault(code, now)
        for why in out.values():
            skips[why] = skips.get(why, 0) + 1
        return out

    def _timezones(self, ids: Sequence[int]) -> None:
        need = [cid for cid in ids if cid not in self.tz]
        if not need:
            return
        cu = self.crm.db.tables["customers"]
        with self.crm.db.read() as conn:
            for k in range(0, len(need), 5000):
                self.tz.update(
                    conn.execute(sa.select(cu.c.id, cu.c.timezone).where(cu.c.id.in_(need[k : k + 5000]))).all()
                )
        for cid in need:
            self.tz.setdefault(cid, None)

    # -- the result --------------------------------------------------------------------------------
    def result(self) -> Simulation:
        # the ends of waits are queue items of their own: move them on when they come (see run)
        final: dict[str, int] = {}
        pending: dict[int, str] = {}
        for _when, _s, _v, step, ids in self.queue:
            for cid in ids:
                pending[cid] = step.removeprefix(_AFTER)
        for cid, s in self.state.items():
            if s.status == "active":
                key = f"active at {pending[cid]}" if cid in pending else "active"
            else:
                key = s.status
            final[key] = final.get(key, 0) + 1
        offers = []
        for ref in self.c.offers:
            try:
                valid_until = self.crm.offers.get(ref.code).valid_until
            except EcrmError:
                valid_until = None
            before = self.offer_before.get(ref.code)
            if before is None and ref.budget is not None:
                with self.crm.db.read() as conn:
                    before = offer_usage(self.crm, conn, self.info.id, ref.code, [])[1]
            offers.append(
                OfferBudget(
                    code=ref.code,
                    budget=ref.budget,
                    used_before=before or 0,
                    would_use=self.offer_total.get(ref.code, 0),
                    valid_until=valid_until,
                    exhausted_at=self.offer_exhausted.get(ref.code),
                    skipped=self.offer_skips.get(ref.code, {}),
                )
            )
        notes = list(self.notes)
        c = self.c
        if c.goal is not None:
            notes.append(f"nobody is assumed to reach the goal ({c.goal.kind}) during the simulation")
        if any(s.type == "wait" and s.event for s in c.steps):
            notes.append("waits on an event are assumed to time out (future interactions are not known)")
        if any(case.engaged for s in c.steps for case in s.cases):
            notes.append("engagement branches assume nobody opened or clicked")
        if any(s.type in ("update", "action") for s in c.steps):
            notes.append("update and action steps are counted, not performed")
        return Simulation(
            campaign=c.key,
            version=self.info.version,
            start=self.start,
            days=self.days,
            entries=tuple(self.entries),
            messages=tuple(self.messages),
            reached={k: v for k, v in self.reached.items() if v},
            window_delays=self.window_delays,
            final=final,
            offers=tuple(offers),
            notes=tuple(notes),
        )


def _span(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


def simulate(
    crm: CRM,
    key: str,
    *,
    days: int = 30,
    every: str | int = "1d",
    customer_ids: Iterable[int] | None = None,
) -> Simulation:
    """Simulate campaign ``key`` over the next ``days`` days (read-only; see the module's doc)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValidationError("days", days, "out of range", f"simulate 1 to {MAX_DAYS} days")
    span = parse_duration(every, "every")
    if span < timedelta(minutes=5) or span > timedelta(days=days):
        raise ValidationError("every", every, "out of range", "evaluate segments every 5 minutes to the whole period")
    if timedelta(days=days) / span > MAX_EVALUATIONS:
        raise ValidationError(
            "every",
            every,
            f"{int(timedelta(days=days) / span)} segment evaluations; at most {MAX_EVALUATIONS}",
            "evaluate less often (e.g. every: 1h) or simulate fewer days",
        )
    ids: list[int] | None = None
    if customer_ids is not None:
        ids = []
        for i, cid in enumerate(customer_ids):
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise ValidationError(f"customer_ids[{i}]", cid, "not a customer id", "pass whole numbers")
            ids.append(cid)
    sim = _Simulator(crm, key, days, span, ids)
    sim.load_existing()
    sim.run_all()
    return sim.result()
