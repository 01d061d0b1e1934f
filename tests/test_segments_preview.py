"""``crm.segments.preview`` evaluates the rule once for the count and the sample
(a rule's aggregates are what costs at scale: a second statement for the sample
doubled the segment builder's wait)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_preview_reads_the_interactions_once_for_count_and_sample(crm_factory) -> None:
    crm = crm_factory(clock=lambda: NOW)
    made = [crm.customers.create(email=f"c{n}@example.com") for n in range(7)]
    for c in made[1:]:
        for d in range(3):
            crm.interactions.track(
                "purchase", customer_id=c.id, amount="20", currency="EUR", occurred_at=NOW - timedelta(days=d + 1)
            )
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            statements.append(statement)

    rule = "purchase.count(30d) >= 3"
    sa.event.listen(crm.db.engine, "before_cursor_execute", seen)
    try:
        p = crm.segments.preview(rule, sample=4)
    finally:
        sa.event.remove(crm.db.engine, "before_cursor_execute", seen)
    assert p.count == 6 and [c.id for c in p.sample] == [c.id for c in made[1:5]]
    table = crm.db.tables["interactions"].name
    assert len([s for s in statements if table in s]) == 1, statements
    # the other shapes: no sample, an empty set, a sample larger than the set
    assert crm.segments.preview(rule, sample=0).count == 6 and crm.segments.preview(rule, sample=0).sample == ()
    empty = crm.segments.preview("purchase.count(30d) >= 4", sample=5)
    assert empty.count == 0 and empty.sample == ()
    everyone = crm.segments.preview(rule, sample=100)
    assert everyone.count == 6 and len(everyone.sample) == 6
