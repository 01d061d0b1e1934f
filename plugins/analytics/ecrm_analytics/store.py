"""Dirty marks: which customers' analytics must be recomputed, and clearing what analytics keeps.

A batch of purchases or refunds marks its customers in the core's ingest
transaction (``ecrm_interactions_inserted``: one statement per batch, rolled
back with the batch); the worker job ``analytics.refresh`` claims marks,
recomputes those customers set-based and deletes the marks it handled —
only if they were not re-marked meanwhile (each mark carries a fresh
``mark`` value).  Merges mark the surviving customer; deletions cascade.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .common import SALE_KINDS
from .schema import CLV, DIRTY, RFM

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM
    from ecrm_core.domain import InteractionBatch

__all__ = ["claim", "forget", "mark", "mark_all", "mark_batch", "pending", "release"]

_counter = itertools.count()


def _mark_value() -> int:
    # unique per call within a process, and increasing across processes over time
    return time.time_ns() // 1000 * 1000 + next(_counter) % 1000


def _insert(conn: sa.Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def mark(crm: CRM, conn: sa.Connection, customer_ids: Iterable[int]) -> int:
    """Mark customers (of ``crm``'s workspace) for recomputation, on ``conn``; return how many."""
    ids = sorted(set(customer_ids))
    if not ids:
        return 0
    table = crm.db.tables[DIRTY]
    ins = _insert(conn)(table)
    stmt = ins.on_conflict_do_update(
        index_elements=[table.c.workspace_id, table.c.customer_id], set_={"mark": ins.excluded.mark}
    )
    value = _mark_value()
    conn.execute(stmt, [{"workspace_id": crm.workspace, "customer_id": c, "mark": value} for c in ids])
    return len(ids)


def mark_batch(crm: CRM, conn: sa.Connection, batch: InteractionBatch) -> int:
    """Mark the customers of ``batch``'s purchases and refunds (in the ingest transaction)."""
    if not batch.kinds & set(SALE_KINDS):
        return 0
    cols = batch.columns
    ids = {c for c, k in zip(cols["customer_id"], cols["kind"], strict=True) if k in SALE_KINDS}
    return mark(crm.in_workspace(batch.workspace), conn, ids)


def mark_all(crm: CRM, conn: sa.Connection) -> int:
    """Mark every customer of the workspace that has analytics or sales (after a change of rates)."""
    table = crm.db.tables[DIRTY]
    it = crm.db.tables["interactions"]
    buyers = (
        sa.select(sa.literal(crm.workspace), it.c.customer_id, sa.literal(_mark_value()))
        .where(it.c.workspace_id == crm.workspace, it.c.kind.in_(SALE_KINDS))
        .distinct()
    )
    conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
    result = conn.execute(sa.insert(table).from_select(["workspace_id", "customer_id", "mark"], buyers))
    return int(result.rowcount or 0)


def pending(crm: CRM) -> int:
    """How many customers of the workspace are marked."""
    table = crm.db.tables[DIRTY]
    with crm.db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.workspace_id == crm.workspace)
            ).scalar_one()
        )


def claim(crm: CRM, conn: sa.Connection, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` marked customers of the workspace as ``(customer_id, mark)``, oldest marks first."""
    table = crm.db.tables[DIRTY]
    rows = conn.execute(
        sa.select(table.c.customer_id, table.c.mark)
        .where(table.c.workspace_id == crm.workspace)
        .order_by(table.c.mark, table.c.customer_id)
        .limit(limit)
    ).all()
    return [(int(r[0]), int(r[1])) for r in rows]


def release(crm: CRM, conn: sa.Connection, claimed: Sequence[tuple[int, int]]) -> None:
    """Delete the claimed marks that were not renewed since they were claimed."""
    if not claimed:
        return
    table = crm.db.tables[DIRTY]
    stmt = sa.delete(table).where(
        table.c.workspace_id == crm.workspace,
        table.c.customer_id == sa.bindparam("c"),
        table.c.mark == sa.bindparam("m"),
    )
    conn.execute(stmt, [{"c": c, "m": m} for c, m in claimed])


def forget(crm: CRM, conn: sa.Connection, customer_ids: Iterable[int]) -> None:
    """Delete every analytics row of these customers (whatever the workspace)."""
    ids = sorted(set(customer_ids))
    if not ids:
        return
    for name in (DIRTY, RFM, CLV):
        table = crm.db.tables[name]
        for start in range(0, len(ids), 500):
            conn.execute(sa.delete(table).where(table.c.customer_id.in_(ids[start : start + 500])))
