"""What the plugin stores about a person, moved on merge and erased on deletion.

Per person the plugin keeps: the preference centre's answers
(``personalize_preferences``) and the outcomes of decisions shown to them
(``personalize_outcomes``, by customer id, or by visitor id until the visitor
logs in).  Bandit arms and recommendation lists are aggregates: no person in
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .schema import OUTCOMES, PREFERENCES

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Alias

__all__ = ["on_deleted", "on_merged", "on_visitor_identified"]


def on_merged(crm: CRM, conn: sa.Connection, source_id: int, target_id: int) -> None:
    """The source's preferences join the target's (the target's answers win); outcomes move;
    on ``conn`` (the merge's transaction)."""
    p = crm.db.tables[PREFERENCES]
    o = crm.db.tables[OUTCOMES]
    rows = {r.customer_id: r for r in conn.execute(sa.select(p).where(p.c.customer_id.in_([source_id, target_id])))}
    src = rows.get(source_id)
    if src is not None:
        tgt = rows.get(target_id)
        if tgt is None:
            conn.execute(sa.update(p).where(p.c.customer_id == source_id).values(customer_id=target_id))
        else:
            merged = {**(src.data or {}), **(tgt.data or {})}
            conn.execute(sa.update(p).where(p.c.customer_id == target_id).values(data=merged))
            conn.execute(sa.delete(p).where(p.c.customer_id == source_id))
    conn.execute(sa.update(o).where(o.c.customer_id == source_id).values(customer_id=target_id))


def on_deleted(crm: CRM, conn: sa.Connection, customer_ids: Sequence[int], aliases: Sequence[Alias] = ()) -> None:
    """Erase the preferences and decision outcomes of the deleted customers,
    and the outcomes still kept under one of their visitor ids (``anonymous``
    aliases: a visitor the customer was recognised as without logging in
    through :meth:`~ecrm_personalize.Personalize.identify`), on ``conn``
    (the delete's transaction)."""
    ids = list(customer_ids)
    visitors = sorted({a.value for a in aliases if a.kind == "anonymous"})
    if not ids and not visitors:
        return
    p = crm.db.tables[PREFERENCES]
    o = crm.db.tables[OUTCOMES]
    if ids:
        conn.execute(sa.delete(p).where(p.c.customer_id.in_(ids)))
        conn.execute(sa.delete(o).where(o.c.customer_id.in_(ids)))
    if visitors:
        conn.execute(sa.delete(o).where(o.c.workspace_id == crm.workspace, o.c.visitor.in_(visitors)))


def on_visitor_identified(crm: CRM, visitor: str, customer_id: int) -> None:
    """Outcomes recorded for the anonymous visitor now belong to the customer."""
    o = crm.db.tables[OUTCOMES]
    with crm.db.write() as conn:
        conn.execute(
            sa.update(o)
            .where(o.c.workspace_id == crm.workspace, o.c.visitor == visitor)
            .values(customer_id=customer_id, visitor=None)
        )
