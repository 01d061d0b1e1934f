"""Fixtures for the campaigns plugin: a CRM with the plugin, a capturing channel and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ecrm_core import CRM
from ecrm_core.testing import CapturingChannel, FakeClock

pytest.importorskip("ecrm_campaigns", reason="install plugins/campaigns: pip install -e plugins/campaigns")
from ecrm_campaigns import plugin

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


class Shop:
    """A CRM with the campaigns plugin, a capturing channel ``capture`` and a fake clock."""

    def __init__(self, crm: CRM, channel: CapturingChannel, clock: FakeClock) -> None:
        self.crm, self.channel, self.clock = crm, channel, clock

    @property
    def campaigns(self) -> Any:
        from ecrm_campaigns import campaigns

        return campaigns(self.crm)

    def customers(self, n: int, **fields: Any) -> list[int]:
        rows = [
            {"email": f"c{i}@example.com", "name": f"C {i}", "consent": {"capture": "granted"}, **fields}
            for i in range(n)
        ]
        return [self.crm.customers.create(**r).id for r in rows]

    def run(self, rounds: int = 3) -> None:
        """Run the worker's campaign and delivery jobs until nothing is due (``ecrm worker --once``)."""
        from ecrm_core.worker import JobRunner
        from ecrm_core.worker.inprocess import InProcessExecutor

        runner = JobRunner(self.crm, jobs=["campaigns.*", "messages.*"])
        for _ in range(rounds):
            InProcessExecutor(runner).run(once=True)


@pytest.fixture
def shop(crm_factory: Callable[..., CRM]) -> Shop:
    channel = CapturingChannel()
    clock = FakeClock(T0)
    crm = crm_factory(plugins=[plugin, channel.plugin()], clock=clock)
    return Shop(crm, channel, clock)
