"""The ingest inbox on a real PostgreSQL server: the gateway over HTTP, several
processors draining at once (``FOR UPDATE SKIP LOCKED``), identify before track."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from ecrm_api import plugin as api_plugin
from ecrm_api.processor import process_inbox

NOW = datetime.now(UTC).replace(microsecond=0)


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


def _row(r: int) -> list[dict]:
    """Row r: an anonymous visitor's page, then their identify as user u(r % 20), then the user's tracks."""
    user = f"u{r % 20}"
    return [
        {"type": "page", "anonymousId": f"a{r}", "name": "Home", "messageId": f"{r}-p"},
        {"type": "track", "userId": user, "event": "Product Viewed", "messageId": f"{r}-t0"},
        {
            "type": "identify",
            "userId": user,
            "anonymousId": f"a{r}",
            "traits": {"email": f"{user}@example.com"},
            "messageId": f"{r}-i",
        },
        *[
            {
                "type": "track",
                "userId": user,
                "event": "Product Viewed",
                "messageId": f"{r}-t{i}",
                "timestamp": _iso(NOW - timedelta(seconds=i)),
            }
            for i in range(1, 20)
        ],
    ]


def _keys(crm) -> Counter:
    t = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        return Counter(k for (k,) in conn.execute(sa.select(t.c.idempotency_key)) if k)


def test_two_processors_drain_at_once_with_skip_locked_and_identify_before_track(pg_crm_factory):
    crm = pg_crm_factory(plugins=[api_plugin])
    crm.upgrade()
    rows = 120
    with crm.db.write() as conn:
        conn.execute(
            crm.db.tables["ingest_inbox"].insert(),
            [
                {
                    "workspace_id": crm.workspace,
                    "received_at": crm.now(),
                    "call": None,
                    "count": 22,
                    "payload": json.dumps({"batch": _row(r)}).encode(),
                }
                for r in range(rows)
            ],
        )
    done: dict[str, list[int]] = {"one": [], "two": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def processor(name: str) -> None:
        try:
            start.wait()
            while True:
                result = process_inbox(crm, max_events=22 * 6)  # 6 rows a claim: many claims each
                if not result.rows:
                    return
                done[name].append(result.rows)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=processor, args=(n,)) for n in done]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert sum(done["one"]) + sum(done["two"]) == rows, "a row was processed twice or not at all"
    assert done["one"] and done["two"], "one processor did all the work: the claims did not run side by side"
    keys = _keys(crm)
    assert len(keys) == rows * 22 and max(keys.values()) == 1
    with crm.db.read() as conn:
        rejected = conn.execute(sa.select(sa.func.count()).select_from(crm.db.tables["ingest_rejected"])).scalar()
    assert rejected == 0
    for u in range(20):
        c = crm.customers.find(external_id=f"u{u}")
        assert c is not None and c.email == f"u{u}@example.com"
        # every visitor of this user stitched to them, with their pages
        kinds = Counter(i.kind for i in crm.interactions.timeline(c.id, limit=1000))
        assert kinds == {"page_view": rows // 20, "identify": rows // 20, "product_view": rows // 20 * 20}
    assert crm.customers.count() == 20


def test_skip_locked_a_claimed_row_is_not_claimed_again(pg_crm_factory):
    crm = pg_crm_factory(plugins=[api_plugin])
    crm.upgrade()
    t = crm.db.tables["ingest_inbox"]
    with crm.db.write() as conn:
        conn.execute(
            t.insert(),
            [
                {
                    "workspace_id": crm.workspace,
                    "received_at": crm.now(),
                    "call": None,
                    "count": 22,
                    "payload": json.dumps({"batch": _row(r)}).encode(),
                }
                for r in range(2)
            ],
        )
    # Another processor holds row 1 (its transaction is open)
    holder = crm.db.engine.connect()
    tx = holder.begin()
    first = holder.execute(sa.select(t.c.id).order_by(t.c.id).limit(1).with_for_update(skip_locked=True)).scalar()
    t0 = time.monotonic()
    result = process_inbox(crm)
    assert time.monotonic() - t0 < 10  # did not wait for the lock
    assert result.rows == 1
    with crm.db.read() as conn:
        assert conn.execute(sa.select(t.c.id)).scalars().all() == [first]
    tx.rollback()
    holder.close()
    assert process_inbox(crm).rows == 1
    assert len(_keys(crm)) == 44


def test_the_gateway_and_processor_over_http_on_postgresql(pg_crm_factory, live_api_factory):
    crm = pg_crm_factory(plugins=[api_plugin])
    crm.upgrade()
    live = live_api_factory(crm, rate_limit=None)  # the processor thread of the server
    token = live.token(["ingest"])
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=30) as c:
        for r in range(10):
            assert c.post("/v1/batch", json={"batch": _row(r)}).status_code == 200
        assert c.post("/v1/batch", json={"batch": _row(0)}).status_code == 200  # an SDK's resend
    live.wait_ingested()
    keys = _keys(crm)
    assert len(keys) == 220 and max(keys.values()) == 1


def test_the_migration_matches_the_tables_on_postgresql(pg_crm_factory):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    crm = pg_crm_factory(plugins=[api_plugin])
    crm.upgrade()
    with crm.db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": crm.db.naming.version_table, "compare_type": True}
        )
        drift = [d for d in compare_metadata(ctx, crm.db.metadata) if "ingest" in str(d)]
    assert drift == []
