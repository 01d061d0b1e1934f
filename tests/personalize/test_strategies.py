"""Strategies as plugins (ecrm_register_strategies): a third-party strategy, isolation of a failing
one, and the ``ecrm demo`` stage (ecrm_register_demo_stages)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ecrm_personalize import DecisionContext, Strategy, plugin

from ecrm_core import CRM, StrategySpec, hookimpl

from .conftest import Shop, make_shop


class Weekend(Strategy):
    """A transparent strategy: bags first at weekends."""

    kind = "transparent"

    def apply(self, ctx: DecisionContext) -> None:
        if ctx.now.weekday() >= 5:
            for item in ctx.items:
                if item.category == "bags":
                    item.score += 10
                    item.reasons.append("weekend pick")
            ctx.items.sort(key=lambda i: -i.score)
            ctx.explain("bags first at the weekend")


class WeekendPlugin:
    @hookimpl
    def ecrm_register_strategies(self, crm):  # type: ignore[no-untyped-def]
        return [StrategySpec(name="weekend", kind="transparent", factory=Weekend)]


class Explodes(Strategy):
    kind = "cosmetic"

    def apply(self, ctx: DecisionContext) -> None:
        raise RuntimeError("boom")


class ExplodingPlugin:
    @hookimpl
    def ecrm_register_strategies(self):  # type: ignore[no-untyped-def]
        return [StrategySpec(name="explodes", kind="cosmetic", factory=Explodes)]


def test_the_four_built_in_strategies_one_per_type(shop: Shop) -> None:
    kinds = {s.name: s.kind for s in shop.crm.registry.strategies.values() if s.plugin == "personalize"}
    assert kinds == {
        "greeting": "cosmetic",
        "ranked": "transparent",
        "bandit": "adaptive",
        "preferences": "collaborative",
    }


def test_a_strategy_plugin_changes_the_decision(shop: Shop) -> None:
    shop.crm.register_plugin(WeekendPlugin(), name="weekend")
    shop.p.define("home", k=5, strategies=["greeting", "weekend"])
    cid = shop.customer()
    shop.buy(cid, "S1")
    assert shop.p.decide(cid, "home").items[0].category != "bags"  # a Monday
    shop.clock.advance(days=5)  # Saturday
    d = shop.p.decide(cid, "home")
    assert d.items[0].category == "bags" and "weekend pick" in d.items[0].reasons
    assert "bags first at the weekend" in d.explanation


def test_a_failing_strategy_is_isolated_and_recorded(shop: Shop) -> None:
    shop.crm.register_plugin(ExplodingPlugin(), name="exploding")
    shop.p.define("home", k=3, strategies=["explodes", "greeting"])
    d = shop.p.decide(shop.customer(name="Ada"), "home")
    assert d.variant["greeting"] == "Good morning, Ada!" and d.items
    assert any("'explodes' failed" in e for e in d.explanation)
    assert any(f.plugin == "exploding" and f.hook == "strategy explodes" for f in shop.crm.plugins.failures)


def test_an_uninstalled_strategy_is_skipped(shop: Shop) -> None:
    shop.crm.register_plugin(WeekendPlugin(), name="weekend")
    shop.p.define("home", strategies=["weekend"])
    shop.crm.unregister_plugin("weekend")
    d = shop.p.decide(shop.customer(), "home")
    assert any("'weekend' is not installed" in e for e in d.explanation)


def test_demo_stage_greets_and_recommends(crm_factory: Callable[..., CRM]) -> None:
    from ecrm_core.demo_stages import run_demo_stages

    shop = make_shop(crm_factory)
    for i in range(4):
        cid = shop.customer(name=f"Demo {i}")
        shop.crm.interactions.track(
            "product_view", customer_id=cid, properties={"sku": f"DEM-{i}", "category": "shoes"}
        )
        shop.buy(cid, f"DEM-{i}", "DEM-9")
    assert "personalize.decide" in shop.crm.registry.demo_stages
    outcome = run_demo_stages(shop.crm, only=["personalize.decide"])[0]
    assert outcome.ok, outcome.error
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(outcome.output)
    text = console.export_text()
    assert "Good morning, Demo!" in text and "DEM-2, DEM-3" in text


def test_demo_stage_without_a_configured_secret(crm_factory: Callable[..., CRM]) -> None:
    from ecrm_core.demo_stages import run_demo_stages

    crm = crm_factory(plugins=[plugin])
    cid = crm.customers.create(name="Solo", email="solo@example.com").id
    crm.interactions.track("product_view", customer_id=cid, properties={"sku": "X-1", "category": "hats"})
    outcome = run_demo_stages(crm, only=["personalize.decide"])[0]
    assert outcome.ok, outcome.error


@pytest.mark.parametrize(
    "raised",
    [SystemExit("a library called sys.exit"), GeneratorExit(), type("Doom", (BaseException,), {})()],
    ids=["SystemExit", "GeneratorExit", "own BaseException"],
)
def test_a_strategy_raising_a_base_exception_is_isolated_too(shop: Shop, raised: BaseException) -> None:
    """Before, it went through the decision (and the API's worker thread): review, round 25."""

    class Exits(Strategy):
        kind = "cosmetic"

        def apply(self, ctx: DecisionContext) -> None:
            raise raised

    class ExitingPlugin:
        @hookimpl
        def ecrm_register_strategies(self):  # type: ignore[no-untyped-def]
            return [StrategySpec(name="exits", kind="cosmetic", factory=Exits)]

    shop.crm.register_plugin(ExitingPlugin(), name="exiting")
    shop.p.define("home", k=3, strategies=["exits", "greeting"])
    d = shop.p.decide(shop.customer(name="Ada"), "home")
    assert d.variant["greeting"] == "Good morning, Ada!" and d.items
    assert "strategy 'exits' failed" in " ".join(d.explanation)
    assert any(f.hook == "strategy exits" for f in shop.crm.plugins.failures)
