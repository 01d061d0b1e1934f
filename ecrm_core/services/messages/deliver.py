"""Claiming and delivering: ``dispatch`` claims due messages under a lease, hands them to
their channels, and records every outcome; ``work`` loops; ``replay``/``cancel``."""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa

from ...batching import gc_paused
from ...channels import (
    Content,
    DeliveryPolicy,
    DeliveryResult,
    Message,
    Purpose,
)
from ...errors import Conflict, ValidationError
from ._sql import _attempt_id, _Sql
from .records import _CHANNEL_ERROR, DispatchReport, MessageRecord, Outcome, _backoff, _Claimed, quiet_until
from .safety import _clean, _safe_result, _short
from .send import _Sending
from .timeline import record_outcomes

log = logging.getLogger("ecrm.messages")

#: The reason of an attempt whose worker did not report back before its lease expired.
_LOST = "lease expired: the worker did not report back"

#: What a claim reads of each due message (``_claim`` indexes the row by these positions).
_CLAIM_COLUMNS = (
    "id, uid, channel, customer_id, address, purpose, template, content, meta, status, attempts, max_attempts, "
    "reason, transactional, workspace_id"
)


class _Delivering(_Sending):
    """Dispatch, the worker loop, dead letters."""

    # -- dispatch --------------------------------------------------------
    def dispatch(
        self,
        *,
        channel: str | None = None,
        limit: int | None = None,
        batch_size: int = 100,
        progress: Callable[[int], None] | None = None,
    ) -> DispatchReport:
        """Send every due message (of this workspace), in batches; return counts.

        Safe to run from several workers at once: messages are claimed
        under a lease.  Call it from a worker loop (``work``), cron, or a
        test.  Returns when nothing is due (or after ``limit`` messages).
        """
        self.ready()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise ValidationError("batch_size", batch_size, "out of range", "use 1..10000")
        totals = {"sent": 0, "retrying": 0, "dead": 0, "blocked": 0, "recovered": 0}
        done = 0
        while limit is None or done < limit:
            n = batch_size if limit is None else min(batch_size, limit - done)
            with gc_paused():
                claimed = self._claim(channel, n, totals)
                if claimed is None:
                    break
                done += len(claimed)
                if claimed:
                    self._deliver(claimed, totals)
            if progress is not None:
                progress(len(claimed))
        return DispatchReport(**totals)

    def _claim(self, channel: str | None, n: int, totals: dict[str, int]) -> builtins.list[_Claimed] | None:
        """Claim up to ``n`` due messages; ``None`` when nothing was due.

        One transaction, set-based, one write per message: expired leases
        first (a crashed worker's messages, normally none: read, their
        attempts logged ``lost``), then ONE ``UPDATE … WHERE id IN (SELECT
        … ORDER BY next_attempt_at, id LIMIT n) RETURNING`` that takes the
        lease of the due messages in the order of the ``(status,
        next_attempt_at)`` index (``FOR UPDATE SKIP LOCKED`` in the subquery
        on PostgreSQL: concurrent workers take disjoint batches; SQLite's
        ``BEGIN IMMEDIATE`` serialises claims); one read of the customers'
        consent.  The attempt is not written here: its id is derived from the
        message id and the attempt number (:func:`attempt_id`), the lease on
        the message row is the record of an attempt in flight, and the
        attempt's row is written once, with its outcome, when it settles."""
        t, a = self.t("messages"), self.t("delivery_attempts")
        now = self.crm.now()
        with self.db.write() as conn:
            sql = _Sql(conn)
            ph, stamp, table = sql.ph, sql.ts(now), sql.name(t)
            mine = f"workspace_id = {ph}" + (f" AND channel = {ph}" if channel else "")
            scope: builtins.list[Any] = [self.workspace, *([channel] if channel else [])]
            lock = "" if sql.sqlite else " FOR UPDATE SKIP LOCKED"
            policies = self.crm.channels
            names = [channel] if channel else builtins.list(self.crm.registry.channels)
            leases = {ch: policies.policy(ch).lease for ch in names}
            default = DeliveryPolicy().lease
            if len(set(leases.values())) <= 1:
                lease_sql, lease_params = ph, [sql.ts(now + timedelta(seconds=next(iter(leases.values()), default)))]
            else:  # one lease per channel, in the statement
                lease_sql = "CASE channel " + " ".join(f"WHEN {ph} THEN {ph}" for _ in leases) + f" ELSE {ph} END"
                lease_params = [v for ch, s in leases.items() for v in (ch, sql.ts(now + timedelta(seconds=s)))]
                lease_params.append(sql.ts(now + timedelta(seconds=default)))
            take = (
                f"UPDATE {table} SET status = 'sending', attempts = attempts + 1, lease_until = {lease_sql}, "
                f"updated_at = {ph} WHERE "
            )
            returned = [f"{c.strip()}" for c in f"{_CLAIM_COLUMNS}, next_attempt_at".split(",")]
            back = " RETURNING " + ", ".join(returned if sql.sqlite else (f"{table}.{c}" for c in returned))
            # A message whose lease expired was being sent by a worker that
            # died: its attempt is "lost" (it may or may not have gone out;
            # the retry carries the same message id).  Normally none.
            stale = sql.all(
                f"SELECT id, uid, attempts, updated_at FROM {table} WHERE status = 'sending' AND lease_until < {ph} "
                f"AND {mine} ORDER BY next_attempt_at, id LIMIT {int(n)}{lock}",
                (stamp, *scope),
            )
            rows: builtins.list[Any] = []
            if stale:
                totals["recovered"] += len(stale)
                sql.many(
                    f"INSERT INTO {sql.name(a)} (message_id, attempt_id, number, status, reason, started_at, "
                    f"finished_at) VALUES ({sql.marks(7)}) ON CONFLICT (attempt_id) DO NOTHING",
                    (
                        (r[0], _attempt_id(r[0], r[1], r[2]), r[2], "lost", _LOST, r[3], stamp)
                        for r in stale
                        if r[2] > 0
                    ),
                )
                among, param = sql.any_of("id", [r[0] for r in stale])
                rows += sql.all(
                    f"{take}{among} AND status = 'sending' AND lease_until < {ph}{back}",
                    (*lease_params, stamp, param, stamp),
                )
            if len(rows) < n:
                due = (
                    f"SELECT id FROM {table} WHERE status = 'queued' AND next_attempt_at <= {ph} "
                    f"AND {mine} ORDER BY next_attempt_at, id LIMIT {int(n) - len(rows)}{lock}"
                )
                if sql.sqlite:
                    rows += sql.all(
                        f"{take}id IN ({due}) AND status = 'queued'{back}", (*lease_params, stamp, stamp, *scope)
                    )
                else:
                    # PostgreSQL: the queue idiom, the locked rows in a CTE joined by the UPDATE
                    rows += sql.all(
                        f"WITH due AS ({due}) {take.replace(' WHERE ', ' FROM due WHERE ')}{table}.id = due.id{back}",
                        (stamp, *scope, *lease_params, stamp),
                    )
            if not rows:
                return None
            # RETURNING does not keep the subquery's order: the index's order again
            rows.sort(key=lambda r: (r[15] is None, 0 if r[15] is None else r[15], r[0]))
            # Consent and suppression may have changed since the decision.
            customers = self._customers(builtins.list({r[3] for r in rows}), single=False, conn=conn)
            by_channel: dict[str, builtins.list[Any]] = {}
            for r in rows:
                by_channel.setdefault(r[2], []).append(r)
            now_blocked: builtins.list[tuple[Any, ...]] = []
            live: builtins.list[Any] = []
            purposes = self.crm.registry.purposes
            for ch, group in by_channel.items():
                suppressed = self._suppressed(conn, ch, [r[4] for r in group if r[4]])
                for r in group:
                    c = customers.get(r[3])
                    purp = purposes.get(r[5]) or Purpose(name=r[5], transactional=bool(r[13]))
                    reason = "customer_gone" if c is None else self._block_reason(c, r[4], ch, purp, suppressed)
                    if reason:
                        now_blocked.append((reason, stamp, r[0]))
                    else:
                        live.append(r)
            if now_blocked:
                # not attempted after all: the claim's attempt is given back
                sql.many(
                    f"UPDATE {table} SET status = 'blocked', reason = {ph}, lease_until = NULL, "
                    f"next_attempt_at = NULL, attempts = attempts - 1, updated_at = {ph} WHERE id = {ph}",
                    now_blocked,
                )
                totals["blocked"] += len(now_blocked)
            if not live:
                return []
            claimed: builtins.list[_Claimed] = []
            read_json = sql.read_json
            metas: dict[str, Any] = {}
            default_tz = {ch: policies.policy(ch).default_timezone for ch in by_channel}
            for r in live:
                number = r[10]  # attempts + 1, as the UPDATE left it
                c = customers[r[3]]
                claimed.append(
                    _Claimed(
                        message=Message(
                            id=r[1],
                            attempt_id=_attempt_id(r[0], r[1], number),
                            attempt=number,
                            channel=r[2],
                            workspace=r[14],
                            customer_id=r[3],
                            to=r[4],
                            purpose=r[5],
                            content=Content.from_json(read_json(r[7]) or {}),
                            metadata=dict(sql.read_json_shared(r[8], metas) or {}),
                        ),
                        row_id=r[0],
                        max_attempts=r[11],
                        transactional=bool(r[13]),
                        template=r[6],
                        timezone=c["timezone"] or default_tz[r[2]],
                        alone=(r[12] or "").startswith(_CHANNEL_ERROR),
                        started_at=now,
                    )
                )
        return claimed

    def _deliver(self, claimed: builtins.list[_Claimed], totals: dict[str, int]) -> None:
        """Hand claimed messages to their channels, one ``send_many`` per channel.

        A ``send_many`` that raises (or answers the wrong shape) cannot say
        which message it choked on: each of its messages is deferred and
        retried at once *on its own* (a fresh attempt, that chunk's attempt
        not counted against ``max_attempts``), so one poison message fails
        alone and the others go out.  A message that raises on its own is
        deferred with the normal backoff, then dead-lettered.
        """
        groups: dict[tuple[str, int], builtins.list[_Claimed]] = {}
        for item in claimed:
            # a message whose previous send_many raised goes in a call of its own
            slot = item.row_id if item.alone else 0
            groups.setdefault((item.message.channel, slot), []).append(item)
        results: builtins.list[tuple[_Claimed, DeliveryResult]] = []
        isolate: set[int] = set()
        raised = 0
        for (name, _slot), items in groups.items():
            messages = [c.message for c in items]
            try:
                channel = self.crm.channels.get(name)
                out = channel.send_many(messages)
                if not isinstance(out, Sequence) or len(out) != len(messages):
                    raise TypeError(f"send_many returned {type(out).__name__} of the wrong length")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit, CancelledError...: the channel failed, not the host
                raised += 1
                if raised == 1:
                    log.exception(
                        "channel %s failed while sending %d message(s); they will be retried%s",
                        name,
                        len(messages),
                        " one by one" if len(messages) > 1 else "",
                    )
                reason = f"{_CHANNEL_ERROR}{type(exc).__name__}: {_clean(str(exc), 200)}"
                out = [DeliveryResult.deferred(reason)] * len(messages)
                if len(messages) > 1:
                    isolate.update(c.row_id for c in items)
            for item, res in zip(items, out, strict=True):
                if not isinstance(res, DeliveryResult):
                    log.error("channel %s returned %r instead of a DeliveryResult", name, type(res).__name__)
                    res = DeliveryResult.deferred("channel returned an invalid result")
                results.append((item, res))
        if raised > 1:
            log.error("%d send_many calls raised in this dispatch batch (the first is logged above)", raised)
        self._record_results(results, totals, isolate=isolate)

    def _record_results(
        self,
        results: Sequence[tuple[_Claimed, DeliveryResult]],
        totals: dict[str, int],
        *,
        isolate: Iterable[int] = (),
    ) -> None:
        """Settle each attempt.  Messages in ``isolate`` (row ids) were in a
        ``send_many`` that raised: they are queued again at once, with one
        more attempt allowed, and will be sent on their own."""
        t, a = self.t("messages"), self.t("delivery_attempts")
        now = self.crm.now()
        isolated = set(isolate)
        outcomes: builtins.list[Outcome] = []
        timeline: builtins.list[tuple[str, int, str, dict[str, Any]]] = []
        suppress: builtins.list[tuple[str, str, str, str, str | None]] = []
        settle: dict[str, builtins.list[dict[str, Any]]] = {"sent": [], "retrying": [], "dead": [], "isolate": []}
        log_rows: builtins.list[tuple[Any, ...]] = []
        policies: dict[str, DeliveryPolicy] = {}
        for item, given in results:
            res = _safe_result(given)
            m = item.message
            pol = policies.get(m.channel) or policies.setdefault(m.channel, self.crm.channels.policy(m.channel))
            next_at = None
            key: dict[str, Any] = {"_id": item.row_id, "_n": m.attempt}
            bucket: str | None = None
            if res.status == "accepted":
                status: Literal["sent", "retrying", "dead"] = "sent"
                key |= {"_provider": _short(res.provider_id, 500)}
            elif res.status == "deferred" and item.row_id in isolated:
                status, bucket = "retrying", "isolate"
                next_at = now
                key |= {"_next": now, "_reason": _short(res.reason, 500)}
            elif res.status == "deferred" and m.attempt < item.max_attempts:
                status = "retrying"
                next_at = now + timedelta(seconds=_backoff(pol, m.attempt, res.retry_after))
                if not item.transactional:
                    next_at = quiet_until(next_at, item.timezone, pol.quiet_start, pol.quiet_end) or next_at
                key |= {"_next": next_at, "_reason": _short(res.reason, 500)}
            else:
                status = "dead"
                why = res.reason if res.status == "rejected" else f"gave up after {m.attempt} attempt(s): {res.reason}"
                key |= {"_reason": _short(why, 500)}
                if res.status == "rejected" and res.suppress and m.to:
                    suppress.append((m.channel, m.to, "all", "hard_bounce", res.code or res.reason))
            settle[bucket or status].append(key)
            log_rows.append(
                (
                    item.row_id,
                    m.attempt_id,
                    m.attempt,
                    res.status,
                    _short(res.code, 100),
                    _short(res.reason, 1000),
                    _short(res.provider_id, 500),
                    item.started_at or now,
                )
            )
            kind = {"sent": "message_sent", "retrying": "message_deferred", "dead": "message_failed"}[status]
            props: dict[str, Any] = {"message": m.id, "attempt": m.attempt, "purpose": m.purpose, "status": res.status}
            if item.template:
                props["template"] = item.template
            for k in ("code", "reason", "provider_id"):
                v = getattr(res, k)
                if v:
                    props[k] = _short(str(v), 500)
            timeline.append((kind, m.customer_id, m.channel, props))
            outcomes.append(
                Outcome(
                    message=m.id,
                    attempt_id=m.attempt_id,
                    customer_id=m.customer_id,
                    channel=m.channel,
                    purpose=m.purpose,
                    workspace=m.workspace,
                    status=status,
                    result=res,
                    next_attempt_at=next_at,
                )
            )
            totals[status] += 1
        # Only the attempt that holds the lease may settle its message (a
        # worker whose lease expired reports too late: its attempt is logged,
        # the message stays with the newer attempt).
        with self.db.write() as conn:
            sql = _Sql(conn)
            ph, stamp, table = sql.ph, sql.ts(now), sql.name(t)
            mine = f"WHERE id = {ph} AND status = 'sending' AND attempts = {ph}"
            if settle["sent"]:
                sql.many(
                    f"UPDATE {table} SET status = 'sent', sent_at = {ph}, next_attempt_at = NULL, provider_id = {ph}, "
                    f"reason = NULL, lease_until = NULL, updated_at = {ph} {mine}",
                    ((stamp, k["_provider"], stamp, k["_id"], k["_n"]) for k in settle["sent"]),
                )
            if settle["retrying"]:
                sql.many(
                    f"UPDATE {table} SET status = 'queued', next_attempt_at = {ph}, reason = {ph}, "
                    f"lease_until = NULL, updated_at = {ph} {mine}",
                    ((sql.ts(k["_next"]), k["_reason"], stamp, k["_id"], k["_n"]) for k in settle["retrying"]),
                )
            if settle["isolate"]:
                sql.many(
                    f"UPDATE {table} SET status = 'queued', next_attempt_at = {ph}, reason = {ph}, "
                    f"max_attempts = max_attempts + 1, lease_until = NULL, updated_at = {ph} {mine}",
                    ((sql.ts(k["_next"]), k["_reason"], stamp, k["_id"], k["_n"]) for k in settle["isolate"]),
                )
            if settle["dead"]:
                sql.many(
                    f"UPDATE {table} SET status = 'dead', next_attempt_at = NULL, reason = {ph}, "
                    f"lease_until = NULL, updated_at = {ph} {mine}",
                    ((k["_reason"], stamp, k["_id"], k["_n"]) for k in settle["dead"]),
                )
            # The attempt's one row, with its outcome.  A worker reporting after its lease
            # expired finds the row the next claim logged as ``lost``: its outcome replaces it.
            # (a message deleted meanwhile, with its customer, has no log to write to)
            among, param = sql.any_of("id", [r[0] for r in log_rows])
            alive = {r[0] for r in sql.all(f"SELECT id FROM {table} WHERE {among}", (param,))}
            started: dict[Any, Any] = {}  # a claim's start, converted once
            sql.many(
                f"INSERT INTO {sql.name(a)} (message_id, attempt_id, number, status, code, reason, provider_id, "
                f"started_at, finished_at) VALUES ({sql.marks(8)}, {ph}) ON CONFLICT (attempt_id) DO UPDATE SET "
                "status = excluded.status, code = excluded.code, reason = excluded.reason, "
                "provider_id = excluded.provider_id, finished_at = excluded.finished_at",
                (
                    (*r[:7], started.get(r[7]) or started.setdefault(r[7], sql.ts(r[7])), stamp)
                    for r in log_rows
                    if r[0] in alive
                ),
            )
            if suppress:
                self._suppress(conn, suppress)
            if timeline:
                record_outcomes(self.crm.using(conn).interactions, timeline, now)
        self.crm.emit("ecrm_messages_dispatched", outcomes=outcomes)

    def work(
        self,
        *,
        stop: threading.Event | None = None,
        poll: float = 1.0,
        channel: str | None = None,
        batch_size: int = 100,
        on_batch: Callable[[DispatchReport], None] | None = None,
    ) -> None:
        """Dispatch forever (until ``stop`` is set): the worker loop."""
        stop = stop or threading.Event()
        while not stop.is_set():
            report = self.dispatch(channel=channel, batch_size=batch_size)
            if on_batch is not None and (report.attempted or report.blocked):
                on_batch(report)
            if not report.attempted and not report.blocked:
                stop.wait(poll)

    # -- dead letters ----------------------------------------------------
    def replay(self, message_id: str, *, actor: str | None = None) -> MessageRecord:
        """Re-queue a dead message for a fresh round of attempts."""
        self.ready()
        t = self.t("messages")
        now = self.crm.now()
        current = self.get(message_id)
        if current.status != "dead":
            raise Conflict(f"message {message_id!r} is {current.status}, not dead: only dead letters can be replayed")
        pol = self.crm.channels.policy(current.channel) if current.channel in self.crm.registry.channels else None
        budget = pol.max_attempts if pol else current.max_attempts
        with self.db.write() as conn:
            n = conn.execute(
                sa.update(t)
                .where(t.c.uid == message_id, t.c.workspace_id == self.workspace, t.c.status == "dead")
                .values(
                    status="queued",
                    reason=None,
                    next_attempt_at=now,
                    max_attempts=current.attempts + budget,
                    updated_at=now,
                )
            ).rowcount
            if not n:
                raise Conflict(f"message {message_id!r} changed while replaying it; look at it again")
            conn.execute(
                sa.insert(self.t("audit_log")).values(
                    workspace_id=self.workspace,
                    at=now,
                    action="replay",
                    entity="message",
                    entity_id=message_id,
                    actor=actor,
                    details={"previous_reason": current.reason, "attempts": current.attempts},
                )
            )
        return self.get(message_id)

    def cancel(self, message_id: str) -> MessageRecord:
        """Cancel a message that has not been sent yet (queued)."""
        self.ready()
        t = self.t("messages")
        with self.db.write() as conn:
            n = conn.execute(
                sa.update(t)
                .where(t.c.uid == message_id, t.c.workspace_id == self.workspace, t.c.status == "queued")
                .values(status="cancelled", next_attempt_at=None, updated_at=self.crm.now())
            ).rowcount
        if not n:
            current = self.get(message_id)
            raise Conflict(f"message {message_id!r} is {current.status}: only queued messages can be cancelled")
        return self.get(message_id)
