"""Executing journeys: the ``campaigns.steps`` job.

A tick

1. **claims** up to :data:`BATCH` due enrollments of live campaigns with a
   lease — one conditional ``UPDATE … WHERE id IN (SELECT … LIMIT n)
   RETURNING`` (under SQLite's write lock; ``FOR UPDATE SKIP LOCKED`` in the
   subquery on PostgreSQL), so two workers never hold the same enrollment;
2. **groups** them by (campaign, version, step, entry);
3. **executes** each group set-based — a send is ONE
   ``crm.messages.send_many`` with a dedupe key per (enrollment entry,
   step), so a send repeated after a crash is a duplicate in the outbox,
   never a second message;
4. **advances** each group with one UPDATE per target step, guarded by the
   lease (a worker whose lease expired changes nothing).

A crash between 3 and 4 leaves the enrollments leased; when the lease
expires another tick claims them again, ``send_many`` finds the dedupe keys
and the group advances.  Hence no message lost, none sent twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from ecrm_core.errors import EcrmError
from ecrm_core.registry import JobContext, JobResult
from ecrm_core.rules.sql import ids_clause

from .model import Campaign, Step, parse_duration
from .schema import CAMPAIGNS, ENROLLMENTS, VERSIONS
from .validate import ENGAGEMENT_KINDS, event_rule

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

log = logging.getLogger("ecrm.campaigns")

__all__ = [
    "BATCH",
    "LEASE",
    "dedupe_prefix",
    "first_step",
    "local_zone",
    "rule_ids",
    "run_steps",
    "wait_end",
    "window_opens",
]

#: Enrollments claimed per tick.
BATCH = 5000
#: Customers per ``send_many`` chunk (one decision transaction each) of a send step.
SEND_CHUNK = 2500
#: Seconds a claimed enrollment stays leased (a crashed worker's claims come back after it).
LEASE = 300.0


def dedupe_prefix(campaign_id: int, entry: int, step: str) -> str:
    """The outbox dedupe key of a step's message is ``<prefix><customer_id>``."""
    return f"cmp{campaign_id}.{entry}.{step}."


def rule_ids(
    crm: CRM,
    conn: sa.Connection,
    rule: str | Mapping[str, Any],
    restrict: Sequence[int] | None,
    *,
    now: datetime | None = None,
) -> set[int]:
    """The customers among ``restrict`` (``None``: the whole workspace) for whom ``rule`` holds at
    ``now`` (default: the CRM's clock) — one SQL statement per 5,000 ids."""
    from ecrm_core.rules import SqlContext

    compiled = crm.segments.compile(rule)
    s = crm.db.tables["segments"]
    seg_ids = {r.slug: r.id for r in conn.execute(sa.select(s.c.slug, s.c.id).where(s.c.workspace_id == crm.workspace))}
    out: set[int] = set()
    parts: list[Sequence[int] | None] = (
        [None] if restrict is None else [restrict[i : i + 5000] for i in range(0, len(restrict), 5000)]
    )
    for part in parts:
        ctx = SqlContext(
            tables=crm.db.tables,
            workspace=crm.workspace,
            now=now or crm.now(),
            dialect=conn.dialect.name,
            segment_ids=seg_ids,
            restrict=part,
            crm=crm,
        )
        out.update(conn.scalars(compiled.select(ctx)))
    return out


def local_zone(tz: str | None) -> ZoneInfo:
    """The customer's timezone (UTC when unset or unknown)."""
    try:
        return ZoneInfo(tz or "UTC")
    except Exception:
        return ZoneInfo("UTC")


def window_opens(c: Campaign, now: datetime, tz: str | None) -> datetime | None:
    """``None`` when ``now`` is inside the campaign's send window in the customer's timezone, else
    when the window next opens (UTC)."""
    w = c.window
    if w is None:
        return None
    start, end = time.fromisoformat(w.start), time.fromisoformat(w.end)
    days = [("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(d) for d in w.days] or list(range(7))
    local = now.astimezone(local_zone(tz))
    t = local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if inside and local.weekday() in days:
        return None
    for k in range(8):
        cand = datetime.combine(local.date() + timedelta(days=k), start, local.tzinfo)
        if cand > local and cand.weekday() in days:
            return cand.astimezone(now.tzinfo)
    return None  # pragma: no cover - some weekday within 8 days always matches


def wait_end(step: Step, now: datetime, tz: str | None) -> datetime:
    """When a wait entered at ``now`` ends (``until`` is the next such time in the customer's timezone)."""
    if step.until is not None:
        at = time.fromisoformat(step.until)
        local = now.astimezone(local_zone(tz))
        cand = datetime.combine(local.date(), at, local.tzinfo)
        if cand <= local:
            cand = datetime.combine(local.date() + timedelta(days=1), at, local.tzinfo)
        return cand.astimezone(now.tzinfo)
    span = parse_duration(step.duration or step.timeout, f"steps.{step.id}")
    return now + max(span, timedelta(0))


def _read_ts(value: Any) -> datetime | None:
    """A datetime column's value as the driver returns it (SQLite: text), as an aware UTC datetime."""
    if value is None:
        return None
    at: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class _Claim:
    """One claimed enrollment (what a step reads of it; its times parsed when read)."""

    __slots__ = ("_entered", "_timeout", "arm", "campaign_id", "customer_id", "entry", "id", "step", "version")

    def __init__(self, row: Sequence[Any]) -> None:
        (
            self.id,
            self.campaign_id,
            self.customer_id,
            self.version,
            self.entry,
            self.arm,
            self.step,
            self._timeout,
            self._entered,
        ) = row

    @property
    def timeout_at(self) -> datetime | None:
        return _read_ts(self._timeout)

    @property
    def entered_at(self) -> datetime:
        at = _read_ts(self._entered)
        assert at is not None
        return at


class _Group:
    def __init__(self, campaign_id: int, version: int, step: str, entry: int) -> None:
        self.campaign_id, self.version, self.step, self.entry = campaign_id, version, step, entry
        self.rows: list[Any] = []

    @property
    def customers(self) -> list[int]:
        return [r.customer_id for r in self.rows]


class Runner:
    """One tick's work for one workspace."""

    def __init__(self, crm: CRM, owner: str | None = None) -> None:
        self.crm = crm
        self.owner = owner or uuid.uuid4().hex[:16]
        self.et = crm.db.tables[ENROLLMENTS]
        self.now = crm.now()
        self.customer_of: dict[int, int] = {}
        self.moved = 0  # enrollments moved to a step that is due at once
        #: Set by :func:`first_step`: the enrollments are not rows yet, their moves are collected here
        #: (by customer id) and written once, by the enrollment's INSERT, instead of UPDATEs.
        self.pending: dict[int, dict[str, Any]] | None = None

    # -- claim ----------------------------------------------------------------
    def claim(self, limit: int | None = None) -> list[Any]:
        limit = limit or BATCH
        et, ct = self.et, self.crm.db.tables[CAMPAIGNS]
        now = self.now
        live = sa.select(ct.c.id).where(ct.c.workspace_id == self.crm.workspace, ct.c.status == "live")
        due = (
            sa.select(et.c.id)
            .where(
                et.c.workspace_id == self.crm.workspace,
                et.c.status == "active",
                et.c.due_at <= now,
                sa.or_(et.c.lease_until.is_(None), et.c.lease_until < now),
                et.c.campaign_id.in_(live),
            )
            .order_by(et.c.due_at)
            .limit(limit)
        )
        with self.crm.db.write() as conn:
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True, of=et)
            stmt = (
                sa.update(et)
                .where(
                    et.c.id.in_(due.scalar_subquery()),
                    et.c.status == "active",
                    sa.or_(et.c.lease_until.is_(None), et.c.lease_until < now),
                )  # re-checked on the row
                .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=LEASE))
                .returning(
                    et.c.id,
                    et.c.campaign_id,
                    et.c.customer_id,
                    et.c.version,
                    et.c.entry,
                    et.c.arm,
                    et.c.step,
                    # as stored: read when a step needs them (a send step never does)
                    sa.type_coerce(et.c.timeout_at, sa.types.NullType()),
                    sa.type_coerce(et.c.entered_at, sa.types.NullType()),
                )
            )
            return [_Claim(r) for r in conn.execute(stmt).all()]

    # -- the tick -------------------------------------------------------------------
    def run(self, limit: int | None = None) -> JobResult:
        limit = limit or BATCH
        rows = self.claim(limit)
        if not rows:
            return JobResult(done=0)
        groups: dict[tuple[int, int, str, int], _Group] = {}
        self.customer_of = {r.id: r.customer_id for r in rows}
        for r in rows:
            key = (r.campaign_id, r.version, r.step, r.entry)
            groups.setdefault(key, _Group(*key)).rows.append(r)
        defs = self._definitions({(g.campaign_id, g.version) for g in groups.values()})
        sent = 0
        for g in groups.values():
            c, ckey = defs[(g.campaign_id, g.version)]
            try:
                sent += self._execute(c, g)
            except Exception as exc:  # one bad group never stops the others; its lease expires, it is retried
                log.exception("campaign %s step %s failed for %d customers", ckey, g.step, len(g.rows))
                self._release(g, reason=f"{type(exc).__name__}: {exc}"[:500])
        return JobResult(
            done=len(rows),
            more=len(rows) >= limit or self.moved > 0,
            message=f"{len(rows)} step(s) in {len(groups)} group(s), {sent} message(s) queued",
        )

    def _definitions(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], tuple[Campaign, str]]:
        vt, ct = self.crm.db.tables[VERSIONS], self.crm.db.tables[CAMPAIGNS]
        out = {}
        with self.crm.db.read() as conn:
            for cid, version in keys:
                r = conn.execute(
                    sa.select(vt.c.definition, ct.c.key)
                    .join(ct, ct.c.id == vt.c.campaign_id)
                    .where(vt.c.campaign_id == cid, vt.c.version == version)
                ).one()
                out[(cid, version)] = (Campaign.from_dict(r.definition), r.key)
        return out

    # -- moving enrollments -----------------------------------------------------------
    def _ids(self, g: _Group, customers: Iterable[int] | None = None) -> list[int]:
        if customers is None:
            return [r.id for r in g.rows]
        want = set(customers)
        return [r.id for r in g.rows if r.customer_id in want]

    def _update(self, ids: Sequence[int], **values: Any) -> None:
        if not ids:
            return
        et = self.et
        values.setdefault("lease_owner", None)
        values.setdefault("lease_until", None)
        values["updated_at"] = self.now
        if self.pending is not None:
            for i in ids:
                self.pending.setdefault(i, {}).update(values)
            return
        with self.crm.db.write() as conn:
            for i in range(0, len(ids), 5000):
                conn.execute(
                    sa.update(et)
                    .where(
                        ids_clause(et.c.id, list(ids[i : i + 5000]), conn.dialect.name), et.c.lease_owner == self.owner
                    )
                    .values(**values)
                )

    def goto(self, c: Campaign, ids: Sequence[int], target: str | None, *, reason: str | None = None) -> None:
        """Move enrollments to ``target`` (due now; a wait step: due when the wait ends), or end
        their journey when ``target`` is None."""
        if not ids:
            return
        if target is None:
            self._update(
                ids, status="done", step=None, due_at=None, timeout_at=None, finished_at=self.now, reason=reason
            )
            return
        step = c.step(target)
        if step.type != "wait":
            self._update(ids, step=target, due_at=self.now, timeout_at=None, reason=reason)
            self.moved += len(ids)
            return
        for when, part in self._wait_ends(step, ids).items():
            self._update(part, step=target, due_at=when, timeout_at=when, reason=reason)

    def _wait_ends(self, step: Step, ids: Sequence[int]) -> dict[datetime, list[int]]:
        """When a wait entered now ends, for each enrollment (``until`` is in the customer's timezone)."""
        by_when: dict[datetime, list[int]] = {}
        if step.until is not None:
            tzs = self._timezones([self.customer_of[i] for i in ids])
            for i in ids:
                by_when.setdefault(wait_end(step, self.now, tzs.get(self.customer_of[i])), []).append(i)
        elif ids:
            by_when[wait_end(step, self.now, None)] = list(ids)
        return by_when

    def end(self, ids: Sequence[int], status: str, reason: str | None) -> None:
        self._update(ids, status=status, step=None, due_at=None, timeout_at=None, finished_at=self.now, reason=reason)

    def _release(self, g: _Group, reason: str) -> None:
        # Keep the lease (the group is retried when it expires: backoff) but record why.
        with self.crm.db.write() as conn:
            conn.execute(
                sa.update(self.et)
                .where(self.et.c.id.in_(self._ids(g)), self.et.c.lease_owner == self.owner)
                .values(reason=reason, updated_at=self.now)
            )

    # -- steps -----------------------------------------------------------------------------
    def _execute(self, c: Campaign, g: _Group) -> int:
        try:
            step = c.step(g.step)
        except KeyError:
            self.end(self._ids(g), "failed", f"step {g.step!r} not in version {g.version}")
            return 0
        if c.goal is not None and c.goal.exit:
            converted = self.converted(c, g.rows)
            if converted:
                self.end(self._ids(g, converted), "converted", "goal reached")
                g.rows = [r for r in g.rows if r.customer_id not in converted]
                if not g.rows:
                    return 0
        if step.type == "send":
            return self._send(c, step, g)
        if step.type == "wait":
            self._wait(c, step, g)
        elif step.type == "branch":
            self._branch(c, step, g)
        elif step.type == "update":
            self._update_attribute(c, step, g)
        elif step.type == "action":
            from .plugin import call_action

            call_action(self.crm, step.name or "", dict(step.args or {}), g.customers, c.key, step.id)
            self.goto(c, self._ids(g), step.next)
        elif step.type == "exit":
            self.end(self._ids(g), "exited", f"exit step {step.id}")
        return 0

    def _timezones(self, customers: Sequence[int]) -> dict[int, str | None]:
        cu = self.crm.db.tables["customers"]
        out: dict[int, str | None] = {}
        with self.crm.db.read() as conn:
            for i in range(0, len(customers), 5000):
                out.update(
                    conn.execute(
                        sa.select(cu.c.id, cu.c.timezone).where(
                            ids_clause(cu.c.id, list(customers[i : i + 5000]), conn.dialect.name)
                        )
                    ).all()
                )
        return out

    def _outside_window(self, c: Campaign, g: _Group) -> dict[datetime, list[int]]:
        """Enrollments whose local time is outside the send window, by when the window next opens."""
        if c.window is None:
            return {}
        tzs = self._timezones(g.customers)
        later: dict[datetime, list[int]] = {}
        for r in g.rows:
            opens = window_opens(c, self.now, tzs.get(r.customer_id))
            if opens is not None:
                later.setdefault(opens, []).append(r.id)
        return later

    def _send(self, c: Campaign, step: Step, g: _Group) -> int:
        for when, ids in self._outside_window(c, g).items():
            self._update(ids, due_at=when)
            moved = set(ids)
            g.rows = [r for r in g.rows if r.id not in moved]
        if not g.rows:
            return 0
        skip: dict[int, str] = {}
        if step.offer is not None:
            skip.update(self._offer_skips(c, step, g))
        targets = [cid for cid in g.customers if cid not in skip]
        prefix = dedupe_prefix(g.campaign_id, g.entry, step.id)
        failed: dict[int, str] = {}
        queued = 0
        if targets:
            queued, failed = self._send_many(c, step, targets, prefix)
        ok = [r.id for r in g.rows if r.customer_id not in failed]
        if skip:
            by_reason: dict[str, list[int]] = {}
            for r in g.rows:
                if r.customer_id in skip:
                    by_reason.setdefault(skip[r.customer_id], []).append(r.id)
            for why, ids in by_reason.items():
                self.goto(c, ids, step.next, reason=why)
            ok = [i for i in ok if i not in {x for v in by_reason.values() for x in v}]
        self.goto(c, ok, step.next)
        if failed:
            for r in g.rows:
                if r.customer_id in failed:
                    self.end([r.id], "failed", failed[r.customer_id][:500])
        return queued

    def _send_many(self, c: Campaign, step: Step, targets: list[int], prefix: str) -> tuple[int, dict[int, str]]:
        """One ``send_many`` for the group; if it raises, each customer alone (the bad ones are named)."""
        kw: dict[str, Any] = {
            "purpose": step.purpose or "marketing",
            "offer": step.offer,
            "context": dict(step.context) if step.context else None,
            "metadata": {"campaign": c.key, "step": step.id},
        }
        failed: dict[int, str] = {}
        try:
            report = self.crm.messages.send_many(
                step.channel or "",
                step.template,
                customer_ids=targets,
                dedupe_key=prefix + "{customer_id}",
                chunk_size=SEND_CHUNK,
                **kw,
            )
        except EcrmError:
            queued = 0
            for cid in targets:
                try:
                    r = self.crm.messages.send_many(
                        step.channel or "", step.template, customer_ids=[cid], dedupe_key=prefix + "{customer_id}", **kw
                    )
                    queued += r.queued
                except EcrmError as exc:
                    failed[cid] = f"{type(exc).__name__}: {exc}"
            return queued, failed
        for f in getattr(report, "failures", ()):  # the pipeline's per-customer failures (SendReport.failures)
            failed[f.customer_id] = f"{f.reason}: {f.detail}"
        counts: Any = getattr(report, "failed", None) or {}  # SendReport.failed: failures by reason
        if sum(counts.values()) > len(failed):
            # More failed than the report lists: a customer whose message could not be made has no
            # message under its dedupe key (policy blocks and duplicates do), so the outbox names them.
            failed.update(
                dict.fromkeys(
                    self._without_message(targets, prefix),
                    "the message could not be made (see the customer's message_blocked interaction)",
                )
            )
        return report.queued, failed

    def _without_message(self, targets: Sequence[int], prefix: str) -> set[int]:
        m = self.crm.db.tables["messages"]
        have: set[str] = set()
        keys = [f"{prefix}{cid}" for cid in targets]
        with self.crm.db.read() as conn:
            for i in range(0, len(keys), 500):
                have.update(
                    conn.scalars(
                        sa.select(m.c.dedupe_key).where(
                            m.c.workspace_id == self.crm.workspace, m.c.dedupe_key.in_(keys[i : i + 500])
                        )
                    )
                )
        return {cid for cid, key in zip(targets, keys, strict=True) if key not in have}

    def _offer_skips(self, c: Campaign, step: Step, g: _Group) -> dict[int, str]:
        """Customers who may not get the step's offer: not eligible now, or over the campaign's limit."""
        out: dict[int, str] = {}
        try:
            offer = self.crm.offers.get(step.offer or "")
        except EcrmError:
            return {cid: "offer_missing" for cid in g.customers}
        if (
            offer.status != "active"
            or (offer.valid_until is not None and offer.valid_until <= self.now)
            or (offer.valid_from is not None and offer.valid_from > self.now)
        ):
            return {cid: "offer_not_live" for cid in g.customers}
        if offer.eligibility:
            with self.crm.db.read() as conn:
                ok = rule_ids(self.crm, conn, _tree_text(self.crm, offer.eligibility), g.customers)
            out.update({cid: "offer_not_eligible" for cid in g.customers if cid not in ok})
        ref = next((o for o in c.offers if o.code == step.offer), None)
        if ref is not None and (ref.limit is not None or ref.budget is not None):
            # What this campaign already sent with this offer (this step's own message of this entry does
            # not count, so a repeated tick is not refused).
            mine = dedupe_prefix(g.campaign_id, g.entry, step.id)
            with self.crm.db.read() as conn:
                counts, used = offer_usage(
                    self.crm, conn, g.campaign_id, offer.code, g.customers, mine, total_too=ref.budget is not None
                )
            if ref.limit is not None:
                out.update({cid: "offer_limit" for cid, n in counts.items() if n >= ref.limit and cid not in out})
            if ref.budget is not None:
                left = max(ref.budget - used, 0)
                for cid in sorted(cid for cid in g.customers if cid not in out):
                    if left > 0:
                        left -= 1
                    else:
                        out[cid] = "offer_budget"
        return out

    def _wait(self, c: Campaign, step: Step, g: _Group) -> None:
        first = [r.id for r in g.rows if r.timeout_at is None]  # entered the wait from outside a tick
        due = [r for r in g.rows if r.timeout_at is not None]
        for when, ids in self._wait_ends(step, first).items():
            self._update(ids, due_at=when, timeout_at=when)
        if not due:
            return
        if step.event is None:
            self.goto(c, [r.id for r in due], step.next)
            return
        # Woken by an interaction of the kind (timeout not reached yet), or timed out: did the event come
        # since the wait began?  (Checked here, not trusted from the hook: a missed hook is caught at the timeout.)
        span = parse_duration(step.timeout, f"steps.{step.id}.timeout")
        since = {r.customer_id: r.timeout_at - span for r in due}
        came = self.happened(step.event, step.where, since)
        self.goto(c, [r.id for r in due if r.customer_id in came], step.on_event)
        timed_out = [r.id for r in due if r.customer_id not in came and r.timeout_at <= self.now]
        self.goto(c, timed_out, step.next)
        still: dict[datetime, list[int]] = {}
        for r in due:
            if r.customer_id not in came and r.timeout_at > self.now:
                still.setdefault(r.timeout_at, []).append(r.id)
        for when, ids in still.items():  # a wake-up by a non-matching event: back to waiting
            self._update(ids, due_at=when)

    def happened(self, kind: str, where: str | None, since: Mapping[int, datetime]) -> set[int]:
        """Customers with an interaction of ``kind`` (matching ``where``) at or after their ``since``."""
        if not since:
            return set()
        i = self.crm.db.tables["interactions"]
        rule = self.crm.segments.compile(event_rule(kind, where)) if where else None
        out: set[int] = set()
        ids = sorted(since)
        with self.crm.db.read() as conn:
            for k in range(0, len(ids), 5000):
                part = ids[k : k + 5000]
                q = sa.select(
                    i.c.customer_id, i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties
                ).where(
                    i.c.workspace_id == self.crm.workspace,
                    i.c.kind == kind,
                    i.c.customer_id.in_(part),
                    i.c.occurred_at >= min(since[c] for c in part),
                    i.c.occurred_at <= self.now,  # a future-stamped interaction has not happened yet
                )
                for row in conn.execute(q):
                    if row.customer_id in out or row.occurred_at < since[row.customer_id]:
                        continue
                    if rule is None or _matches(rule, row, self.now):
                        out.add(row.customer_id)
        return out

    def converted(self, c: Campaign, rows: Sequence[Any]) -> set[int]:
        assert c.goal is not None
        within = parse_duration(c.goal.within, "goal.within")
        since = {r.customer_id: r.entered_at for r in rows if r.entered_at + within >= self.now}
        return self.happened(c.goal.kind, c.goal.where, since)

    def _branch(self, c: Campaign, step: Step, g: _Group) -> None:
        left = {r.customer_id: r for r in g.rows}
        for case in step.cases:
            if not left:
                break
            ids = sorted(left)
            if case.variant is not None:
                hit = {cid for cid in ids if left[cid].arm == case.variant}
            elif case.split is not None:
                hit = split_hits(c, step, case, ids)
            elif case.rule is not None:
                with self.crm.db.read() as conn:
                    hit = rule_ids(self.crm, conn, case.rule, ids)
            else:
                hit = self.engaged(g.campaign_id, g.entry, case.engaged or "", ids)
            self.goto(c, [left[cid].id for cid in ids if cid in hit], case.next)
            for cid in hit:
                left.pop(cid, None)
        if left:
            self.goto(c, [r.id for r in left.values()], step.otherwise)

    def engaged(self, campaign_id: int, entry: int, send_step: str, customers: Sequence[int]) -> set[int]:
        """Customers who opened or clicked the message of ``send_step`` (this entry)."""
        m, i = self.crm.db.tables["messages"], self.crm.db.tables["interactions"]
        prefix = dedupe_prefix(campaign_id, entry, send_step)
        with self.crm.db.read() as conn:
            uids = dict(
                conn.execute(
                    sa.select(m.c.uid, m.c.customer_id).where(
                        m.c.workspace_id == self.crm.workspace,
                        m.c.dedupe_key.in_([f"{prefix}{cid}" for cid in customers]),
                    )
                ).all()
            )
            if not uids:
                return set()
            kinds = [k for k in ENGAGEMENT_KINDS if k in self.crm.registry.interaction_kinds]
            q = sa.select(i.c.customer_id, i.c.properties).where(
                i.c.workspace_id == self.crm.workspace,
                i.c.kind.in_(kinds),
                i.c.customer_id.in_(sorted(set(uids.values()))),
            )
            return {cid for cid, props in conn.execute(q) if (props or {}).get("message") in uids}

    def _update_attribute(self, c: Campaign, step: Step, g: _Group) -> None:
        if step.segment is not None:  # a static segment: one set-based change for the group
            if step.remove:
                self.crm.segments.remove(step.segment, g.customers)
            else:
                self.crm.segments.add(step.segment, g.customers)
            self.goto(c, self._ids(g), step.next)
            return
        name = (step.attribute or "").removeprefix("attributes.")
        failed: dict[int, str] = {}
        for cid in g.customers:  # the core has no set-based attribute write; bounded by the batch
            try:
                current = self.crm.customers.get(cid)
                attrs = dict(current.attributes)
                attrs[name] = step.value
                self.crm.customers.update(cid, attributes=attrs)
            except EcrmError as exc:
                failed[cid] = f"{type(exc).__name__}: {exc}"
        self.goto(c, [r.id for r in g.rows if r.customer_id not in failed], step.next)
        for r in g.rows:
            if r.customer_id in failed:
                self.end([r.id], "failed", failed[r.customer_id][:500])


def split_hits(c: Campaign, step: Step, case: Any, ids: Iterable[int]) -> set[int]:
    """The customers among ``ids`` that take ``case`` (a ``split`` case) of branch ``step``."""
    from .assign import split

    percents = [k.split or 0.0 for k in step.cases]
    index = step.cases.index(case)
    return {cid for cid in ids if split(c.key, step.id, cid, percents) == index}


def offer_usage(
    crm: CRM,
    conn: sa.Connection,
    campaign_id: int,
    code: str,
    customers: Sequence[int],
    exclude: str = "\x00",
    *,
    total_too: bool = True,
) -> tuple[dict[int, int], int]:
    """Messages the campaign made with offer ``code`` (not blocked or cancelled; the customers' own
    ``<exclude><customer id>`` left out): per customer among ``customers``, and in all (without ``total_too``
    only the customers' own messages are read, and the total is theirs)."""
    m = crm.db.tables["messages"]
    q = sa.select(m.c.customer_id, m.c.meta, m.c.dedupe_key).where(
        m.c.workspace_id == crm.workspace,
        m.c.dedupe_key.like(f"cmp{campaign_id}.%"),
        m.c.status.notin_(("blocked", "cancelled")),
    )
    if not total_too:  # the per-customer counts only: read just these customers' messages
        q = q.where(m.c.customer_id.in_(sorted(set(customers))))
    want = set(customers)
    counts: dict[int, int] = {}
    total = 0
    for cid, meta, key in conn.execute(q):
        if (meta or {}).get("offer") != code or (cid in want and key == f"{exclude}{cid}"):
            continue  # another offer, or the group's own message of this step (a repeated tick)
        total += 1
        if cid in want:
            counts[cid] = counts.get(cid, 0) + 1
    return counts, total


def _tree_text(crm: CRM, tree: Any) -> str:
    from ecrm_core.rules import to_text

    return to_text(tree)


def _matches(rule: Any, row: Any, now: datetime) -> bool:
    """Whether one interaction row satisfies an ``event_rule`` (its filter), in memory."""
    from ecrm_core.rules import EvalContext

    return bool(rule.evaluate(EvalContext(customer=None, interactions=[row], now=now)))


def first_step(
    crm: CRM, c: Campaign, campaign_id: int, version: int, arms: Mapping[int, str], now: datetime
) -> dict[int, dict[str, Any]] | None:
    """Run a journey's first step for customers entering it now, before their enrollment rows exist.

    Called by the enrollment with ``crm`` on its own transaction (``crm.using(conn)``): the step's
    messages go to the outbox in that transaction, and what the step did to each enrollment (done,
    the next step, a wait's end, outside the send window, failed with the reason) is returned by
    customer id, to be written once by the enrollment's INSERT -- instead of an INSERT, a claim and
    an UPDATE per customer.  Exactly what a tick does for a claimed group (the same
    :meth:`Runner._execute`), so crash safety is the transaction's: the enrollments and their
    messages commit together or not at all.

    Only for a ``send`` first step whose channel is registered in this process (a process without
    the channel leaves the step to ``campaigns.steps``, as any other first step); ``None`` then, or
    when the step raised (the enrollments start at the step, due now, and a tick retries it; a
    message already queued is found by its dedupe key)."""
    step = c.step(c.first)
    if step.type != "send" or (step.channel or "") not in crm.registry.channels:
        return None
    runner = Runner(crm)
    runner.now = now
    runner.pending = {}
    runner.customer_of = {cid: cid for cid in arms}
    g = _Group(campaign_id, version, c.first, 1)
    g.rows = [_Claim((cid, campaign_id, cid, version, 1, arm, c.first, None, now)) for cid, arm in arms.items()]
    try:
        runner._execute(c, g)
    except Exception:  # the tick's rule: the group is retried later, by a tick
        log.exception("campaign %s: first step %s failed at entry for %d customers", c.key, step.id, len(arms))
        return None
    return runner.pending


def run_steps(ctx: JobContext) -> JobResult:
    """The ``campaigns.steps`` job: one claimed batch of due steps."""
    return Runner(ctx.crm).run()
