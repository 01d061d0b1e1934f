"""crm.customers.search (filters, keyset pagination), delete and aliases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecrm_core import Conflict, NotFound, ValidationError, hookimpl
from ecrm_core.registry import AttributeDef
from ecrm_core.services.customers import SEARCH_SORTS
from ecrm_core.testing import EventRecorder, registered

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Country:
    @hookimpl
    def ecrm_register_attributes(self):
        return [AttributeDef(name="country", type="string")]


@pytest.fixture
def clock():
    return {"now": NOW}


@pytest.fixture
def shop(crm_factory, clock):
    return crm_factory(plugins=[Country()], clock=lambda: clock["now"])


def seed(crm, clock, n=23):
    """Customers with NULL and duplicate names/e-mails and equal timestamps."""
    ids = []
    for k in range(n):
        clock["now"] = NOW + timedelta(minutes=k // 3)  # three customers per timestamp
        ids.append(
            crm.customers.create(
                external_id=f"u{k}",
                email=None if k % 4 == 0 else f"c{k % 7}-{k}@example.com",
                name=None if k % 3 == 0 else f"Name {k % 5}",
                attributes={"country": "KR" if k % 2 else "JP"},
            ).id
        )
    clock["now"] = NOW + timedelta(hours=1)
    return ids


def expected(crm, sort):
    """The order a direct query gives (NULLs last ascending, first descending)."""
    t = crm.db.tables["customers"]
    desc = sort.startswith("-")
    col = t.c[sort.lstrip("-")]
    order = [col.desc().nulls_first(), t.c.id.desc()] if desc else [col.asc().nulls_last(), t.c.id.asc()]
    with crm.db.read() as conn:
        return list(conn.scalars(sa.select(t.c.id).where(t.c.merged_into.is_(None)).order_by(*order)))


def walk(crm, sort, limit, **filters):
    seen, after, pages = [], None, 0
    while True:
        page = crm.customers.search(sort=sort, after=after, limit=limit, **filters)
        seen += [c.id for c in page.items]
        pages += 1
        if page.next_after is None:
            return seen, pages
        after = page.next_after


@pytest.mark.parametrize("sort", [*SEARCH_SORTS, *(f"-{s}" for s in SEARCH_SORTS)])
def test_keyset_pagination_visits_everyone_once_in_every_sort(shop, clock, sort):
    seed(shop, clock)
    seen, pages = walk(shop, sort, 4)
    assert pages >= 6
    assert len(seen) == len(set(seen))
    assert seen == expected(shop, sort)


def test_filters(shop, clock):
    ids = seed(shop, clock, 12)
    by = shop.customers.search
    assert [c.id for c in by(external_id="u5").items] == [ids[5]]
    assert [c.id for c in by(email="C5-5@Example.com").items] == [ids[5]]
    assert by(lifecycle_stage="prospect", limit=1000).items.__len__() == 12
    assert [c.id for c in by(created_after=NOW + timedelta(minutes=2), limit=100).items] == ids[9:]
    assert [c.id for c in by(created_before=NOW + timedelta(minutes=1), limit=100).items] == ids[:3]
    assert len(by(updated_after=NOW + timedelta(hours=2)).items) == 0
    korea = [c.id for c in by(where='country = "KR"', limit=100).items]
    assert korea == ids[1::2]
    shop.segments.create("evens", 'country == "JP"')
    assert [c.id for c in by(segment="evens", limit=100).items] == ids[0::2]
    both = by(where='country = "KR"', segment="evens").items
    assert both == ()


def test_where_is_a_rule_with_events(shop, clock):
    ids = seed(shop, clock, 6)
    shop.interactions.track("purchase", customer_id=ids[1], amount="5", currency="EUR")
    shop.interactions.track("purchase", customer_id=ids[2], amount="5", currency="EUR")
    page = shop.customers.search(where='country = "KR" and purchase.count(90d) >= 1')
    assert [c.id for c in page.items] == [ids[1]]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sort": "password"}, "sort"),
        ({"sort": "id; DROP TABLE ecrm_customers"}, "sort"),
        ({"sort": "--id"}, "sort"),
        ({"where": "1; DROP TABLE ecrm_customers"}, "where"),
        ({"where": "nosuchfield = 1"}, "where"),
        ({"segment": "nope"}, "segment"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"created_after": datetime(2026, 1, 1)}, "created_after"),
        ({"email": "not-an-email"}, "email"),
        ({"lifecycle_stage": "nope"}, "lifecycle_stage"),
        ({"sort": "name", "after": [5, 1]}, "after"),
        ({"sort": "created_at", "after": ["yesterday", 1]}, "after"),
        ({"sort": "id", "after": [None, 1]}, "after"),
        ({"after": "1"}, "after"),
    ],
)
def test_bad_search_input_names_the_parameter(shop, clock, kwargs, field):
    seed(shop, clock, 2)
    with pytest.raises(ValidationError) as err:
        shop.customers.search(**kwargs)
    assert err.value.field == field
    assert shop.customers.count() == 2  # nothing was executed against the table


def test_delete_removes_everything_in_one_go(shop, clock):
    events = EventRecorder()
    ids = seed(shop, clock, 4)
    shop.segments.create("everyone", "lifecycle_stage exists")
    keep, gone, dup = ids[0], ids[1], ids[2]
    shop.customers.set_consent(gone, "email", True, source="form")
    shop.customers.add_alias(gone, "anonymous", "cookie-1")
    shop.interactions.track("purchase", customer_id=gone, amount="5", currency="EUR")
    shop.interactions.track("purchase", customer_id=dup, amount="7", currency="EUR")
    shop.interactions.track("purchase", customer_id=keep, amount="9", currency="EUR")
    shop.customers.merge(dup, into=gone)
    before = shop.segments.get("everyone").member_count
    other = shop.in_workspace("other")
    twin = other.customers.create(external_id="u1")
    with registered(shop, events):
        assert shop.customers.delete(gone) == (gone, dup)
    [deleted] = events.of("ecrm_customers_deleted")
    assert deleted["customer_ids"] == [gone, dup]
    # every identity of both (the tombstone's moved to the survivor at the merge), read before the rows went
    kinds = {(a.kind, a.value) for a in deleted["aliases"]}
    assert kinds == {
        ("external", "u1"),
        ("external", "u2"),
        ("email", "c1-1@example.com"),
        ("email", "c2-2@example.com"),
        ("anonymous", "cookie-1"),
    }
    assert deleted["aliases"] == sorted(deleted["aliases"], key=lambda a: (a.kind, a.value))
    for cid in (gone, dup):
        with pytest.raises(NotFound):
            shop.customers.get(cid, follow_merged=False)
    assert shop.customers.find(external_id="u1") is None
    assert shop.customers.find(alias=__import__("ecrm_core").Alias("anonymous", "cookie-1")) is None
    tables = shop.db.tables
    with shop.db.read() as conn:
        for name in ("aliases", "consent_events", "interactions", "segment_members"):
            t = tables[name]
            n = conn.scalar(sa.select(sa.func.count()).where(t.c.customer_id.in_([gone, dup])))
            assert n == 0, name
        log = tables["audit_log"]
        actions = conn.execute(sa.select(log.c.action, log.c.entity_id)).all()
    assert actions == [("customer.delete", str(gone))]  # the merge record (with the source's data) is gone
    assert shop.segments.get("everyone").member_count == before - 1 == shop.segments.count("everyone")
    assert shop.customers.get(keep).id == keep
    assert other.customers.get(twin.id).external_id == "u1"  # another workspace is untouched
    with pytest.raises(NotFound):
        shop.customers.delete(gone)
    with pytest.raises(NotFound):
        other.customers.delete(keep)  # ids of another workspace are not found


def test_delete_of_a_merged_id_is_a_conflict(shop, clock):
    a, b = seed(shop, clock, 2)
    shop.customers.merge(b, into=a)
    with pytest.raises(Conflict, match=f"merged into {a}"):
        shop.customers.delete(b)
    assert shop.customers.get(b).id == a


def test_delete_cascades_to_plugin_tables(crm_factory):
    ecrm_stats = pytest.importorskip("ecrm_stats")
    crm = crm_factory(plugins=[ecrm_stats.plugin])
    c = crm.customers.create(email="s@example.com")
    crm.interactions.track("purchase", customer_id=c.id, amount="3", currency="EUR")
    t = crm.db.tables["customer_stats"]
    with crm.db.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t)) > 0
    crm.customers.delete(c.id)
    with crm.db.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t)) == 0


def test_aliases_add_and_remove(shop, clock):
    a, b = seed(shop, clock, 2)
    assert shop.customers.add_alias(a, "email", "Extra@Example.com").value == "extra@example.com"
    shop.customers.add_alias(a, "email", "extra@example.com")  # again: no change
    assert ("email", "extra@example.com") in [(x.kind, x.value) for x in shop.customers.aliases(a)]
    with pytest.raises(Conflict, match=f"belongs to customer {a}.*merge"):
        shop.customers.add_alias(b, "email", "extra@example.com")
    with pytest.raises(Conflict, match="change the field"):
        shop.customers.remove_alias(a, "external", "u0")
    shop.customers.remove_alias(a, "email", "extra@example.com")
    with pytest.raises(NotFound):
        shop.customers.remove_alias(a, "email", "extra@example.com")
    assert [x.kind for x in shop.customers.aliases(a)] == ["external"]
