"""Domain objects validate and normalise; bad values name field, value and fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ecrm_core import Alias, Customer, Interaction, Offer, ValidationError
from ecrm_core.validation import MAX_PROPERTIES_BYTES

UTC = UTC


def test_customer_normalises_identity():
    c = Customer(email="Ada@Example.COM", phone="+82 10-1234-5678", consent={"email": True})
    assert c.email == "ada@example.com"
    assert c.phone == "+821012345678"
    assert c.consents_to("email") and not c.consents_to("sms")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("email", "not-an-email", "not a valid e-mail"),
        ("email", "a@b@c.com", "not a valid e-mail"),
        ("phone", "12345", "phone"),
        ("phone", "+1 555 0000 0000 000", "phone"),
        ("timezone", "Mars/Olympus", "unknown timezone"),
        ("lifecycle_stage", "Active Customer!", "not a valid stage"),
        ("name", "x" * 201, "longer than"),
        ("name", "nul\x00byte", "NUL"),
        ("workspace", "Robert'); DROP TABLE", "not a valid workspace"),
        ("consent", {"email": "maybe"}, "unknown consent status"),
    ],
)
def test_customer_bad_values(field, value, problem):
    with pytest.raises(ValidationError) as info:
        Customer(**{field: value})
    err = info.value
    assert err.field.split(".")[0] == field
    assert problem in err.problem
    assert err.fix  # every error says how to fix it
    assert field in str(err)


def test_attributes_must_be_json_and_bounded():
    with pytest.raises(ValidationError, match="JSON"):
        Customer(attributes={"when": datetime.now(UTC)})
    with pytest.raises(ValidationError, match=r"finite|JSON"):
        Customer(attributes={"score": float("nan")})
    with pytest.raises(ValidationError, match="larger than"):
        Customer(attributes={"blob": "x" * (MAX_PROPERTIES_BYTES + 1)})
    c = Customer(attributes={"plan": "gold", "tags": ["a", "b"]})
    with pytest.raises(TypeError):
        c.attributes["plan"] = "silver"  # type: ignore[index]


def test_interaction_requires_aware_time():
    with pytest.raises(ValidationError) as info:
        Interaction(kind="purchase", occurred_at=datetime(2024, 1, 1))
    assert info.value.field == "occurred_at" and "naive" in info.value.problem
    i = Interaction(kind="page_view", occurred_at="2024-05-01T12:00:00+09:00")
    assert i.occurred_at == datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match="year"):
        Interaction(kind="page_view", occurred_at=datetime(1, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    "amount", [float("nan"), float("inf"), "NaN", "abc", True, Decimal("Infinity"), 10**16, "0.00001", 10**11]
)
def test_interaction_rejects_bad_amounts(amount):
    with pytest.raises(ValidationError) as info:
        Interaction(kind="purchase", occurred_at=datetime.now(UTC), amount=amount, currency="EUR")
    assert info.value.field == "amount"


def test_interaction_currency_rules():
    with pytest.raises(ValidationError, match="unknown currency"):
        Interaction(kind="purchase", occurred_at=datetime.now(UTC), amount=1, currency="XYZ")
    with pytest.raises(ValidationError, match="go together"):
        Interaction(kind="purchase", occurred_at=datetime.now(UTC), amount=1)
    i = Interaction(kind="purchase", occurred_at=datetime.now(UTC), amount="9.99", currency="krw")
    assert i.currency == "KRW" and i.amount == Decimal("9.99")


def test_alias_normalisation():
    assert Alias("email", " Bob@Example.com").value == "bob@example.com"
    assert Alias("anonymous", "  c00kie ").value == "c00kie"
    with pytest.raises(ValidationError):
        Alias("Email Address", "x")
    with pytest.raises(ValidationError, match="empty"):
        Alias("anonymous", "   ")


def test_offer_validity_window():
    now = datetime.now(UTC)
    with pytest.raises(ValidationError, match="ends before"):
        Offer(code="spring", name="Spring", valid_from=now, valid_until=now - timedelta(days=1))
    o = Offer(
        code="spring", name="Spring", valid_from=now, valid_until=now + timedelta(days=7), channels=["web", "email"]
    )
    assert o.is_active_at(now + timedelta(days=1))
    assert not o.is_active_at(now + timedelta(days=8))
    assert o.is_active_at(now, channel="email") and not o.is_active_at(now, channel="sms")
    with pytest.raises(ValidationError):
        Offer(code="x", name="X", status="live")
    with pytest.raises(ValidationError):
        Offer(code="x", name="X", priority=True)


def test_cyclic_or_absurdly_nested_properties_are_clear_errors():
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep: dict = {}
    node = deep
    for _ in range(10_000):
        node["x"] = {}
        node = node["x"]
    for value in (cyclic, deep):
        with pytest.raises(ValidationError, match="nested deeper than 32 levels"):
            Interaction(kind="page_view", occurred_at=datetime.now(UTC), properties=value)


def test_properties_json_is_canonical_and_matches_the_stdlib_encoder():
    import json
    from types import MappingProxyType

    from ecrm_core.validation import properties_json

    value = {"b": [1, 2.5, {"z": None, "y": True}], "a": "é\u2028", "n": MappingProxyType({"d": 1, "c": 2})}
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=dict)
    assert properties_json(value) == expected
    assert properties_json({"y": 1, "x": 2}) == properties_json({"x": 2, "y": 1}) == '{"x":2,"y":1}'
    assert properties_json(None) == properties_json({}) == "{}"
    for bad, problem in (({"x": float("nan")}, "x: not a finite number"), ({"x": object()}, "x: not a JSON value")):
        with pytest.raises(ValidationError, match=problem):
            properties_json(bad)


# -- InteractionBatch -----------------------------------------------------------------


def _batch_rows():
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        {
            "customer_id": 7,
            "kind": "purchase",
            "occurred_at": t0 + timedelta(hours=1),
            "channel": "web",
            "amount": Decimal("9.5"),
            "currency": "EUR",
            "properties": '{"sku":"A"}',
            "idempotency_key": "o-1",
        },
        {
            "customer_id": 8,
            "kind": "page_view",
            "occurred_at": t0,
            "channel": None,
            "amount": None,
            "currency": None,
            "properties": {"path": "/"},
            "idempotency_key": None,
        },
    ]


def test_interaction_batch_from_rows():
    from ecrm_core import InteractionBatch

    rows = _batch_rows()
    batch = InteractionBatch("default", rows, frozenset({7, 8}), frozenset({"purchase", "page_view"}))
    assert len(batch) == 2 and batch.ids is None and batch.rows is rows
    assert batch.customer_ids == {7, 8} and batch.kinds == {"purchase", "page_view"}
    assert batch.columns["customer_id"] == (7, 8) and batch.columns["amount"] == (Decimal("9.5"), None)
    assert batch.earliest == datetime(2025, 1, 1, tzinfo=UTC)
    first, second = list(batch)
    assert first.properties == {"sku": "A"} and first.amount == Decimal("9.5") and first.customer_id == 7
    assert second.properties == {"path": "/"} and second.channel is None
    # the summaries are optional: computed from the rows on first use
    assert InteractionBatch("default", rows).kinds == {"purchase", "page_view"}
    assert InteractionBatch("default", rows).customer_ids == {7, 8}
    empty = InteractionBatch("default", [])
    assert len(empty) == 0 and empty.earliest is None and list(empty) == [] and empty.kinds == frozenset()


def test_interaction_batch_from_tuples_is_lazy_and_equal_to_rows():
    import attrs

    from ecrm_core import InteractionBatch

    rows = _batch_rows()
    positions = {name: i for i, name in enumerate(InteractionBatch.FIELDS[1:])}
    tuples = [tuple(r[name] for name in InteractionBatch.FIELDS[1:]) for r in rows]
    batch = InteractionBatch.from_tuples("default", [7, 8], tuples, positions, ids=range(10, 12))
    assert len(batch) == 2 and batch.ids == range(10, 12)
    assert batch._rows is None and batch._columns is None  # nothing per row yet
    assert batch.customer_ids == {7, 8} and batch.kinds == {"purchase", "page_view"}
    assert batch._rows is None and batch._columns is None  # the summaries need no columns
    assert batch.columns["kind"] == ("purchase", "page_view")
    assert batch.rows == rows and batch.rows is batch.rows  # built once
    assert [i.kind for i in batch] == ["purchase", "page_view"]
    assert batch == InteractionBatch("default", rows, ids=range(10, 12))
    assert batch != InteractionBatch("default", rows)  # other ids
    assert "rows=2" in repr(batch)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        batch.workspace = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="ids for"):
        InteractionBatch.from_tuples("default", [7, 8], tuples, positions, ids=range(3))
    with pytest.raises(ValueError, match="one customer id per row"):
        InteractionBatch.from_tuples("default", [7], tuples, positions)
    with pytest.raises(ValueError, match="positions lack"):
        InteractionBatch.from_tuples("default", [7, 8], tuples, {"kind": 0})
