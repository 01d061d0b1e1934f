"""The shop's shape: regions, customer segments, seasons, and the demo's public types."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import Any, Protocol

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
