"""decide(): what a person gets, how it is shown, why; business rules; defined fallbacks; constant queries."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_personalize import personalize, plugin

from ecrm_core import ValidationError, hookimpl

from .conftest import Shop, make_shop


@contextmanager
def count_queries(shop: Shop) -> Iterator[list[str]]:
    """The SELECTs the database runs (SQLite's trace callback: the decision runs its statements on
    the DB-API cursor, below SQLAlchemy's events)."""
    seen: list[str] = []
    traced: list[Any] = []

    def trace(statement: str) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    def checkout(dbapi_conn, record, proxy):  # type: ignore[no-untyped-def]
        dbapi_conn.set_trace_callback(trace)
        traced.append(dbapi_conn)

    engine = shop.crm.db.engine
    sa.event.listen(engine, "checkout", checkout)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "checkout", checkout)
        for c in traced:
            c.set_trace_callback(None)


def test_customer_gets_items_bought_together_without_what_they_bought(shop: Shop) -> None:
    shop.p.define("home", k=4)
    ada = shop.customer(name="Ada Lovelace")
    shop.buy(ada, "S1")
    d = shop.p.decide(ada, "home")
    skus = [i.sku for i in d.items]
    assert skus[0] == "S2"  # customers who bought S1 also bought S2
    assert "S1" not in skus  # already bought
    assert any("bought together with S1" in r for r in d.items[0].reasons)
    assert d.group == "personalized" and d.customer_id == ada and d.fallback is None
    assert len(skus) <= 4 and len(set(skus)) == len(skus)
    assert any("already bought" in e for e in d.explanation)


def test_content_similarity_and_recently_viewed(shop: Shop) -> None:
    shop.p.define("pdp", k=5)
    bob = shop.customer(name="Bob")
    shop.view(bob, "H4")
    d = shop.p.decide(bob, "pdp")
    by_sku = {i.sku: i for i in d.items}
    hats = [i for i in d.items if i.category == "hats"]
    assert (hats and hats[0].sku != "H4") or "recently viewed" in by_sku["H4"].reasons
    assert any(r.startswith("similar to H4") for i in hats for r in i.reasons)


def test_page_context_seeds_recommendations_and_excludes_the_page(shop: Shop) -> None:
    shop.p.define("pdp", k=3, recommender="cooccurrence")
    d = shop.p.decide(None, "pdp", {"sku": "S1"})
    skus = [i.sku for i in d.items]
    assert skus[0] == "S2" and "S1" not in skus


def test_greeting_by_name_and_time_of_day_in_the_customers_timezone(shop: Shop) -> None:
    shop.p.define("home")
    # 09:30 UTC is the evening in Seoul (18:30) and the morning in London (09:30)
    seoul = shop.customer(name="Minji Kim", timezone="Asia/Seoul", locale="en-GB")
    london = shop.customer(name="Ada Lovelace", timezone="Europe/London")
    paris = shop.customer(name="Jean Dupont", timezone="Europe/Paris", locale="fr-FR")
    assert shop.p.decide(seoul, "home").variant["greeting"] == "Good evening, Minji!"
    assert shop.p.decide(london, "home").variant["greeting"] == "Good morning, Ada!"
    assert shop.p.decide(paris, "home").variant["greeting"] == "Bonjour Jean !"
    v = shop.p.decide(None, "home").variant
    assert v["greeting"] == "Good morning!" and v["tone"] == "welcoming" and v["layout"] == "discover"


def test_greeting_templates_are_sandboxed_and_escaped(shop: Shop) -> None:
    from ecrm_core.errors import ValidationError

    with pytest.raises(ValidationError, match="getattr"):  # see test_greeting_limits.py for the corpus
        shop.p.define("home", greetings={"en": "{{ name.__class__.__mro__ }}"})
    shop.p.define("home")
    cid = shop.customer(name="<b>Eve</b>")
    d = shop.p.decide(cid, "home")
    assert d.variant["greeting"] == "Good morning, &lt;b&gt;Eve&lt;/b&gt;!"


def test_tone_and_layout_by_lifecycle_stage(shop: Shop) -> None:
    shop.p.define("home", tones={"active": "formal", "default": "casual"}, layouts={"active": "editorial"})
    cid = shop.customer(name="Grace Hopper", lifecycle_stage="active")
    v = shop.p.decide(cid, "home").variant
    assert (v["tone"], v["layout"]) == ("formal", "editorial")
    assert v["greeting"] == "Good morning, Grace Hopper. Welcome back."


def test_transparent_ranking_by_category_affinity_and_offers_by_stage(shop: Shop) -> None:
    shop.crm.offers.create("welcome_guide", "Welcome guide", kind="content", priority=10)
    shop.crm.offers.create("winback10", "10% to come back", kind="discount", priority=5)
    shop.p.define("home", k=6, offers=2)
    fan = shop.customer(name="Bag Fan", lifecycle_stage="at_risk")
    shop.view(fan, "B2", "B3", "B4")
    d = shop.p.decide(fan, "home")
    assert d.items[0].category == "bags"
    assert [o.code for o in d.offers] == ["winback10", "welcome_guide"]
    assert "suits a at_risk customer" in d.offers[0].reason
    newbie = shop.customer(name="New", lifecycle_stage="new")
    assert shop.p.decide(newbie, "home").offers[0].code == "welcome_guide"


def test_offer_eligibility_rules_apply(shop: Shop) -> None:
    shop.crm.offers.create("vip", "VIP", kind="product", priority=100, eligibility='attributes.tier == "gold"')
    shop.p.define("home", offers=3)
    gold = shop.customer(attributes={"tier": "gold"})
    plain = shop.customer()
    assert "vip" in [o.code for o in shop.p.decide(gold, "home").offers]
    assert "vip" not in [o.code for o in shop.p.decide(plain, "home").offers]
    assert "vip" not in [o.code for o in shop.p.decide(None, "home").offers]


def test_deleted_and_unavailable_products_are_never_recommended(shop: Shop) -> None:
    shop.p.define("home", k=10)
    cid = shop.customer()
    shop.buy(cid, "S1")
    before = [i.sku for i in shop.p.decide(cid, "home").items]
    assert "S2" in before and "S3" in before
    shop.p.remove_products(["S2"])  # deleted after being recommended: the stored lists still name it
    shop.p.set_available("S3", False)
    after = [i.sku for i in shop.p.decide(cid, "home").items]
    assert "S2" not in after and "S3" not in after


def test_availability_hook_of_an_integration(crm_factory) -> None:  # type: ignore[no-untyped-def]
    class Stock:
        calls = 0

        @hookimpl
        def personalize_unavailable(self, crm, skus):  # type: ignore[no-untyped-def]
            Stock.calls += 1
            return {"S2"}

    class Broken:
        @hookimpl
        def personalize_unavailable(self, skus):  # type: ignore[no-untyped-def]
            raise RuntimeError("inventory down")

    shop = make_shop(crm_factory)
    shop.history()
    shop.p.refresh()
    shop.crm.register_plugin(Stock(), name="stock")
    shop.crm.register_plugin(Broken(), name="broken-stock")
    shop.p.define("home", k=10)
    cid = shop.customer()
    shop.buy(cid, "S1")
    skus = [i.sku for i in shop.p.decide(cid, "home").items]
    assert "S2" not in skus and skus  # the broken integration is isolated
    assert Stock.calls == 1
    assert any(f.plugin == "broken-stock" for f in shop.crm.plugins.failures)


def test_fallbacks_never_raise(shop: Shop) -> None:
    shop.p.define("home", k=3)
    d = shop.p.decide(None, "nowhere")
    assert d.fallback == "unknown_placement" and d.items[0].sku == "S3"
    d = shop.p.decide(999_999, "home")
    assert d.fallback == "unknown_customer" and d.customer_id is None and d.items[0].sku == "S3"
    fresh = shop.customer(name="No History")
    d = shop.p.decide(fresh, "home")
    assert d.fallback is None and d.items[0].sku == "S3" and "popular" in d.items[0].reasons
    assert any("popular" in e for e in d.explanation)


def test_empty_shop_decides_without_lists(crm_factory) -> None:  # type: ignore[no-untyped-def]
    shop = make_shop(crm_factory)
    shop.p.define("home", alternatives=["a", "b"])
    d = shop.p.decide(shop.customer(name="First"), "home")
    assert d.items == () and set(d.alternatives) == {"a", "b"} and d.variant["greeting"]


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.decide(None, "Not A Slug"),
        lambda p: p.decide(-3, "home"),
        lambda p: p.decide(True, "home"),
        lambda p: p.decide(3.5, "home"),
        lambda p: p.decide(None, "home", {"x" * 100: 1}),
        lambda p: p.decide(None, "home", {"sku": "x" * 1000}),
        lambda p: p.decide(None, "home", ["not", "a", "mapping"]),
    ],
)
def test_bad_input_is_a_validation_error(empty_shop: Shop, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        call(empty_shop.p)


_DEEP: Any = "x"
for _ in range(100):
    _DEEP = [_DEEP]


@pytest.mark.parametrize(
    "config",
    [
        {"k": 500},
        {"recommender": "magic"},
        {"control": 0.9},
        {"reward": "view"},
        {"segment_by": "zodiac"},
        {"alternatives": ["a", "a"]},
        {"strategies": ["nope"]},
        {"unknown_field": 1},
        {"options": {"ranked": {"weight": float("nan")}}},
        {"options": {"ranked": {"weight": float("inf")}}},
        {"options": {"ranked": {"deep": _DEEP}}},
        {"options": {"ranked": {"when": object()}}},
    ],
)
def test_bad_placements_are_refused(empty_shop: Shop, config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        empty_shop.p.define("home", **config)


def test_queries_per_decision_are_constant(shop: Shop) -> None:
    shop.p.define("home", k=5, alternatives=["grid", "list"])
    light = shop.customer(name="Light")
    shop.buy(light, "S1")
    heavy = shop.customer(name="Heavy")
    for i in range(1, 7):
        shop.buy(heavy, f"S{i}", f"H{i}", f"B{i}")
        shop.view(heavy, f"H{i}", f"B{i}")
    shop.p.decide(None, "home")  # warm the placement and offer caches (and the catalogue)
    first = []
    for cid in (light, heavy):  # first decisions: the lists they miss are read once, in one query
        with count_queries(shop) as seen:
            shop.p.decide(cid, "home")
        first.append(len(seen))
    assert first == [5, 5]  # generation, person, history, the lists missed, bandit arms
    counts = []
    for cid in (light, heavy, None):
        with count_queries(shop) as seen:
            shop.p.decide(cid, "home")
        counts.append(len(seen))
    assert counts[0] == counts[1] == 4  # generation, person, history, bandit arms
    assert counts[2] <= 2  # a new visitor: generation, arms


def test_a_refresh_or_catalogue_change_in_another_process_is_seen(tmp_path: Path) -> None:
    """The cached catalogue and lists belong to a generation that every decision checks: what
    another process changes (a worker's refresh, an API process's catalogue write) is seen at once."""
    from ecrm_core.testing import make_crm

    from .conftest import PRODUCTS, SECRET

    db = tmp_path / "gen.db"
    crm = make_crm(db, plugins=[plugin], secret=SECRET)
    try:
        p = personalize(crm)
        p.add_products(PRODUCTS)
        ada = crm.customers.create(email="ada@example.com").id
        assert ada is not None
        for n in range(4):
            other = crm.customers.create(email=f"o{n}@example.com").id
            crm.interactions.track("purchase", customer_id=other, properties={"skus": ["S1", "S2"]})
        crm.interactions.track("purchase", customer_id=ada, properties={"skus": ["S1"]})
        p.refresh()
        p.define("home", k=3, recommender="cooccurrence")
        assert p.decide(ada, "home").items[0].sku == "S2"  # cached now
        script = f"""
import sys
from pathlib import Path
from ecrm_core.testing import make_crm
from ecrm_personalize import personalize, plugin
crm = make_crm(Path({str(db)!r}), plugins=[plugin], secret={SECRET!r})
p = personalize(crm)
if sys.argv[1] == "remove":
    p.remove_products(["S2"])
else:
    for n in range(6):
        cid = crm.customers.create(email=f"h{{n}}@example.com").id
        crm.interactions.track("purchase", customer_id=cid, properties={{"skus": ["S1", "H5"]}})
    p.refresh()
crm.close()
"""
        env = {**os.environ, "ECRM_TEST": "1"}
        subprocess.run([sys.executable, "-c", script, "remove"], check=True, env=env, timeout=120)
        assert "S2" not in [i.sku for i in p.decide(ada, "home").items]  # the catalogue's generation changed
        subprocess.run([sys.executable, "-c", script, "refresh"], check=True, env=env, timeout=120)
        assert p.decide(ada, "home").items[0].sku == "H5"  # the lists' generation changed
    finally:
        crm.close()


def test_control_group_is_deterministic_and_unpersonalized(shop: Shop) -> None:
    shop.p.define("home", k=3, control=0.5)
    ids = [shop.customer(name=f"P {i}") for i in range(40)]
    for cid in ids:
        shop.buy(cid, "S1")
    groups = {cid: shop.p.decide(cid, "home").group for cid in ids}
    assert groups == {cid: shop.p.decide(cid, "home").group for cid in ids}  # same person, same group
    control = [cid for cid, g in groups.items() if g == "control"]
    assert 8 <= len(control) <= 32
    d = shop.p.decide(control[0], "home")
    assert d.items[0].sku == "S3"  # popular, not "bought together"
    assert all(r == "popular" for i in d.items for r in i.reasons)
    assert d.variant["greeting"] == "Good morning!"  # default presentation: no name
    assert any("control group" in e for e in d.explanation)


class RfmScores:
    """A value plugin (like ecrm-analytics): RFM groups kept in its own store, offered through
    the core's ``ecrm_computed_attributes``; nothing copied into the customers' attributes."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}
        self.asked = 0

    @hookimpl
    def ecrm_computed_attributes(self, crm, customer_ids):
        self.asked += 1
        return {c: {"rfm_group": self.groups[c]} for c in customer_ids if c in self.groups}


def test_offers_and_bandit_segments_read_the_rfm_group_a_plugin_computes(crm_factory) -> None:
    scores = RfmScores()
    shop = make_shop(crm_factory, scores)
    shop.history()
    shop.p.refresh()
    shop.crm.offers.create("welcome_guide", "Welcome guide", kind="content", priority=10)
    shop.crm.offers.create("comeback", "A coupon to come back", kind="coupon", priority=5)
    shop.p.define("home", k=6, offers=2)
    champion, lost, unknown = (shop.customer(lifecycle_stage="new") for _ in range(3))
    scores.groups.update({champion: "champions", lost: "lost"})
    d = shop.p.decide(lost, "home")
    assert d.offers[0].code == "comeback" and "suits a lost customer" in d.offers[0].reason
    assert "RFM group 'lost'" in " ".join(d.explanation)
    d = shop.p.decide(champion, "home")
    assert d.offers[0].code == "welcome_guide" and "RFM group 'champions'" in " ".join(d.explanation)
    assert "RFM group" not in " ".join(shop.p.decide(unknown, "home").explanation)
    assert shop.crm.customers.get(lost).attributes == {}  # read, never copied
    # a bandit segmented by an attribute the plugin computes
    shop.p.define("banner", alternatives=["a", "b"], segment_by="attribute:rfm_group")
    assert shop.p.decide(lost, "banner").segment == "lost"
    assert shop.p.decide(unknown, "banner").segment == "none"
    # the segment and the transparent strategy both read the attribute: computed once per decision
    shop.p.define("banner", alternatives=["a", "b"], segment_by="attribute:rfm_group", strategies=["ranked", "bandit"])
    before = scores.asked
    d = shop.p.decide(lost, "banner")
    assert d.segment == "lost" and scores.asked == before + 1


def test_stored_lists_of_any_shape_decode_to_sku_score_pairs() -> None:
    from ecrm_personalize.cache import _entries

    assert _entries('[["S1", 0.5], ["S2", 1]]') == (("S1", 0.5), ("S2", 1.0))
    assert _entries('[[7, 0.5], ["S2", 1, "extra"], "junk"]') == (("7", 0.5), ("S2", 1.0))
    assert _entries([["S1", 2]]) == (("S1", 2.0),)  # PostgreSQL's driver decodes JSON itself
    assert _entries("not json") == () and _entries('{"a": 1}') == () and _entries(None) == ()
