"""What analytics knows about customers, as attributes: read from the plugin's tables, copied only when asked.

By default the results are **not** copied into ``customers.attributes``:
rules read them with ``rfm(...)``, ``clv(...)`` and ``churn(...)``, and code
reads them with :func:`values` (many customers, one query per 500) or
:meth:`ecrm_analytics.service.Analytics.customer`.  A template gets them
through the send's ``context``::

    ctx = values(crm, ids)
    crm.messages.send_many("email", "winback", customer_ids=ids,
                           context=lambda c: {"analytics": ctx.get(c["id"], EMPTY)})

A host whose templates or personalization read ``customer.attributes``
turns copying on with :func:`set_copy` (``True``): each refresh then writes
the four attributes of :data:`ecrm_analytics.conditions.ATTRIBUTES` of the
customers whose values changed — and only those — and fires the core's
``ecrm_customers_updated`` for them, as any other attribute change
(segments on those attributes follow through the core's own handler).
The choice is stored per workspace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .schema import CLV, RFM, STATE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM
    from ecrm_core.domain import CustomerChange

__all__ = ["EMPTY", "KEYS", "copy_enabled", "copy_values", "emit", "holders", "set_copy", "sync", "values"]

#: The attributes, in order (see :data:`ecrm_analytics.conditions.ATTRIBUTES`).
KEYS: tuple[str, ...] = ("rfm_group", "rfm_score", "clv_p_alive", "clv_value_12m")
#: The values of a customer analytics knows nothing about.
EMPTY: Mapping[str, Any] = dict.fromkeys(KEYS)
_STATE_NAME = "attributes"
_CHUNK = 500


def copy_enabled(crm: CRM, conn: sa.Connection | None = None) -> bool:
    """Whether refreshes copy the results into ``customers.attributes`` in this workspace (default ``False``)."""
    st = crm.db.tables[STATE]
    stmt = sa.select(st.c.data).where(st.c.workspace_id == crm.workspace, st.c.name == _STATE_NAME)
    if conn is None:
        with crm.db.read() as c:
            data = c.execute(stmt).scalar_one_or_none()
    else:
        data = conn.execute(stmt).scalar_one_or_none()
    return bool((data or {}).get("copy"))


def set_copy(crm: CRM, enabled: bool) -> int:
    """Turn copying on or off for the workspace; return how many customers' attributes changed now.

    On: every customer's attributes are brought up to date at once.  Off: the
    four attributes are set to ``null`` where they were set (nothing reads
    them any more; they would only go stale).  Either way
    ``ecrm_customers_updated`` fires for the customers changed.
    """
    if not isinstance(enabled, bool):
        from ecrm_core.errors import ValidationError

        raise ValidationError("enabled", enabled, "not a boolean", "pass True or False")
    st = crm.db.tables[STATE]
    with crm.db.write() as conn:
        conn.execute(sa.delete(st).where(st.c.workspace_id == crm.workspace, st.c.name == _STATE_NAME))
        conn.execute(
            sa.insert(st).values(
                workspace_id=crm.workspace, name=_STATE_NAME, data={"copy": enabled}, updated_at=crm.now()
            )
        )
        changes = copy_values(crm, conn, None, clear=not enabled)
    emit(crm, changes)
    return len(changes)


def values(crm: CRM, customer_ids: Iterable[int], conn: sa.Connection | None = None) -> dict[int, dict[str, Any]]:
    """The attributes of these customers (only those with an RFM row; the others are :data:`EMPTY`)."""
    from .common import finite

    ids = sorted({int(c) for c in customer_ids})
    rfm, clv = crm.db.tables[RFM], crm.db.tables[CLV]
    out: dict[int, dict[str, Any]] = {}

    def read(c: sa.Connection) -> None:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            stmt = (
                sa.select(rfm.c.customer_id, rfm.c.grp, rfm.c.r_score, rfm.c.f_score, rfm.c.m_score,
                          clv.c.p_alive, clv.c.value_12m)
                .select_from(rfm.outerjoin(clv, sa.and_(clv.c.workspace_id == rfm.c.workspace_id,
                                                        clv.c.customer_id == rfm.c.customer_id)))
                .where(rfm.c.workspace_id == crm.workspace, rfm.c.customer_id.in_(chunk))
            )  # fmt: skip
            for cid, grp, r, f, m, p_alive, value in c.execute(stmt):
                out[int(cid)] = {
                    "rfm_group": grp,
                    "rfm_score": f"{r}{f}{m}",
                    "clv_p_alive": None if p_alive is None else _round(finite(p_alive), 4),
                    "clv_value_12m": None if value is None else _round(finite(value), 2),
                }

    if conn is None:
        with crm.db.read() as c:
            read(c)
    else:
        read(conn)
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def copy_values(
    crm: CRM, conn: sa.Connection, customer_ids: Iterable[int] | None, *, clear: bool = False
) -> list[CustomerChange]:
    """Write the attributes of these customers (``None``: everyone with a result or the attributes set) where
    they differ from the stored results; return the changes (fire them with :func:`emit` after the commit).

    ``clear``: set them to ``null``.  See :func:`sync`.
    """
    rfm = crm.db.tables[RFM]
    if customer_ids is None:
        owners = set(conn.execute(sa.select(rfm.c.customer_id).where(rfm.c.workspace_id == crm.workspace)).scalars())
        ids = sorted(owners | holders(crm, conn, KEYS[0]))
    else:
        ids = sorted({int(c) for c in customer_ids})
    changes: list[CustomerChange] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        changes += sync(crm, conn, chunk, {} if clear else values(crm, chunk, conn), KEYS)
    return changes


def holders(crm: CRM, conn: sa.Connection, key: str) -> set[int]:
    """The customers of the workspace whose attributes have ``key`` (set, even to ``null``)."""
    customers = crm.db.tables["customers"]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        has = sa.cast(customers.c.attributes, JSONB).op("?")(key)
    else:
        has = sa.func.json_type(customers.c.attributes, f"$.{key}").is_not(None)
    return set(conn.execute(sa.select(customers.c.id).where(customers.c.workspace_id == crm.workspace, has)).scalars())


def sync(
    crm: CRM,
    conn: sa.Connection,
    customer_ids: Sequence[int],
    wanted: Mapping[int, Mapping[str, Any]],
    keys: Sequence[str],
) -> list[CustomerChange]:
    """Set ``keys`` of these customers' attributes to ``wanted[id]`` (``null`` for a key or a customer not in
    it), writing only the customers whose values differ; return the changes for :func:`emit`.

    One ``executemany`` of the changed rows (the JSON rendered here); the
    rest of the attributes is untouched; ``updated_at`` moves as with any
    update.  Merged and unknown ids are skipped.  Any number of ids (read 500 at a time).
    """
    import attrs
    from ecrm_core.domain import CustomerChange
    from ecrm_core.validation import freeze, thaw

    customers = crm.db.tables["customers"]
    ids = sorted({int(c) for c in customer_ids})
    now = crm.now()
    changes: list[CustomerChange] = []
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for row in conn.execute(
            sa.select(customers).where(
                customers.c.workspace_id == crm.workspace, customers.c.id.in_(chunk), customers.c.merged_into.is_(None)
            )
        ):
            before = crm.customers._from_row(row)
            current = thaw(before.attributes)
            new = wanted.get(before.id, {})
            patch = {k: new.get(k) for k in keys}
            if all(current.get(k) == v for k, v in patch.items()):
                continue  # unchanged (a key absent and a null are the same: nothing known)
            current.update(patch)
            rows.append({"_id": before.id, "attributes": current, "updated_at": now})
            changes.append(CustomerChange(before, attrs.evolve(before, attributes=freeze(current), updated_at=now)))
    if rows:
        conn.execute(
            sa.update(customers)
            .where(customers.c.id == sa.bindparam("_id"))
            .values(attributes=sa.bindparam("attributes"), updated_at=sa.bindparam("updated_at")),
            rows,
        )
    return changes


def emit(crm: CRM, changes: Sequence[CustomerChange]) -> None:
    """Fire ``ecrm_customers_updated`` for ``changes`` (after their transaction committed), as the core does."""
    if changes:
        crm.emit("ecrm_customers_updated", changes=list(changes))
