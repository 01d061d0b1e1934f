"""The delivery pipeline's timeline rows (``message_sent``/``message_deferred``/``message_failed``),
written by a lean path of ``crm.interactions``' bulk writer.

The rows are built by the core from message rows it has just settled: a
registered core kind, a customer id, plain properties it made itself, no
idempotency key (an attempt settles once, in the transaction that writes its
attempt row, so the key could never match).  So the per-row checks and
payload hashing of ``track_many`` (identity stitching, key dedupe, field
validation), which cost more than the insert, are skipped; what stays is
what cannot be known in advance: the customer may have been merged since
the claim (the row goes to the survivor) or deleted (no row), one read for
the batch.  Listeners see the batch like any other
(``ecrm_interactions_inserted`` in the transaction, ``ecrm_interactions_recorded``
after the commit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...errors import EcrmError
from ...validation import _encode_mapping, properties_json
from ..tracking import _Prepared, _TrackState

if TYPE_CHECKING:  # pragma: no cover
    from ..interactions import Interactions

log = logging.getLogger("ecrm.messages")

#: One timeline row: (kind, customer id, channel, properties).
TimelineRow = tuple[str, int, str | None, Mapping[str, Any]]


def record_outcomes(interactions: Interactions, rows: Sequence[TimelineRow], at: datetime) -> int:
    """Store the delivery outcomes' interactions (all at ``at``), in the current transaction
    when ``interactions`` is a ``crm.using(conn)`` view; return how many were stored."""
    if not rows:
        return 0
    state = _TrackState(interactions, create_missing=False, keep=False)
    at = at.astimezone(UTC)
    text_at = at.isoformat(" ", "microseconds")[:26]
    at_db: Any = text_at if state.sqlite else at
    batch: list[_Prepared] = []
    for index, (kind, customer_id, channel, props) in enumerate(rows):
        try:
            text = _encode_mapping(props)
            if "\\" in text or not text.isascii():
                text = properties_json(props)  # the full checks, only for unusual text
        except (EcrmError, TypeError, ValueError) as exc:
            log.error("a %s interaction of customer %s was not stored: %s", kind, customer_id, exc)
            continue
        # the prepared tuple of tracking._TrackState (kind, channel, stored time, amount, currency,
        # properties, key, hash, time, amount, customer reference, row index)
        batch.append((kind, channel, at_db, None, None, text, None, None, at, None, customer_id, index))
    if not batch:
        return 0
    crm = interactions.crm
    plugins = crm.plugins
    with interactions.db.write() as conn:
        state.insert(conn, batch)
        if plugins.has_impls("ecrm_interactions_inserted"):
            for b in state.batches:
                plugins.notify_in_transaction("ecrm_interactions_inserted", conn, crm=crm, batch=b)
    for b in state.batches:
        crm.emit("ecrm_interactions_recorded", batch=b)
    return state.stored
