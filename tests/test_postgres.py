"""The core on a real PostgreSQL server (``ecrm_core.testing.postgres``).

One throwaway server per session; every test gets a fresh migrated database
cloned from a template.  The server's TimeZone is UTC+05:45, so anything
depending on the server's zone shows up here.

Behaviour shared with SQLite is checked by running the tests of
``tests/test_facade.py`` again with ``crm`` (and so ``events``) bound to
PostgreSQL; the rest is what only a server with concurrent writers, real
schemas, NUMERIC and timestamptz can show.

Tracking under concurrent writers: the bulk path learns which rows it stored
from ``INSERT … ON CONFLICT DO NOTHING RETURNING`` (another transaction's
rows committed meanwhile are never taken for its own); the tests below make
such a writer commit at the exact moment before the call's INSERT.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import test_facade as facade
from test_facade import T0, snapshot

from ecrm_core import (
    CRM,
    Alias,
    BatchError,
    Conflict,
    IdempotencyConflict,
    SchemaNotInitialised,
    ValidationError,
    hookimpl,
)
from ecrm_core.testing import EventRecorder
from ecrm_core.testing.postgres import ENV_URL, SERVER_TIMEZONE

pytestmark = pytest.mark.postgres


@pytest.fixture
def crm(pg_crm: CRM) -> CRM:
    """``crm`` (and with it ``events``) on PostgreSQL for this module."""
    return pg_crm


def on_postgres(test: Callable[..., Any], *marks: pytest.MarkDecorator) -> Callable[..., Any]:
    """A test of another module collected here too (with its own marks,
    never added to the original), using this module's fixtures."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return test(*args, **kwargs)

    for mark in marks:
        run = mark(run)
    return run


# -- the facade's tests, on PostgreSQL ------------------------------------------

test_create_get_find_update = on_postgres(facade.test_create_get_find_update)
test_identity_conflicts_change_nothing = on_postgres(facade.test_identity_conflicts_change_nothing)
test_email_change_moves_the_alias = on_postgres(facade.test_email_change_moves_the_alias)
test_upsert_by_external_id_and_email = on_postgres(facade.test_upsert_by_external_id_and_email)
test_upsert_many_all_or_nothing_and_skip = on_postgres(facade.test_upsert_many_all_or_nothing_and_skip)
test_consent_history = on_postgres(facade.test_consent_history)
test_bad_merges_change_nothing = on_postgres(facade.test_bad_merges_change_nothing)
test_workspaces_are_isolated = on_postgres(facade.test_workspaces_are_isolated)
test_offers = on_postgres(facade.test_offers)
test_malformed_aliases_are_row_errors = on_postgres(facade.test_malformed_aliases_are_row_errors)

test_track_idempotency = on_postgres(facade.test_track_idempotency)
test_track_many_bad_rows_store_nothing = on_postgres(facade.test_track_many_bad_rows_store_nothing)
test_track_many_duplicate_keys = on_postgres(facade.test_track_many_duplicate_keys)
test_track_many_non_atomic_commits_batches = on_postgres(facade.test_track_many_non_atomic_commits_batches)
test_track_by_alias_creates_prospects = on_postgres(facade.test_track_by_alias_creates_prospects)
test_timeline_pages_and_view = on_postgres(facade.test_timeline_pages_and_view)
test_merge_keeps_every_interaction_and_audits = on_postgres(facade.test_merge_keeps_every_interaction_and_audits)


# -- migrations, schema, prefix ---------------------------------------------------


def drift(crm: CRM) -> list[Any]:
    """Differences between the migrated database and the table definitions."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    schema = crm.db.naming.schema
    with crm.db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "version_table": crm.db.naming.version_table,
                "version_table_schema": schema,
                "include_schemas": schema is not None,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == schema,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(ctx, crm.db.metadata))


def test_migrations_on_an_empty_database(pg_empty_url: str) -> None:
    crm = CRM(pg_empty_url, load_entrypoints=False)
    try:
        with pytest.raises(SchemaNotInitialised, match=r"crm\.upgrade"):
            crm.customers.count()
        status = crm.schema_status()
        assert status["current"] == set() and not status["up_to_date"] and status["pending"] == status["heads"]
        crm.upgrade()
        status = crm.schema_status()
        assert status["up_to_date"] and status["current"] == status["heads"]
        assert drift(crm) == []
        crm.upgrade()  # idempotent
        assert crm.customers.count() == 0
        columns = {c["name"]: c["type"] for c in sa.inspect(crm.db.engine).get_columns("ecrm_interactions")}
        assert isinstance(columns["occurred_at"], sa.DateTime) and columns["occurred_at"].timezone
        assert isinstance(columns["amount"], sa.Numeric) and (columns["amount"].precision, columns["amount"].scale) == (
            20,
            6,
        )
    finally:
        crm.close()


def test_schema_and_table_prefix_beside_host_tables(pg_empty_url: str) -> None:
    engine = sa.create_engine(pg_empty_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE customers (id serial PRIMARY KEY, login text)")  # the host's own
        crm = CRM(engine=engine, schema="crm", table_prefix="shop_", load_entrypoints=False)
        crm.upgrade()  # creates the schema too
        inspector = sa.inspect(engine)
        assert "crm" in inspector.get_schema_names()
        names = set(inspector.get_table_names(schema="crm"))
        assert {"shop_customers", "shop_interactions", "shop_alembic_version"} <= names
        assert set(inspector.get_table_names()) == {"customers"}  # nothing of ecrm in public
        assert crm.schema_status()["up_to_date"] and drift(crm) == []

        a = crm.customers.create(email="a@example.com", attributes={"plan": "free"})
        b = crm.customers.upsert(external_id="u2", name="B")
        crm.customers.merge(b.id, into=a.id, actor="test")
        crm.offers.create("welcome", "Welcome")
        assert crm.customers.find(external_id="u2").id == a.id and crm.offers.active()[0].code == "welcome"
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM crm.shop_customers").scalar() == 2
            assert conn.exec_driver_sql("SELECT count(*) FROM customers").scalar() == 0

        other = CRM(engine=engine, load_entrypoints=False)  # default schema and prefix, same database
        other.upgrade()
        assert other.customers.count() == 0 and crm.customers.count() == 1
    finally:
        engine.dispose()


def test_factory_options_get_their_own_template(pg_crm_factory: Callable[..., CRM]) -> None:
    crm = pg_crm_factory(schema="tenant_a", table_prefix="x_")
    assert crm.schema_status()["up_to_date"]
    assert "x_customers" in sa.inspect(crm.db.engine).get_table_names(schema="tenant_a")
    crm.customers.create(email="a@example.com")
    again = pg_crm_factory(schema="tenant_a", table_prefix="x_")  # cloned: fresh, empty
    assert again.customers.count() == 0 and crm.customers.count() == 1


# -- customers ----------------------------------------------------------------------


def test_attributes_merge_patch_and_json_values(crm: CRM) -> None:
    attrs = {
        "plan": "pro",
        "tags": ["a", "b"],
        "nested": {"x": 1},
        "big": 2**62,
        "ratio": 0.1,
        "name": "Łódź 東京 \t\n",
    }
    with pytest.raises(ValidationError, match=r"attributes\.name: contains a NUL character"):
        crm.customers.create(external_id="u1", attributes={**attrs, "name": "Łódź \u0000"})  # refused everywhere
    c = crm.customers.create(external_id="u1", attributes=attrs)
    assert dict(crm.customers.get(c.id).attributes) == {**attrs, "tags": ("a", "b"), "nested": {"x": 1}}
    after = crm.customers.update(c.id, attributes={"plan": None, "seats": 3, "nested": {"y": 2}})
    stored = crm.customers.get(c.id)
    assert stored == after and "plan" not in stored.attributes
    assert stored.attributes["seats"] == 3 and dict(stored.attributes["nested"]) == {"y": 2}  # shallow patch
    again = crm.customers.upsert(external_id="u1", attributes={"seats": 4})
    assert again.attributes["seats"] == 4 and again.attributes["big"] == 2**62


def test_consent_and_upsert_many_on_postgres(crm: CRM, events: EventRecorder) -> None:
    a = crm.customers.create(email="a@example.com", consent={"email": "granted"})
    result = crm.customers.upsert_many(
        [
            {"email": "a@example.com", "consent": {"sms": True}, "name": "A"},
            {"email": "b@example.com", "aliases": [("anonymous", "cookie-b")]},
            {"email": "b@example.com", "phone": "+14155550123"},  # same new customer as the row before
            {"external_id": "x" * 201},  # too long for its column: a row error, not a DataError
            {"email": "c@example.com", "name": "bad\x00name"},
        ],
        on_error="skip",
    )
    assert result.updated == (a.id,) and len(result.created) == 1
    assert [e.index for e in result.errors] == [3, 4]
    b = crm.customers.find(alias=Alias("anonymous", "cookie-b"))
    assert b.phone == "+14155550123" and b.id == result.created[0]
    assert crm.customers.get(a.id).consents_to("sms") and crm.customers.get(a.id).name == "A"
    assert [(h["channel"], h["status"]) for h in crm.customers.consent_history(a.id)] == [
        ("email", "granted"),
        ("sms", "granted"),
    ]
    assert [len(e["customers"]) for e in events.of("ecrm_customers_created")] == [1, 1]


def test_merge_validates_the_actor(crm: CRM) -> None:
    a = crm.customers.create(email="a@example.com")
    b = crm.customers.create(email="b@example.com")
    before = snapshot(crm)
    with pytest.raises(ValidationError, match="actor"):
        crm.customers.merge(b.id, into=a.id, actor="x" * 201)  # VARCHAR(200): was a raw DataError
    assert snapshot(crm) == before
    record = crm.customers.merge(b.id, into=a.id, actor="support:kim", reason="same person")
    assert record.moved_aliases == 1 and crm.customers.find(email="b@example.com").id == a.id


# -- values: timezones and amounts ------------------------------------------------


def test_aware_datetimes_round_trip_exactly(crm: CRM) -> None:
    seoul = timezone(timedelta(hours=9))
    at = datetime(2024, 12, 31, 23, 59, 59, 123456, tzinfo=seoul)
    c = crm.customers.create(email="a@example.com", consent={"email": {"status": "granted", "at": at}})
    offer = crm.offers.create("nye", "New year", valid_from=at, valid_until=at + timedelta(hours=1))
    got, stored_offer = crm.customers.get(c.id), crm.offers.get("nye")
    assert got.consent["email"].at == at and got.consent["email"].at.tzinfo is UTC
    assert stored_offer.valid_from == at and stored_offer.valid_from.tzinfo is UTC and stored_offer == offer
    assert got.created_at.tzinfo is UTC and abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    # Whatever the session's zone, the boundaries hold to the microsecond.
    assert [o.code for o in crm.offers.active(at)] == ["nye"]
    assert crm.offers.active(at - timedelta(microseconds=1)) == []
    assert crm.offers.active(at + timedelta(hours=1)) == []
    with crm.db.engine.connect() as conn:
        if not os.environ.get(ENV_URL):  # the throwaway server runs at UTC+05:45
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == SERVER_TIMEZONE
        raw = conn.exec_driver_sql("SELECT valid_from AT TIME ZONE 'UTC' FROM ecrm_offers").scalar()
    assert raw == datetime(2024, 12, 31, 14, 59, 59, 123456)


def test_amounts_are_exact_decimals(crm: CRM) -> None:
    """The storage type itself (``Amount``): NUMERIC in, Decimal out, sums exact."""
    a = crm.customers.create(email="a@example.com")
    t = crm.db.tables["interactions"]
    amounts = [Decimal("99999999999.9999")] * 1000 + [Decimal("0.0001"), Decimal("-12.5"), Decimal("100")]
    now = crm.now()
    with crm.db.write() as conn:
        conn.execute(
            t.insert(),
            [
                {
                    "workspace_id": "default",
                    "customer_id": a.id,
                    "origin_customer_id": a.id,
                    "kind": "purchase",
                    "occurred_at": now,
                    "amount": amount,
                    "currency": "EUR",
                    "properties": {},
                    "recorded_at": now,
                }
                for amount in amounts
            ],
        )
    with crm.db.read() as conn:
        stored = conn.execute(sa.select(t.c.amount).order_by(t.c.id)).scalars().all()
        total = conn.execute(sa.select(sa.func.sum(t.c.amount))).scalar_one()
    assert stored == amounts and all(type(x) is Decimal for x in stored)
    assert [str(x) for x in stored[-3:]] == ["0.0001", "-12.5", "100"]  # as SQLite returns them
    assert total == sum(amounts) == Decimal("99999999999999.9001") - Decimal("12.5") + 100  # 18 digits: no float


# -- joining the host's transaction ----------------------------------------------


def test_joining_the_host_transaction(crm: CRM) -> None:
    recorder = EventRecorder()
    crm.register_plugin(recorder, name="recorder")
    engine = crm.db.engine
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id serial PRIMARY KEY, customer_id integer)")
        conn.commit()
        with conn.begin() as tx:  # rolled back by the host: no rows, no events
            c = crm.using(conn).customers.create(email="a@example.com")
            conn.exec_driver_sql(f"INSERT INTO orders (customer_id) VALUES ({c.id})")
            assert recorder.calls == []
            tx.rollback()
        assert recorder.calls == [] and crm.customers.count() == 0
        with conn.begin():  # committed: both, and the events after COMMIT
            view = crm.using(conn)
            c = view.customers.create(email="a@example.com")
            with pytest.raises(Conflict):
                view.customers.create(email="a@example.com")  # only its SAVEPOINT rolls back
            view.customers.update(c.id, name="A")
            view.offers.create("welcome", "Welcome")
            conn.exec_driver_sql(f"INSERT INTO orders (customer_id) VALUES ({c.id})")
            assert recorder.calls == [] and crm.customers.count() == 0  # others don't see it yet
        assert [name for name, _ in recorder.calls] == ["ecrm_customers_created", "ecrm_customers_updated"]
        assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 1
    assert crm.customers.get(c.id).name == "A" and crm.offers.get("welcome")


def test_deferred_events_see_durable_data_and_can_write(crm: CRM) -> None:
    seen = []

    class Follower:
        @hookimpl
        def ecrm_customers_created(self, crm: CRM, customers: Any) -> None:
            seen.append(crm.customers.count())  # its own connection: sees the committed row
            crm.customers.update(customers[0].id, attributes={"welcomed": True})

    crm.register_plugin(Follower(), name="follower")
    with crm.db.engine.connect() as conn, conn.begin():
        c = crm.using(conn).customers.create(email="a@example.com")
    assert seen == [1] and crm.customers.get(c.id).attributes["welcomed"] is True


# -- several writers at once ------------------------------------------------------


def run_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads started together; return their errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def main(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_upserts_of_the_same_customers(crm: CRM) -> None:
    """No unique-violation escapes, one customer per identity, no merge patch lost."""

    def work(i: int) -> None:
        for rnd in range(3):
            crm.customers.upsert_many(
                [{"external_id": f"u{k}", "attributes": {f"t{i}r{rnd}": True}} for k in range(15)]
            )
            crm.customers.upsert(email="same@example.com", attributes={f"t{i}r{rnd}": True})

    assert run_threads(6, work) == []
    assert crm.customers.count() == 16
    expected = {f"t{i}r{rnd}" for i in range(6) for rnd in range(3)}
    for c in crm.customers.list():
        assert set(c.attributes) == expected


def test_concurrent_updates_and_merges(crm: CRM) -> None:
    target = crm.customers.create(email="t@example.com")
    sources = [crm.customers.create(email=f"s{i}@example.com", attributes={f"s{i}": i}) for i in range(6)]

    def work(i: int) -> None:
        crm.customers.update(target.id, attributes={f"u{i}": i})
        crm.customers.merge(sources[i].id, into=target.id)
        crm.customers.set_consent(target.id, f"ch{i}", True)

    assert run_threads(6, work) == []
    final = crm.customers.get(target.id)
    assert set(final.attributes) == {f"u{i}" for i in range(6)} | {f"s{i}" for i in range(6)}
    assert set(final.consent) == {f"ch{i}" for i in range(6)}
    assert len(crm.customers.aliases(target.id)) == 7 and crm.customers.count() == 1


def test_concurrent_creates_conflict_cleanly(crm: CRM) -> None:
    def work(i: int) -> None:
        try:
            crm.customers.create(email="same@example.com", aliases=[("anonymous", f"c{i}")])
        except Conflict:
            pass
        try:
            crm.offers.create("same", "Same")
        except Conflict:
            pass

    assert run_threads(8, work) == []
    assert crm.customers.count() == 1 and len(crm.offers.list()) == 1


# -- interactions -----------------------------------------------------------------


def test_track_one_interaction(crm: CRM) -> None:
    c = crm.customers.create(email="a@example.com")
    crm.interactions.track("login", customer_id=c.id)


def test_interaction_values_round_trip(crm: CRM) -> None:
    c = crm.customers.create(email="a@example.com")
    at = datetime(2025, 6, 30, 23, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7)))
    first = crm.interactions.track(
        "purchase", customer_id=c.id, occurred_at=at, amount="99999999999.9999", currency="krw", idempotency_key="o1"
    )
    got = crm.interactions.get(first.id)
    assert got == first and got.occurred_at == at and got.occurred_at.tzinfo is UTC
    assert got.amount == Decimal("99999999999.9999") and got.currency == "KRW"
    view = crm.interactions.view(c.id)
    assert view.summary[0].amount == Decimal("99999999999.9999") and view.summary[0].first_at == at


def test_track_many_non_atomic_creates_prospects(crm: CRM, events: EventRecorder) -> None:
    rows = [{"kind": "page_view", "email": f"new{i % 3}@example.com", "occurred_at": T0} for i in range(7)]
    result = crm.interactions.track_many(rows, atomic=False, batch_size=2)
    assert result.stored == 7 and result.created_customers == 3 and crm.customers.count() == 3
    assert [len(e["batch"]) for e in events.of("ecrm_interactions_recorded")] == [2, 2, 2, 1]
    with pytest.raises(BatchError):
        crm.interactions.track_many([*rows, {"kind": "nope", "email": "x@example.com"}], atomic=True)
    assert crm.interactions.count() == 7 and crm.customers.find(email="x@example.com") is None


def test_tracking_in_the_host_transaction(crm: CRM, events: EventRecorder) -> None:
    with crm.db.engine.connect() as conn:
        with conn.begin() as tx:
            crm.using(conn).interactions.track("signup", email="a@example.com")
            tx.rollback()
        assert crm.customers.count() == 0 and events.calls == []
        with conn.begin():
            view = crm.using(conn)
            view.interactions.track("signup", email="a@example.com", idempotency_key="s1")
            with pytest.raises(IdempotencyConflict):
                view.interactions.track("login", email="a@example.com", idempotency_key="s1")
            assert events.calls == []
        assert [name for name, _ in events.calls] == ["ecrm_customers_created", "ecrm_interactions_recorded"]
    assert crm.interactions.count() == 1


def test_concurrent_tracking(crm: CRM) -> None:
    ids = list(crm.customers.upsert_many([{"external_id": str(i)} for i in range(10)]).created)

    def work(i: int) -> None:
        for j in range(15):
            key = f"{i}-{j}"
            got = crm.interactions.track("page_view", customer_id=ids[(i + j) % 10], idempotency_key=key)
            assert got.idempotency_key == key
        crm.interactions.track_many([{"kind": "signup", "email": f"p{j}@example.com"} for j in range(5)])

    errors = run_threads(6, work)
    if errors:
        raise errors[0]
    assert crm.interactions.count() == 6 * 15 + 30 and crm.customers.count() == 15


def test_tracking_and_upserting_the_same_customers_at_once_never_deadlocks(crm: CRM) -> None:
    """A tracking batch's foreign-key checks lock its rows' customers (KEY
    SHARE) in the rows' order; an upsert locks its customers in id order.  With
    ``FOR UPDATE`` (which blocks KEY SHARE) rows in descending order against an
    upsert deadlocked: 3 times in 15 s of this load, and once in CI from
    ``test_concurrent_tracking``.  The upsert (and the lifecycle refresh) now
    lock ``FOR NO KEY UPDATE``, as PostgreSQL's own UPDATE does."""
    import time

    ids = list(crm.customers.upsert_many([{"email": f"d{i}@example.com"} for i in range(20)]).created)
    until = time.monotonic() + 6
    rounds = [0, 0]

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < until:
            n += 1
            if i % 2:
                crm.customers.upsert_many([{"email": f"d{k}@example.com", "attributes": {"n": n}} for k in range(20)])
            else:
                crm.interactions.track_many([{"kind": "page_view", "customer_id": c} for c in reversed(ids)])
            rounds[i % 2] += 1

    errors = run_threads(4, work)
    if errors:
        raise errors[0]
    assert min(rounds) > 0
    assert crm.interactions.count() == rounds[0] * 20


def commit_meanwhile(crm: CRM, **row: Any) -> None:
    """Commit an interaction from another connection right before ``crm``'s
    next INSERT into the interactions table (a concurrent writer, made exact:
    after anything the call read first, before its own rows exist)."""
    t = crm.db.tables["interactions"]
    done: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        head = statement.lstrip()[:200].lower()
        if not done and head.startswith("insert into") and t.name in head.split("(")[0]:
            done.append(True)
            now = crm.now()
            with crm.db.engine.begin() as other:
                other.execute(
                    t.insert().values(workspace_id="default", occurred_at=now, recorded_at=now, properties={}, **row)
                )

    sa.event.listen(crm.db.engine, "before_cursor_execute", before)


def test_track_returns_its_own_row_under_concurrency(crm: CRM) -> None:
    c = crm.customers.create(email="a@example.com")
    commit_meanwhile(crm, customer_id=c.id, origin_customer_id=c.id, kind="login")
    got = crm.interactions.track("purchase", customer_id=c.id, amount="5", currency="EUR")
    assert got.kind == "purchase"  # was: the other transaction's "login"


def test_concurrent_same_key_with_another_payload_conflicts(crm: CRM, events: EventRecorder) -> None:
    c = crm.customers.create(email="a@example.com")
    commit_meanwhile(
        crm, customer_id=c.id, origin_customer_id=c.id, kind="login", idempotency_key="k1", payload_hash="other"
    )
    result = crm.interactions.track_many(
        [{"kind": "purchase", "customer_id": c.id, "idempotency_key": "k1"}], on_error="skip"
    )
    assert result.stored == 0 and len(result.errors) == 1  # was: stored=1, and an event for a row it never wrote
    assert events.of("ecrm_interactions_recorded") == []


def test_stats_commit_with_the_interactions_and_a_failing_hook_is_rolled_back_alone_on_postgres(pg_crm_factory):
    """``ecrm_interactions_inserted`` on PostgreSQL: the stats plugin writes in
    the core's transaction; a plugin whose statement fails would abort that
    whole transaction, but its SAVEPOINT is rolled back and the rest commits."""
    import ecrm_stats
    import ecrm_stats.plugin as stats_plugin

    class Broken:
        @hookimpl
        def ecrm_interactions_inserted(self, conn):
            conn.exec_driver_sql("SELECT 1 / 0")  # an SQL error: the transaction is aborted without the savepoint

    crm = pg_crm_factory(plugins=[stats_plugin, Broken()])
    c = crm.customers.create(email="a@example.com")
    rows = [
        {
            "kind": "purchase",
            "customer_id": c.id,
            "amount": "10.50",
            "currency": "EUR",
            "occurred_at": T0 + timedelta(days=d),
        }
        for d in range(5)
    ]
    assert crm.interactions.track_many(rows, batch_size=2).stored == 5
    assert crm.interactions.count() == 5
    s = ecrm_stats.stats_for(crm, c.id)["purchase"]
    assert (s.count, s.amount_sum, s.first_at, s.last_at) == (5, Decimal("52.50"), T0, T0 + timedelta(days=4))
    failures = [f for f in crm.plugins.failures if f.hook == "ecrm_interactions_inserted"]
    assert len(failures) == 3 and "division by zero" in failures[0].error
    # a bad row later in an atomic call: interactions and stats both roll back
    with pytest.raises(BatchError):
        crm.interactions.track_many([rows[0] | {"occurred_at": T0 + timedelta(days=9)}, {"kind": "nope"}], batch_size=1)
    assert crm.interactions.count() == 5 and ecrm_stats.stats_for(crm, c.id)["purchase"].count == 5
