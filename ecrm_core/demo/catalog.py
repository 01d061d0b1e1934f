"""The demo's offers and segments, and deleting the demo."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .shop import _UTC, DEMO_ID_PREFIX, DEMO_OFFER_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM


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
