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
    from ecrm_core.charts import Chart
    from ecrm_core.crm import CRM

__all__ = ["FEEDBACK", "STAGES", "Arm", "Evaluation", "StepResult", "Uplift", "evaluate"]


#: What the channels report back, by the interaction kind the pipeline records (``properties.message``
#: names the message): ``delivered`` needs delivery receipts, ``opened``/``clicked`` tracking.
FEEDBACK = {
    "message_delivered": "delivered",
    "email_open": "opened",
    "message_opened": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "unsubscribe": "unsubscribed",
    "complaint": "complained",
}
#: The funnel's stages, in order.
STAGES = ("reached", "sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "complained", "converted")


@frozen(kw_only=True)
class StepResult:
    """One send step in one arm: ``reached`` (customers a message was made for, blocked ones
    included), ``blocked`` (consent, caps…), ``sent`` (accepted by the channel), what the channel
    reported back (``delivered``, ``opened``, ``clicked``, ``bounced``, ``unsubscribed``,
    ``complained``: customers, each counted once), ``converted`` (recipients who reached the goal
    within its window) and their ``revenue``."""

    step: str
    arm: str
    channel: str
    reached: int = 0
    blocked: int = 0
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    unsubscribed: int = 0
    complained: int = 0
    converted: int = 0
    revenue: Decimal = Decimal(0)

    @property
    def revenue_per_recipient(self) -> Decimal:
        return (self.revenue / self.reached).quantize(Decimal("0.0001")) if self.reached else Decimal(0)


@frozen(kw_only=True)
class Arm:
    """One arm: ``entered`` customers, ``messaged`` (at least one message made for them),
    ``converted`` (the goal within its window), ``revenue`` (of the converting interactions), and
    the funnel: ``sent`` (at least one message accepted by the channel) and what the channel
    reported (customers who had a message delivered, opened, clicked, bounced, unsubscribed from
    or complained about)."""

    name: str
    entered: int
    messaged: int
    converted: int
    revenue: Decimal
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    unsubscribed: int = 0
    complained: int = 0

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    @property
    def revenue_per_customer(self) -> Decimal:
        return (self.revenue / self.entered).quantize(Decimal("0.0001")) if self.entered else Decimal(0)

    @property
    def revenue_per_recipient(self) -> Decimal:
        """Revenue per customer who was messaged (the holdout's: per customer entered)."""
        n = self.messaged if self.name != HOLDOUT else self.entered
        return (self.revenue / n).quantize(Decimal("0.0001")) if n else Decimal(0)


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
    steps: tuple[StepResult, ...] = ()
    within: str | None = None

    def uplift_chart(self) -> Chart:
        """Each arm's uplift against the holdout, in points, with its confidence interval."""
        from ecrm_core.charts import Chart, Series

        ups = self.uplifts
        caption = "; ".join(u.sentence() for u in ups) or (self.notes[0] if self.notes else "no uplift yet")
        return Chart(
            kind="interval",
            title=f"{self.campaign}: uplift in conversion against the holdout",
            categories=[u.arm for u in ups] or ["(none)"],
            series=[
                Series(
                    name="uplift (points)",
                    values=[u.points for u in ups] or [None],
                    lower=[u.low for u in ups] or [None],
                    upper=[u.high for u in ups] or [None],
                )
            ],
            reference=0,
            y_label="conversion points",
            caption=caption[:500],
        )

    def funnel_chart(self) -> Chart:
        """Per arm: entered, messaged, sent, delivered, opened, clicked, converted (share of entered)."""
        from ecrm_core.charts import Chart, Series

        stages = ("messaged", "sent", "delivered", "opened", "clicked", "converted")
        series = [
            Series(name=a.name, values=[(getattr(a, k) / a.entered) if a.entered else 0.0 for k in stages])
            for a in self.arms
        ]
        return Chart(
            kind="bar",
            title=f"{self.campaign}: funnel by arm (share of customers entered)",
            categories=list(stages),
            series=series[:24],
            value_format="percent",
            caption="; ".join(self.summary())[:500],
        )

    def summary(self) -> list[str]:
        """The results in plain language, one sentence each."""
        out = []
        for a in self.arms:
            if a.name == HOLDOUT:
                out.append(
                    f"{a.entered} customers were held out and sent nothing; {a.converted} of them converted "
                    f"({a.rate:.1%}) on their own."
                )
            else:
                out.append(
                    f"{a.name}: {a.entered} entered, {a.messaged} were messaged, {a.converted} converted "
                    f"({a.rate:.1%}), {a.revenue_per_recipient} revenue per recipient."
                )
        out += [u.sentence() for u in self.uplifts]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "goal": self.goal,
            "within": self.within,
            "arms": [
                {
                    "name": a.name,
                    "entered": a.entered,
                    "messaged": a.messaged,
                    "sent": a.sent,
                    "delivered": a.delivered,
                    "opened": a.opened,
                    "clicked": a.clicked,
                    "bounced": a.bounced,
                    "unsubscribed": a.unsubscribed,
                    "complained": a.complained,
                    "converted": a.converted,
                    "rate": a.rate,
                    "revenue": str(a.revenue),
                    "revenue_per_customer": str(a.revenue_per_customer),
                    "revenue_per_recipient": str(a.revenue_per_recipient),
                }
                for a in self.arms
            ],
            "steps": [
                {
                    "step": r.step,
                    "arm": r.arm,
                    "channel": r.channel,
                    **{k: getattr(r, k) for k in ("reached", "blocked", *STAGES[1:])},
                    "revenue": str(r.revenue),
                    "revenue_per_recipient": str(r.revenue_per_recipient),
                }
                for r in self.steps
            ],
            "summary": self.summary(),
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
    """The campaign's results by arm and by send step, and each arm's uplift against the holdout.

    Set-based: one query for the enrollments, one for the campaign's messages (by its dedupe-key
    prefix), one for the channel's feedback on them and one for the goal's interactions."""
    from .engine import _matches
    from .service import Campaigns
    from .validate import event_rule

    svc = Campaigns(crm)
    info = svc.get(key)
    c = info.definition
    now = crm.now()
    et, m, i = crm.db.tables[ENROLLMENTS], crm.db.tables["messages"], crm.db.tables["interactions"]
    rows: dict[int, tuple[str, datetime]] = {}
    # uid -> (customer, step, status, channel)
    msgs: dict[str, tuple[int, str, str, str]] = {}
    with crm.db.read() as conn:
        for cid, arm, entered in conn.execute(
            sa.select(et.c.customer_id, et.c.arm, et.c.entered_at).where(et.c.campaign_id == info.id)
        ):
            rows[cid] = (arm, entered)
        for uid, cid, dkey, status, channel in conn.execute(
            sa.select(m.c.uid, m.c.customer_id, m.c.dedupe_key, m.c.status, m.c.channel).where(
                m.c.workspace_id == crm.workspace, m.c.dedupe_key.like(f"cmp{info.id}.%")
            )
        ):
            parts = dkey.split(".")
            if len(parts) == 4 and cid in rows:
                msgs[uid] = (cid, parts[2], status, channel)
    feedback: dict[str, set[str]] = {}  # uid -> what came back
    if msgs and rows:
        earliest = min(e for _a, e in rows.values())
        q = sa.select(i.c.kind, i.c.properties).where(
            i.c.workspace_id == crm.workspace,
            i.c.kind.in_([k for k in FEEDBACK if k in crm.registry.interaction_kinds]),
            i.c.occurred_at >= earliest,
            i.c.customer_id.in_(sa.select(et.c.customer_id).where(et.c.campaign_id == info.id)),
        )
        with crm.db.read() as conn:
            for kind, props in conn.execute(q):
                uid = (props or {}).get("message") if isinstance(props, dict) else None
                if uid in msgs:
                    feedback.setdefault(uid, set()).add(FEEDBACK[kind])
    converted: set[int] = set()
    revenue: dict[int, Decimal] = {}
    notes: list[str] = []
    if c.goal is None:
        notes.append("the campaign has no goal: nothing converts")
    elif rows:
        within = parse_duration(c.goal.within, "goal.within")
        rule = crm.segments.compile(event_rule(c.goal.kind, c.goal.where)) if c.goal.where else None
        earliest = min(e for _a, e in rows.values())
        q = sa.select(
            i.c.customer_id, i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties
        ).where(
            i.c.workspace_id == crm.workspace,
            i.c.kind == c.goal.kind,
            i.c.occurred_at >= earliest,
            i.c.occurred_at <= now,  # future-stamped interactions have not happened yet
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
    # per customer: messaged / sent and what came back, over all the campaign's messages
    per_customer: dict[int, set[str]] = {}
    per_step: dict[tuple[str, str], dict[str, set[int]]] = {}
    channels: dict[str, str] = {}
    for uid, (cid, step, status, channel) in msgs.items():
        arm = rows[cid][0]
        got = per_customer.setdefault(cid, set())
        st = per_step.setdefault((step, arm), {})
        channels[step] = channel
        st.setdefault("reached", set()).add(cid)
        if status in ("blocked", "cancelled"):
            st.setdefault("blocked", set()).add(cid)
            continue
        got.add("messaged")
        if status == "sent":
            got.add("sent")
            st.setdefault("sent", set()).add(cid)
        for what in feedback.get(uid, ()):
            got.add(what)
            st.setdefault(what, set()).add(cid)
    arms = []
    for name in names:
        ids = [cid for cid, (a, _e) in rows.items() if a == name]
        count = {k: sum(1 for x in ids if k in per_customer.get(x, ())) for k in ("messaged", *STAGES[1:8])}
        arms.append(
            Arm(
                name=name,
                entered=len(ids),
                converted=sum(1 for x in ids if x in converted),
                revenue=sum((revenue.get(x, Decimal(0)) for x in ids), Decimal(0)),
                **count,
            )
        )
    order = {s.id: n for n, s in enumerate(c.steps)}
    steps = []
    for (step, arm), st in sorted(per_step.items(), key=lambda kv: (order.get(kv[0][0], 10**6), kv[0][0], kv[0][1])):
        reached = st.get("reached", set())
        steps.append(
            StepResult(
                step=step,
                arm=arm,
                channel=channels[step],
                reached=len(reached),
                blocked=len(st.get("blocked", ())),
                **{k: len(st.get(k, ())) for k in STAGES[1:8]},
                converted=len(reached & converted),
                revenue=sum((revenue.get(x, Decimal(0)) for x in reached), Decimal(0)),
            )
        )
    reports = _reported(crm, set(channels.values()))
    for ch, missing in sorted(reports.items()):
        if missing:
            notes.append(f"channel {ch!r} does not report {', '.join(missing)}: those counts stay 0")
    uplifts = _uplifts(arms, confidence, notes)
    return Evaluation(
        campaign=key,
        goal=c.goal.kind if c.goal else None,
        within=str(c.goal.within) if c.goal else None,
        arms=tuple(arms),
        uplifts=uplifts,
        notes=tuple(notes),
        steps=tuple(steps),
    )


def _reported(crm: CRM, channels: set[str]) -> dict[str, list[str]]:
    """Per channel, the feedback it cannot report (from its capabilities)."""
    out: dict[str, list[str]] = {}
    for ch in channels:
        spec = crm.registry.channels.get(ch)
        caps = set(spec.capabilities) if spec is not None else set()
        missing = []
        if "receipts" not in caps:
            missing.append("deliveries")
        if not caps & {"links", "html"}:
            missing.append("opens and clicks")
        out[ch] = missing
    return out


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
