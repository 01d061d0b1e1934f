"""Deciding and planning: ``send``/``send_many`` check consent, suppression, caps and quiet
hours, render each chunk with one ``render_many``, and write the outbox; a customer whose
message cannot be made is recorded, never allowed to stop the others."""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from attrs import frozen

from ...batching import gc_paused
from ...channels import (
    Channel,
    Content,
    DeliveryPolicy,
    Purpose,
    TemplateError,
)
from ...errors import EcrmError, ValidationError
from ...rules.sql import ids_clause
from ._sql import _Sql, _uids
from .records import (
    _COUNTED,
    _CUSTOMER_COLUMNS,
    MAX_LISTED_FAILURES,
    Failure,
    MessageRecord,
    SendReport,
    _plain,
    _plain_values,
    _statuses,
    plain_customer,
    quiet_until,
)
from .safety import _address_problem, _clean, _content_problem, _short
from .suppression import _Suppressions

log = logging.getLogger("ecrm.messages")

#: The outbox columns ``send_many`` writes, in the order of its rows (the others are NULL).
_OUTBOX_COLUMNS = (
    "workspace_id, uid, channel, customer_id, address, purpose, template, content, meta, status, reason, "
    "attempts, max_attempts, next_attempt_at, dedupe_key, transactional, created_at, updated_at"
)


@frozen
class _Fault:
    reason: str
    error: str
    detail: str
    plugin: bool


class _Faults:
    """The per-customer faults of one send: classified, counted, logged once.

    An :class:`~ecrm_core.errors.EcrmError` (a ``TemplateError``, a
    ``ValidationError``…) is a *data fault*: this customer's data cannot be
    rendered or addressed; its message is the detail.  Any other exception
    is a *plugin fault* (a bug in the channel or the context function): the
    detail names its type, and the first one of the batch is logged with its
    traceback.  With ``raise_first`` the first fault is raised instead.
    """

    def __init__(self, channel: str, *, raise_first: bool) -> None:
        self.channel = channel
        self.raise_first = raise_first
        self.counts: dict[str, int] = {}
        self.failures: builtins.list[Failure] = []
        self.plugin_faults = 0

    def add(self, reason: str, exc: BaseException) -> _Fault:
        if self.raise_first:
            raise exc
        cause = exc
        original = getattr(exc, "original", None)
        if isinstance(exc, TemplateError) and isinstance(original, BaseException):
            cause = original
        name = type(cause).__name__
        if isinstance(cause, EcrmError):
            return _Fault(reason, name, _clean(str(cause), 1000), False)
        self.plugin_faults += 1
        if self.plugin_faults == 1:
            log.error(
                "channel %s: %s: a plugin raised %s for one customer; that customer is skipped, the others "
                "are sent (more plugin faults of this send are counted, not logged)",
                self.channel,
                reason,
                name,
                exc_info=(type(cause), cause, cause.__traceback__),
            )
        text = str(cause)
        return _Fault(reason, name, _clean(f"{name}: {text}" if text else name, 1000), True)

    def listed(self, customer_id: int, message: str, fault: _Fault) -> None:
        self.counts[fault.reason] = self.counts.get(fault.reason, 0) + 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(
                Failure(
                    customer_id=customer_id,
                    message=message,
                    reason=fault.reason,
                    error=fault.error,
                    detail=fault.detail,
                    plugin_fault=fault.plugin,
                )
            )

    def log_summary(self) -> None:
        if self.counts:
            log.warning(
                "channel %s: %d customer(s) skipped, their messages could not be made: %s",
                self.channel,
                sum(self.counts.values()),
                ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())),
            )
        if self.plugin_faults > 1:
            log.error(
                "channel %s: %d plugin faults in this send (the first is logged above)",
                self.channel,
                self.plugin_faults,
            )


def _capped(caps: Sequence[dict[int, int]], policy: DeliveryPolicy, customer_id: int) -> bool:
    """Whether one more message for ``customer_id`` is over a cap; if not, it is counted in ``caps``
    (the per-cap counts from ``_cap_counts``), so the next decision for them sees it."""
    for (limit, _w), counts in zip(policy.frequency_caps, caps, strict=True):
        if counts.get(customer_id, 0) >= limit:
            return True
    for counts in caps:
        counts[customer_id] = counts.get(customer_id, 0) + 1
    return False


class _Sending(_Suppressions):
    """The decision: ``send``, ``send_many`` and what they share."""

    # -- the decision ----------------------------------------------------
    @staticmethod
    def _consent_block(customer: Mapping[str, Any], channel: str, purpose: Purpose) -> str | None:
        if purpose.transactional:
            return None
        consent = customer["consent"]
        if consent.get(channel) != "granted":
            return "no_consent"
        if consent.get(f"{channel}:{purpose.name}") == "denied":
            return "opted_out"
        return None

    def _block_reason(
        self,
        customer: Mapping[str, Any],
        address: str | None,
        channel: str,
        purpose: Purpose,
        suppressed: Mapping[str, str],
    ) -> str | None:
        if address is None:
            return "no_address"
        reason = self._consent_block(customer, channel, purpose)
        if reason:
            return reason
        scope = suppressed.get(address.lower() if channel == "email" else address)
        if scope == "all" or (scope == "marketing" and not purpose.transactional):
            return "suppressed"
        return None

    def _cap_counts(
        self,
        conn: sa.Connection,
        channel: str,
        ids: Sequence[int],
        policy: DeliveryPolicy,
        *,
        now: datetime | None = None,
        lock: bool = True,
    ) -> builtins.list[dict[int, int]]:
        """Per cap, customer id -> non-transactional messages in the cap's window.

        On a server database the customers' rows are locked first (``FOR NO
        KEY UPDATE``, in id order), until the decision commits: two
        concurrent sends for one customer then count one after the other,
        so a cap cannot be overrun.  (SQLite's ``BEGIN IMMEDIATE`` already
        serialises them.)  ``NO KEY`` keeps inserts that merely reference the
        customer (its interactions, other messages) from waiting.

        ``now`` and ``lock=False`` are for ``screen``: the windows end at
        ``now`` (messages made after it are not counted), nothing is locked.
        """
        t = self.t("messages")
        until = now
        now = now or self.crm.now()
        if lock and conn.dialect.name != "sqlite" and ids:
            c = self.t("customers")
            ordered = sorted(set(ids))
            for i in range(0, len(ordered), 5000):
                conn.execute(
                    sa.select(c.c.id)
                    .where(c.c.id.in_(ordered[i : i + 5000]))
                    .order_by(c.c.id)
                    .with_for_update(key_share=True)
                ).all()
        out = []
        for _count, seconds in policy.frequency_caps:
            q = (
                sa.select(t.c.customer_id, sa.func.count())
                .where(
                    t.c.workspace_id == self.workspace,
                    ids_clause(t.c.customer_id, builtins.list(ids), conn.dialect.name),
                    t.c.channel == channel,
                    t.c.transactional.is_(False),
                    t.c.status.in_(_COUNTED),
                    t.c.created_at >= now - timedelta(seconds=seconds),
                    *([t.c.created_at <= until] if until is not None else []),
                )
                .group_by(t.c.customer_id)
            )
            out.append({cid: n for cid, n in conn.execute(q)})
        return out

    def send(
        self,
        channel: str,
        customer_id: int,
        template: Any = None,
        *,
        context: Mapping[str, Any] | None = None,
        purpose: str = "marketing",
        offer: int | str | None = None,
        at: datetime | None = None,
        dedupe_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_error: Literal["record", "raise"] = "record",
    ) -> MessageRecord:
        """Decide to send one message and put it in the outbox.

        :param channel: a registered channel (``"email"``).
        :param template: what the channel renders (the e-mail plugin takes a
            template name or ``{"subject":…, "html":…, "text":…}``); channels
            without templates take :class:`~ecrm_core.channels.Content`.
        :param context: plain data for the template (besides ``customer``,
            ``offer`` and ``message``, which the pipeline adds).
        :param purpose: a registered purpose (``"marketing"``,
            ``"transactional"``…): decides consent, caps and quiet hours.
        :param offer: an offer id or code; its plain data is ``offer`` in the
            template.
        :param at: send no earlier than this (aware datetime).
        :param dedupe_key: the same key twice returns the first message
            instead of sending again (e.g. ``"order-1234-receipt"``).
        :param on_error: what to do when this customer's message cannot be
            made (the template does not render with their data, the channel
            cannot address them…): ``"record"`` (default) stores it
            ``blocked`` with the failure as ``reason`` (``render_failed: …``)
            and a ``message_blocked`` interaction; ``"raise"`` raises the
            error (:class:`~ecrm_core.channels.TemplateError`…) and stores
            nothing.

        Returns the stored :class:`MessageRecord`: ``queued`` (``dispatch``
        sends it), or ``blocked`` with a ``reason`` (``no_consent``,
        ``opted_out``, ``suppressed``, ``no_address``, ``frequency_cap``, or a
        failure: ``render_failed: <what went wrong>``, see
        :data:`FAILURE_REASONS`).
        """
        _report, uids = self._send(
            channel,
            [customer_id],
            template,
            context=context,
            purpose=purpose,
            offer=offer,
            at=at,
            dedupe=(lambda _cid: dedupe_key) if dedupe_key is not None else None,
            metadata=metadata,
            single=True,
            on_error=on_error,
        )
        return self.get(uids[0])

    def send_many(
        self,
        channel: str,
        template: Any = None,
        *,
        customer_ids: Iterable[int] | None = None,
        segment: str | int | None = None,
        context: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        purpose: str = "marketing",
        offer: int | str | None = None,
        at: datetime | None = None,
        dedupe_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        chunk_size: int = 500,
        progress: Callable[[int], None] | None = None,
        on_error: Literal["record", "raise"] = "record",
    ) -> SendReport:
        """Decide to send one message to each of many customers (set-based).

        Give ``customer_ids`` or a ``segment`` (slug or id: its current
        members).  ``context`` is shared data or a function of the customer's
        plain data returning per-customer data.  ``dedupe_key`` is a format
        string with ``{customer_id}`` (e.g. ``"spring-sale-{customer_id}"``):
        customers who already have that message are counted as duplicates.
        Each chunk of ``chunk_size`` customers is one transaction and a
        handful of queries, whatever the number of messages; the channel
        renders each chunk with one ``render_many`` call.

        One customer never stops the batch: a customer whose message cannot
        be made (see :data:`FAILURE_REASONS`) is stored as a ``blocked``
        message with the reason, gets a ``message_blocked`` interaction, and
        is counted in ``SendReport.failed`` (the first ones listed in
        ``failures``); every other customer is sent.  ``on_error="raise"``
        raises the first such error instead (the chunks before it are kept).
        """
        if (customer_ids is None) == (segment is None):
            raise ValidationError("customer_ids", customer_ids, "give customer_ids or segment", "pass exactly one")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 10_000:
            raise ValidationError("chunk_size", chunk_size, "out of range", "use 1..10000")
        if segment is not None:
            ids: Iterable[int] = self._segment_ids(segment)
        else:
            ids = customer_ids  # type: ignore[assignment]
        if dedupe_key is not None and "{customer_id}" not in dedupe_key:
            raise ValidationError(
                "dedupe_key", dedupe_key, "must contain {customer_id}", "use e.g. 'spring-sale-{customer_id}'"
            )
        report, _ = self._send(
            channel,
            ids,
            template,
            context=context,
            purpose=purpose,
            offer=offer,
            at=at,
            dedupe=(lambda cid: dedupe_key.replace("{customer_id}", str(cid))) if dedupe_key else None,
            metadata=metadata,
            chunk_size=chunk_size,
            progress=progress,
            on_error=on_error,
        )
        return report

    def _send(
        self,
        channel_name: str,
        customer_ids: Iterable[int],
        template: Any,
        *,
        context: Any,
        purpose: str,
        offer: int | str | None,
        at: datetime | None,
        dedupe: Callable[[int], str | None] | None,
        metadata: Mapping[str, Any] | None,
        chunk_size: int = 500,
        single: bool = False,
        progress: Callable[[int], None] | None = None,
        on_error: str = "record",
    ) -> tuple[SendReport, builtins.list[str]]:
        self.ready()
        from ...validation import aware_datetime

        if on_error not in ("record", "raise"):
            raise ValidationError("on_error", on_error, "unknown mode", "use 'record' or 'raise'")
        channels = self.crm.channels
        channels.spec(channel_name)
        chan = channels.get(channel_name)
        pol = channels.policy(channel_name)
        purp = self._purpose(purpose)
        if at is not None:
            at = aware_datetime(at, "at")
        shared_ctx: dict[str, Any] = {}
        ctx_fn: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
        if callable(context):
            ctx_fn = context
        elif context is not None:
            if not isinstance(context, Mapping):
                raise ValidationError("context", context, "not a mapping", "pass a dict of plain data")
            shared_ctx = _plain(context, "context")
        if offer is not None:
            shared_ctx["offer"] = _plain(self.crm.offers.get(offer), "offer")
        meta = _plain(dict(metadata or {}), "metadata")
        if offer is not None:
            meta.setdefault("offer", shared_ctx["offer"]["code"])
        template_name = template if isinstance(template, str) else None
        if template_name is not None and len(template_name) > 200:
            raise ValidationError("template", template_name, "name too long", "use at most 200 characters")

        faults = _Faults(channel_name, raise_first=on_error == "raise")
        queued = duplicates = scheduled = 0
        blocked: dict[str, int] = {}
        uids: builtins.list[str] = []
        chunk: builtins.list[int] = []

        computed: dict[int, dict[str, Any]] = {}  # per chunk: what plugins compute (ecrm_computed_attributes)

        def context_for(c: Mapping[str, Any], uid: str) -> dict[str, Any]:
            extra_attrs = computed.get(c["id"])
            if extra_attrs:
                c = {**c, "attributes": self.crm.customers.with_computed(c.get("attributes") or {}, extra_attrs)}
            ctx = dict(shared_ctx)
            if ctx_fn is not None:
                extra = ctx_fn(c)
                if not isinstance(extra, Mapping):
                    raise ValidationError(
                        "context",
                        type(extra).__name__,
                        "the context function did not return a mapping",
                        "return a dict of plain data",
                    )
                ctx.update(_plain(extra, "context"))
            ctx["customer"] = c
            ctx["message"] = {
                "id": uid,
                "channel": channel_name,
                "purpose": purp.name,
                "transactional": purp.transactional,
                "workspace": self.workspace,
            }
            return ctx

        def flush(ids: builtins.list[int]) -> None:
            nonlocal queued, duplicates, scheduled
            customers = self._customers(ids, single)
            computed.clear()
            computed.update(self.crm.customers.computed(customers))
            now = self.crm.now()
            plans: builtins.list[dict[str, Any]] = []
            addresses: dict[int, str | None] = {}
            failed: dict[int, _Fault] = {}
            for cid in ids:
                c = customers.get(cid)
                if c is None:
                    continue
                try:
                    address = chan.address(c)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # the channel's code failed, not the host
                    failed[cid] = faults.add("address_failed", exc)
                    continue
                if address is not None and address != "":
                    problem = _address_problem(address)
                    if problem is not None:
                        failed[cid] = faults.add(
                            "invalid_address",
                            ValidationError(
                                "address",
                                address,
                                problem,
                                f"make channel {channel_name!r}'s address() return a valid address or None",
                            ),
                        )
                        continue
                addresses[cid] = address or None
            with self.db.read() as conn:
                suppressed = self._suppressed(conn, channel_name, [a for a in addresses.values() if a])
            to_render: builtins.list[tuple[dict[str, Any], dict[str, Any]]] = []
            fresh = iter(_uids(len(ids)))
            for cid in ids:
                c = customers.get(cid)
                if c is None:
                    continue
                uid = next(fresh)
                fault = failed.get(cid)
                address = addresses.get(cid)
                reason = None if fault else self._block_reason(c, address, channel_name, purp, suppressed)
                plan: dict[str, Any] = {
                    "uid": uid,
                    "customer_id": c["id"],
                    "address": address,
                    "reason": reason,
                    "fault": fault,
                    "content": None,
                    "dedupe_key": dedupe(c["id"]) if dedupe else None,
                }
                plans.append(plan)
                if fault is None and reason is None:
                    try:
                        to_render.append((plan, context_for(c, uid)))
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # a plugin's context failed, not the host
                        plan["fault"] = faults.add("context_failed", exc)
            if to_render:
                rendered = self._render_chunk(chan, template, to_render, purp.name, faults)
                for (plan, _ctx), result in zip(to_render, rendered, strict=True):
                    if isinstance(result, _Fault):
                        plan["fault"] = result
                        continue
                    problem = _content_problem(result)
                    if problem is not None:
                        plan["fault"] = faults.add(
                            "invalid_content",
                            ValidationError("content", "...", problem, f"fix channel {channel_name!r}'s render()"),
                        )
                    else:
                        plan["content"] = result
            with self.db.write() as conn:
                caps = (
                    self._cap_counts(conn, channel_name, [p["customer_id"] for p in plans], pol)
                    if (pol.frequency_caps and not purp.transactional)
                    else []
                )
                t = self.t("messages")
                sql = _Sql(conn)
                keys = [p["dedupe_key"] for p in plans if p["dedupe_key"]]
                existing: dict[str, str] = {}
                for i in range(0, len(keys), 5000):
                    among, param = sql.any_of("dedupe_key", keys[i : i + 5000], kind="text")
                    existing.update(
                        sql.all(
                            f"SELECT dedupe_key, uid FROM {sql.name(t)} WHERE workspace_id = {sql.ph} AND {among}",
                            (self.workspace, param),
                        )
                    )
                rows: builtins.list[tuple[Any, ...]] = []
                blocked_rows: builtins.list[dict[str, Any]] = []
                seen_keys: set[str] = set()
                meta_json = sql.json(meta)
                transactional = sql.flag(purp.transactional)
                stamp = sql.ts(now)
                for p in plans:
                    key = p["dedupe_key"]
                    if key and (key in existing or key in seen_keys):
                        duplicates += 1
                        uids.append(existing.get(key, ""))
                        continue
                    fault = p["fault"]
                    if fault is not None:
                        # Not kept under the dedupe key: the same send, once the
                        # template or the data is fixed, sends to this customer.
                        key = None
                    elif key:
                        seen_keys.add(key)
                    reason = p["reason"]
                    if reason is None and fault is None and caps and _capped(caps, pol, p["customer_id"]):
                        reason = "frequency_cap"
                    due = at if at is not None and at > now else now
                    if reason is None and fault is None and not purp.transactional:
                        tz = customers[p["customer_id"]]["timezone"] or pol.default_timezone
                        later = quiet_until(due, tz, pol.quiet_start, pol.quiet_end)
                        if later is not None:
                            due = later
                            scheduled += 1
                    content = p["content"]
                    stopped = reason is not None or fault is not None
                    rows.append(
                        (
                            self.workspace,
                            p["uid"],
                            channel_name,
                            p["customer_id"],
                            p["address"],
                            purp.name,
                            template_name,
                            sql.json(content.to_json() if content is not None else {}),
                            meta_json,
                            "blocked" if stopped else "queued",
                            _short(f"{fault.reason}: {fault.detail}", 500) if fault else reason,
                            0,
                            pol.max_attempts,
                            None if stopped else (stamp if due is now else sql.ts(due)),
                            key,
                            transactional,
                            stamp,
                            stamp,
                        )
                    )
                    uids.append(p["uid"])
                    if stopped:
                        props: dict[str, Any] = {
                            "message": p["uid"],
                            "purpose": purp.name,
                            "reason": fault.reason if fault else reason,
                            **({"template": template_name} if template_name else {}),
                        }
                        if fault is not None:
                            props["error"] = fault.error
                            props["detail"] = fault.detail
                            faults.listed(p["customer_id"], p["uid"], fault)
                        elif reason is not None:
                            blocked[reason] = blocked.get(reason, 0) + 1
                        blocked_rows.append(
                            {
                                "kind": "message_blocked",
                                "customer_id": p["customer_id"],
                                "channel": channel_name,
                                "occurred_at": now,
                                "idempotency_key": f"msg:{p['uid']}:blocked",
                                "properties": props,
                            }
                        )
                    else:
                        queued += 1
                if rows:
                    sql.many(
                        f"INSERT INTO {sql.name(t)} ({_OUTBOX_COLUMNS}) VALUES "
                        f"({sql.marks(7)}, {sql.jph}, {sql.jph}, {sql.marks(9)})",
                        rows,
                    )
                if blocked_rows:
                    done = self.crm.using(conn).interactions.track_many(
                        blocked_rows, create_missing=False, on_error="skip"
                    )
                    for err in done.errors:
                        log.error("channel %s: a message_blocked interaction was not stored: %s", channel_name, err)
            if progress is not None:
                progress(len(ids))

        for cid in customer_ids:
            chunk.append(cid)
            if len(chunk) >= chunk_size:
                with gc_paused():
                    flush(chunk)
                chunk = []
        if chunk:
            with gc_paused():
                flush(chunk)
        faults.log_summary()
        report = SendReport(
            queued=queued,
            blocked=blocked,
            duplicates=duplicates,
            scheduled=scheduled,
            failed=dict(faults.counts),
            failures=tuple(faults.failures),
        )
        return report, uids

    def _render_chunk(
        self,
        chan: Channel,
        template: Any,
        items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
        purpose: str,
        faults: _Faults,
    ) -> builtins.list[Content | _Fault]:
        """One ``render_many`` call for a chunk: per item its Content, or the
        fault that stopped it.  A ``render_many`` that raises or answers the
        wrong shape fails the items of this chunk (each recorded), never more."""
        contexts = [ctx for _plan, ctx in items]
        message_ids = [plan["uid"] for plan, _ctx in items]
        try:
            results: Any = chan.render_many(template, contexts, message_ids=message_ids, purpose=purpose)
            if not isinstance(results, Sequence) or len(results) != len(contexts):
                raise TypeError(
                    f"render_many returned {type(results).__name__} of length "
                    f"{len(results) if isinstance(results, Sequence) else '?'} for {len(contexts)} contexts"
                )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, CancelledError...: the channel failed, not the host
            if faults.raise_first:
                raise
            fault = faults.add("render_failed", exc)
            return [fault] * len(contexts)
        out: builtins.list[Content | _Fault] = []
        for result in results:
            if isinstance(result, BaseException):
                out.append(faults.add("render_failed", result))
            else:
                out.append(result)
        return out

    def _segment_ids(self, ref: str | int) -> Iterable[int]:
        after: int | None = None
        while True:
            page = self.crm.segments.members(ref, limit=5000, after=after)
            if not page:
                return
            yield from (m.customer_id for m in page)
            after = page[-1].customer_id

    def _customers(
        self, ids: Sequence[int], single: bool, conn: sa.Connection | None = None
    ) -> dict[int, dict[str, Any]]:
        """Plain data of live customers by id (a merged id follows to the survivor
        for a single send; bulk sends skip merged and unknown ids).

        With ``conn`` (a claim re-checking consent inside its transaction) only
        what the claim needs is read: ``id``, ``consent`` and ``timezone``."""
        if single:
            found = self.crm.customers.get(ids[0])  # NotFound for an unknown id
            return {ids[0]: plain_customer(found)}
        t = self.t("customers")
        out: dict[int, dict[str, Any]] = {}
        ordered = builtins.list(ids)
        if not ordered:
            return out
        with self.db.read() if conn is None else nullcontext(conn) as rconn:
            q = _Sql(rconn)
            # driven by the primary key: on SQLite a unary + keeps the planner off the
            # (workspace, ...) indexes, which would visit every customer of the workspace
            # for each chunk (1M customers: seconds per chunk)
            plus = "+" if q.sqlite else ""
            cols = "id, consent, timezone" if conn is not None else _CUSTOMER_COLUMNS
            attrs: dict[str, Any] = {}
            known: dict[str, dict[str, Any]] = {}  # consent text -> statuses (most customers share a few)

            def statuses(value: Any) -> dict[str, Any]:
                if type(value) is str and len(value) <= 512:
                    found = known.get(value)
                    if found is None:
                        found = known[value] = _statuses(json.loads(value))
                    return found
                return _statuses(q.read_json(value))

            for i in range(0, len(ordered), 5000):
                among, ids_param = q.any_of("id", ordered[i : i + 5000])
                rows = q.all(
                    f"SELECT {cols} FROM {q.name(t)} WHERE {among} AND {plus}workspace_id = {q.ph} "
                    f"AND {plus}merged_into IS NULL",
                    (ids_param, self.workspace),
                )
                if conn is not None:
                    # a claim re-checking consent inside its transaction reads only what it needs
                    for cid, consent, tz in rows:
                        out[cid] = {"id": cid, "timezone": tz, "consent": statuses(consent)}
                    continue
                for r in rows:
                    out[r[0]] = _plain_values(r, q.read_json_shared(r[5], attrs), dict(statuses(r[6])))
        return out
