"""Fixtures for the personalization plugin: a small shop with a catalogue, customers and history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ecrm_core import CRM
from ecrm_core.testing import FakeClock

pytest.importorskip("ecrm_personalize", reason="install plugins/personalize: pip install -e plugins/personalize")
from ecrm_personalize import personalize, plugin

SECRET = "test-secret-for-personalize-0123456789"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # a Monday, 09:30 UTC

#: the catalogue: shoes (S*), hats (H*), bags (B*)
PRODUCTS = (
    [
        {"sku": f"S{i}", "title": f"Running shoe {i} leather", "category": "shoes", "attributes": {"sport": "running"}}
        for i in range(1, 7)
    ]
    + [
        {"sku": f"H{i}", "title": f"Wool hat {i}", "category": "hats", "attributes": {"season": "winter"}}
        for i in range(1, 7)
    ]
    + [
        {"sku": f"B{i}", "title": f"Canvas bag {i}", "category": "bags", "attributes": {"size": "large"}}
        for i in range(1, 7)
    ]
)


class Shop:
    """A CRM with the plugin, a secret, a fake clock, the catalogue and a few customers."""

    def __init__(self, crm: CRM, clock: FakeClock) -> None:
        self.crm, self.clock = crm, clock
        self.p = personalize(crm)

    def customer(self, **fields: Any) -> int:
        n = self.crm.customers.count()
        fields.setdefault("email", f"c{n}@example.com")
        cid = self.crm.customers.create(**fields).id
        assert cid is not None
        return cid

    def buy(self, cid: int, *skus: str) -> None:
        self.clock.advance(minutes=1)
        self.crm.interactions.track(
            "purchase", customer_id=cid, amount="10", currency="EUR", properties={"skus": list(skus)}
        )

    def view(self, cid: int, *skus: str) -> None:
        for s in skus:
            self.clock.advance(minutes=1)
            self.crm.interactions.track("product_view", customer_id=cid, properties={"sku": s})

    def history(self) -> None:
        """Shoes S1 and S2 are bought together; S3 is the most popular; hats and bags appear now and then."""
        for _ in range(6):
            self.buy(self.customer(), "S1", "S2")
        for i in range(8):
            self.buy(self.customer(), "S3", "H1" if i % 2 else "B1")
        self.buy(self.customer(), "H2", "H3")


def make_shop(crm_factory: Callable[..., CRM], *extra: Any, **options: Any) -> Shop:
    clock = FakeClock(T0)
    crm = crm_factory(plugins=[plugin, *extra], clock=clock, secret=SECRET, **options)
    shop = Shop(crm, clock)
    shop.p.add_products(PRODUCTS)
    return shop


@pytest.fixture
def shop(crm_factory: Callable[..., CRM]) -> Shop:
    s = make_shop(crm_factory)
    s.history()
    s.p.refresh()
    return s


@pytest.fixture
def empty_shop(crm_factory: Callable[..., CRM]) -> Shop:
    """The catalogue only: no history, no lists (for tests of bad input)."""
    return make_shop(crm_factory)
