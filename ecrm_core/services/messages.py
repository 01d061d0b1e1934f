"""The delivery pipeline: ``crm.channels`` and ``crm.messages``.

The pipeline is the same for every channel (see :mod:`ecrm_core.channels`):

1. **Decide** (``send``/``send_many``): check consent, suppression,
   frequency caps and quiet hours; render; write the message to the outbox
   in the *same transaction* as the decision (with ``crm.using(conn)`` that
   is the host's transaction).  A blocked message is stored too, with the
   reason, so "why did Ada not get it" has an answer.
2. **Dispatch** (``dispatch``/``work``): claim due messages under a lease,
   log an attempt (``attempt_id``) per message, hand them to the channel,
   record each outcome.  Accepted → ``sent``; deferred → retried with
   exponential backoff; rejected or out of attempts → ``dead`` (the dead
   letter, which ``replay`` re-queues).  A worker that dies between claim
   and record leaves a lease that expires: the message is retried with the
   same message id (the provider's idempotency key), never lost.
3. **Feedback** (``apply_events``): bounces suppress the address,
   complaints suppress marketing, unsubscribes change consent, opens and
   clicks land on the timeline — each event once, by its key.

Every attempt is a row in ``delivery_attempts`` and an interaction on the
customer's timeline (``message_sent``/``message_deferred``/``message_failed``).
"""

from __future__ import annotations

import builtins
import logging
import random
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from attrs import field, frozen

from ..channels import (
    EVENT_KINDS,
    MESSAGE_EVENTS,
    Channel,
    ChannelConfigError,
    Content,
    DeliveryPolicy,
    DeliveryResult,
    InboundRequest,
    InboundResponse,
    Message,
    MessageEvent,
    Purpose,
    TemplateError,
    normalize_address,
)
from ..errors import Conflict, EcrmError, IdempotencyConflict, NotFound, ValidationError
from ..validation import check_slug, thaw
from ._base import Service

if TYPE_CHECKING:  # pragma: no cover
    from ..domain import Customer
    from ..registry import ChannelSpec

__all__ = [
    "Channels",
    "Messages",
    "MessageRecord",
    "Attempt",
    "Outcome",
    "SendReport",
    "Failure",
    "FAILURE_REASONS",
    "EventReport",
    "IgnoredEvent",
    "InboundResult",
    "DispatchReport",
    "Suppression",
    "plain_customer",
    "quiet_until",
]

log = logging.getLogger("ecrm.messages")

MessageStatus = Literal["queued", "sending", "sent", "blocked", "dead", "cancelled"]
STATUSES = ("queued", "sending", "sent", "blocked", "dead", "cancelled")
#: Statuses that count against frequency caps.
_COUNTED = ("queued", "sending", "sent")


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@frozen(kw_only=True)
class MessageRecord:
    """A message in the outbox (``crm.messages.get(uid)``)."""

    id: str
    channel: str
    customer_id: int
    address: str | None
    purpose: str
    status: str
    reason: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    provider_id: str | None
    template: str | None
    content: Content
    metadata: Mapping[str, Any]
    dedupe_key: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    workspace: str


@frozen(kw_only=True)
class Attempt:
    """One row of the delivery log."""

    attempt_id: str
    number: int
    status: str
    code: str | None
    reason: str | None
    provider_id: str | None
    started_at: datetime
    finished_at: datetime | None


@frozen(kw_only=True)
class Outcome:
    """The result of one delivery attempt (``ecrm_messages_dispatched``)."""

    message: str
    attempt_id: str
    customer_id: int
    channel: str
    purpose: str
    workspace: str
    status: Literal["sent", "retrying", "dead"]
    result: DeliveryResult
    next_attempt_at: datetime | None = None


@frozen(kw_only=True)
class _Claimed:
    message: Message
    row_id: int
    max_attempts: int
    transactional: bool
    template: str | None
    timezone: str
    alone: bool = False  # its last attempt was in a send_many that raised: send it on its own


#: The reason a message waits with after a channel raised while sending it.
_CHANNEL_ERROR = "channel error: "


#: Why a customer's message could not be made (``SendReport.failed``,
#: ``Failure.reason``, the ``reason`` of a ``message_blocked`` interaction).
FAILURE_REASONS = (
    "address_failed",  # Channel.address() raised
    "invalid_address",  # it returned something that is not a storable address
    "context_failed",  # the context function raised or returned data that is not plain
    "render_failed",  # the template did not render for this customer
    "invalid_content",  # the channel rendered something that cannot be stored or sent
)
#: How many failures a SendReport lists (all are counted).
MAX_LISTED_FAILURES = 100


@frozen(kw_only=True)
class Failure:
    """One customer whose message could not be made (a :class:`SendReport` entry).

    ``reason`` is one of :data:`FAILURE_REASONS`; ``error`` the exception's
    type; ``detail`` what went wrong (an ecrm error's message, or the type
    and message of a plugin's exception); ``plugin_fault`` is true when the
    channel or context function raised something other than an ecrm error
    (a bug: logged with its traceback).  ``message`` is the id of the
    ``blocked`` message recorded for it.
    """

    customer_id: int
    message: str
    reason: str
    error: str
    detail: str
    plugin_fault: bool = False


@frozen(kw_only=True)
class SendReport:
    """What ``send_many`` did: counts of what was queued, blocked and failed.

    * ``queued``: messages in the outbox (``scheduled`` of them wait for the
      end of quiet hours);
    * ``blocked``: policy decisions by reason (``no_consent``, ``opted_out``,
      ``suppressed``, ``no_address``, ``frequency_cap``);
    * ``failed``: customers whose message could not be made, by reason
      (:data:`FAILURE_REASONS`); each is stored as a ``blocked`` message and
      a ``message_blocked`` interaction on their timeline; ``failures`` lists
      the first :data:`MAX_LISTED_FAILURES` of them;
    * ``duplicates``: customers who already had the ``dedupe_key``.
    """

    queued: int = 0
    blocked: Mapping[str, int] = field(factory=dict)
    duplicates: int = 0
    scheduled: int = 0  # queued for after quiet hours
    failed: Mapping[str, int] = field(factory=dict)
    failures: tuple[Failure, ...] = ()

    @property
    def total(self) -> int:
        return self.queued + sum(self.blocked.values()) + sum(self.failed.values()) + self.duplicates


@frozen(kw_only=True)
class IgnoredEvent:
    """An inbound event the core did not apply, and why."""

    event: MessageEvent
    reason: str


@frozen(kw_only=True)
class EventReport:
    """What :meth:`Messages.apply` did with a list of events.

    ``applied``: the events that changed something (completed with their
    ``customer_id``, ``address`` and ``workspace``); ``duplicates``: replays
    of events applied before (same ``key``); ``ignored``: events that were
    not applied, each with the reason (unknown message, address that is not
    the message's recipient, no such customer…).
    """

    applied: tuple[MessageEvent, ...] = ()
    duplicates: tuple[MessageEvent, ...] = ()
    ignored: tuple[IgnoredEvent, ...] = ()


@frozen(kw_only=True)
class InboundResult:
    """What :meth:`Channels.receive` did: the channel's answer and its events' fate."""

    response: InboundResponse
    events: EventReport


@frozen(kw_only=True)
class DispatchReport:
    """What ``dispatch`` did."""

    sent: int = 0
    retrying: int = 0
    dead: int = 0
    blocked: int = 0
    recovered: int = 0  # messages whose lease had expired (a crashed worker)

    @property
    def attempted(self) -> int:
        return self.sent + self.retrying + self.dead


@frozen(kw_only=True)
class Suppression:
    channel: str
    address: str
    scope: str
    reason: str
    detail: str | None
    created_at: datetime


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def plain_customer(c: Customer) -> dict[str, Any]:
    """A customer as plain data (what templates and ``Channel.address`` see)."""
    return {
        "id": c.id,
        "external_id": c.external_id,
        "email": c.email,
        "phone": c.phone,
        "name": c.name,
        "first_name": (c.name or "").split(" ")[0] or None,
        "attributes": thaw(c.attributes),
        "lifecycle_stage": c.lifecycle_stage,
        "timezone": c.timezone,
        "locale": c.locale,
        "consent": {k: v.status for k, v in c.consent.items()},
    }


def _plain_row(m: Mapping[Any, Any]) -> dict[str, Any]:
    """:func:`plain_customer` straight from a stored row (already validated on
    the way in: the bulk paths skip rebuilding a Customer per message)."""
    name = m["name"]
    consent = m["consent"] or {}
    return {
        "id": m["id"],
        "external_id": m["external_id"],
        "email": m["email"],
        "phone": m["phone"],
        "name": name,
        "first_name": (name or "").split(" ")[0] or None,
        "attributes": dict(m["attributes"] or {}),
        "lifecycle_stage": m["lifecycle_stage"],
        "timezone": m["timezone"],
        "locale": m["locale"],
        "consent": _statuses(consent),
    }


def _statuses(consent: Mapping[str, Any] | None) -> dict[str, Any]:
    """channel/purpose -> consent status, from the stored consent column."""
    return {k: (v.get("status") if isinstance(v, Mapping) else v) for k, v in (consent or {}).items()}


_PLAIN_SCALARS = (str, int, float, bool, type(None), Decimal, datetime, date)


def _plain(value: Any, path: str, depth: int = 0) -> Any:
    """Check that template context is plain data (no objects with methods)."""
    if depth > 20:
        raise ValidationError(path, "...", "nested too deeply", "keep template context under 20 levels")
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"{path}.{k!r}", k, "not a string key", "use string keys in template context")
            out[k] = _plain(v, f"{path}.{k}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    import attrs

    if attrs.has(type(value)):
        return _plain(attrs.asdict(value, recurse=True), path, depth + 1)
    raise ValidationError(
        path,
        type(value).__name__,
        "not plain data",
        "templates get plain data only: pass str, numbers, dates, lists and dicts",
    )


def quiet_until(now: datetime, tz: str, start: time | None, end: time | None) -> datetime | None:
    """If ``now`` is inside the quiet window (local ``start``..``end`` in ``tz``,
    possibly across midnight), the UTC time it ends; else ``None``."""
    if start is None or end is None or start == end:
        return None
    try:
        zone = ZoneInfo(tz)
    except Exception:
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    t = local.timetz().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if (start < end or t < end) else local.date() + timedelta(days=1)
    ends = datetime.combine(day, end, tzinfo=zone)
    return ends.astimezone(UTC)


def _backoff(policy: DeliveryPolicy, attempt: int, retry_after: float | None) -> float:
    delay = min(policy.max_backoff, policy.backoff * (2 ** max(0, attempt - 1)))
    delay *= random.uniform(0.9, 1.1)
    if retry_after is not None and retry_after > delay:
        delay = min(float(retry_after), policy.max_backoff)
    return float(delay)


def _short(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unsafe_char(ch: str) -> bool:
    """Control characters, lone surrogates, line/paragraph separators and bidi
    controls: never stored verbatim in a reason or a log line."""
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch in _BIDI)


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean(text: Any, limit: int) -> str:
    """``text`` safe to store and show: unsafe characters escaped (``\\n``,
    ``\\x00``, ``\\u202e``), at most ``limit`` characters."""
    raw = str(text)[: limit * 2]
    out = "".join(ch.encode("unicode_escape").decode("ascii") if _unsafe_char(ch) else ch for ch in raw)
    return _short(out, limit) or ""


def _clean_opt(text: Any, limit: int) -> str | None:
    return None if text is None else _clean(text, limit)


def _safe_result(res: DeliveryResult) -> DeliveryResult:
    """``res`` with its texts safe to store (a provider's reason may hold
    anything; one unstorable reason must not lose the whole batch's outcomes)."""
    import attrs

    return attrs.evolve(
        res,
        provider_id=_clean_opt(res.provider_id, 500),
        code=_clean_opt(res.code, 100),
        reason=_clean(res.reason or "", 1000),
    )


def _plausible_uid(value: Any) -> bool:
    """Could ``value`` be a message id (never look up what cannot be one)?"""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and value.isprintable()


def _address_problem(address: Any) -> str | None:
    """Why ``address`` (from ``Channel.address``) cannot be stored or used, or ``None``."""
    if not isinstance(address, str):
        return f"address() returned {type(address).__name__}, not a string"
    if len(address) > 320:
        return f"the address is {len(address)} characters long; at most 320 are stored"
    if any(_unsafe_char(ch) for ch in address):
        return "the address contains control, surrogate or bidi characters"
    return None


def _content_problem(content: Any) -> str | None:
    """Why rendered ``content`` cannot be stored or sent, or ``None``."""
    if not isinstance(content, Content):
        return f"the channel rendered {type(content).__name__}, not Content"
    parts: builtins.list[tuple[str, Any, bool]] = [
        ("body", content.body, False),
        ("subject", content.subject, True),
        ("html", content.html, False),
    ]
    if not isinstance(content.headers, Mapping):
        return "content.headers is not a mapping"
    for name, value in content.headers.items():
        parts.append((f"headers[{name!r}]", name, True))
        parts.append((f"headers[{name!r}]", value, True))
    for where, value, one_line in parts:
        if value is None and where not in ("body",):
            continue
        if not isinstance(value, str):
            return f"content.{where} is {type(value).__name__}, not a string"
        if "\x00" in value:
            return f"content.{where} contains NUL"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"content.{where} contains lone surrogates (not valid Unicode text)"
        if one_line and ("\r" in value or "\n" in value):
            return f"content.{where} has a line break"
    return None


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


# ---------------------------------------------------------------------------
# crm.channels
# ---------------------------------------------------------------------------


class Channels(Service):
    """``crm.channels``: the registered channels, their config and inbound routes."""

    def names(self) -> list[str]:
        return sorted(self.crm.registry.channels)

    def spec(self, name: str) -> ChannelSpec:
        from ..crm import _registered

        _registered(name, self.crm.registry.channels, "channel", "channel")
        return self.crm.registry.channels[name]

    def config(self, name: str) -> dict[str, Any]:
        """The channel's settings from ``CRM(channels=...)`` (without ``policy``)."""
        conf = dict(self.crm._shared.channel_config.get(name, {}))
        conf.pop("policy", None)
        return conf

    def policy(self, name: str) -> DeliveryPolicy:
        """The :class:`~ecrm_core.channels.DeliveryPolicy` for ``name``."""
        shared = self.crm._shared
        cache = shared.channels.setdefault("__policies__", {})
        if name not in cache:
            raw = shared.channel_config.get(name, {}).get("policy")
            try:
                cache[name] = DeliveryPolicy.from_config(raw)
            except ValidationError as exc:
                raise exc.at(f"channels.{name}.policy") from None
        policy: DeliveryPolicy = cache[name]
        return policy

    def get(self, name: str) -> Channel:
        """The channel object (built once per CRM, on first use).

        One object serves every workspace: its ``crm`` is a view in the
        workspace the CRM was built for (never in the workspace of whichever
        view happened to ask first).  A channel acting for a message or a
        customer acts in *their* workspace (``crm.messages.locate(id)``,
        ``crm.in_workspace(record.workspace)``), and the events it returns
        are applied in their message's or customer's workspace."""
        shared = self.crm._shared
        channel = shared.channels.get(name)
        if channel is not None:
            return channel  # type: ignore[no-any-return]
        spec = self.spec(name)
        with shared.lock:
            channel = shared.channels.get(name)
            if channel is None:
                root = self.crm._view(db=shared.root_db, workspace=shared.root_workspace or self.crm.workspace)
                try:
                    channel = spec.factory(root)
                except ChannelConfigError:
                    raise
                except (TypeError, ValueError, KeyError) as exc:
                    raise ChannelConfigError(
                        f"channels.{name}: the {spec.plugin or 'channel'} plugin could not build the channel: {exc}"
                    ) from exc
                shared.channels[name] = channel
        return channel  # type: ignore[no-any-return]

    def close_all(self) -> None:
        shared = self.crm._shared
        for name, channel in list(shared.channels.items()):
            if isinstance(channel, Channel):
                try:
                    channel.close()
                except Exception:
                    log.exception("channel %s failed to close", name)
        shared.channels.clear()

    def routes(self) -> list[tuple[str, Any]]:
        """Every channel's inbound routes as ``(channel, InboundRoute)`` pairs."""
        out: list[tuple[str, Any]] = []
        for name in self.names():
            try:
                channel = self.get(name)
            except ChannelConfigError:
                log.warning("channel %s is not configured; its inbound routes are not mounted", name)
                continue
            out.extend((name, r) for r in channel.inbound_routes())
        return out

    def handle_inbound(self, name: str, request: InboundRequest) -> InboundResponse:
        """Let channel ``name`` verify and interpret ``request``, then apply its events.

        Raises :class:`~ecrm_core.channels.InboundRejected` when the request
        is not authentic (nothing is changed then).  Events the core does not
        apply (an unknown message, an address that is not the message's
        recipient…) are logged and ignored; :meth:`receive` reports them.
        """
        return self.receive(name, request).response

    def receive(self, name: str, request: InboundRequest) -> InboundResult:
        """Like :meth:`handle_inbound`, and what became of each event
        (:class:`EventReport`: applied, duplicates, ignored with the reason)."""
        response = self.get(name).handle_inbound(request)
        if not isinstance(response, InboundResponse):
            raise TypeError(
                f"channel {name!r}: handle_inbound returned {type(response).__name__}, not an InboundResponse"
            )
        report = self.crm.messages.apply(response.events) if response.events else EventReport()
        return InboundResult(response=response, events=report)


# ---------------------------------------------------------------------------
# crm.messages
# ---------------------------------------------------------------------------


class Messages(Service):
    """``crm.messages``: send through any channel, dispatch, inspect, replay."""

    # -- lookups ---------------------------------------------------------
    def _purpose(self, name: Any) -> Purpose:
        from ..crm import _registered

        _registered(name, self.crm.registry.purposes, "purpose", "message purpose")
        purpose: Purpose = self.crm.registry.purposes[name]
        return purpose

    def _record(self, m: Mapping[Any, Any]) -> MessageRecord:
        return MessageRecord(
            id=m["uid"],
            channel=m["channel"],
            customer_id=m["customer_id"],
            address=m["address"],
            purpose=m["purpose"],
            status=m["status"],
            reason=m["reason"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            next_attempt_at=m["next_attempt_at"],
            provider_id=m["provider_id"],
            template=m["template"],
            content=Content.from_json(m["content"] or {}),
            metadata=m["meta"] or {},
            dedupe_key=m["dedupe_key"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            sent_at=m["sent_at"],
            workspace=m["workspace_id"],
        )

    def get(self, message_id: str) -> MessageRecord:
        """A message by its id (uid)."""
        self.ready()
        t = self.t("messages")
        with self.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.uid == message_id, t.c.workspace_id == self.workspace)).first()
        if row is None:
            raise NotFound("message", message_id)
        return self._record(row._mapping)

    def locate(self, message_id: str) -> MessageRecord | None:
        """A message by its id in ANY workspace (``None`` if there is none).

        For channel plugins answering a signed public link or a provider
        webhook, where the message id (from a verified token, never from an
        unchecked request) is all there is: the record's ``workspace`` says
        which workspace to act in (``crm.in_workspace(record.workspace)``).
        Everything else should use :meth:`get`, which stays in this view's
        workspace.
        """
        self.ready()
        t = self.t("messages")
        with self.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.uid == message_id)).first()
        return None if row is None else self._record(row._mapping)

    def list(
        self,
        *,
        status: str | None = None,
        customer_id: int | None = None,
        channel: str | None = None,
        limit: int = 100,
    ) -> builtins.list[MessageRecord]:
        """Messages, newest first, optionally filtered."""
        self.ready()
        if status is not None and status not in STATUSES:
            raise ValidationError("status", status, "unknown message status", f"use one of {', '.join(STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit", limit, "out of range", "use 1..10000")
        t = self.t("messages")
        q = sa.select(t).where(t.c.workspace_id == self.workspace)
        if status:
            q = q.where(t.c.status == status)
        if customer_id is not None:
            q = q.where(t.c.customer_id == customer_id)
        if channel:
            q = q.where(t.c.channel == channel)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(t.c.id.desc()).limit(limit)).all()
        return [self._record(r._mapping) for r in rows]

    def dead_letters(self, *, channel: str | None = None, limit: int = 100) -> builtins.list[MessageRecord]:
        """Messages that will not be retried any more (inspect, then ``replay``)."""
        return self.list(status="dead", channel=channel, limit=limit)

    def attempts(self, message_id: str) -> builtins.list[Attempt]:
        """The delivery log of one message, oldest attempt first."""
        self.ready()
        t, a = self.t("messages"), self.t("delivery_attempts")
        q = (
            sa.select(a)
            .join(t, t.c.id == a.c.message_id)
            .where(t.c.uid == message_id, t.c.workspace_id == self.workspace)
            .order_by(a.c.number, a.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
            if not rows:
                self.get(message_id)  # NotFound for an unknown message
        return [
            Attempt(
                attempt_id=r.attempt_id,
                number=r.number,
                status=r.status,
                code=r.code,
                reason=r.reason,
                provider_id=r.provider_id,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in rows
        ]

    def counts(self, *, channel: str | None = None) -> dict[str, int]:
        """How many messages are in each status."""
        self.ready()
        t = self.t("messages")
        q = sa.select(t.c.status, sa.func.count()).where(t.c.workspace_id == self.workspace).group_by(t.c.status)
        if channel:
            q = q.where(t.c.channel == channel)
        with self.db.read() as conn:
            return {s: n for s, n in conn.execute(q)}

    # -- suppressions ----------------------------------------------------
    def suppress(
        self,
        channel: str,
        address: str,
        *,
        reason: str = "manual",
        scope: Literal["all", "marketing"] = "all",
        detail: str | None = None,
    ) -> None:
        """Put ``address`` on ``channel``'s suppression list.

        ``scope="all"`` blocks every message (hard bounce, a manual block);
        ``"marketing"`` blocks all but transactional ones (a complaint).  An
        existing entry is widened to ``all`` when asked, never narrowed.
        """
        self.ready()
        check_slug(channel, "channel", "channel name")
        check_slug(reason, "reason", "suppression reason")
        if scope not in ("all", "marketing"):
            raise ValidationError("scope", scope, "unknown suppression scope", "use 'all' or 'marketing'")
        if not isinstance(address, str) or not address or len(address) > 320:
            raise ValidationError("address", address, "not an address", "pass the address to suppress")
        with self.db.write() as conn:
            self._suppress(conn, [(channel, address, scope, reason, detail)])

    def _suppress(self, conn: sa.Connection, entries: Iterable[tuple[str, str, str, str, str | None]]) -> int:
        t = self.t("suppressions")
        now = self.crm.now()
        added = 0
        for channel, address, scope, reason, detail in entries:
            address = address.strip().lower() if channel == "email" else address.strip()
            row = conn.execute(
                sa.select(t.c.id, t.c.scope).where(
                    t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address == address
                )
            ).first()
            if row is None:
                conn.execute(
                    sa.insert(t).values(
                        workspace_id=self.workspace,
                        channel=channel,
                        address=address,
                        scope=scope,
                        reason=reason,
                        detail=_short(detail, 1000),
                        created_at=now,
                    )
                )
                added += 1
            elif row.scope != "all" and scope == "all":
                conn.execute(sa.update(t).where(t.c.id == row.id).values(scope="all", reason=reason, detail=detail))
        return added

    def unsuppress(self, channel: str, address: str) -> bool:
        """Remove ``address`` from the list; ``True`` if it was there."""
        self.ready()
        t = self.t("suppressions")
        address = address.strip().lower() if channel == "email" else address.strip()
        with self.db.write() as conn:
            n = conn.execute(
                sa.delete(t).where(t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address == address)
            ).rowcount
        return bool(n)

    def suppressions(self, *, channel: str | None = None, limit: int = 1000) -> builtins.list[Suppression]:
        self.ready()
        t = self.t("suppressions")
        q = sa.select(t).where(t.c.workspace_id == self.workspace).order_by(t.c.id.desc()).limit(limit)
        if channel:
            q = q.where(t.c.channel == channel)
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        return [
            Suppression(
                channel=r.channel,
                address=r.address,
                scope=r.scope,
                reason=r.reason,
                detail=r.detail,
                created_at=r.created_at,
            )
            for r in rows
        ]

    def _suppressed(self, conn: sa.Connection, channel: str, addresses: Iterable[str]) -> dict[str, str]:
        """address -> scope for the suppressed ones (one query)."""
        addrs = {a.lower() if channel == "email" else a for a in addresses if a}
        if not addrs:
            return {}
        t = self.t("suppressions")
        out: dict[str, str] = {}
        ordered = sorted(addrs)
        for i in range(0, len(ordered), 500):
            q = sa.select(t.c.address, t.c.scope).where(
                t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address.in_(ordered[i : i + 500])
            )
            out.update({a: s for a, s in conn.execute(q)})
        return out

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
        self, conn: sa.Connection, channel: str, ids: Sequence[int], policy: DeliveryPolicy
    ) -> builtins.list[dict[int, int]]:
        """Per cap, customer id -> non-transactional messages in the cap's window.

        On a server database the customers' rows are locked first (``FOR NO
        KEY UPDATE``, in id order), until the decision commits: two
        concurrent sends for one customer then count one after the other,
        so a cap cannot be overrun.  (SQLite's ``BEGIN IMMEDIATE`` already
        serialises them.)  ``NO KEY`` keeps inserts that merely reference the
        customer (its interactions, other messages) from waiting.
        """
        t = self.t("messages")
        now = self.crm.now()
        if conn.dialect.name != "sqlite" and ids:
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
                    t.c.customer_id.in_(ids),
                    t.c.channel == channel,
                    t.c.transactional.is_(False),
                    t.c.status.in_(_COUNTED),
                    t.c.created_at >= now - timedelta(seconds=seconds),
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
        from ..validation import aware_datetime

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

        def context_for(c: Mapping[str, Any], uid: str) -> dict[str, Any]:
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
                except Exception as exc:
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
            for cid in ids:
                c = customers.get(cid)
                if c is None:
                    continue
                uid = uuid.uuid4().hex
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
                    except Exception as exc:
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
                keys = [p["dedupe_key"] for p in plans if p["dedupe_key"]]
                existing: dict[str, str] = {}
                for i in range(0, len(keys), 500):
                    existing.update(
                        conn.execute(
                            sa.select(t.c.dedupe_key, t.c.uid).where(
                                t.c.workspace_id == self.workspace, t.c.dedupe_key.in_(keys[i : i + 500])
                            )
                        ).all()
                    )
                rows, blocked_rows = [], []
                seen_keys: set[str] = set()
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
                    if reason is None and fault is None and caps:
                        for (limit, _w), counts in zip(pol.frequency_caps, caps, strict=True):
                            if counts.get(p["customer_id"], 0) >= limit:
                                reason = "frequency_cap"
                                break
                        if reason is None:
                            for counts in caps:
                                counts[p["customer_id"]] = counts.get(p["customer_id"], 0) + 1
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
                        {
                            "workspace_id": self.workspace,
                            "uid": p["uid"],
                            "channel": channel_name,
                            "customer_id": p["customer_id"],
                            "address": p["address"],
                            "purpose": purp.name,
                            "template": template_name,
                            "content": content.to_json() if content is not None else {},
                            "meta": meta,
                            "status": "blocked" if stopped else "queued",
                            "reason": _short(f"{fault.reason}: {fault.detail}", 500) if fault else reason,
                            "attempts": 0,
                            "max_attempts": pol.max_attempts,
                            "next_attempt_at": None if stopped else due,
                            "lease_until": None,
                            "provider_id": None,
                            "dedupe_key": key,
                            "transactional": purp.transactional,
                            "created_at": now,
                            "updated_at": now,
                            "sent_at": None,
                        }
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
                    conn.execute(sa.insert(t), rows)
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
                flush(chunk)
                chunk = []
        if chunk:
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
        except Exception as exc:
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
            c = self.crm.customers.get(ids[0])  # NotFound for an unknown id
            return {ids[0]: plain_customer(c)}
        svc = self.crm.customers
        t = self.t("customers")
        out: dict[int, dict[str, Any]] = {}
        ordered = builtins.list(ids)
        for i in range(0, len(ordered), 500):
            live = (t.c.id.in_(ordered[i : i + 500]), t.c.merged_into.is_(None))
            if conn is not None:
                q = sa.select(t.c.id, t.c.consent, t.c.timezone).where(t.c.workspace_id == self.workspace, *live)
                for cid, consent, tz in conn.execute(q):
                    out[cid] = {"id": cid, "timezone": tz, "consent": _statuses(consent)}
                continue
            with self.db.read() as rconn:
                rows = rconn.execute(svc._select().where(*live)).all()
            out.update({r.id: _plain_row(r._mapping) for r in rows})
        return out

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

    # -- feedback --------------------------------------------------------
    def apply_events(self, events: Iterable[MessageEvent]) -> builtins.list[MessageEvent]:
        """Apply what came back from a channel; return the events that were applied.

        The same as :meth:`apply` (read it for what is checked); this returns
        only ``applied``.  Ignored events are logged with the reason.
        """
        return builtins.list(self.apply(events).applied)

    def apply(self, events: Iterable[MessageEvent]) -> EventReport:
        """Apply what came back from a channel: applied, duplicates, ignored.

        What each event type does is in ``docs/channels.md`` ("Event types"):
        bounces suppress the message's address on the channel (``all``);
        complaints suppress it for non-transactional messages and deny the
        channel's consent; ``unsubscribed``/``resubscribed`` change consent
        for the purpose (or the channel); every applied event goes on the
        customer's timeline.  An event whose ``key`` was applied before is a
        duplicate: a replayed webhook or link changes nothing.

        Nothing is taken on trust:

        * an event naming a ``message_id`` is applied only in that message's
          workspace, to that message's customer, and only if its ``address``
          (when given) is that message's recipient (both normalised by the
          channel's :meth:`~ecrm_core.channels.Channel.normalize_address`),
          its ``channel`` the message's, its ``customer_id``/``workspace``
          (when given) the message's; a ``message_id`` that names no message
          is ignored;
        * the types in :data:`~ecrm_core.channels.MESSAGE_EVENTS` (bounces,
          complaints, deliveries, opens, clicks) need such a message;
        * ``unsubscribed``/``resubscribed``/``replied`` without a message go
          to ``customer_id`` (in the customer's workspace) or to the customer
          who has ``address`` as a stored identity (the channel's
          :attr:`~ecrm_core.registry.ChannelSpec.identities`), else the
          latest message sent to that address, in the event's ``workspace``
          (default: this view's).

        Anything else is ignored, logged with the reason and listed in
        :attr:`EventReport.ignored`; nothing here raises for a bad event (a
        database failure does raise: the sender should try again).
        """
        self.ready()
        events = builtins.list(events)
        if not events:
            return EventReport()
        t = self.t("messages")
        uids = {e.message_id for e in events if e.message_id is not None and _plausible_uid(e.message_id)}
        by_uid: dict[str, Mapping[str, Any]] = {}
        with self.db.read() as conn:
            ordered = sorted(uids)
            for i in range(0, len(ordered), 500):
                q = sa.select(t.c.uid, t.c.workspace_id, t.c.customer_id, t.c.address, t.c.purpose, t.c.channel).where(
                    t.c.uid.in_(ordered[i : i + 500])
                )
                by_uid.update({r.uid: r._mapping for r in conn.execute(q)})
        applied: builtins.list[MessageEvent] = []
        duplicates: builtins.list[MessageEvent] = []
        ignored: builtins.list[IgnoredEvent] = []

        def ignore(e: MessageEvent, reason: str) -> None:
            log.warning(
                "%s event on channel %s ignored: %s (message %s, address %s, key %s)",
                e.type,
                _clean(e.channel, 64),
                reason,
                _clean_opt(e.message_id, 80),
                _clean_opt(e.address, 120),
                _clean_opt(e.key, 120),
            )
            ignored.append(IgnoredEvent(event=e, reason=reason))

        for e in events:
            try:
                resolved = self._resolve_event(e, by_uid)
            except EcrmError as exc:
                ignore(e, f"could not be matched: {_clean(exc, 300)}")
                continue
            if isinstance(resolved, str):
                ignore(e, resolved)
                continue
            event, msg = resolved
            assert event.workspace is not None
            view = self.crm if event.workspace == self.workspace else self.crm.in_workspace(event.workspace)
            try:
                new = view.messages._apply_one(event, msg)
            except EcrmError as exc:
                ignore(e, f"could not be applied: {_clean(exc, 300)}")
                continue
            (applied if new else duplicates).append(event)
        if applied:
            self.crm.emit("ecrm_message_events", events=applied)
        return EventReport(applied=tuple(applied), duplicates=tuple(duplicates), ignored=tuple(ignored))

    def _resolve_event(
        self, e: MessageEvent, by_uid: Mapping[str, Mapping[str, Any]]
    ) -> tuple[MessageEvent, Mapping[str, Any] | None] | str:
        """The event completed with its workspace, customer and address, and its
        message; or why it is ignored."""
        import attrs

        if e.channel not in self.crm.registry.channels:
            return f"no channel is registered as {_clean(e.channel, 64)!r}"
        if e.message_id is not None:
            msg = by_uid.get(e.message_id) if _plausible_uid(e.message_id) else None
            if msg is None:
                return "no message has this message_id"
            if e.channel != msg["channel"]:
                return f"the message was sent on channel {msg['channel']!r}, not {e.channel!r}"
            if e.workspace is not None and e.workspace != msg["workspace_id"]:
                return "the event names another workspace than its message's"
            if e.customer_id is not None and e.customer_id != msg["customer_id"]:
                return "the event names another customer than its message's"
            if e.address is not None:
                recipient = msg["address"]
                if not isinstance(e.address, str) or recipient is None:
                    return "the address is not the message's recipient"
                norm = self._normalizer(e.channel)
                if norm(e.address) != norm(recipient):
                    return "the address is not the message's recipient"
            event = attrs.evolve(
                e, workspace=msg["workspace_id"], customer_id=msg["customer_id"], address=msg["address"]
            )
            return event, msg
        if e.type in MESSAGE_EVENTS:
            return f"a {e.type} event needs the message it is about (message_id)"
        if e.customer_id is not None:
            if isinstance(e.customer_id, bool) or not isinstance(e.customer_id, int):
                return "customer_id is not an integer"
            c = self.t("customers")
            with self.db.read() as conn:
                row = conn.execute(
                    sa.select(c.c.workspace_id, sa.func.coalesce(c.c.merged_into, c.c.id)).where(
                        c.c.id == e.customer_id
                    )
                ).first()
            if row is None:
                return "no customer has this customer_id"
            workspace, live = row[0], row[1]
            if e.workspace is not None and e.workspace != workspace:
                return "the customer is not in the event's workspace"
            return attrs.evolve(e, workspace=workspace, customer_id=live), None
        if e.address is None:
            return "the event names no message, customer or address"
        if not isinstance(e.address, str) or not e.address.strip() or _address_problem(e.address):
            return "the address is not an address"
        workspace = e.workspace or self.workspace
        view = self if workspace == self.workspace else self.crm.in_workspace(workspace).messages
        customer_id = view._customer_by_address(e.channel, e.address)
        if customer_id is None:
            return f"no customer of workspace {workspace!r} has this address"
        return attrs.evolve(e, workspace=workspace, customer_id=customer_id), None

    def _normalizer(self, channel: str) -> Callable[[str], str]:
        """The channel's ``normalize_address`` (the default one when the channel
        is unknown here or cannot be built)."""
        try:
            if channel in self.crm.registry.channels:
                return self.crm.channels.get(channel).normalize_address
        except ChannelConfigError:
            pass
        return normalize_address

    def identity_kinds(self, channel: str, address: str) -> tuple[str, ...]:
        """The identity (alias) kinds an address of ``channel`` is looked up as:
        the ChannelSpec's ``identities``, else ``email`` for an address with
        ``@`` and ``phone`` for any other."""
        spec = self.crm.registry.channels.get(channel)
        kinds = getattr(spec, "identities", None)
        if kinds is not None:
            return tuple(kinds)
        return ("email",) if "@" in address else ("phone",)

    def _customer_by_address(self, channel: str, address: str) -> int | None:
        """The customer reached at ``address`` on ``channel`` in this workspace:
        first through stored identities (see :meth:`identity_kinds`), then
        through the latest message sent there; ``None`` if nobody."""
        from ..domain import Alias

        aliases: builtins.list[Alias] = []
        for kind in self.identity_kinds(channel, address):
            try:
                aliases.append(Alias(kind, address))
            except (EcrmError, ValueError):
                continue  # not an address of that kind
        if aliases:
            found = self.crm.customers._resolve(None, aliases)
            for al in aliases:
                if al in found:
                    return found[al]
        candidates = {address, address.strip(), self._normalizer(channel)(address)}
        t, c = self.t("messages"), self.t("customers")
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(sa.func.coalesce(c.c.merged_into, c.c.id))
                .join(c, c.c.id == t.c.customer_id)
                .where(t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address.in_(sorted(candidates)))
                .order_by(t.c.id.desc())
                .limit(1)
            ).first()
        return int(row[0]) if row else None

    def _apply_one(self, e: MessageEvent, msg: Mapping[str, Any] | None) -> bool:
        """Apply one resolved event (its customer and workspace known, this
        view in that workspace); ``False`` for a replay."""
        kind = EVENT_KINDS[e.type]
        if e.type == "opened" and e.channel == "email":
            kind = "email_open"
        now = self.crm.now()
        with self.db.write() as conn:
            if e.customer_id is not None:
                props: dict[str, Any] = dict(e.properties)
                for k in ("message_id", "purpose", "url", "detail"):
                    v = getattr(e, k)
                    if v:
                        props["message" if k == "message_id" else k] = _clean(v, 2000)
                try:
                    _, created = self.crm.using(conn).interactions.track_status(
                        kind,
                        customer_id=e.customer_id,
                        channel=e.channel,
                        occurred_at=e.occurred_at or now,
                        idempotency_key=f"event:{e.channel}:{_clean(e.key, 150)}" if e.key else None,
                        properties=props,
                    )
                except IdempotencyConflict:
                    return False  # the same event key, told differently: still a replay
                if not created:
                    return False  # a replay: nothing changes
            detail = _clean(e.detail, 1000) if e.detail else None
            if msg is not None and e.type == "bounced" and e.address:
                self._suppress(conn, [(e.channel, e.address, "all", "hard_bounce", detail)])
            elif msg is not None and e.type == "complained" and e.address:
                self._suppress(conn, [(e.channel, e.address, "marketing", "complaint", detail)])
            # consent changes commit with the event: a crash cannot keep one without the other
            view = self.crm.using(conn)
            if e.customer_id is not None and e.type in ("complained", "unsubscribed", "resubscribed"):
                target = e.channel if (e.type == "complained" or not e.purpose) else f"{e.channel}:{e.purpose}"
                granted = e.type == "resubscribed"
                current = view.customers.get(e.customer_id)
                state = current.consent.get(target)
                if state is None or state.granted != granted:
                    view.customers.set_consent(
                        e.customer_id,
                        target,
                        granted,
                        source=f"{e.channel} {e.type}" + (f" ({e.message_id})" if e.message_id else ""),
                    )
        return True
