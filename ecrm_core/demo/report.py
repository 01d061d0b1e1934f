"""The report: what ecrm knows about a workspace (:func:`shop_report`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from .shop import FX_TO_EUR

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM
    from ..domain import Offer
    from ..services.segments import Segment


@dataclass(frozen=True)
class TopCustomer:
    id: int
    name: str | None
    email: str | None
    lifecycle_stage: str
    orders: int
    spend: Decimal
    currency: str
    spend_eur: Decimal


@dataclass(frozen=True)
class ShopReport:
    """Numbers about a CRM's workspace (see :func:`shop_report`)."""

    customers: int
    interactions: int
    by_stage: list[tuple[str, int]]
    by_kind_channel: list[tuple[str, str | None, int]]
    revenue_by_month: list[tuple[str, Decimal]]  # "YYYY-MM", net revenue in EUR
    revenue_by_currency: list[tuple[str, Decimal, int]]  # currency, net revenue, orders
    top_customers: list[TopCustomer]
    active_offers: list[Offer]
    segments: list[Segment] = field(default_factory=list)
    by_phase: list[tuple[str, int]] = field(default_factory=list)


def shop_report(crm: CRM, *, top: int = 10) -> ShopReport:
    """What ecrm knows about the workspace: counts, revenue, top customers, offers.

    Revenue is purchases minus refunds; months and totals across currencies
    use the fixed :data:`FX_TO_EUR` rates (approximate, for the demo).
    """
    import sqlalchemy as sa

    crm.customers.ready()
    c, i = crm.db.tables["customers"], crm.db.tables["interactions"]
    ws = crm.workspace
    with crm.db.read() as conn:
        by_stage = [
            (stage, int(n))
            for stage, n in conn.execute(
                sa.select(c.c.lifecycle_stage, sa.func.count())
                .where(c.c.workspace_id == ws, c.c.merged_into.is_(None))
                .group_by(c.c.lifecycle_stage)
                .order_by(sa.func.count().desc())
            )
        ]
        by_kind_channel = [
            (kind, channel, int(n))
            for kind, channel, n in conn.execute(
                sa.select(i.c.kind, i.c.channel, sa.func.count())
                .where(i.c.workspace_id == ws)
                .group_by(i.c.kind, i.c.channel)
                .order_by(sa.func.count().desc(), i.c.kind, i.c.channel)
            )
        ]
        months: dict[str, Decimal] = defaultdict(Decimal)
        currencies: dict[str, Decimal] = defaultdict(Decimal)
        orders_by_currency: Counter[str] = Counter()
        spend: dict[int, Decimal] = defaultdict(Decimal)
        native: dict[int, tuple[Decimal, str]] = {}
        orders: Counter[int] = Counter()
        sales = sa.select(i.c.kind, i.c.customer_id, i.c.occurred_at, i.c.amount, i.c.currency).where(
            i.c.workspace_id == ws, i.c.kind.in_(("purchase", "refund")), i.c.amount.is_not(None)
        )
        for kind, cid, at, amount, currency in conn.execute(sales):
            sign = 1 if kind == "purchase" else -1
            eur = amount * FX_TO_EUR.get(currency, Decimal(0)) * sign
            months[at.strftime("%Y-%m")] += eur
            currencies[currency] += amount * sign
            spend[cid] += eur
            before, _ = native.get(cid, (Decimal(0), currency))
            native[cid] = (before + amount * sign, currency)
            if kind == "purchase":
                orders[cid] += 1
                orders_by_currency[currency] += 1
    best = sorted(spend, key=lambda k: (-spend[k], k))[:top]
    tops = []
    for cid in best:
        customer = crm.customers.get(cid)
        amount, currency = native[cid]
        tops.append(
            TopCustomer(
                id=cid,
                name=customer.name,
                email=customer.email,
                lifecycle_stage=customer.lifecycle_stage,
                orders=orders[cid],
                spend=amount,
                currency=currency,
                spend_eur=spend[cid].quantize(Decimal("0.01")),
            )
        )
    return ShopReport(
        customers=crm.customers.count(),
        interactions=crm.interactions.count(),
        by_stage=by_stage,
        by_kind_channel=by_kind_channel,
        revenue_by_month=[(m, months[m].quantize(Decimal("0.01"))) for m in sorted(months)],
        revenue_by_currency=sorted(
            ((cur, total, orders_by_currency[cur]) for cur, total in currencies.items()), key=lambda r: -r[2]
        ),
        top_customers=tops,
        active_offers=crm.offers.active(),
        segments=crm.segments.list(),
        by_phase=_by_phase(crm, by_stage),
    )


def _by_phase(crm: CRM, by_stage: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Customers per CRM phase (acquisition, cultivation, retention)."""
    stages = crm.registry.lifecycle_stages
    totals: dict[str, int] = {"acquisition": 0, "cultivation": 0, "retention": 0}
    for stage, n in by_stage:
        if stage in stages:
            totals[stages[stage].phase] = totals.get(stages[stage].phase, 0) + n
    return list(totals.items())
