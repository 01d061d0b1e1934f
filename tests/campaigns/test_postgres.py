"""Two workers on a real PostgreSQL server never run the same step for the same customer:
claims are taken with ``FOR UPDATE SKIP LOCKED`` and a lease."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_campaigns import campaigns, plugin
from ecrm_campaigns.engine import Runner

from ecrm_core import CRM
from ecrm_core.testing.channels import MemoryChannel

pytestmark = pytest.mark.postgres

N = 600
STEPS = [
    {"id": "one", "type": "send", "channel": "capture", "template": {"subject": "1", "body": "1"}, "next": "two"},
    {"id": "two", "type": "send", "channel": "capture", "template": {"subject": "2", "body": "2"}},
]


@pytest.mark.parametrize("round_", range(3))  # a race: three rounds make a double claim all but certain to show
def test_two_workers_share_the_steps_and_never_run_one_twice(pg_crm_factory: Any, round_: int) -> None:
    chan = MemoryChannel(name="capture", capabilities=("templates",))
    first = pg_crm_factory(plugins=[plugin, chan.plugin()])
    url = first.db.engine.url.render_as_string(hide_password=False)
    second = CRM(url, load_entrypoints=False, plugins=[plugin, chan.plugin()])
    try:
        svc = campaigns(first)
        svc.save({"key": "pg", "name": "PG", "trigger": {"type": "api"}, "steps": STEPS})
        svc.start("pg")
        rows = [{"email": f"c{i}@x.org", "consent": {"capture": "granted"}} for i in range(N)]
        first.customers.upsert_many(rows)
        cu = first.db.tables["customers"]
        with first.db.read() as conn:
            ids = list(conn.scalars(sa.select(cu.c.id)))
        assert svc.trigger("pg", ids).entered == N

        claims: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}
        errors: list[BaseException] = []

        def work(crm: CRM, name: str) -> None:
            try:
                while True:
                    r = Runner(crm)
                    got = r.claim(limit=37)
                    claims[name].extend((row.id, row.step) for row in got)
                    if not got:
                        if svc.counts("pg")["status"].get("active", 0) == 0:
                            return
                        continue
                    # execute what was claimed, as run() does
                    r.customer_of = {row.id: row.customer_id for row in got}
                    r.claim = lambda limit=None, got=got: got  # type: ignore[method-assign]
                    r.run()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(crm, n)) for crm, n in ((first, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        both = Counter(claims["a"] + claims["b"])
        # the first step ran at entry (in the enrollment's transaction); every (enrollment, later step)
        # was claimed exactly once
        assert len(both) == N and set(both.values()) == {1} and {step for _, step in both} == {"two"}
        assert claims["a"] and claims["b"]  # the work was shared
        m = first.db.tables["messages"]
        with first.db.read() as conn:
            keys = Counter(conn.scalars(sa.select(m.c.dedupe_key)))
        assert len(keys) == 2 * N and set(keys.values()) == {1}
    finally:
        second.close()
