"""Attribute indexes (``crm.customers.indexes``): built on the very expression
rules compile to, so the database uses them for counts and refreshes."""

from __future__ import annotations

import pytest

from ecrm_core import ValidationError

COUNTRIES = ("KR", "JP", "US", "DE", "FR", "GB")


def _fill(crm, n: int = 60) -> None:
    crm.customers.upsert_many(
        [
            {
                "email": f"p{i}@example.com",
                "attributes": {"country": COUNTRIES[i % 6], "n": i, "odd key": i % 2, "flag": i % 3 == 0},
            }
            for i in range(n)
        ]
    )


RULES = (
    'attributes.country == "KR"',
    'attributes.country in ("KR", "JP")',
    'attributes.country != "KR"',
    'attributes.country starts_with "K"',
    "attributes.n >= 50",
    "attributes.flag == true",
    "attributes.country exists",
)


def _counts(crm) -> dict[str, int]:
    return {rule: crm.segments.preview(rule).count for rule in RULES}


_fresh = iter(range(10**6))


def _plan(crm, rule: str) -> str:
    # a new statement text each time: an EXPLAIN statement carries no schema
    # check, so one cached from before the index would show the old plan
    with crm.db.read() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN /* {next(_fresh)} */ " + crm.segments.sql(rule)).all()
    return " ".join(str(r[-1]) for r in rows)


def test_index_is_used_by_rules_and_changes_no_answer(crm):
    _fill(crm)
    before = _counts(crm)
    assert before['attributes.country == "KR"'] == 10
    assert "ix_ecrm_customers_attr_country" not in _plan(crm, 'attributes.country == "KR"')
    name = crm.customers.indexes.create("country")
    assert name == "ix_ecrm_customers_attr_country"
    assert crm.customers.indexes.create("country") == name  # idempotent
    assert crm.customers.indexes.list() == ["country"]
    assert name in _plan(crm, 'attributes.country == "KR"')
    assert name in _plan(crm, 'attributes.country in ("KR", "JP")')
    assert _counts(crm) == before
    crm.customers.indexes.create("n")
    assert _counts(crm) == before  # (a range may or may not use it: the planner's choice without statistics)
    assert crm.customers.indexes.drop("country") is True
    assert crm.customers.indexes.drop("country") is False
    assert crm.customers.indexes.list() == ["n"]
    assert _counts(crm) == before


@pytest.mark.parametrize("key", ["odd key", "", "a'b", 'a"b', "x" * 65, "ключ", "a.b"])
def test_keys_that_cannot_be_written_into_sql_are_refused_with_a_clear_error(crm, key):
    with pytest.raises(ValidationError) as err:
        crm.customers.indexes.create(key)
    assert "cannot be indexed" in str(err.value)
    assert crm.customers.indexes.list() == []


@pytest.mark.postgres
def test_index_is_used_on_postgres(pg_crm_factory):
    crm = pg_crm_factory()
    _fill(crm)
    before = _counts(crm)
    name = crm.customers.indexes.create("country")
    assert crm.customers.indexes.list() == ["country"]
    with crm.db.read() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: make the planner show it can
        plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + crm.segments.sql('attributes.country == "KR"')))
    assert name in plan
    assert _counts(crm) == before
    assert crm.customers.indexes.drop("country") and crm.customers.indexes.list() == []
