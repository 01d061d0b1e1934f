"""The CRM facade: customers, interactions, offers — behaviour and bad input."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ecrm_core import Alias, BatchError, Conflict, IdempotencyConflict, NotFound, ValidationError

UTC = UTC
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def snapshot(crm):
    """Every row of every core table: to assert that nothing changed."""
    with crm.db.read() as conn:
        return {
            name: sorted(tuple(map(str, r)) for r in conn.execute(table.select()))
            for name, table in crm.db.tables.items()
        }


# -- customers -----------------------------------------------------------------


def test_create_get_find_update(crm):
    ada = crm.customers.create(external_id="u1", email="ada@example.com", name="Ada", attributes={"plan": "free"})
    assert ada.id and crm.customers.get(ada.id) == ada
    assert crm.customers.find(email="ADA@example.com") == ada
    assert crm.customers.find(external_id="u1") == ada
    assert crm.customers.find(email="nobody@example.com") is None
    new = crm.customers.update(ada.id, attributes={"plan": "pro", "seats": 3}, lifecycle_stage="active")
    assert dict(new.attributes) == {"plan": "pro", "seats": 3} and new.lifecycle_stage == "active"
    new = crm.customers.update(ada.id, attributes={"seats": None})
    assert dict(new.attributes) == {"plan": "pro"}
    assert crm.customers.count() == 1


def test_identity_conflicts_change_nothing(crm):
    a = crm.customers.create(email="a@example.com")
    b = crm.customers.create(email="b@example.com")
    before = snapshot(crm)
    with pytest.raises(Conflict, match=f"belongs to customer {a.id}; update that customer"):
        crm.customers.create(email="a@example.com")
    with pytest.raises(Conflict):
        crm.customers.update(b.id, email="a@example.com")
    with pytest.raises(ValidationError, match="did you mean 'email'"):
        crm.customers.create(emial="c@example.com")
    with pytest.raises(ValidationError, match="unknown lifecycle stage"):
        crm.customers.create(email="c@example.com", lifecycle_stage="actve")
    assert snapshot(crm) == before


def test_email_change_moves_the_alias(crm):
    a = crm.customers.create(email="old@example.com")
    crm.customers.update(a.id, email="new@example.com")
    assert crm.customers.find(email="new@example.com").id == a.id
    assert crm.customers.find(email="old@example.com") is None
    crm.customers.create(email="old@example.com")  # the old address is free again


def test_upsert_by_external_id_and_email(crm):
    a = crm.customers.upsert(external_id="u1", name="A")
    b = crm.customers.upsert(external_id="u1", email="a@example.com")
    assert a.id == b.id and b.name == "A" and b.email == "a@example.com"
    c = crm.customers.upsert(email="a@example.com", phone="+14155550123")
    assert c.id == a.id and c.phone == "+14155550123"
    other = crm.customers.create(email="other@example.com")
    with pytest.raises(Conflict):
        crm.customers.upsert(external_id="u1", email="other@example.com", aliases=[Alias("anonymous", "z")])
    assert crm.customers.get(other.id).external_id is None


def test_upsert_many_all_or_nothing_and_skip(crm):
    rows = [
        {"external_id": "1", "email": "one@example.com"},
        {"external_id": "2", "email": "broken"},
        {"external_id": "3", "phone": "12"},
        {"name": "no identity"},
        {"external_id": "1", "name": "One again"},  # same identity twice: one customer
    ]
    before = snapshot(crm)
    with pytest.raises(BatchError) as info:
        crm.customers.upsert_many(rows)
    assert [e.index for e in info.value.errors] == [1, 2, 3]
    assert "email" in str(info.value.errors[0]) and "nothing was stored" in str(info.value)
    assert snapshot(crm) == before
    result = crm.customers.upsert_many(rows, on_error="skip")
    assert len(result.created) == 1 and len(result.errors) == 3
    one = crm.customers.find(external_id="1")
    assert one.name == "One again" and one.email == "one@example.com"


def test_consent_history(crm):
    a = crm.customers.create(email="a@example.com", consent={"email": "granted"})
    crm.customers.set_consent(a.id, "email", False, source="unsubscribe link")
    crm.customers.set_consent(a.id, "sms", True, source="checkout")
    now = crm.customers.get(a.id)
    assert not now.consents_to("email") and now.consents_to("sms")
    history = crm.customers.consent_history(a.id)
    assert [(h["channel"], h["status"]) for h in history] == [
        ("email", "granted"),
        ("email", "denied"),
        ("sms", "granted"),
    ]
    assert history[1]["source"] == "unsubscribe link"


def test_merge_keeps_every_interaction_and_audits(crm, events):
    a = crm.customers.create(email="a@example.com", name="A", consent={"email": True})
    b = crm.customers.create(phone="+14155550123", external_id="shop-9", attributes={"vip": True})
    crm.interactions.track_many(
        [
            {"kind": "page_view", "customer_id": cid, "occurred_at": T0 + timedelta(minutes=i)}
            for i, cid in enumerate([a.id, b.id, b.id])
        ]
    )
    record = crm.customers.merge(b.id, into=a.id, actor="support:kim", reason="same person")
    assert record.moved_interactions == 2 and record.moved_aliases == 2
    survivor = crm.customers.get(a.id)
    assert survivor.phone == "+14155550123" and survivor.external_id == "shop-9" and survivor.attributes["vip"]
    assert crm.customers.get(b.id).id == a.id  # old id resolves to the survivor
    assert crm.customers.get(b.id, follow_merged=False).merged_into == a.id
    assert crm.customers.find(external_id="shop-9").id == a.id
    assert len(crm.interactions.timeline(a.id)) == 3
    assert crm.interactions.count() == 3  # nothing lost
    crm.interactions.track("login", customer_id=b.id)  # tracking against the old id lands on the survivor
    assert crm.interactions.timeline(a.id)[0].kind == "login"
    assert events.of("ecrm_customers_merged")[0]["merge"] == record
    audit = crm.db.tables["audit_log"]
    with crm.db.read() as conn:
        row = conn.execute(audit.select()).one()
    assert row.action == "customer.merge" and row.actor == "support:kim" and row.details["source"]["phone"]


def test_bad_merges_change_nothing(crm):
    a = crm.customers.create(email="a@example.com")
    b = crm.customers.create(email="b@example.com")
    before = snapshot(crm)
    with pytest.raises(ValidationError, match="into itself"):
        crm.customers.merge(a.id, into=a.id)
    with pytest.raises(NotFound):
        crm.customers.merge(a.id, into=999)
    crm.customers.merge(b.id, into=a.id)
    with pytest.raises(Conflict, match="already merged"):
        crm.customers.merge(b.id, into=a.id)
    assert snapshot(crm)["interactions"] == before["interactions"]


def test_workspaces_are_isolated(crm):
    acme = crm.in_workspace("acme")
    a = crm.customers.create(email="a@example.com")
    b = acme.customers.create(email="a@example.com")  # same address, other tenant: fine
    assert a.id != b.id and b.workspace == "acme"
    with pytest.raises(NotFound):
        acme.customers.get(a.id)
    with pytest.raises(NotFound):
        acme.interactions.track("login", customer_id=a.id)
    assert crm.customers.count() == 1 and acme.customers.count() == 1


# -- interactions -----------------------------------------------------------


def test_track_idempotency(crm, events):
    a = crm.customers.create(email="a@example.com")
    first = crm.interactions.track(
        "purchase",
        customer_id=a.id,
        amount="10.50",
        currency="EUR",
        idempotency_key="o-1",
        occurred_at=T0,
        properties={"sku": "X"},
    )
    again = crm.interactions.track(
        "purchase",
        customer_id=a.id,
        amount="10.50",
        currency="EUR",
        idempotency_key="o-1",
        occurred_at=T0,
        properties={"sku": "X"},
    )
    assert again.id == first.id and first.amount == Decimal("10.5")
    before = snapshot(crm)
    with pytest.raises(IdempotencyConflict, match="o-1"):
        crm.interactions.track(
            "purchase", customer_id=a.id, amount="99", currency="EUR", idempotency_key="o-1", occurred_at=T0
        )
    assert snapshot(crm) == before
    assert len(events.of("ecrm_interactions_recorded")) == 1  # the retry recorded nothing new


def test_track_many_bad_rows_store_nothing(crm):
    a = crm.customers.create(email="a@example.com")
    rows = [
        {"kind": "purchase", "customer_id": a.id, "amount": 5, "currency": "USD", "occurred_at": T0},
        {"kind": "purchse", "customer_id": a.id},
        {"kind": "purchase", "customer_id": a.id, "amount": float("nan"), "currency": "USD"},
        {"kind": "page_view", "customer_id": a.id, "occurred_at": datetime(2025, 1, 1)},
        {"kind": "page_view", "customer_id": a.id, "properties": {"x": "y" * 20000}},
        {"kind": "page_view", "customer_id": 424242},
        {"kind": "page_view", "customer_id": a.id, "ammount": 1},
        {"kind": "purchase", "customer_id": a.id, "amount": 1, "currency": "ZZZ"},
    ]
    before = snapshot(crm)
    with pytest.raises(BatchError) as info:
        crm.interactions.track_many(rows)
    reasons = {e.index: str(e.error) for e in info.value.errors}
    assert set(reasons) == {1, 2, 3, 4, 6, 7}  # row 5 (unknown id) is caught at insert, after the others failed
    assert "did you mean 'purchase'" in reasons[1]
    assert "naive" in reasons[3] and "larger than" in reasons[4] and "did you mean 'amount'" in reasons[6]
    assert snapshot(crm) == before
    result = crm.interactions.track_many(rows, on_error="skip")
    assert result.stored == 1 and {e.index for e in result.errors} == {1, 2, 3, 4, 5, 6, 7}
    assert "customer 424242 not found" in str(next(e for e in result.errors if e.index == 5))


def test_track_many_duplicate_keys(crm):
    a = crm.customers.create(email="a@example.com")
    row = {"kind": "click", "customer_id": a.id, "occurred_at": T0, "idempotency_key": "k1"}
    result = crm.interactions.track_many([row, dict(row), {**row, "idempotency_key": "k2"}])
    assert (result.stored, result.duplicates) == (2, 1)
    result = crm.interactions.track_many([row, {**row, "idempotency_key": "k3"}])
    assert (result.stored, result.duplicates) == (1, 1)
    with pytest.raises(BatchError, match="k1"):
        crm.interactions.track_many([{**row, "channel": "email"}])
    with pytest.raises(BatchError, match="earlier in this call"):
        crm.interactions.track_many(
            [{**row, "idempotency_key": "k9"}, {**row, "idempotency_key": "k9", "channel": "web"}]
        )
    assert crm.interactions.count() == 3


def test_track_many_non_atomic_commits_batches(crm, events):
    a = crm.customers.create(email="a@example.com")
    rows = [{"kind": "page_view", "customer_id": a.id, "occurred_at": T0 + timedelta(seconds=i)} for i in range(10)]
    rows.append({"kind": "nope", "customer_id": a.id})
    with pytest.raises(BatchError) as info:
        crm.interactions.track_many(rows, atomic=False, batch_size=4)
    assert info.value.committed == 8 and "8 row(s) of earlier batches were committed" in str(info.value)
    assert crm.interactions.count() == 8  # two full batches before the bad one
    assert [len(e["batch"]) for e in events.of("ecrm_interactions_recorded")] == [4, 4]


def test_track_by_alias_creates_prospects(crm, events):
    result = crm.interactions.track_many(
        [
            {"kind": "page_view", "anonymous_id": "cookie-1"},
            {"kind": "page_view", "anonymous_id": "cookie-1"},
            {"kind": "signup", "email": "new@example.com"},
        ]
    )
    assert result.stored == 3 and result.created_customers == 2
    c = crm.customers.find(alias=Alias("anonymous", "cookie-1"))
    assert c.lifecycle_stage == "prospect" and len(crm.interactions.timeline(c.id)) == 2
    assert sum(len(e["customers"]) for e in events.of("ecrm_customers_created")) == 2
    with pytest.raises(BatchError):
        crm.interactions.track_many([{"kind": "page_view", "anonymous_id": "cookie-2"}], create_missing=False)


def test_recorded_batches_hold_what_was_stored(crm, events):
    a = crm.customers.create(email="a@example.com")
    b = crm.customers.create(email="b@example.com")
    crm.customers.merge(b.id, into=a.id)
    rows = [
        {
            "kind": "purchase",
            "customer_id": a.id,
            "occurred_at": T0.astimezone(timezone(timedelta(hours=9))),
            "amount": "5.50",
            "currency": "eur",
            "channel": "web",
            "properties": {"b": 1, "a": [2]},
            "idempotency_key": "p1",
        },
        {"kind": "page_view", "customer_id": b.id, "occurred_at": T0 + timedelta(seconds=1)},  # merged into a
        {"kind": "page_view", "email": "new@example.com", "occurred_at": T0 + timedelta(seconds=2)},
        {"kind": "click", "customer_id": a.id, "occurred_at": "2025-03-01T12:00:03Z", "idempotency_key": "c1"},
    ]
    crm.interactions.track_many(rows[:1])
    events.calls.clear()
    result = crm.interactions.track_many(rows, batch_size=2, atomic=False)
    assert (result.stored, result.duplicates, result.created_customers) == (3, 1, 1)
    batches = [e["batch"] for e in events.of("ecrm_interactions_recorded")]
    assert [len(x) for x in batches] == [1, 2]  # the duplicate is in no batch
    new = crm.customers.find(email="new@example.com")
    assert [x.customer_ids for x in batches] == [{a.id}, {new.id, a.id}]
    assert [x.kinds for x in batches] == [{"page_view"}, {"page_view", "click"}]
    assert [r["customer_id"] for x in batches for r in x.rows] == [a.id, new.id, a.id]
    assert batches[1].columns["occurred_at"] == (T0 + timedelta(seconds=2), T0 + timedelta(seconds=3))
    assert batches[1].earliest == T0 + timedelta(seconds=2)
    for batch in batches:
        for got in batch:
            assert got.workspace == crm.workspace and got.id is None
    if crm.db.is_sqlite:
        # ecrm holds SQLite's write lock: each batch's rows have consecutive ids
        stored = crm.interactions.timeline(a.id) + crm.interactions.timeline(new.id)
        assert sorted(i.id for i in stored if i.idempotency_key != "p1") == [i for x in batches for i in x.ids]
        for batch in batches:
            for interaction_id, row in zip(batch.ids, batch.rows, strict=True):
                got = crm.interactions.get(interaction_id)
                assert (got.customer_id, got.kind, got.occurred_at) == (
                    row["customer_id"],
                    row["kind"],
                    row["occurred_at"],
                )


def test_customer_ids_resolve_per_batch_by_primary_key(crm):
    a, b, c = (crm.customers.create(email=f"{n}@example.com") for n in "abc")
    crm.customers.merge(b.id, into=a.id)
    rows = [{"kind": "page_view", "customer_id": cid, "occurred_at": T0} for cid in (a.id, b.id, c.id, 9999)]
    result = crm.interactions.track_many(rows, on_error="skip")
    assert result.stored == 3 and [(e.index, str(e.error)) for e in result.errors] == [
        (3, "customer 9999 not found in this workspace")
    ]
    assert [i.customer_id for i in crm.interactions.timeline(a.id)] == [a.id, a.id]
    other = crm.in_workspace("other")
    assert other.interactions.track_many(rows[:1], on_error="skip").errors[0].index == 0  # not in this workspace
    if crm.db.is_sqlite:  # one primary-key lookup per id, whatever the number of customers
        from ecrm_core.services.interactions import _TrackState

        state = _TrackState(crm.interactions, True, False)
        with crm.db.read() as conn:
            state._unusual_ids_sqlite(conn, {a.id})
            (sql,) = crm.db.tables["interactions"].info["ecrm.track_ids_sql"].values()
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("[1]", "x")))
        assert "INTEGER PRIMARY KEY" in plan and "INDEX ix_" not in plan, plan


def test_bulk_statements_are_compiled_once_per_table(crm_factory):
    plain, prefixed = crm_factory(), crm_factory(table_prefix="x_")
    for crm in (plain, prefixed):
        c = crm.customers.create(email="a@example.com")
        for n in range(3):
            crm.interactions.track("page_view", customer_id=c.id, idempotency_key=f"k{n}")
        assert crm.interactions.track_many([{"kind": "click", "customer_id": c.id}]).stored == 1
    (compiled,) = plain.db.tables["interactions"].info["ecrm.track_sql"].values()
    (other,) = prefixed.db.tables["interactions"].info["ecrm.track_sql"].values()
    assert "INTO ecrm_interactions" in compiled["insert"] and "INTO x_interactions" in other["insert"]
    assert prefixed.interactions.count() == 4 and plain.interactions.count() == 4


def test_payload_hashes_keep_their_stored_format(crm):
    """Stored payload hashes must match what earlier versions wrote, or a retry
    of an event stored before an upgrade would be taken for a conflict."""
    import sqlalchemy as sa

    a = crm.customers.create(email="a@example.com")
    assert a.id == 1
    at = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=9)))
    crm.interactions.track_many(
        [
            {
                "kind": "purchase",
                "customer_id": a.id,
                "occurred_at": at,
                "amount": "10.50",
                "currency": "eur",
                "properties": {"sku": "X", "a": [1, 2]},
                "channel": "web",
                "idempotency_key": "h1",
            },
            {"kind": "page_view", "email": "b@example.com", "idempotency_key": "h2"},
            {
                "kind": "page_view",
                "customer_id": a.id,
                "occurred_at": "2025-03-01T00:00:00.000001Z",
                "idempotency_key": "h3",
            },
        ]
    )
    t = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        hashes = dict(conn.execute(sa.select(t.c.idempotency_key, t.c.payload_hash)).all())
    assert hashes == {
        "h1": "19a09889e85dd43d3e30eefbb56d9745",
        "h2": "314fb19ec0da6efafc237b220ad75f06",  # no occurred_at sent: the time is not hashed
        "h3": "3228a69f9276019ca464ef6f313fec06",
    }
    # the same payloads again: duplicates, whatever the key order of the properties
    again = crm.interactions.track_many(
        [
            {
                "kind": "purchase",
                "customer_id": a.id,
                "occurred_at": at.astimezone(UTC),
                "amount": Decimal("10.50"),
                "currency": "EUR",
                "properties": {"a": [1, 2], "sku": "X"},
                "channel": "web",
                "idempotency_key": "h1",
            },
            {"kind": "page_view", "email": "b@example.com", "idempotency_key": "h2"},
        ]
    )
    assert (again.stored, again.duplicates) == (0, 2)


def test_bad_values_of_other_types_are_row_errors(crm):
    a = crm.customers.create(email="a@example.com")
    rows = [
        {"kind": 42, "customer_id": a.id},
        {"kind": "page_view", "customer_id": a.id, "channel": ["web"]},
        {"kind": "purchase", "customer_id": a.id, "amount": 1, "currency": ["EUR"]},
        {"kind": "page_view", "customer_id": True},
        {"kind": "page_view", "customer_id": 2**63},
    ]
    result = crm.interactions.track_many(rows, on_error="skip")
    assert result.stored == 0
    assert [(e.index, e.error.field) for e in result.errors] == [
        (0, "kind"),
        (1, "channel"),
        (2, "currency"),
        (3, "customer_id"),
        (4, "customer_id"),
    ]


def test_timeline_pages_and_view(crm):
    a = crm.customers.create(email="a@example.com")
    crm.interactions.track_many(
        [
            {"kind": "page_view", "customer_id": a.id, "channel": "web", "occurred_at": T0 + timedelta(hours=i)}
            for i in range(5)
        ]
        + [
            {
                "kind": "purchase",
                "customer_id": a.id,
                "channel": "store",
                "amount": "20",
                "currency": "EUR",
                "occurred_at": T0 + timedelta(days=1),
            }
        ]
    )
    page1 = crm.interactions.timeline(a.id, limit=4)
    assert page1[0].kind == "purchase" and len(page1) == 4
    last = page1[-1]
    page2 = crm.interactions.timeline(a.id, limit=4, before=(last.occurred_at, last.id))
    assert len(page2) == 2 and {i.id for i in page1}.isdisjoint(i.id for i in page2)
    assert [i.kind for i in crm.interactions.timeline(a.id, kinds=["purchase"])] == ["purchase"]
    view = crm.interactions.view(a.id)
    by_kind = {s.kind: s for s in view.summary}
    assert by_kind["page_view"].count == 5 and by_kind["purchase"].amount == Decimal("20")
    assert by_kind["page_view"].first_at == T0


def test_concurrent_writers(crm):
    ids = [c for c in crm.customers.upsert_many([{"external_id": str(i)} for i in range(20)]).created]
    errors = []

    def worker(n):
        try:
            for j in range(20):
                crm.interactions.track("page_view", customer_id=ids[(n + j) % 20], idempotency_key=f"{n}-{j}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert crm.interactions.count() == 120


# -- offers -----------------------------------------------------------------


def test_offers(crm):
    crm.offers.create(
        "spring10",
        "10% off in spring",
        kind="discount",
        content={"percent": 10},
        priority=5,
        valid_from=T0,
        valid_until=T0 + timedelta(days=30),
        channels=["email"],
    )
    crm.offers.create("welcome", "Welcome guide", kind="content", priority=1)
    crm.offers.create("old", "Old", status="archived")
    with pytest.raises(Conflict):
        crm.offers.create("welcome", "Again")
    assert [o.code for o in crm.offers.active(T0 + timedelta(days=1))] == ["spring10", "welcome"]
    assert [o.code for o in crm.offers.active(T0 + timedelta(days=1), channel="sms")] == ["welcome"]
    assert [o.code for o in crm.offers.active(T0 + timedelta(days=40))] == ["welcome"]
    updated = crm.offers.update(
        "welcome", priority=9, eligibility={"all": [{"field": "attributes.country", "op": "eq", "value": "KR"}]}
    )
    assert crm.offers.get(updated.id).eligibility["all"][0]["value"] == "KR"
    with pytest.raises(ValidationError):
        crm.offers.update("welcome", valid_from=datetime(2025, 1, 1))
    crm.offers.delete("old")
    with pytest.raises(NotFound):
        crm.offers.get("old")


def test_malformed_aliases_are_row_errors(crm):
    result = crm.customers.upsert_many(
        [{"email": "a@example.com", "aliases": ["abc"]}, {"email": "b@example.com", "aliases": [("anonymous", "c1")]}],
        on_error="skip",
    )
    assert len(result.created) == 1 and "aliases[0]" in str(result.errors[0])
    with pytest.raises(ValidationError, match="not a list"):
        crm.customers.create(email="c@example.com", aliases="anonymous:c2")
