"""Fixtures for the analytics plugin: a CRM with the plugin and a fake clock, and a small shop builder."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ecrm_core import CRM
from ecrm_core.testing import FakeClock

pytest.importorskip("ecrm_analytics", reason="install plugins/analytics: pip install -e plugins/analytics")
from ecrm_analytics import plugin

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Shop:
    """A CRM with the analytics plugin and a fake clock at :data:`NOW`."""

    def __init__(self, crm: CRM, clock: FakeClock) -> None:
        self.crm, self.clock = crm, clock

    @property
    def analytics(self) -> Any:
        from ecrm_analytics import analytics

        return analytics(self.crm)

    def customer(self, name: str = "c", **fields: Any) -> int:
        return self.crm.customers.create(name=name, **fields).id

    def buy(
        self,
        customer_id: int,
        days_ago: float,
        amount: Any = "10",
        currency: str | None = "EUR",
        kind: str = "purchase",
        **extra: Any,
    ) -> None:
        self.crm.interactions.track(
            kind, customer_id=customer_id, amount=None if amount is None else str(amount), currency=currency,
            occurred_at=NOW - timedelta(days=days_ago), **extra,
        )  # fmt: skip

    def history(self, rows: Iterable[tuple[int, float, Any]], kind: str = "purchase") -> None:
        """Bulk purchases: ``(customer_id, days_ago, amount)`` rows."""
        self.crm.interactions.track_many(
            [
                {"kind": kind, "customer_id": c, "amount": str(a), "currency": "EUR",
                 "occurred_at": (NOW - timedelta(days=d)).isoformat()}
                for c, d, a in rows
            ]
        )  # fmt: skip


@pytest.fixture
def shop(crm_factory: Callable[..., CRM]) -> Shop:
    clock = FakeClock(NOW)
    crm = crm_factory(plugins=[plugin], clock=clock)
    return Shop(crm, clock)
