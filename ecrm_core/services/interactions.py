"""Interactions: track one, track many (set-based), timeline, 360° view.

The bulk path is the one the ingest benchmark measures.  Per row it does only
what must be per row — validate, normalise, hash the payload when there is an
idempotency key — and everything else per batch: one query to resolve
customers, one ``executemany`` of a statement compiled once by SQLAlchemy,
one event per committed batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import attrs
import sqlalchemy as sa

from ..domain import Alias, Interaction
from ..errors import BatchError, NotFound, RowError, ValidationError
from ..validation import aware_datetime, freeze
from ._base import Service
from .tracking import IDENTITY_KEY as IDENTITY_KEY
from .tracking import ROW_KEYS as ROW_KEYS
from .tracking import _Prepared
from .tracking import _TrackState as _TrackState  # the bulk path's per-call state (tests drive it directly)

__all__ = ["Interactions", "TrackResult", "CustomerView", "KindSummary"]


@attrs.frozen
class TrackResult:
    """What ``track_many`` did."""

    stored: int
    duplicates: int
    errors: tuple[RowError, ...]
    created_customers: int = 0


@attrs.frozen
class KindSummary:
    """One line of a customer's 360° view: a kind on a channel."""

    kind: str
    channel: str | None
    count: int
    amount: Decimal | None
    first_at: datetime
    last_at: datetime


@attrs.frozen
class CustomerView:
    """The 360° view of one customer: who, how we know them, what they did."""

    customer: Any
    aliases: tuple[Alias, ...]
    summary: tuple[KindSummary, ...]
    recent: tuple[Interaction, ...]


class Interactions(Service):
    """``crm.interactions``: everything customers did, across channels."""

    # ------------------------------------------------------------------
    # tracking
    # ------------------------------------------------------------------
    def track(self, kind: str, **fields: Any) -> Interaction:
        """Store one interaction and return it (with its id).

        Identify the customer with ``customer_id`` or one of ``external_id``,
        ``email``, ``phone``, ``anonymous_id`` (an unknown alias creates a
        prospect).  ``occurred_at`` defaults to now.  With an
        ``idempotency_key`` a retry returns the stored interaction; the same
        key with a different payload raises
        :class:`~ecrm_core.errors.IdempotencyConflict`.
        """
        return self.track_status(kind, **fields)[0]

    def track_status(self, kind: str, **fields: Any) -> tuple[Interaction, bool]:
        """Like :meth:`track`, and whether it stored something: ``(interaction, created)``.

        ``created`` is ``False`` when an idempotent retry returned the
        interaction stored earlier with the same ``idempotency_key`` (an API
        answers 200 instead of 201 then).
        """
        row = {"kind": kind, **fields}
        try:
            result = self._track(
                [row], on_error="raise", batch_size=1, create_missing=True, atomic=True, progress=None, keep=True
            )
        except BatchError as exc:
            raise exc.errors[0].error from None
        stored = result[1]
        if stored:
            return stored[0], True
        key = fields.get("idempotency_key")
        found = self.by_key(key) if key else None
        assert found is not None
        return found, False

    def track_many(
        self,
        rows: Iterable[Mapping[str, Any] | Interaction],
        *,
        on_error: Literal["raise", "skip"] = "raise",
        atomic: bool = True,
        batch_size: int = 5000,
        create_missing: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> TrackResult:
        """Store many interactions, set-based; return counts and rejected rows.

        Rows are mappings with the keys of :data:`ROW_KEYS` (or
        :class:`~ecrm_core.domain.Interaction` objects).

        * ``atomic=True`` (default): one transaction. With
          ``on_error="raise"``, a single bad row stores nothing and the
          :class:`~ecrm_core.errors.BatchError` lists every bad row; with
          ``"skip"`` the good rows are stored and the bad ones returned.
        * ``atomic=False``: each batch of ``batch_size`` rows commits on its
          own (for streams too large to hold in one transaction); with
          ``"raise"`` the call stops at the first batch that has a bad row
          after committing the batches before it — ``BatchError`` says so.

        ``ecrm_interactions_recorded`` fires once per committed batch.
        """
        if on_error not in ("raise", "skip"):
            raise ValidationError("on_error", on_error, "unknown mode", "use 'raise' or 'skip'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise ValidationError("batch_size", batch_size, "out of range", "use 1..100000")
        return self._track(rows, on_error, batch_size, create_missing, atomic, progress, keep=False)[0]

    def _track(
        self,
        rows: Iterable[Mapping[str, Any] | Interaction],
        on_error: str,
        batch_size: int,
        create_missing: bool,
        atomic: bool,
        progress: Callable[[int], None] | None,
        keep: bool,
    ) -> tuple[TrackResult, list[Interaction]]:
        self.ready()
        state = _TrackState(self, create_missing, keep)
        errors = state.errors

        plugins = self.crm.plugins
        transactional = plugins.has_impls("ecrm_interactions_inserted")

        def flush(conn: sa.Connection, batch: list[_Prepared]) -> None:
            done = len(state.batches)
            state.insert(conn, batch)
            if transactional:
                for b in state.batches[done:]:
                    plugins.notify_in_transaction("ecrm_interactions_inserted", conn, crm=self.crm, batch=b)
            if progress:
                progress(len(batch))

        it = iter(rows)
        index = 0
        if atomic:
            with self.db.write() as conn:
                batch: list[_Prepared] = []
                for row in it:
                    prepared = state.prepare(index, row)
                    index += 1
                    if prepared is not None and not (errors and on_error == "raise"):
                        batch.append(prepared)
                    if len(batch) >= batch_size:
                        flush(conn, batch)
                        batch = []
                if batch and not (errors and on_error == "raise"):
                    flush(conn, batch)
                if errors and on_error == "raise":
                    raise BatchError(errors, index)
            for b in state.batches:
                self.crm.emit("ecrm_interactions_recorded", batch=b)
        else:
            done = False
            while not done:
                batch = []
                for row in it:
                    prepared = state.prepare(index, row)
                    index += 1
                    if prepared is not None:
                        batch.append(prepared)
                    if len(batch) >= batch_size:
                        break
                else:
                    done = True
                if errors and on_error == "raise":
                    raise BatchError(errors, index, committed=state.stored)
                if batch:
                    with self.db.write() as conn:
                        flush(conn, batch)
                        if errors and on_error == "raise":
                            raise BatchError(errors, index, committed=state.stored - len(batch))
                    for b in state.batches:
                        self.crm.emit("ecrm_interactions_recorded", batch=b)
                    state.batches.clear()
        result = TrackResult(
            stored=state.stored, duplicates=state.duplicates, errors=tuple(errors), created_customers=state.created
        )
        return result, state.kept

    # ------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------
    def _from_row(self, m: Mapping[Any, Any]) -> Interaction:
        return Interaction(
            id=m["id"],
            workspace=m["workspace_id"],
            customer_id=m["customer_id"],
            kind=m["kind"],
            channel=m["channel"],
            occurred_at=m["occurred_at"],
            amount=m["amount"],
            currency=m["currency"],
            properties=freeze(m["properties"] or {}),  # stored data: not checked again
            idempotency_key=m["idempotency_key"],
            recorded_at=m["recorded_at"],
        )

    def get(self, interaction_id: int) -> Interaction:
        self.ready()
        i = self.t("interactions")
        with self.db.read() as conn:
            row = conn.execute(sa.select(i).where(i.c.workspace_id == self.workspace, i.c.id == interaction_id)).first()
        if row is None:
            raise NotFound("interaction", interaction_id)
        return self._from_row(row._mapping)

    def by_key(self, idempotency_key: str) -> Interaction | None:
        """The interaction stored with this idempotency key, if any."""
        self.ready()
        i = self.t("interactions")
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(i).where(i.c.workspace_id == self.workspace, i.c.idempotency_key == idempotency_key)
            ).first()
        return None if row is None else self._from_row(row._mapping)

    def timeline(
        self,
        customer_id: int,
        *,
        limit: int = 50,
        before: tuple[datetime, int] | None = None,
        kinds: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
    ) -> list[Interaction]:
        """The customer's interactions across every channel, newest first.

        Includes what was recorded against customers merged into this one.
        For the next page pass ``before=(last.occurred_at, last.id)``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit", limit, "out of range", "send 1..10000")
        cid = self.crm.customers.get(customer_id).id
        i = self.t("interactions")
        q = (
            sa.select(i)
            .where(i.c.workspace_id == self.workspace, i.c.customer_id == cid)
            .order_by(i.c.occurred_at.desc(), i.c.id.desc())
            .limit(limit)
        )
        if kinds:
            q = q.where(i.c.kind.in_([self.crm.check_kind(k) for k in kinds]))
        if channels:
            q = q.where(i.c.channel.in_(list(channels)))
        if before is not None:
            at, last_id = aware_datetime(before[0], "before"), before[1]
            q = q.where(sa.or_(i.c.occurred_at < at, sa.and_(i.c.occurred_at == at, i.c.id < last_id)))
        with self.db.read() as conn:
            return [self._from_row(r._mapping) for r in conn.execute(q)]

    def view(self, customer_id: int, *, recent: int = 20) -> CustomerView:
        """The 360° view: the customer, their aliases, per kind/channel totals, recent activity."""
        customer = self.crm.customers.get(customer_id)
        i = self.t("interactions")
        q = (
            sa.select(
                i.c.kind,
                i.c.channel,
                sa.func.count().label("n"),
                sa.func.sum(i.c.amount).label("amount"),
                sa.func.min(i.c.occurred_at).label("first_at"),
                sa.func.max(i.c.occurred_at).label("last_at"),
            )
            .where(i.c.workspace_id == self.workspace, i.c.customer_id == customer.id)
            .group_by(i.c.kind, i.c.channel)
            .order_by(sa.func.count().desc())
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        from ..storage import UTCDateTime

        conv = UTCDateTime().process_result_value
        dialect = self.db.engine.dialect
        summary = tuple(
            KindSummary(
                kind=r.kind,
                channel=r.channel,
                count=r.n,
                amount=None if r.amount is None else Decimal(str(r.amount)),
                first_at=conv(r.first_at, dialect),  # type: ignore[arg-type]
                last_at=conv(r.last_at, dialect),  # type: ignore[arg-type]
            )
            for r in rows
        )
        assert customer.id is not None
        return CustomerView(
            customer=customer,
            aliases=tuple(self.crm.customers.aliases(customer.id)),
            summary=summary,
            recent=tuple(self.timeline(customer.id, limit=recent)),
        )

    def count(self, kind: str | None = None) -> int:
        self.ready()
        i = self.t("interactions")
        q = sa.select(sa.func.count()).where(i.c.workspace_id == self.workspace)
        if kind is not None:
            q = q.where(i.c.kind == self.crm.check_kind(kind))
        with self.db.read() as conn:
            return int(conn.execute(q).scalar_one())
