"""The delivery pipeline: ``crm.channels`` and ``crm.messages``.

The pipeline is the same for every channel (see :mod:`ecrm_core.channels`):

1. **Decide** (``send``/``send_many``): check consent, suppression,
   frequency caps and quiet hours; render; write the message to the outbox
   in the *same transaction* as the decision (with ``crm.using(conn)`` that
   is the host's transaction).  A blocked message is stored too, with the
   reason, so "why did Ada not get it" has an answer.
2. **Dispatch** (``dispatch``/``work``): claim due messages under a lease
   (one ``UPDATE … RETURNING``), hand them to the channel with an
   ``attempt_id`` each (derived from the message and the attempt number),
   record each outcome (the attempt's row, written once).  Accepted → ``sent``; deferred → retried with
   exponential backoff; rejected or out of attempts → ``dead`` (the dead
   letter, which ``replay`` re-queues).  A worker that dies between claim
   and record leaves a lease that expires: the message is retried with the
   same message id (the provider's idempotency key), never lost.
3. **Feedback** (``apply_events``): bounces suppress the address,
   complaints suppress marketing, unsubscribes change consent, opens and
   clicks land on the timeline — each event once, by its key.

Every attempt is a row in ``delivery_attempts`` and an interaction on the
customer's timeline (``message_sent``/``message_deferred``/``message_failed``,
written by :mod:`.timeline`, the bulk interaction writer's lean path).

The package, one module per responsibility: :mod:`.records` (what is
returned, customers as plain data, lookups), :mod:`.safety` (what may be
stored), :mod:`.suppression`, :mod:`.send` (decide and plan), :mod:`.screen` (decide without
writing: what ``send_many`` would do),
:mod:`.deliver` (claim and deliver, dead letters), :mod:`.timeline` (the
outcomes' interactions), :mod:`.events`
(feedback) and :mod:`.service` (``Channels``, ``Messages``).
"""

from __future__ import annotations

from .records import (
    FAILURE_REASONS,
    MAX_LISTED_FAILURES,
    STATUSES,
    Attempt,
    DispatchReport,
    EventReport,
    Failure,
    IgnoredEvent,
    InboundResult,
    MessageRecord,
    MessageStatus,
    Outcome,
    SendReport,
    Suppression,
    plain_customer,
    quiet_until,
)
from .screen import Screened, Screening
from .service import Channels, Messages

__all__ = [
    "MAX_LISTED_FAILURES",
    "STATUSES",
    "MessageStatus",
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
    "Screened",
    "Screening",
    "plain_customer",
    "quiet_until",
]
