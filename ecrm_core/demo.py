"""A sample web shop, generated: customers, two years of interactions, offers.

Used by ``ecrm demo`` and handy in notebooks and tests::

    from ecrm_core import CRM
    from ecrm_core.demo import build_demo, shop_report

    crm = CRM("sqlite:///demo.db")
    summary = build_demo(crm, customers=3000)     # creates the schema if needed
    report = shop_report(crm)                     # what ecrm knows now

The data is reproducible: the same ``seed`` gives the same customers and the
same interaction pattern (timestamps are relative to ``now``).  Demo
customers have ``external_id`` ``demo-00001``…; offers have codes
``demo.*``.  Everything is written in one transaction.

Needs the ``faker`` package (``pip install ecrm-core[demo]``); it is
imported only when a demo is built.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Conflict, EcrmError

if TYPE_CHECKING:  # pragma: no cover
    from .crm import CRM
    from .domain import Offer
    from .services.segments import Segment

__all__ = [
    "DEFAULT_CUSTOMERS",
    "DEFAULT_SEED",
    "DEMO_ID_PREFIX",
    "DEMO_OFFER_PREFIX",
    "FX_TO_EUR",
    "DemoProgress",
    "DemoSummary",
    "ShopReport",
    "TopCustomer",
    "build_demo",
    "demo_customer_count",
    "shop_report",
]

#: Customers ``ecrm demo`` creates by default.
DEFAULT_CUSTOMERS = 3000
#: The seed used when none is given, so two demos look the same.
DEFAULT_SEED = 20240501
#: ``external_id`` prefix that marks demo customers.
DEMO_ID_PREFIX = "demo-"
#: Code prefix of demo offers.
DEMO_OFFER_PREFIX = "demo."

#: Fixed, approximate rates used to add up the shop's revenue in one currency.
FX_TO_EUR: Mapping[str, Decimal] = {
    "EUR": Decimal("1"),
    "USD": Decimal("0.92"),
    "GBP": Decimal("1.17"),
    "KRW": Decimal("0.00068"),
    "JPY": Decimal("0.0062"),
}

_UTC = UTC
_DAY = timedelta(days=1)

# Activity multiplier per calendar month (January first): a quiet start of
# the year, a summer dip, and the Black Friday / Christmas peak.
_SEASON = (0.85, 0.8, 0.9, 0.95, 1.0, 0.95, 0.85, 0.85, 1.0, 1.05, 1.45, 1.6)
# Share of sessions starting at each local hour (evening peak).
_HOURS = tuple(
    accumulate((1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 3.5, 3.5, 4, 4.5, 4, 3.5, 3.5, 4, 4.5, 5, 6, 6.5, 6, 4, 2))
)

_CATEGORIES = ("shoes", "jackets", "bags", "shirts", "accessories", "outdoor", "kids", "home")
_SEARCHES = ("running shoes", "rain jacket", "backpack", "linen shirt", "gift", "sale", "wool socks", "sneakers")
_PAGES = ("/", "/new", "/sale", "/about", "/shipping", "/account", "/blog/style-guide")


@dataclass(frozen=True)
class _Region:
    code: str
    faker_locale: str
    weight: float
    currency: str
    price: float  # price level against EUR
    timezones: tuple[str, ...]
    locale: str
    app_share: float
    phone: Callable[[random.Random], str]


def _digits(rng: random.Random, n: int) -> str:
    return f"{rng.randrange(10**n):0{n}d}"


_REGIONS = (
    _Region(
        "US",
        "en_US",
        0.30,
        "USD",
        1.1,
        ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
        "en-US",
        0.30,
        lambda r: (
            "+1"
            + r.choice(("212", "312", "415", "617", "206", "512", "305", "404"))
            + str(r.randint(200, 999))
            + _digits(r, 4)
        ),
    ),
    _Region(
        "DE",
        "de_DE",
        0.18,
        "EUR",
        1.0,
        ("Europe/Berlin",),
        "de-DE",
        0.25,
        lambda r: "+49" + r.choice(("151", "160", "170", "171", "176")) + _digits(r, 8),
    ),
    _Region(
        "FR",
        "fr_FR",
        0.12,
        "EUR",
        1.0,
        ("Europe/Paris",),
        "fr-FR",
        0.25,
        lambda r: "+33" + r.choice("67") + _digits(r, 8),
    ),
    _Region(
        "GB",
        "en_GB",
        0.12,
        "GBP",
        0.85,
        ("Europe/London",),
        "en-GB",
        0.30,
        lambda r: "+447" + r.choice(("400", "700", "800", "900")) + _digits(r, 6),
    ),
    _Region(
        "KR",
        "ko_KR",
        0.16,
        "KRW",
        1400.0,
        ("Asia/Seoul",),
        "ko-KR",
        0.55,
        lambda r: "+8210" + str(r.randint(20_000_000, 99_999_999)),
    ),
    _Region(
        "JP",
        "ja_JP",
        0.12,
        "JPY",
        150.0,
        ("Asia/Tokyo",),
        "ja-JP",
        0.45,
        lambda r: "+81" + r.choice(("70", "80", "90")) + _digits(r, 8),
    ),
)


@dataclass(frozen=True)
class _Segment:
    name: str
    weight: float
    sessions_per_month: float
    cart: float  # chance a session puts something in the cart
    buy: float  # chance a cart becomes a purchase
    basket: float  # basket size factor
    opens: float  # chance a newsletter is opened
    churn: float  # chance of leaving during the two years


_SEGMENTS = (
    _Segment("heavy", 0.05, 4.0, 0.55, 0.75, 1.5, 0.55, 0.10),
    _Segment("regular", 0.22, 1.6, 0.35, 0.60, 1.0, 0.40, 0.25),
    _Segment("occasional", 0.38, 0.6, 0.22, 0.50, 0.9, 0.25, 0.35),
    _Segment("browser", 0.35, 0.35, 0.08, 0.0, 0.8, 0.15, 0.45),
)


class DemoProgress(Protocol):
    """Receives progress while a demo is built (``ecrm demo`` shows it as bars)."""

    def start(self, stage: str, total: int | None) -> None:
        """A stage begins: ``"planning"``, ``"customers"``, ``"interactions"`` or ``"offers"``."""

    def advance(self, n: int) -> None:
        """``n`` more units (customers, rows…) of the current stage are done."""


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`build_demo` did."""

    customers: int
    interactions: int
    offers: int
    reused: bool
    seed: int | None
    seconds: float
    segments: int = 0


@dataclass
class _Plan:
    """One demo customer, decided before anything is written."""

    index: int
    region: _Region
    segment: _Segment
    tz: str
    signup: datetime
    active: list[tuple[datetime, datetime]]
    sessions: list[tuple[datetime, bool, bool]] = field(default_factory=list)  # (at, cart, purchase)
    email_granted: bool = False
    unsubscribed_at: datetime | None = None
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def external_id(self) -> str:
        return f"{DEMO_ID_PREFIX}{self.index + 1:05d}"


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def demo_customer_count(crm: CRM) -> tuple[int, int]:
    """``(demo customers, all customers)`` in the CRM's workspace."""
    import sqlalchemy as sa

    crm.customers.ready()
    t = crm.db.tables["customers"]
    is_demo = t.c.external_id.like(f"{DEMO_ID_PREFIX}%")
    q = sa.select(sa.func.count(), sa.func.sum(sa.case((is_demo, 1), else_=0))).where(t.c.workspace_id == crm.workspace)
    with crm.db.read() as conn:
        total, demo = conn.execute(q).one()
    return int(demo or 0), int(total or 0)


def build_demo(
    crm: CRM,
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = DEFAULT_SEED,
    *,
    fresh: bool = False,
    months: int = 24,
    now: datetime | None = None,
    progress: DemoProgress | None = None,
) -> DemoSummary:
    """Fill the CRM's workspace with a sample shop and return a summary.

    Creates (or upgrades) the schema first.  When the workspace already
    holds the demo, it is kept as it is (``reused=True``) unless ``fresh``
    is true: then the demo customers, their interactions and the ``demo.*``
    offers are deleted and built again.  A workspace holding customers that
    are not demo data is never touched: :class:`~ecrm_core.errors.Conflict`.

    :param customers: how many customers to generate.
    :param seed: random seed; the same seed gives the same shop.
    :param months: how much history to generate, ending at ``now``.
    :param now: the end of the history (default: the CRM's clock).
    :param progress: receives progress (see :class:`DemoProgress`).
    """
    if isinstance(customers, bool) or not isinstance(customers, int) or not 1 <= customers <= 1_000_000:
        raise _bad("customers", customers, "send 1..1000000")
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 120:
        raise _bad("months", months, "send 1..120")
    started = time.perf_counter()
    crm.upgrade()
    demo, total = demo_customer_count(crm)
    if total > demo:
        raise Conflict(
            f"workspace {crm.workspace!r} holds {total - demo} customer(s) that are not demo data; "
            "build the demo in another workspace (--workspace demo) or database (--db sqlite:///demo.db)"
        )
    if demo and not fresh:
        if _create_segments(crm):  # a demo built before segments existed
            crm.segments.refresh()
        return DemoSummary(
            customers=demo,
            interactions=crm.interactions.count(),
            offers=len([o for o in crm.offers.list() if o.code.startswith(DEMO_OFFER_PREFIX)]),
            reused=True,
            seed=None,
            seconds=time.perf_counter() - started,
        )
    end = (now or crm.now()).astimezone(_UTC)
    if progress:
        progress.start("planning", customers)
    plans = _plan_customers(customers, seed, end, months, progress)
    # A bulk load: live segment upkeep waits, one full refresh follows.
    with crm.segments.paused(), crm.db.write() as conn:
        view = crm.using(conn)
        if demo:
            _delete_demo(view, conn)
        if progress:
            progress.start("customers", customers)
        result = view.customers.upsert_many(
            (p.row for p in plans), on_error="raise", progress=progress.advance if progress else None
        )
        ids = _demo_ids(view, conn)
        if progress:
            progress.start("interactions", customers)
        tracked = view.interactions.track_many(
            _interactions(plans, ids, seed, end, progress), on_error="raise", create_missing=False
        )
        if progress:
            progress.start("offers", None)
        offers = _create_offers(view, end)
    if progress:
        progress.start("segments", None)
    n_segments = _create_segments(crm)
    crm.segments.refresh()  # lifecycle stages by their rules, then every segment
    return DemoSummary(
        customers=len(result.created),
        interactions=tracked.stored,
        offers=offers,
        reused=False,
        seed=seed,
        seconds=time.perf_counter() - started,
        segments=n_segments,
    )


def _bad(field_name: str, value: Any, fix: str) -> EcrmError:
    from .errors import ValidationError

    return ValidationError(field_name, value, "out of range", fix)


# ---------------------------------------------------------------------------
# planning: who the customers are and when they visit
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# offers and clean-up
# ---------------------------------------------------------------------------


def _create_offers(crm: CRM, end: datetime) -> int:
    last_bf = datetime(end.year if end.month >= 11 else end.year - 1, 11, 24, tzinfo=_UTC)
    spring = datetime(end.year + 1, 3, 1, tzinfo=_UTC)
    offers: list[dict[str, Any]] = [
        {
            "code": "demo.welcome10",
            "name": "10% off your first order",
            "kind": "discount",
            "content": {"percent": 10, "headline": "Welcome! Here is 10% off"},
            "priority": 50,
            "channels": ["email", "web", "app"],
            "eligibility": 'lifecycle_stage in ("prospect", "new")',
        },
        {
            "code": "demo.winback20",
            "name": "We miss you: 20% off",
            "kind": "coupon",
            "content": {"percent": 20, "coupon": "COMEBACK20"},
            "priority": 80,
            "channels": ["email"],
            "eligibility": 'lifecycle_stage in ("at_risk", "lapsed")',
        },
        {
            "code": "demo.free_shipping",
            "name": "Free shipping over 50",
            "kind": "content",
            "content": {"threshold": 50},
            "priority": 10,
        },
        {
            "code": "demo.black_friday",
            "name": "Black Friday week",
            "kind": "discount",
            "content": {"percent": 25},
            "priority": 100,
            "valid_from": last_bf,
            "valid_until": last_bf + timedelta(days=7),
        },
        {
            "code": "demo.spring_preview",
            "name": "Spring collection preview",
            "kind": "product",
            "content": {"collection": "spring"},
            "priority": 60,
            "valid_from": spring,
            "valid_until": spring + timedelta(days=30),
        },
        {
            "code": "demo.vip_lounge",
            "name": "VIP early access",
            "kind": "content",
            "content": {"page": "/vip"},
            "priority": 90,
            "status": "paused",
            "eligibility": 'attributes.segment == "heavy"',
        },
    ]
    for offer in offers:
        crm.offers.create(**offer)
    return len(offers)


def _delete_demo(crm: CRM, conn: Any) -> None:
    """Remove the demo customers (with everything that hangs off them) and demo offers."""
    import sqlalchemy as sa

    t = crm.db.tables
    ws = crm.workspace
    c = t["customers"]
    demo_ids = sa.select(c.c.id).where(c.c.workspace_id == ws, c.c.external_id.like(f"{DEMO_ID_PREFIX}%"))
    for name in ("interactions", "consent_events", "aliases"):
        table = t[name]
        conn.execute(sa.delete(table).where(table.c.workspace_id == ws, table.c.customer_id.in_(demo_ids)))
    conn.execute(sa.update(c).where(c.c.workspace_id == ws, c.c.id.in_(demo_ids)).values(merged_into=None))
    conn.execute(sa.delete(c).where(c.c.workspace_id == ws, c.c.external_id.like(f"{DEMO_ID_PREFIX}%")))
    o = t["offers"]
    conn.execute(sa.delete(o).where(o.c.workspace_id == ws, o.c.code.like(f"{DEMO_OFFER_PREFIX}%")))
    s, m = t["segments"], t["segment_members"]
    demo_segments = sa.select(s.c.id).where(s.c.workspace_id == ws, s.c.slug.like(f"{DEMO_SEGMENT_PREFIX}%"))
    conn.execute(sa.delete(m).where(m.c.segment_id.in_(demo_segments)))
    conn.execute(sa.delete(s).where(s.c.workspace_id == ws, s.c.slug.like(f"{DEMO_SEGMENT_PREFIX}%")))


#: The demo's segments: who a marketer would want to reach (see docs/segments.md).
DEMO_SEGMENT_PREFIX = "demo-"
DEMO_SEGMENTS = (
    ("demo-vip", "VIP: 5+ orders and 500+ spent in a year", "purchase.count(365d) >= 5 and purchase.sum(365d) > 500"),
    (
        "demo-at-risk-spenders",
        "At risk, spent 300+ in total",
        'lifecycle_stage in ("at_risk", "lapsed") and purchase.sum() > 300',
    ),
    (
        "demo-window-shoppers",
        "Browsed 3+ products this month, bought nothing",
        "product_view.count(30d) >= 3 and purchase.count(30d) == 0",
    ),
    (
        "demo-newsletter-fans",
        "Opened 2+ newsletters in 90 days, e-mail consent",
        "email_open.count(90d) >= 2 and consent(email)",
    ),
    ("demo-complainers", "Complained in the last 180 days", "complaint.count(180d) >= 1"),
    (
        "demo-kr-vip",
        "VIPs in Korea (a segment of a segment)",
        'segment("demo-vip") and attributes.country == "KR"',
    ),
)


def _create_segments(crm: CRM) -> int:
    existing = {s.slug for s in crm.segments.list()}
    made = 0
    for slug, name, rule in DEMO_SEGMENTS:
        if slug not in existing:
            crm.segments.create(slug, rule, name=name, refresh=False)
            made += 1
    return made


# ---------------------------------------------------------------------------
# the report: what ecrm knows
# ---------------------------------------------------------------------------


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
