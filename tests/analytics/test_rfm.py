"""RFM: definitions, scores, groups, incremental refresh through dirty marks, bad input."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from ecrm_analytics.rfm import GROUP_GRID, GROUPS, group_of, score


def rfm_rows(shop) -> dict[int, dict]:
    table = shop.crm.db.tables["analytics_rfm"]
    with shop.crm.db.read() as conn:
        return {r.customer_id: r._asdict() for r in conn.execute(sa.select(table))}


def test_grid_covers_every_group() -> None:
    assert {g for row in GROUP_GRID for g in row} == set(GROUPS)
    assert group_of(5, 5, 5) == "champions" and group_of(1, 1, 1) == "lost"
    assert group_of(1, 5, 5) == "cant_lose_them" and group_of(5, 1, 1) == "new"


def test_score_counts_cut_points_exceeded() -> None:
    assert score(10, [1, 2, 3, 4]) == 5
    assert score(2, [1, 2, 3, 4]) == 2  # equal to a cut point: not above it
    assert score(0, [None] * 4) == 1


def test_rfm_definitions_net_of_refunds_and_currency(shop) -> None:
    from ecrm_analytics import set_rates

    set_rates(shop.crm, "EUR", {"USD": 0.5})
    a, b, c, d = (shop.customer(n) for n in "abcd")
    shop.buy(a, 10, "100")
    shop.buy(a, 5, "40", currency="USD")  # 20 EUR
    shop.buy(a, 4, "30", kind="refund")
    shop.buy(b, 3, "10")
    shop.buy(b, 2, "50", kind="refund")  # refunds larger than purchases: monetary 0
    shop.buy(c, 1, "0")  # a zero amount still counts as an order
    shop.buy(c, 1, "-5")  # a negative purchase adds nothing
    shop.buy(c, 1, "9", currency="JPY")  # no rate: left out, counted
    shop.buy(d, -3, "99")  # future-dated: ignored
    e = shop.customer("no purchases")
    shop.crm.interactions.track("page_view", customer_id=e)
    result = shop.analytics.refresh(full=True)
    rows = rfm_rows(shop)
    assert set(rows) == {a, b, c}
    assert rows[a]["orders"] == 2 and rows[a]["revenue"] == pytest.approx(120) and rows[a]["refunds"] == 30
    assert rows[a]["monetary"] == pytest.approx(90)
    assert rows[b]["monetary"] == 0 and rows[b]["refunds"] == 50
    assert rows[c]["orders"] == 3 and rows[c]["monetary"] == 0 and rows[c]["unconverted"] == 1
    assert result.customers == 3
    for r in rows.values():
        assert 1 <= r["r_score"] <= 5 and r["grp"] == group_of(r["r_score"], r["f_score"], r["m_score"])
    assert shop.analytics.customer(e)["rfm"] is None


def test_empty_database_refreshes_to_nothing(shop) -> None:
    result = shop.analytics.refresh(full=True)
    assert result.customers == 0 and rfm_rows(shop) == {}
    from ecrm_analytics import report

    data = report(shop.crm, "rfm").to_dict()
    assert data["summary"]["customers"] == 0 and len(data["rows"]) == len(GROUPS)


def test_quintiles_on_distinct_values(shop) -> None:
    ids = [shop.customer(f"c{i}") for i in range(10)]
    # customer i: bought i+1 times, last bought 100 - 10 i days ago, spent 10 (i+1)^2
    shop.history([(c, 100 - 10 * i + k, 10 * (i + 1)) for i, c in enumerate(ids) for k in range(i + 1)])
    shop.analytics.refresh(full=True)
    rows = rfm_rows(shop)
    # ten customers: two per quintile on every measure
    assert [rows[c]["r_score"] for c in ids] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [rows[c]["f_score"] for c in ids] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [rows[c]["m_score"] for c in ids] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rows[ids[-1]]["grp"] == "champions" and rows[ids[0]]["grp"] == "lost"


def test_purchases_mark_customers_and_the_job_recomputes_them(shop) -> None:
    from ecrm_analytics.store import pending

    from ecrm_core.worker import JobRunner

    a, b = shop.customer("a"), shop.customer("b")
    shop.buy(a, 50, "10")
    shop.crm.interactions.track("page_view", customer_id=b)
    assert pending(shop.crm) == 1  # only the purchase marked
    assert JobRunner(shop.crm, jobs=["analytics.*"]).tick("analytics.refresh", "default").status == "ran"
    assert pending(shop.crm) == 0 and rfm_rows(shop)[a]["orders"] == 1
    shop.buy(b, 1, "500")
    shop.buy(a, 2, "5")
    assert pending(shop.crm) == 2
    shop.analytics.refresh()
    rows = rfm_rows(shop)
    assert rows[a]["orders"] == 2 and rows[b]["monetary"] == 500 and pending(shop.crm) == 0


def test_a_mark_renewed_during_a_refresh_is_kept(shop) -> None:
    from ecrm_analytics import store

    a = shop.customer("a")
    shop.buy(a, 5, "10")
    with shop.crm.db.write() as conn:
        claimed = store.claim(shop.crm, conn, 10)
    shop.buy(a, 1, "10")  # arrives while the claim is being processed: a new mark value
    with shop.crm.db.write() as conn:
        store.release(shop.crm, conn, claimed)
    assert store.pending(shop.crm) == 1


def test_rfm_report_and_cli(shop, tmp_path) -> None:
    from click.testing import CliRunner
    from ecrm_analytics.cli import analytics as group

    ids = [shop.customer(f"c{i}") for i in range(6)]
    shop.history([(c, 10 * i + 1, 10 + i) for i, c in enumerate(ids)])
    shop.analytics.refresh(full=True)
    runner = CliRunner()
    out = runner.invoke(group, ["rfm", "--chart", str(tmp_path / "rfm.svg")], obj=shop.crm)
    assert out.exit_code == 0, out.output
    assert "champions" in out.output and (tmp_path / "rfm.svg").read_bytes().startswith(b"<?xml")
    out = runner.invoke(group, ["rfm", "--group", "nope"], obj=shop.crm)
    assert out.exit_code != 0 and "nope" in out.output
    out = runner.invoke(group, ["rfm", "--json", "--group", "champions"], obj=shop.crm)
    assert out.exit_code == 0 and '"group": "champions"' in out.output
    out = runner.invoke(group, ["attributes"], obj=shop.crm)
    assert out.exit_code == 0 and json.loads(out.output) == {"copy": False}, out.output
    out = runner.invoke(group, ["attributes", "--copy"], obj=shop.crm)
    assert json.loads(out.output) == {"copy": True, "customers_changed": 6}, out.output
    assert shop.crm.customers.get(ids[0]).attributes["rfm_group"]


def test_sql_scores_match_the_cut_point_definition_with_ties(shop) -> None:
    import random

    from ecrm_analytics.rfm import cut_points

    rng = random.Random(5)
    ids = [shop.customer(f"c{i}") for i in range(37)]
    # few distinct values: many ties on every measure
    shop.history(
        [
            (c, rng.choice([1, 5, 30, 90]), rng.choice([5, 10, 10, 50]))
            for c in ids
            for _ in range(rng.choice([1, 1, 2, 3]))
        ]
    )
    shop.analytics.refresh(full=True)
    rows = rfm_rows(shop)
    with shop.crm.db.read() as conn:
        cuts = cut_points(shop.crm, conn)
    for r in rows.values():
        assert r["r_score"] == score(r["last_at"], cuts["last_at"])
        assert r["f_score"] == score(r["orders"], cuts["orders"])
        assert r["m_score"] == score(r["monetary"], cuts["monetary"])
    # an incremental refresh (UPDATE ... FROM) gives the same scores as a full build
    shop.buy(ids[0], 0, "999")
    shop.analytics.refresh()
    incremental = rfm_rows(shop)
    shop.analytics.refresh(full=True)
    full = rfm_rows(shop)
    assert {c: (r["r_score"], r["f_score"], r["m_score"], r["grp"]) for c, r in incremental.items()} == {
        c: (r["r_score"], r["f_score"], r["m_score"], r["grp"]) for c, r in full.items()
    }
    # the full build's scores (computed in Python from the sorted values) are what the SQL rescore computes,
    # and the parallel readers (ranges of customer ids) read the same rows as one
    from ecrm_analytics.rfm import rescore

    with shop.crm.db.write() as conn:
        assert rescore(shop.crm, conn) == []
    for workers in (1, 3):
        shop.analytics.refresh(full=True, workers=workers)
        assert rfm_rows(shop) == full, workers
    # the rows written through the DB-API store times exactly as the ORM does (SQLite: text in one format)
    with shop.crm.db.read() as conn:
        stored = conn.exec_driver_sql("SELECT computed_at, last_at FROM ecrm_analytics_rfm").all()
    assert all(len(a) == len(b) == len("2026-06-01 12:00:00.000000") for a, b in stored), stored[:3]


def _rfm_writes(crm):
    """Record the statements that write the RFM table (inserts, updates, deletes), whatever runs them."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        text = " ".join(statement.split()).upper()
        if "ANALYTICS_RFM" in text and text.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            statements.append(text)

    sa.event.listen(crm.db.engine, "before_cursor_execute", record)
    return statements, lambda: sa.event.remove(crm.db.engine, "before_cursor_execute", record)


def _values(rows: dict[int, dict]) -> dict[int, dict]:
    return {c: {k: v for k, v in r.items() if k != "computed_at"} for c, r in rows.items()}


def test_a_full_build_on_unchanged_data_writes_nothing_and_a_changed_customer_is_rewritten(shop) -> None:
    import random
    from datetime import timedelta

    rng = random.Random(11)
    ids = [shop.customer(f"c{i}") for i in range(40)]
    shop.history([(c, rng.uniform(0, 400), rng.choice([5, 12, 40, 90])) for c in ids for _ in range(rng.randint(1, 4))])
    first = shop.analytics.refresh(full=True)
    assert first.changed == 40
    before = rfm_rows(shop)
    # nothing changed (later, in a warm process): no statement writes the table, no segment is refreshed for
    # anyone, and every row keeps the time of the build that wrote it
    shop.clock.advance(hours=1)
    statements, stop = _rfm_writes(shop.crm)
    try:
        again = shop.analytics.refresh(full=True)
    finally:
        stop()
    assert statements == []
    assert again.customers == 40 and again.changed == 0
    assert rfm_rows(shop) == before
    # a new purchase the marks did not see (written behind the plugin's back): the full build finds it and
    # rewrites that customer, and the customers whose scores it moved, and no one else
    it = shop.crm.db.tables["interactions"]
    with shop.crm.db.write() as conn:
        conn.execute(
            sa.insert(it).values(
                workspace_id="default", customer_id=ids[3], origin_customer_id=ids[3], kind="purchase",
                channel="web", occurred_at=shop.clock() - timedelta(minutes=5), amount=500, currency="EUR",
                properties={}, recorded_at=shop.clock(),
            )
        )  # fmt: skip
    shop.clock.advance(hours=1)
    statements, stop = _rfm_writes(shop.crm)
    try:
        result = shop.analytics.refresh(full=True)
    finally:
        stop()
    after = rfm_rows(shop)
    assert statements, "the changed rows are written"
    moved = {c for c in ids if _values({c: after[c]}) != _values({c: before[c]})}
    assert ids[3] in moved and after[ids[3]]["orders"] == before[ids[3]]["orders"] + 1
    assert result.changed == len(moved)
    assert {c for c in ids if after[c]["computed_at"] != before[c]["computed_at"]} == moved
    # the values are those of the set-based path (every row recomputed by SQL, then rescored)
    from ecrm_analytics.rfm import compute, rescore

    with shop.crm.db.write() as conn:
        compute(shop.crm, conn)
        rescore(shop.crm, conn)
    assert _values(rfm_rows(shop)) == _values(after)
    # a customer who no longer has a purchase (their sales deleted behind the plugin's back) loses the row
    with shop.crm.db.write() as conn:
        conn.execute(sa.delete(it).where(it.c.customer_id == ids[5]))
    result = shop.analytics.refresh(full=True)
    assert ids[5] not in rfm_rows(shop) and result.customers == 39 and result.changed >= 1
    # a new reporting currency changes every customer's money: every row rewritten (as a first build)
    from ecrm_analytics import set_rates

    set_rates(shop.crm, "USD", {"EUR": 2.0})
    before = rfm_rows(shop)
    result = shop.analytics.refresh(full=True)
    after = rfm_rows(shop)
    assert result.changed == len(after) == 39
    assert all(after[c]["monetary"] == pytest.approx(2 * before[c]["monetary"]) for c in after)
    with shop.crm.db.write() as conn:
        compute(shop.crm, conn)
        rescore(shop.crm, conn)
    assert _values(rfm_rows(shop)) == _values(after)
