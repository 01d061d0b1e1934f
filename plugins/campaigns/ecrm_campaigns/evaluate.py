"""Evaluation: per arm, who entered, who was messaged, who converted, revenue — and the uplift of
each arm against the holdout with a confidence interval (statsmodels).

A customer *converted* when they have an interaction of the goal's kind
(matching its ``where``) at or after they entered and within the goal's
``within``; the revenue is the sum of those interactions' amounts.  With
re-entries, the latest entry counts.  The uplift is the difference of the
conversion rates (treated - holdout) with Newcombe's hybrid-score interval
(``statsmodels.stats.proportion.confint_proportions_2indep``) and the
p-value of the score test (``test_proportions_2indep``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen

from .assign import HOLDOUT
from .model import parse_duration
from .schema import ENROLLMENTS

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["Arm", "Evaluation", "Uplift", "evaluate"]


@frozen(kw_only=True)
class Arm:
    """One arm: ``entered`` customers, ``messaged`` (at least one message made for them),
    ``converted`` (the goal within its window), ``revenue`` (of the converting interactions)."""

    name: str
    entered: int
    messaged: int
    converted: int
    revenue: Decimal

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    @property
    def revenue_per_customer(self) -> Decimal:
        return (self.revenue / self.entered).quantize(Decimal("0.0001")) if self.entered else Decimal(0)


@frozen(kw_only=True)
class Uplift:
    """``arm`` against the holdout: the difference of conversion rates in points, its CI, the p-value."""

    arm: str
    points: float
    low: float
    high: float
    p_value: float
    confidence: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def sentence(self) -> str:
        verb = "lifts" if self.points >= 0 else "lowers"
        pct = round(self.confidence * 100)
        verdict = f"significant at {100 - pct} %" if self.significant else "not yet significant at this size"
        return (
            f"{self.arm} {verb} conversion by {abs(self.points):.1f} pts, "
            f"{pct}% CI [{self.low:.1f}, {self.high:.1f}]; {verdict}"
        )


@frozen(kw_only=True)
class Evaluation:
    campaign: str
    goal: str | None
    arms: tuple[Arm, ...]
    uplifts: tuple[Uplift, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "goal": self.goal,
            "arms": [
                {
                    "name": a.name,
                    "entered": a.entered,
                    "messaged": a.messaged,
                    "converted": a.converted,
                    "rate": a.rate,
                    "revenue": str(a.revenue),
                    "revenue_per_customer": str(a.revenue_per_customer),
                }
                for a in self.arms
            ],
            "uplifts": [
                {
                    "arm": u.arm,
                    "points": u.points,
                    "low": u.low,
                    "high": u.high,
                    "p_value": u.p_value,
                    "confidence": u.confidence,
                    "significant": u.significant,
                    "summary": u.sentence(),
                }
                for u in self.uplifts
            ],
            "notes": list(self.notes),
        }


def uplift(arm: str, treated: tuple[int, int], control: tuple[int, int], confidence: float = 0.95) -> Uplift:
    """The difference of two conversion rates (``(converted, entered)`` each), in points, with its CI."""
    try:
        from statsmodels.stats.proportion import (  # type: ignore[import-untyped]
            confint_proportions_2indep,
            test_proportions_2indep,
        )
    except ImportError:  # pragma: no cover - depends on the installation
        raise LookupError("the evaluation needs statsmodels: pip install 'ecrm-campaigns[evaluate]'") from None
    import math
    import warnings

    (c1, n1), (c2, n2) = treated, control
    with warnings.catch_warnings():
        # both rates 0 (or both 1): the score statistic is 0/0 -- no evidence of a difference (p = 1)
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint_proportions_2indep(c1, n1, c2, n2, method="newcomb", compare="diff", alpha=1 - confidence)
        test = test_proportions_2indep(c1, n1, c2, n2, method="score", compare="diff")
    p_value = float(test.pvalue)
    return Uplift(
        arm=arm,
        points=(c1 / n1 - c2 / n2) * 100,
        low=float(low) * 100,
        high=float(high) * 100,
        p_value=1.0 if math.isnan(p_value) else p_value,
        confidence=confidence,
    )


def evaluate(crm: CRM, key: str, *, confidence: float = 0.95) -> Evaluation:
    """The campaign's results by arm, and each arm's uplift against the holdout."""
    from .engine import _matches
    from .service import Campaigns
    from .validate import event_rule

    svc = Campaigns(crm)
    info = svc.get(key)
    c = info.definition
    et, m = crm.db.tables[ENROLLMENTS], crm.db.tables["messages"]
    rows: dict[int, tuple[str, datetime]] = {}
    with crm.db.read() as conn:
        for cid, arm, entered in conn.execute(
            sa.select(et.c.customer_id, et.c.arm, et.c.entered_at).where(et.c.campaign_id == info.id)
        ):
            rows[cid] = (arm, entered)
        messaged = set(
            conn.scalars(
                sa.select(m.c.customer_id)
                .distinct()
                .where(
                    m.c.workspace_id == crm.workspace,
                    m.c.dedupe_key.like(f"cmp{info.id}.%"),
                    m.c.status.notin_(("blocked", "cancelled")),
                )
            )
        )
    converted: set[int] = set()
    revenue: dict[int, Decimal] = {}
    notes: list[str] = []
    if c.goal is None:
        notes.append("the campaign has no goal: nothing converts")
    elif rows:
        within = parse_duration(c.goal.within, "goal.within")
        rule = crm.segments.compile(event_rule(c.goal.kind, c.goal.where)) if c.goal.where else None
        i = crm.db.tables["interactions"]
        earliest = min(e for _a, e in rows.values())
        q = sa.select(
            i.c.customer_id, i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties
        ).where(
            i.c.workspace_id == crm.workspace,
            i.c.kind == c.goal.kind,
            i.c.occurred_at >= earliest,
            i.c.occurred_at <= crm.now(),  # future-stamped interactions have not happened yet
            i.c.customer_id.in_(sa.select(et.c.customer_id).where(et.c.campaign_id == info.id)),
        )
        with crm.db.read() as conn:
            for r in conn.execute(q):
                arm_entered = rows.get(r.customer_id)
                if arm_entered is None or not (arm_entered[1] <= r.occurred_at <= arm_entered[1] + within):
                    continue
                if rule is not None and not _matches(rule, r, r.occurred_at):
                    continue
                converted.add(r.customer_id)
                if r.amount is not None:
                    revenue[r.customer_id] = revenue.get(r.customer_id, Decimal(0)) + Decimal(r.amount)
    names = [HOLDOUT] if c.holdout else []
    names += [v.name for v in c.variants] or ["main"]
    arms = []
    for name in names:
        ids = [cid for cid, (a, _e) in rows.items() if a == name]
        arms.append(
            Arm(
                name=name,
                entered=len(ids),
                messaged=sum(1 for x in ids if x in messaged),
                converted=sum(1 for x in ids if x in converted),
                revenue=sum((revenue.get(x, Decimal(0)) for x in ids), Decimal(0)),
            )
        )
    uplifts = _uplifts(arms, confidence, notes)
    return Evaluation(
        campaign=key, goal=c.goal.kind if c.goal else None, arms=tuple(arms), uplifts=uplifts, notes=tuple(notes)
    )


def _uplifts(arms: Sequence[Arm], confidence: float, notes: list[str]) -> tuple[Uplift, ...]:
    control = next((a for a in arms if a.name == HOLDOUT), None)
    if control is None:
        notes.append("no holdout: the uplift cannot be measured (give the campaign a holdout %)")
        return ()
    if control.entered == 0:
        notes.append("the holdout is empty so far")
        return ()
    out = []
    for a in arms:
        if a.name == HOLDOUT:
            continue
        if a.entered == 0:
            notes.append(f"{a.name}: nobody entered yet")
            continue
        out.append(uplift(a.name, (a.converted, a.entered), (control.converted, control.entered), confidence))
    return tuple(out)
