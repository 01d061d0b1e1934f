"""Everything stored about a person: erased with them (ecrm_customers_deleted), moved on merge
(ecrm_customers_merged); and the preference centre (collaborative) changing what and how."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ecrm_personalize.schema import OUTCOMES, PREFERENCES

from ecrm_core import NotFound, ValidationError

from .conftest import Shop


def _rows(shop: Shop, table: str, cid: int) -> int:
    t = shop.crm.db.tables[table]
    with shop.crm.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.customer_id == cid)).scalar_one())


def test_deleting_a_customer_erases_preferences_and_outcomes(shop: Shop) -> None:
    shop.p.define("home")
    cid = shop.customer(name="Gone")
    keep = shop.customer(name="Stays")
    for who in (cid, keep):
        shop.p.set_preferences(who, interests=["hats"])
        shop.p.report(shop.p.decide(who, "home").id, "impression")
    assert _rows(shop, PREFERENCES, cid) == _rows(shop, OUTCOMES, cid) == 1
    shop.crm.customers.delete(cid)
    assert _rows(shop, PREFERENCES, cid) == _rows(shop, OUTCOMES, cid) == 0
    assert _rows(shop, PREFERENCES, keep) == _rows(shop, OUTCOMES, keep) == 1


def test_deletion_hook_erases_rows_the_cascade_did_not(empty_shop: Shop) -> None:
    from ecrm_personalize.people import on_deleted

    cid = empty_shop.customer()
    empty_shop.p.set_preferences(cid, interests=["hats"])
    with empty_shop.crm.db.write() as conn:
        on_deleted(empty_shop.crm, conn, [cid])  # as called by ecrm_customers_deleting
    assert _rows(empty_shop, PREFERENCES, cid) == 0


def test_visitor_outcomes_belong_to_the_customer_after_login_and_go_with_deletion(shop: Shop) -> None:
    shop.p.define("home")
    first = shop.p.decide(None, "home")
    shop.p.report(first.id, "impression")
    cid = shop.customer()
    shop.p.identify(first.visitor, cid)  # type: ignore[arg-type]
    assert _rows(shop, OUTCOMES, cid) == 1
    shop.crm.customers.delete(cid)
    t = shop.crm.db.tables[OUTCOMES]
    with shop.crm.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 0


def test_outcomes_kept_under_a_visitor_id_go_with_the_customer_it_is_an_alias_of(shop: Shop) -> None:
    """A visitor recognised as the customer without identify() (e.g. analytics.js
    sent the same anonymousId): the deletion hook's aliases find its outcomes."""
    shop.p.define("home")
    visitor_decision = shop.p.decide(None, "home")
    shop.p.report(visitor_decision.id, "impression")
    other = shop.p.decide(None, "home")  # someone else's visitor: stays
    shop.p.report(other.id, "impression")
    cid = shop.customer()
    t = shop.crm.db.tables[OUTCOMES]
    with shop.crm.db.read() as conn:
        visitors = conn.execute(sa.select(t.c.visitor).order_by(t.c.id)).scalars().all()
    assert len(set(visitors)) == 2 and None not in visitors
    shop.crm.customers.add_alias(cid, "anonymous", visitors[0])
    shop.crm.customers.delete(cid)
    with shop.crm.db.read() as conn:
        left = conn.execute(sa.select(t.c.visitor)).scalars().all()
    assert left == [visitors[1]]


def test_merging_moves_preferences_and_outcomes(shop: Shop) -> None:
    shop.p.define("home")
    source = shop.customer(name="Old account")
    target = shop.customer(name="New account")
    shop.p.set_preferences(source, interests=["hats"], frequency="weekly")
    shop.p.set_preferences(target, frequency="monthly")
    shop.p.report(shop.p.decide(source, "home").id, "impression")
    shop.crm.customers.merge(source, into=target)
    assert shop.p.preferences(target) == {"interests": ["hats"], "frequency": "monthly"}  # the target's answers win
    assert _rows(shop, PREFERENCES, source) == 0
    assert _rows(shop, OUTCOMES, target) == 1 and _rows(shop, OUTCOMES, source) == 0


def test_merging_into_a_customer_without_preferences_moves_them(empty_shop: Shop) -> None:
    source, target = empty_shop.customer(), empty_shop.customer()
    empty_shop.p.set_preferences(source, exclude=["bags"])
    empty_shop.crm.customers.merge(source, into=target)
    assert empty_shop.p.preferences(target) == {"exclude": ["bags"]}


def test_preferences_change_what_is_offered_and_how(shop: Shop) -> None:
    shop.crm.offers.create("hat_sale", "Hats -20%", kind="discount", content={"category": "hats"}, priority=1)
    shop.crm.offers.create("news", "Our story", kind="content", priority=50)
    shop.p.define("home", k=6, offers=2)
    cid = shop.customer(name="Carol")
    shop.buy(cid, "S1")
    before = shop.p.decide(cid, "home")
    assert before.items[0].category == "shoes" and before.offers[0].code == "news"
    shop.p.set_preferences(
        cid, interests=["hats"], exclude=["shoes"], presentation={"tone": "formal", "layout": "list"}
    )
    after = shop.p.decide(cid, "home")
    assert after.items and all(i.category != "shoes" for i in after.items)
    assert after.items[0].category == "hats" and "they said they like hats" in after.items[0].reasons
    assert after.offers[0].code == "hat_sale"
    assert (after.variant["tone"], after.variant["layout"]) == ("formal", "list")
    shop.p.set_preferences(cid, offers=False)
    assert shop.p.decide(cid, "home").offers == ()


def test_preferences_feed_consent_and_purposes(empty_shop: Shop) -> None:
    assert "recommendations" in empty_shop.crm.registry.purposes
    cid = empty_shop.customer()
    empty_shop.p.set_preferences(cid, channels={"email": True, "sms": False})
    c = empty_shop.crm.customers.get(cid)
    assert c.consents_to("email:recommendations") and not c.consents_to("sms:recommendations")
    empty_shop.p.set_preferences(cid, frequency="never")
    c = empty_shop.crm.customers.get(cid)
    assert not c.consents_to("email:recommendations")
    history = empty_shop.crm.customers.consent_history(cid)
    assert any(h["channel"] == "email:recommendations" for h in history)


def test_preferences_merge_and_remove(empty_shop: Shop) -> None:
    cid = empty_shop.customer()
    empty_shop.p.set_preferences(cid, interests=["hats", "hats", " bags "], needs=["gift"])
    assert empty_shop.p.preferences(cid) == {"interests": ["hats", "bags"], "needs": ["gift"]}
    empty_shop.p.set_preferences(cid, needs=None)
    assert empty_shop.p.preferences(cid) == {"interests": ["hats", "bags"]}


@pytest.mark.parametrize(
    "answers",
    [
        {"colour": "red"},
        {"interests": "hats"},
        {"interests": [""]},
        {"interests": ["x" * 200]},
        {"frequency": "hourly"},
        {"offers": "no"},
        {"presentation": {"font": "comic"}},
        {"channels": {"email": "yes"}},
        {"channels": {"Not A Slug": True}},
    ],
)
def test_bad_preferences_are_refused_and_change_nothing(empty_shop: Shop, answers) -> None:  # type: ignore[no-untyped-def]
    cid = empty_shop.customer()
    empty_shop.p.set_preferences(cid, interests=["hats"])
    with pytest.raises(ValidationError):
        empty_shop.p.set_preferences(cid, **answers)
    assert empty_shop.p.preferences(cid) == {"interests": ["hats"]}


def test_preferences_of_an_unknown_customer(empty_shop: Shop) -> None:
    with pytest.raises(NotFound):
        empty_shop.p.set_preferences(987654, interests=["hats"])
