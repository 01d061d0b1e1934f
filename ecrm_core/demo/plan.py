"""Planning the demo: who the customers are, when they visit, and every interaction they make."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from .shop import (
    _CATEGORIES,
    _HOURS,
    _PAGES,
    _REGIONS,
    _SEARCHES,
    _SEASON,
    _SEGMENTS,
    _UTC,
    DEMO_ID_PREFIX,
    DemoProgress,
    _Plan,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM


def _month_starts(start: datetime, end: datetime) -> list[datetime]:
    out = []
    cursor = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while cursor < end:
        out.append(cursor)
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation, plenty for demo data
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", ".", text.lower()).strip(".") or "user"


def _plan_customers(n: int, seed: int, end: datetime, months: int, progress: DemoProgress | None = None) -> list[_Plan]:
    from zoneinfo import ZoneInfo

    import phonenumbers
    from faker import Faker

    rng = random.Random(seed)
    fakers: dict[str, Any] = {}
    for region in _REGIONS:
        fake = Faker(region.faker_locale)
        fake.seed_instance(seed)
        fakers[region.code] = fake
    start = end - timedelta(days=round(months * 30.44))
    span = (end - start).total_seconds()
    month_starts = _month_starts(start, end)
    used_phones: set[str] = set()
    region_weights = list(accumulate(r.weight for r in _REGIONS))
    segment_weights = list(accumulate(s.weight for s in _SEGMENTS))
    plans: list[_Plan] = []
    for index in range(n):
        region = rng.choices(_REGIONS, cum_weights=region_weights)[0]
        segment = rng.choices(_SEGMENTS, cum_weights=segment_weights)[0]
        fake = fakers[region.code]
        # The shop grows: more sign-ups in recent months.
        signup = start + timedelta(seconds=span * rng.random() ** 0.75)
        active = [(signup, end)]
        if rng.random() < segment.churn:
            leave = signup + (end - signup) * rng.uniform(0.2, 0.9)
            active = [(signup, leave)]
            if rng.random() < 0.25 and (end - leave) > timedelta(days=240):  # some come back
                back = leave + timedelta(days=rng.uniform(200, (end - leave).days - 20))
                active.append((back, end))
        tz = rng.choice(region.timezones)
        plan = _Plan(index=index, region=region, segment=segment, tz=tz, signup=signup, active=active)
        _plan_sessions(plan, rng, month_starts, end, ZoneInfo(tz))
        name = fake.name()
        email = f"{_clean(fake.user_name())}.{index + 1}@{fake.free_email_domain()}"
        phone = None
        if rng.random() < 0.7:
            for _ in range(6):
                number = phonenumbers.parse(region.phone(rng))
                candidate = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                if phonenumbers.is_valid_number(number) and candidate not in used_phones:
                    used_phones.add(candidate)
                    phone = candidate
                    break
        consent: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.65:
            plan.email_granted = True
            consent["email"] = {"status": "granted", "at": signup, "source": "signup form"}
            if rng.random() < 0.06:
                plan.unsubscribed_at = signup + (end - signup) * rng.uniform(0.1, 0.95)
                consent["email"] = {"status": "denied", "at": plan.unsubscribed_at, "source": "unsubscribe link"}
        elif roll < 0.82:
            consent["email"] = {"status": "denied", "at": signup, "source": "signup form"}
        if phone and rng.random() < 0.35:
            consent["sms"] = {"status": "granted", "at": signup, "source": "checkout"}
        plan.row = {
            "external_id": plan.external_id,
            "email": email,
            "name": name,
            "timezone": tz,
            "locale": region.locale,
            "consent": consent,
            "attributes": {
                "country": region.code,
                "signup_date": signup.date().isoformat(),
                "signup_source": rng.choices(("organic", "ads", "referral", "social"), (5, 3, 1, 2))[0],
                "favourite_category": rng.choice(_CATEGORIES),
                "segment": segment.name,
            },
        }
        if phone:
            plan.row["phone"] = phone
        plans.append(plan)
        if progress and index % 100 == 99:
            progress.advance(100)
    return plans


def _plan_sessions(plan: _Plan, rng: random.Random, month_starts: list[datetime], end: datetime, tz: Any) -> None:
    seg = plan.segment
    for month in month_starts:
        next_month = (month + timedelta(days=32)).replace(day=1)
        for lo, hi in plan.active:
            a, b = max(lo, month), min(hi, next_month, end)
            if a >= b:
                continue
            share = (b - a) / (next_month - month)
            season = _SEASON[month.month - 1]
            for _ in range(_poisson(rng, seg.sessions_per_month * season * share)):
                at = a + (b - a) * rng.random()
                local = at.astimezone(tz)
                hour = rng.choices(range(24), cum_weights=_HOURS)[0]
                at = local.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60)).astimezone(_UTC)
                if not a <= at < b:
                    continue
                cart = rng.random() < seg.cart * (1.2 if month.month in (11, 12) else 1.0)
                bought = cart and rng.random() < seg.buy
                plan.sessions.append((at, cart, bought))
    plan.sessions.sort()


def _demo_ids(crm: CRM, conn: Any) -> dict[str, int]:
    import sqlalchemy as sa

    t = crm.db.tables["customers"]
    q = sa.select(t.c.external_id, t.c.id).where(
        t.c.workspace_id == crm.workspace, t.c.external_id.like(f"{DEMO_ID_PREFIX}%")
    )
    return {ext: cid for ext, cid in conn.execute(q)}


def _amount(rng: random.Random, plan: _Plan, at: datetime) -> Decimal:
    base = rng.lognormvariate(math.log(48), 0.55) * plan.segment.basket
    if at.month in (11, 12):
        base *= 1.15
    value = base * plan.region.price
    if plan.region.currency == "KRW":
        return Decimal(round(value, -2))
    if plan.region.currency == "JPY":
        return Decimal(round(value, -1))
    return Decimal(str(round(value, 2)))


def _newsletters(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """The shop's campaigns: a monthly newsletter and a Black Friday mail."""
    out = []
    for month in _month_starts(start, end):
        at = month.replace(day=5, hour=8)
        out.append((at, f"newsletter-{at:%Y-%m}"))
        if month.month == 11:
            out.append((month.replace(day=24, hour=7), f"black-friday-{at:%Y}"))
    return [(at, name) for at, name in out if start <= at < end]


def _interactions(
    plans: list[_Plan], ids: Mapping[str, int], seed: int, end: datetime, progress: DemoProgress | None
) -> Iterator[dict[str, Any]]:
    """Every interaction of every demo customer, one customer at a time."""
    first = min((p.signup for p in plans), default=end)
    campaigns = _newsletters(first, end)
    for plan in plans:
        rng = random.Random(seed * 1_000_003 + plan.index)
        cid = ids[plan.external_id]
        yield from _customer_interactions(plan, cid, rng, campaigns, end)
        if progress:
            progress.advance(1)


def _customer_interactions(
    plan: _Plan, cid: int, rng: random.Random, campaigns: list[tuple[datetime, str]], end: datetime
) -> Iterator[dict[str, Any]]:
    region = plan.region
    first_channel = "app" if rng.random() < region.app_share else "web"
    yield {"kind": "signup", "customer_id": cid, "occurred_at": plan.signup, "channel": first_channel}
    orders = 0
    for at, cart, bought in plan.sessions:
        channel = "app" if rng.random() < region.app_share else "web"
        t = at
        if channel == "app" and rng.random() < 0.4:
            yield {"kind": "login", "customer_id": cid, "occurred_at": t, "channel": channel}
        kind = "screen_view" if channel == "app" else "page_view"
        for _ in range(rng.randint(1, 3)):
            t += timedelta(seconds=rng.randint(5, 90))
            yield {
                "kind": kind,
                "customer_id": cid,
                "occurred_at": t,
                "channel": channel,
                "properties": {"path": rng.choice(_PAGES)},
            }
        if rng.random() < 0.35:
            t += timedelta(seconds=rng.randint(5, 60))
            yield {
                "kind": "search",
                "customer_id": cid,
                "occurred_at": t,
                "channel": channel,
                "properties": {"query": rng.choice(_SEARCHES)},
            }
        skus = []
        for _ in range(rng.choices((0, 1, 2, 3), (2, 4, 3, 1))[0] + (1 if cart else 0)):
            t += timedelta(seconds=rng.randint(10, 120))
            category = rng.choice(_CATEGORIES)
            sku = f"{category[:3].upper()}-{rng.randint(100, 999)}"
            skus.append(sku)
            yield {
                "kind": "product_view",
                "customer_id": cid,
                "occurred_at": t,
                "channel": channel,
                "properties": {"sku": sku, "category": category},
            }
        if cart:
            t += timedelta(seconds=rng.randint(10, 180))
            yield {
                "kind": "add_to_cart",
                "customer_id": cid,
                "occurred_at": t,
                "channel": channel,
                "properties": {"sku": skus[-1], "qty": rng.choices((1, 2, 3), (8, 2, 1))[0]},
            }
        if bought:
            orders += 1
            t += timedelta(seconds=rng.randint(30, 600))
            amount = _amount(rng, plan, t)
            order = f"{plan.external_id}-o{orders}"
            yield {
                "kind": "purchase",
                "customer_id": cid,
                "occurred_at": t,
                "channel": channel,
                "amount": amount,
                "currency": region.currency,
                "properties": {"order_id": order, "items": len(skus), "skus": skus},
            }
            roll = rng.random()
            if roll < 0.05:
                later = t + timedelta(days=rng.uniform(3, 25))
                if later < end:
                    yield {
                        "kind": "refund",
                        "customer_id": cid,
                        "occurred_at": later,
                        "channel": "support",
                        "amount": amount,
                        "currency": region.currency,
                        "properties": {"order_id": order, "reason": rng.choice(("size", "damaged", "changed mind"))},
                    }
            elif roll < 0.07:
                later = t + timedelta(days=rng.uniform(2, 14))
                if later < end:
                    yield {
                        "kind": "complaint",
                        "customer_id": cid,
                        "occurred_at": later,
                        "channel": "support",
                        "properties": {"order_id": order, "topic": rng.choice(("late delivery", "wrong item"))},
                    }
            elif roll < 0.15:
                later = t + timedelta(hours=rng.uniform(2, 72))
                if later < end:
                    yield {
                        "kind": "inquiry",
                        "customer_id": cid,
                        "occurred_at": later,
                        "channel": rng.choice(("chat", "phone", "email")),
                        "properties": {"order_id": order, "topic": rng.choice(("delivery", "returns", "sizing"))},
                    }
    yield from _email_interactions(plan, cid, rng, campaigns, end)


def _email_interactions(
    plan: _Plan, cid: int, rng: random.Random, campaigns: list[tuple[datetime, str]], end: datetime
) -> Iterator[dict[str, Any]]:
    if not plan.email_granted:
        return
    still_active = plan.active[-1][1] >= end
    for at, campaign in campaigns:
        if at < plan.signup:
            continue
        if plan.unsubscribed_at is not None and at >= plan.unsubscribed_at:
            break
        props = {"campaign": campaign}
        yield {"kind": "email_sent", "customer_id": cid, "occurred_at": at, "channel": "email", "properties": props}
        opens = plan.segment.opens if still_active or at < plan.active[0][1] else 0.08
        if rng.random() >= opens:
            continue
        opened = at + timedelta(minutes=rng.uniform(5, 48 * 60))
        if opened >= end:
            continue
        yield {"kind": "email_open", "customer_id": cid, "occurred_at": opened, "channel": "email", "properties": props}
        if rng.random() < 0.28:
            clicked = opened + timedelta(seconds=rng.randint(5, 600))
            if clicked < end:
                yield {
                    "kind": "click",
                    "customer_id": cid,
                    "occurred_at": clicked,
                    "channel": "email",
                    "properties": {**props, "url": f"https://shop.example/{rng.choice(_CATEGORIES)}"},
                }
    if plan.unsubscribed_at is not None and plan.unsubscribed_at < end:
        yield {"kind": "unsubscribe", "customer_id": cid, "occurred_at": plan.unsubscribed_at, "channel": "email"}
