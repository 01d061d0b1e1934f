"""Records of the delivery pipeline: what ``crm.messages`` returns, customers as plain
data, and the read-only lookups (``get``, ``locate``, ``list``, ``attempts``, ``counts``)."""

from __future__ import annotations

import builtins
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from attrs import field, frozen

from ...channels import (
    Content,
    DeliveryPolicy,
    DeliveryResult,
    InboundResponse,
    Message,
    MessageEvent,
    Purpose,
)
from ...errors import NotFound, ValidationError
from ...validation import thaw
from .._base import Service

if TYPE_CHECKING:  # pragma: no cover
    from ...domain import Customer

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
    started_at: datetime | None = None  # when the claim took the lease (the attempt's start)


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


#: The customer columns :func:`_plain_values` reads, in its order.
_CUSTOMER_COLUMNS = "id, external_id, email, phone, name, attributes, consent, lifecycle_stage, timezone, locale"


def _plain_values(r: Sequence[Any], attributes: Mapping[str, Any] | None, consent: dict[str, Any]) -> dict[str, Any]:
    """:func:`plain_customer` from a row of :data:`_CUSTOMER_COLUMNS` as the driver returns it,
    with its ``attributes`` and ``consent`` (the statuses) decoded by the caller."""
    name = r[4]
    return {
        "id": r[0],
        "external_id": r[1],
        "email": r[2],
        "phone": r[3],
        "name": name,
        "first_name": (name or "").split(" ")[0] or None,
        "attributes": dict(attributes or {}),
        "lifecycle_stage": r[7],
        "timezone": r[8],
        "locale": r[9],
        "consent": consent,
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


class _Lookups(Service):
    """Reading messages back: by id, in any workspace, as lists and counts."""

    # -- lookups ---------------------------------------------------------
    def _purpose(self, name: Any) -> Purpose:
        from ...crm import _registered

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
        """The delivery log of one message, oldest attempt first.

        An attempt in flight (the message is ``sending``) is listed as
        ``started``: its row is written once, when it settles (or, if its
        worker died, as ``lost`` when another worker takes the message over)."""
        self.ready()
        from ._sql import _attempt_id

        t, a = self.t("messages"), self.t("delivery_attempts")
        q = (
            sa.select(a)
            .join(t, t.c.id == a.c.message_id)
            .where(t.c.uid == message_id, t.c.workspace_id == self.workspace)
            .order_by(a.c.number, a.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
            msg = conn.execute(
                sa.select(t.c.id, t.c.status, t.c.attempts, t.c.updated_at).where(
                    t.c.uid == message_id, t.c.workspace_id == self.workspace
                )
            ).one_or_none()
        if msg is None:
            raise NotFound("message", message_id)
        out = [
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
        if msg.status == "sending" and all(r.number != msg.attempts for r in rows):
            out.append(
                Attempt(
                    attempt_id=_attempt_id(msg.id, message_id, msg.attempts),
                    number=msg.attempts,
                    status="started",
                    code=None,
                    reason=None,
                    provider_id=None,
                    started_at=msg.updated_at,
                    finished_at=None,
                )
            )
        return out

    def counts(self, *, channel: str | None = None) -> dict[str, int]:
        """How many messages are in each status."""
        self.ready()
        t = self.t("messages")
        q = sa.select(t.c.status, sa.func.count()).where(t.c.workspace_id == self.workspace).group_by(t.c.status)
        if channel:
            q = q.where(t.c.channel == channel)
        with self.db.read() as conn:
            return {s: n for s, n in conn.execute(q)}
