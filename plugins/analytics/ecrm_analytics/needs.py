"""Needs analysis back into targeting: the ``cluster(...)`` condition, and what merges and deletions do.

Condition type (``ecrm_register_condition_types``), for segments, lifecycle
stages and offer eligibility:

* ``cluster(id=2)``, ``cluster(id=(1, 3))`` — the customer's stored cluster
  number;
* ``cluster(label="high spend, recent, frequent")`` — the stored cluster
  label (exact text; a list matches any of them).

It compiles to one ``EXISTS`` over ``analytics_clusters`` (values bound,
never NULL) and evaluates in memory from the same row; the two agree (a
property test checks it).  A customer without a cluster (no purchase, or
clustered before they bought) matches nothing.

Merges and deletions: the source's cluster is dropped in the merge's
transaction and :func:`on_merged` places the survivor in the nearest stored
cluster after it; :func:`on_deleted`
erases the rows of the deleted customers (the table's foreign key cascades
too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError

from .schema import CLUSTERS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM
    from ecrm_core.registry import ConditionType

__all__ = ["MAX_AGE", "attribute_defs", "condition_types", "needs_tick", "on_deleted", "on_merged", "refresh_needs"]


def _validate_cluster(args: dict[str, Any]) -> dict[str, Any]:
    if not args or set(args) - {"id", "label"} or len(args) != 1:
        bad = next(iter(set(args) - {"id", "label"}), "args")
        raise ValidationError(
            bad, args.get(bad, args), "cluster() takes id or label", 'write cluster(id=2) or cluster(label="…")'
        )
    if "id" in args:
        values = args["id"] if isinstance(args["id"], (list, tuple)) else [args["id"]]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 20 for v in values):
            raise ValidationError("id", args["id"], "not a cluster number from 1 to 20", "write e.g. cluster(id=2)")
        return {"id": sorted(set(values))}
    values = args["label"] if isinstance(args["label"], (list, tuple)) else [args["label"]]
    if not values or any(not isinstance(v, str) or not v or len(v) > 200 for v in values):
        raise ValidationError("label", args["label"], "not a cluster label", 'write e.g. cluster(label="…")')
    return {"label": sorted(set(values))}


def _where(table: sa.Table, args: Mapping[str, Any]) -> Any:
    if "id" in args:
        return table.c.cluster.in_(list(args["id"]))
    return table.c.label.in_(list(args["label"]))


def _compile_cluster(args: Mapping[str, Any], ctx: Any) -> Any:
    table = ctx.tables[CLUSTERS]
    stmt = sa.select(sa.literal(1)).where(
        table.c.workspace_id == ctx.workspace, table.c.customer_id == ctx.customers.c.id, _where(table, args)
    )
    restrict = ctx.restrict_clause(table.c.customer_id)
    if restrict is not None:
        stmt = stmt.where(restrict)
    return sa.exists(stmt)


def _evaluate_cluster(args: Mapping[str, Any], ctx: Any) -> bool:
    crm = ctx.crm
    if crm is None:
        raise ValidationError("crm", None, "the cluster condition reads stored clusters", "evaluate through a CRM")
    table = crm.db.tables[CLUSTERS]
    with crm.db.read() as conn:
        row = conn.execute(
            sa.select(table.c.cluster, table.c.label).where(
                table.c.workspace_id == crm.workspace, table.c.customer_id == ctx.customer.id
            )
        ).first()
    if row is None:
        return False
    return row.cluster in args["id"] if "id" in args else row.label in args["label"]


def condition_types() -> list[ConditionType]:
    """The needs-analysis condition types: ``cluster(...)``."""
    from ecrm_core.registry import ConditionType

    return [
        ConditionType(
            name="cluster",
            compile=_compile_cluster,
            evaluate=_evaluate_cluster,
            validate=_validate_cluster,
            kinds=("purchase", "refund"),
            description='the customer\'s stored cluster: cluster(id=2), cluster(label="high spend, recent, frequent")',
        )
    ]


def attribute_defs() -> list[Any]:
    """The customer attributes the needs analysis writes (``cluster``, ``cluster_label``)."""
    from ecrm_core.registry import AttributeDef

    from .clusters import ATTRIBUTES

    return [AttributeDef(name=n, type=t, description=d) for n, (t, d) in ATTRIBUTES.items()]


#: stored basket rules and clusters are recomputed by the worker when older than this
MAX_AGE = timedelta(days=1)


def _saved(crm: CRM) -> dict[str, tuple[Any, dict[str, Any]]]:
    from .schema import STATE

    table = crm.db.tables[STATE]
    names = ("basket_product", "basket_category", "clusters")
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(table.c.name, table.c.updated_at, table.c.data).where(
                table.c.workspace_id == crm.workspace, table.c.name.in_(names)
            )
        ).all()
    return {r.name: (r.updated_at, dict(r.data or {})) for r in rows}


def refresh_needs(crm: CRM, *, max_age: timedelta = MAX_AGE) -> list[str]:
    """Recompute the stored basket rules and clusters older than ``max_age``, with the settings they were made with.

    Only what was saved before (``basket.save``, ``cluster_customers(save=True)``)
    is recomputed; returns what was done, one line each.
    """
    from .basket import basket_rules, save
    from .clusters import cluster_customers

    now = crm.now()
    done: list[str] = []
    for name, (at, data) in sorted(_saved(crm).items()):
        if at is not None and now - at < max_age:
            continue
        if name.startswith("basket_"):
            try:
                result = basket_rules(
                    crm,
                    level=name.removeprefix("basket_"),
                    method=data.get("method", "pairs"),
                    min_support=data.get("min_support", 0.001),
                    min_confidence=data.get("min_confidence", 0.1),
                    min_lift=data.get("min_lift", 1.0),
                )
            except ValidationError as exc:  # the data outgrew the stored settings: keep the old rules, go on
                done.append(f"{name} not refreshed: {exc}")
                continue
            save(crm, result)
            done.append(f"{len(result.rules)} {result.level} rules")
        else:
            fixed = data.get("k_fixed")
            clustering = cluster_customers(crm, k=fixed, k_min=data.get("k_min", 2), k_max=data.get("k_max", 8))
            done.append(f"{clustering.k} clusters" if clustering.clusters else clustering.message)
    return done


def needs_tick(ctx: Any) -> Any:
    """The worker job ``analytics.needs``: recompute stored basket rules and clusters once a day."""
    from ecrm_core.registry import JobResult

    done = refresh_needs(ctx.crm)
    return JobResult(done=len(done), message="; ".join(done) or "stored rules and clusters are current")


def on_merged(crm: CRM, target_id: int) -> None:
    """After a merge committed (the source's cluster forgotten in its transaction):
    place the survivor (who now has both histories) again."""
    from .clusters import assign

    assign(crm, [target_id])


def on_deleted(crm: CRM, conn: sa.Connection, customer_ids: Sequence[int]) -> None:
    """Erase the cluster rows of deleted customers, on ``conn`` (the delete's transaction)."""
    from .clusters import forget

    forget(crm, conn, customer_ids)
