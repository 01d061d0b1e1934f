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
    DeliveryResult,
    Message,
    Purpose,
)
from ...errors import Conflict, ValidationError
from ._sql import _Sql, _uids
from .records import _CHANNEL_ERROR, DispatchReport, MessageRecord, Outcome, _backoff, _Claimed, quiet_until
from .safety import _clean, _safe_result, _short
from .send import _Sending

log = logging.getLogger("ecrm.messages")

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

        One transaction, set-based: one SELECT of the due rows (``FOR UPDATE
        SKIP LOCKED`` on PostgreSQL: concurrent workers take disjoint
        batches; SQLite's ``BEGIN IMMEDIATE`` serialises claims), one read of
        the customers' consent, one UPDATE per channel taking the lease, one
        INSERT of the attempt log."""
        t, a = self.t("messages"), self.t("delivery_attempts")
        now = self.crm.now()
        with self.db.write() as conn:
            sql = _Sql(conn)
            ph, stamp = sql.ph, sql.ts(now)
            # Two reads, each in the order of the (status, next_attempt_at) index, so
            # neither sorts the queue: expired leases first (a crashed worker's
            # messages, normally none), then the queued messages that are due.
            mine = f"workspace_id = {ph}" + (f" AND channel = {ph}" if channel else "")
            scope: builtins.list[Any] = [self.workspace, *([channel] if channel else [])]
            lock = "" if sql.sqlite else " FOR UPDATE SKIP LOCKED"
            rows = sql.all(
                f"SELECT {_CLAIM_COLUMNS} FROM {sql.name(t)} WHERE status = 'sending' AND lease_until < {ph} "
                f"AND {mine} ORDER BY next_attempt_at, id LIMIT {int(n)}{lock}",
                (stamp, *scope),
            )
            if len(rows) < n:
                rows += sql.all(
                    f"SELECT {_CLAIM_COLUMNS} FROM {sql.name(t)} WHERE status = 'queued' AND next_attempt_at <= {ph} "
                    f"AND {mine} ORDER BY next_attempt_at, id LIMIT {int(n) - len(rows)}{lock}",
                    (stamp, *scope),
                )
            if not rows:
                return None
            # A message whose lease expired was being sent by a worker that
            # died: its attempt is "lost" (it may or may not have gone out;
            # the retry carries the same message id).
            stale = [r[0] for r in rows if r[9] == "sending"]
            if stale:
                totals["recovered"] += len(stale)
                among, param = sql.any_of("message_id", stale)
                sql.run(
                    f"UPDATE {sql.name(a)} SET status = 'lost', finished_at = {ph}, reason = {ph} "
                    f"WHERE {among} AND status = 'started'",
                    (stamp, "lease expired: the worker did not report back", param),
                )
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
                sql.many(
                    f"UPDATE {sql.name(t)} SET status = 'blocked', reason = {ph}, lease_until = NULL, "
                    f"next_attempt_at = NULL, updated_at = {ph} WHERE id = {ph}",
                    now_blocked,
                )
                totals["blocked"] += len(now_blocked)
            if not live:
                return []
            policies = {ch: self.crm.channels.policy(ch) for ch in by_channel}
            claimed: builtins.list[_Claimed] = []
            attempt_rows: builtins.list[tuple[Any, ...]] = []
            leased: dict[str, builtins.list[int]] = {}  # channel -> row ids (one lease per channel)
            read_json = sql.read_json
            metas: dict[str, Any] = {}
            for r, attempt_id in zip(live, _uids(len(live)), strict=True):
                number = r[10] + 1
                leased.setdefault(r[2], []).append(r[0])
                attempt_rows.append((r[0], attempt_id, number, stamp))
                c = customers[r[3]]
                claimed.append(
                    _Claimed(
                        message=Message(
                            id=r[1],
                            attempt_id=attempt_id,
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
                        timezone=c["timezone"] or policies[r[2]].default_timezone,
                        alone=(r[12] or "").startswith(_CHANNEL_ERROR),
                    )
                )
            # Set-based: the rows were read (and locked) in this transaction, so
            # attempts + 1 is the number each attempt row carries.
            for ch, row_ids in leased.items():
                lease = sql.ts(now + timedelta(seconds=policies[ch].lease))
                among, param = sql.any_of("id", row_ids)
                sql.run(
                    f"UPDATE {sql.name(t)} SET status = 'sending', attempts = attempts + 1, lease_until = {ph}, "
                    f"updated_at = {ph} WHERE {among}",
                    (lease, stamp, param),
                )
            sql.many(
                f"INSERT INTO {sql.name(a)} (message_id, attempt_id, number, status, started_at) "
                f"VALUES ({ph}, {ph}, {ph}, 'started', {ph})",
                attempt_rows,
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
            except Exception as exc:
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
        timeline: builtins.list[dict[str, Any]] = []
        suppress: builtins.list[tuple[str, str, str, str, str | None]] = []
        settle: dict[str, builtins.list[dict[str, Any]]] = {"sent": [], "retrying": [], "dead": [], "isolate": []}
        log_rows: builtins.list[dict[str, Any]] = []
        for item, given in results:
            res = _safe_result(given)
            m = item.message
            pol = self.crm.channels.policy(m.channel)
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
                {
                    "_attempt": m.attempt_id,
                    "_status": res.status,
                    "_code": _short(res.code, 100),
                    "_reason": _short(res.reason, 1000),
                    "_provider": _short(res.provider_id, 500),
                }
            )
            kind = {"sent": "message_sent", "retrying": "message_deferred", "dead": "message_failed"}[status]
            props: dict[str, Any] = {"message": m.id, "attempt": m.attempt, "purpose": m.purpose, "status": res.status}
            if item.template:
                props["template"] = item.template
            for k in ("code", "reason", "provider_id"):
                v = getattr(res, k)
                if v:
                    props[k] = _short(str(v), 500)
            timeline.append(
                {
                    "kind": kind,
                    "customer_id": m.customer_id,
                    "channel": m.channel,
                    "occurred_at": now,
                    "idempotency_key": f"attempt:{m.attempt_id}",
                    "properties": props,
                }
            )
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
            sql.many(
                f"UPDATE {sql.name(a)} SET status = {ph}, code = {ph}, reason = {ph}, provider_id = {ph}, "
                f"finished_at = {ph} WHERE attempt_id = {ph}",
                ((r["_status"], r["_code"], r["_reason"], r["_provider"], stamp, r["_attempt"]) for r in log_rows),
            )
            if suppress:
                self._suppress(conn, suppress)
            if timeline:
                self.crm.using(conn).interactions.track_many(timeline, create_missing=False, on_error="skip")
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
