"""Analytics results as rule conditions and customer attributes: the loop back into targeting.

Condition types (``ecrm_register_condition_types``), usable in segments,
lifecycle stages and offer eligibility:

* ``rfm(group="at_risk")``, ``rfm(group=("at_risk", "cant_lose_them"))``,
  ``rfm(r_min=4, f_min=3)``, ``rfm(m_max=2)`` — the stored RFM row; every
  given argument must hold; a customer without purchases matches nothing;
* ``clv(p_alive_lt=0.3)``, ``clv(value_12m_gt=500)``, ``clv(purchases_12m_ge=1)``
  — the stored CLV predictions: ``<metric>_<op>`` with metric ``p_alive``,
  ``purchases_12m``, ``expected_order_value``, ``value_12m`` and op ``lt``,
  ``le``, ``gt``, ``ge``; a customer without predictions matches nothing;
* ``churn(risk="high")``, ``churn(risk=("high", "medium"))`` — the churn
  risk of :mod:`ecrm_analytics.churn` from the stored RFM row (days since
  the last purchase, at the time the rule is evaluated), the CLV row's
  usual gap between purchases and P(alive) (recency rules alone without a
  CLV model); a customer without purchases matches nothing.

Each compiles to one ``EXISTS`` over the plugin's table (never NULL, values
bound) and evaluates in memory from the same row; the two agree (a property
test checks it).  Both read the stored results, which ``analytics.refresh``
keeps current: after each refresh the segments of the customers whose
results changed are refreshed too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError

from .rfm import GROUPS
from .schema import CLV, RFM

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.registry import AttributeDef, ConditionType

__all__ = ["ATTRIBUTES", "CHANGED", "CLV_METRICS", "attribute_defs", "condition_types"]

#: What the conditions declare as the "kind" whose arrival changes their answer: not an interaction
#: kind, but the plugin's refresh.  Their answers change only when analytics recomputes, so the core's
#: live refresh after a purchase skips them, and :func:`ecrm_analytics.service.Analytics.refresh`
#: refreshes exactly the segments and stages that use them, for the customers whose results changed.
CHANGED = "analytics.refreshed"

#: ``clv(...)`` metrics: argument prefix → column of ``analytics_clv``.
CLV_METRICS: Mapping[str, str] = {
    "p_alive": "p_alive",
    "purchases_12m": "purchases_12m",
    "expected_order_value": "expected_value",
    "value_12m": "value_12m",
}
_OPS = {"lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__"}
_SCORES = ("r_min", "r_max", "f_min", "f_max", "m_min", "m_max")

#: Customer attributes analytics copies when copying is on (:mod:`ecrm_analytics.attributes`), with their types.
ATTRIBUTES: Mapping[str, tuple[str, str]] = {
    "rfm_group": ("string", "the customer's RFM group (champions, loyal, … lost); absent without purchases"),
    "rfm_score": ("string", "the R, F and M scores as three digits, e.g. '545'"),
    "clv_p_alive": ("number", "probability (0-1) that the customer is still active (BG/NBD)"),
    "clv_value_12m": ("number", "expected value of the next 12 months, reporting currency"),
}


def _validate_rfm(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not args:
        raise ValidationError("args", args, "no argument", 'write e.g. rfm(group="at_risk") or rfm(r_min=4)')
    for key, value in args.items():
        if key == "group":
            groups = [value] if isinstance(value, str) else value
            if not isinstance(groups, (list, tuple)) or not groups:
                raise ValidationError("group", value, "not a group name or a list of them", 'e.g. group="at_risk"')
            for g in groups:
                if g not in GROUPS:
                    raise ValidationError("group", g, "not an RFM group", f"use one of {', '.join(GROUPS)}")
            out["group"] = sorted(set(groups))
        elif key in _SCORES:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise ValidationError(key, value, "not a score from 1 to 5", f"write e.g. {key}=4")
            out[key] = value
        else:
            raise ValidationError(key, value, "not an argument of rfm()", f"use group or {', '.join(_SCORES)}")
    return out


def _validate_clv(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not args:
        raise ValidationError("args", args, "no argument", "write e.g. clv(p_alive_lt=0.3) or clv(value_12m_gt=500)")
    for key, value in args.items():
        metric, _, op = key.rpartition("_")
        if metric not in CLV_METRICS or op not in _OPS:
            raise ValidationError(
                key, value, "not an argument of clv()",
                f"use <metric>_<lt|le|gt|ge> with metric one of {', '.join(CLV_METRICS)}",
            )  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(key, value, "not a number", f"write e.g. {key}=0.3")
        out[key] = float(value)
    return out


def _validate_churn(args: dict[str, Any]) -> dict[str, Any]:
    from .churn import RISKS

    unknown = sorted(set(args) - {"risk"})
    if unknown:
        raise ValidationError(unknown[0], args[unknown[0]], "not an argument of churn()", 'write churn(risk="high")')
    if "risk" not in args:
        raise ValidationError("args", args, "no argument", 'write e.g. churn(risk="high")')
    value = args["risk"]
    risks = [value] if isinstance(value, str) else value
    if not isinstance(risks, (list, tuple)) or not risks:
        raise ValidationError("risk", value, "not a risk level or a list of them", 'e.g. risk="high"')
    for r in risks:
        if r not in RISKS:
            raise ValidationError("risk", r, "not a churn risk level", f"use one of {', '.join(RISKS)}")
    return {"risk": sorted(set(risks))}


def _risks(args: Mapping[str, Any]) -> list[str]:
    value = args["risk"]
    return [value] if isinstance(value, str) else list(value)


def _days(dialect: str, later: Any, earlier: Any) -> Any:
    if dialect == "sqlite":
        return sa.func.julianday(later) - sa.func.julianday(earlier)
    return sa.extract("epoch", later - earlier) / 86400.0


def _compile_churn(args: Mapping[str, Any], ctx: Any) -> Any:
    from ecrm_core.storage import UTCDateTime

    from .churn import sql_risk

    rfm, clv = ctx.tables[RFM], ctx.tables[CLV]
    now = sa.bindparam(None, ctx.now, type_=UTCDateTime())
    gap = sa.case((clv.c.frequency > 0, clv.c.recency_days / clv.c.frequency))
    risk = sql_risk(_days(ctx.dialect, now, rfm.c.last_at), gap, clv.c.p_alive)
    stmt = (
        sa.select(sa.literal(1))
        .select_from(
            rfm.outerjoin(
                clv, sa.and_(clv.c.workspace_id == rfm.c.workspace_id, clv.c.customer_id == rfm.c.customer_id)
            )
        )
        .where(rfm.c.workspace_id == ctx.workspace, rfm.c.customer_id == ctx.customers.c.id, risk.in_(_risks(args)))
    )
    restrict = ctx.restrict_clause(rfm.c.customer_id)
    if restrict is not None:
        stmt = stmt.where(restrict)
    return sa.exists(stmt)


def _evaluate_churn(args: Mapping[str, Any], ctx: Any) -> bool:
    from .churn import risk_of

    row = _row(ctx, RFM)
    if row is None:
        return False
    c = _row(ctx, CLV)
    recency = (ctx.now - row.last_at).total_seconds() / 86400
    gap = (c.recency_days / c.frequency) if c is not None and c.frequency > 0 else None
    return risk_of(recency, gap, None if c is None else c.p_alive) in _risks(args)


def _exists(ctx: Any, table: sa.Table, where: list[Any]) -> Any:
    customers = ctx.customers
    stmt = sa.select(sa.literal(1)).where(
        table.c.workspace_id == ctx.workspace, table.c.customer_id == customers.c.id, *where
    )
    restrict = ctx.restrict_clause(table.c.customer_id)
    if restrict is not None:
        stmt = stmt.where(restrict)
    return sa.exists(stmt)


def _groups(args: Mapping[str, Any]) -> list[str]:
    value = args["group"]
    return [value] if isinstance(value, str) else list(value)


def _rfm_where(table: sa.Table, args: Mapping[str, Any]) -> list[Any]:
    where: list[Any] = []
    if "group" in args:
        where.append(table.c.grp.in_(_groups(args)))
    for key in _SCORES:
        if key in args:
            col = table.c[f"{key[0]}_score"]
            where.append(col >= args[key] if key.endswith("_min") else col <= args[key])
    return where


def _compile_rfm(args: Mapping[str, Any], ctx: Any) -> Any:
    table = ctx.tables[RFM]
    return _exists(ctx, table, _rfm_where(table, args))


def _compile_clv(args: Mapping[str, Any], ctx: Any) -> Any:
    table = ctx.tables[CLV]
    where = []
    for key, value in args.items():
        metric, _, op = key.rpartition("_")
        where.append(getattr(table.c[CLV_METRICS[metric]], _OPS[op])(sa.bindparam(None, value, type_=sa.Float())))
    return _exists(ctx, table, where)


def _row(ctx: Any, name: str) -> Any:
    crm = ctx.crm
    if crm is None:
        raise ValidationError("crm", None, f"the {name} condition reads stored analytics", "evaluate through a CRM")
    table = crm.db.tables[name]
    with crm.db.read() as conn:
        return conn.execute(
            sa.select(table).where(table.c.workspace_id == crm.workspace, table.c.customer_id == ctx.customer.id)
        ).first()


def _evaluate_rfm(args: Mapping[str, Any], ctx: Any) -> bool:
    row = _row(ctx, RFM)
    if row is None:
        return False
    if "group" in args and row.grp not in _groups(args):
        return False
    for key in _SCORES:
        if key in args:
            value = getattr(row, f"{key[0]}_score")
            if not (value >= args[key] if key.endswith("_min") else value <= args[key]):
                return False
    return True


def _evaluate_clv(args: Mapping[str, Any], ctx: Any) -> bool:
    row = _row(ctx, CLV)
    if row is None:
        return False
    for key, value in args.items():
        metric, _, op = key.rpartition("_")
        if not getattr(float(getattr(row, CLV_METRICS[metric])), _OPS[op])(value):
            return False
    return True


def condition_types() -> list[ConditionType]:
    from ecrm_core.registry import ConditionType

    return [
        ConditionType(
            name="rfm",
            compile=_compile_rfm,
            evaluate=_evaluate_rfm,
            validate=_validate_rfm,
            kinds=(CHANGED,),
            description='the customer\'s RFM group or scores: rfm(group="at_risk"), rfm(r_min=4, f_min=3)',
        ),
        ConditionType(
            name="clv",
            compile=_compile_clv,
            evaluate=_evaluate_clv,
            validate=_validate_clv,
            kinds=(CHANGED,),
            description="the customer's lifetime-value predictions: clv(p_alive_lt=0.3), clv(value_12m_gt=500)",
        ),
        ConditionType(
            name="churn",
            compile=_compile_churn,
            evaluate=_evaluate_churn,
            validate=_validate_churn,
            kinds=(CHANGED,),
            description='the customer\'s churn risk (recency, usual gap, P(alive)): churn(risk="high"), '
            'churn(risk=("high", "medium"))',
        ),
    ]


def attribute_defs() -> list[AttributeDef]:
    from ecrm_core.registry import AttributeDef

    return [AttributeDef(name=n, type=t, description=d) for n, (t, d) in ATTRIBUTES.items()]
