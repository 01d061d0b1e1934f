"""Claiming and delivering: ``dispatch`` claims due messages under a lease, hands them to
their channels, and records every outcome; ``work`` loops; ``replay``/``cancel``."""

from __future__ import annotations

import builtins
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa

from ...channels import (
    Content,
    DeliveryResult,
    Message,
    Purpose,
)
from ...errors import Conflict, ValidationError
from .records import _CHANNEL_ERROR, DispatchReport, MessageRecord, Outcome, _backoff, _Claimed, quiet_until
from .safety import _clean, _safe_result, _short
from .send import _Sending

log = logging.getLogger("ecrm.messages")


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
        """Claim up to ``n`` due messages; ``None`` when nothing was due."""
        t, a = self.t("messages"), self.t("delivery_attempts")
        now = self.crm.now()
        with self.db.write() as conn:
            due = sa.or_(
                sa.and_(t.c.status == "queued", t.c.next_attempt_at <= now),
                sa.and_(t.c.status == "sending", t.c.lease_until < now),
            )
            q = sa.select(t).where(t.c.workspace_id == self.workspace, due)
            if channel:
                q = q.where(t.c.channel == channel)
            q = q.order_by(t.c.next_attempt_at, t.c.id).limit(n)
            if not self.db.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            rows: builtins.list[Mapping[str, Any]] = [dict(r._mapping) for r in conn.execute(q)]
            if not rows:
                return None
            # A message whose lease expired was being sent by a worker that
            # died: its attempt is "lost" (it may or may not have gone out;
            # the retry carries the same message id).
            stale = [r["id"] for r in rows if r["status"] == "sending"]
            if stale:
                totals["recovered"] += len(stale)
                conn.execute(
                    sa.update(a)
                    .where(a.c.message_id.in_(stale), a.c.status == "started")
                    .values(status="lost", finished_at=now, reason="lease expired: the worker did not report back")
                )
            # Consent and suppression may have changed since the decision.
            customers = self._customers(builtins.list({r["customer_id"] for r in rows}), single=False, conn=conn)
            by_channel: dict[str, builtins.list[Mapping[str, Any]]] = {}
            for r in rows:
                by_channel.setdefault(r["channel"], []).append(r)
            now_blocked: builtins.list[dict[str, Any]] = []
            live: builtins.list[Mapping[str, Any]] = []
            for ch, group in by_channel.items():
                suppressed = self._suppressed(conn, ch, [r["address"] for r in group if r["address"]])
                for r in group:
                    c = customers.get(r["customer_id"])
                    purp = self.crm.registry.purposes.get(r["purpose"]) or Purpose(
                        name=r["purpose"], transactional=bool(r["transactional"])
                    )
                    reason = "customer_gone" if c is None else self._block_reason(c, r["address"], ch, purp, suppressed)
                    if reason:
                        now_blocked.append({"_id": r["id"], "_reason": reason})
                    else:
                        live.append(r)
            if now_blocked:
                conn.execute(
                    sa.update(t)
                    .where(t.c.id == sa.bindparam("_id"))
                    .values(
                        status="blocked",
                        reason=sa.bindparam("_reason"),
                        lease_until=None,
                        next_attempt_at=None,
                        updated_at=now,
                    ),
                    now_blocked,
                )
                totals["blocked"] += len(now_blocked)
            if not live:
                return []
            policies = {ch: self.crm.channels.policy(ch) for ch in by_channel}
            claimed: builtins.list[_Claimed] = []
            attempt_rows: builtins.list[dict[str, Any]] = []
            leased: dict[str, builtins.list[int]] = {}  # channel -> row ids (one lease per channel)
            for r in live:
                number = r["attempts"] + 1
                attempt_id = uuid.uuid4().hex
                leased.setdefault(r["channel"], []).append(r["id"])
                attempt_rows.append(
                    {
                        "message_id": r["id"],
                        "attempt_id": attempt_id,
                        "number": number,
                        "status": "started",
                        "started_at": now,
                    }
                )
                c = customers[r["customer_id"]]
                claimed.append(
                    _Claimed(
                        message=Message(
                            id=r["uid"],
                            attempt_id=attempt_id,
                            attempt=number,
                            channel=r["channel"],
                            workspace=r["workspace_id"],
                            customer_id=r["customer_id"],
                            to=r["address"],
                            purpose=r["purpose"],
                            content=Content.from_json(r["content"] or {}),
                            metadata=r["meta"] or {},
                        ),
                        row_id=r["id"],
                        max_attempts=r["max_attempts"],
                        transactional=bool(r["transactional"]),
                        template=r["template"],
                        timezone=c["timezone"] or policies[r["channel"]].default_timezone,
                        alone=(r["reason"] or "").startswith(_CHANNEL_ERROR),
                    )
                )
            # Set-based: the rows were read (and locked) in this transaction, so
            # attempts + 1 is the number each attempt row carries.
            for ch, row_ids in leased.items():
                lease = now + timedelta(seconds=policies[ch].lease)
                for i in range(0, len(row_ids), 500):
                    conn.execute(
                        sa.update(t)
                        .where(t.c.id.in_(row_ids[i : i + 500]))
                        .values(status="sending", attempts=t.c.attempts + 1, lease_until=lease, updated_at=now)
                    )
            conn.execute(sa.insert(a), attempt_rows)
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
        mine = sa.and_(t.c.id == sa.bindparam("_id"), t.c.status == "sending", t.c.attempts == sa.bindparam("_n"))
        with self.db.write() as conn:
            if settle["sent"]:
                conn.execute(
                    sa.update(t)
                    .where(mine)
                    .values(
                        status="sent",
                        sent_at=now,
                        next_attempt_at=None,
                        provider_id=sa.bindparam("_provider"),
                        reason=None,
                        lease_until=None,
                        updated_at=now,
                    ),
                    settle["sent"],
                )
            if settle["retrying"]:
                conn.execute(
                    sa.update(t)
                    .where(mine)
                    .values(
                        status="queued",
                        next_attempt_at=sa.bindparam("_next"),
                        reason=sa.bindparam("_reason"),
                        lease_until=None,
                        updated_at=now,
                    ),
                    settle["retrying"],
                )
            if settle["isolate"]:
                conn.execute(
                    sa.update(t)
                    .where(mine)
                    .values(
                        status="queued",
                        next_attempt_at=sa.bindparam("_next"),
                        reason=sa.bindparam("_reason"),
                        max_attempts=t.c.max_attempts + 1,
                        lease_until=None,
                        updated_at=now,
                    ),
                    settle["isolate"],
                )
            if settle["dead"]:
                conn.execute(
                    sa.update(t)
                    .where(mine)
                    .values(
                        status="dead",
                        next_attempt_at=None,
                        reason=sa.bindparam("_reason"),
                        lease_until=None,
                        updated_at=now,
                    ),
                    settle["dead"],
                )
            conn.execute(
                sa.update(a)
                .where(a.c.attempt_id == sa.bindparam("_attempt"))
                .values(
                    status=sa.bindparam("_status"),
                    code=sa.bindparam("_code"),
                    reason=sa.bindparam("_reason"),
                    provider_id=sa.bindparam("_provider"),
                    finished_at=now,
                ),
                log_rows,
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
