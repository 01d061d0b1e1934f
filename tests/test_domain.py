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
        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            Interaction(kind="page_view", occurred_at=datetime.now(UTC), properties=value)
