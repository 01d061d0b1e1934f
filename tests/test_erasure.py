"""A deleted person is erased everywhere, in one transaction with the core's
deletion (``ecrm_customers_deleting``, hook API 1.8); a merged person's rows
move everywhere in the merge's transaction (``ecrm_customers_merging``).

The cross-plugin test loads every plugin that stores data about a person,
gives one person data in each (by customer id, and by identity: a visitor
cookie's outcomes, tracking messages waiting and rejected), then deletes them
in a second process that is killed with a real SIGKILL right after the
COMMIT (from the first implementation of the after-commit
``ecrm_customers_deleted``, so no plugin's after-commit work runs), and
checks every table of the database: no row with their customer id, and no
text, JSON or bytes column naming one of their identities.  A plugin added
later is checked too, by construction.  The merge test does the same with
``ecrm_customers_merged``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ecrm_core import CRM, NotFound, PluginError, hookimpl
from ecrm_core.testing import CapturingChannel, FakeClock

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SECRET = "test-secret-for-erasure-0123456789abcdef"


def _naming(crm: CRM, values: list[str]) -> dict[str, int]:
    """Rows whose text, JSON or bytes columns contain one of ``values``, per table."""
    out = {}
    with crm.db.read() as conn:
        for name, table in sorted(crm.db.tables.items()):
            cols = [c for c in table.c if isinstance(c.type, (sa.String, sa.JSON, sa.LargeBinary))]
            if not cols:
                continue
            text = [sa.cast(c, sa.Text) if not isinstance(c.type, sa.LargeBinary) else c for c in cols]
            found = sa.or_(
                *(
                    (sa.cast(t, sa.LargeBinary) if isinstance(c.type, sa.LargeBinary) else t).contains(
                        v.encode() if isinstance(c.type, sa.LargeBinary) else v
                    )
                    for c, t in zip(cols, text, strict=True)
                    for v in values
                )
            )
            n = conn.execute(sa.select(sa.func.count()).select_from(table).where(found)).scalar_one()
            if n:
                out[name] = n
    return out


def _rows_about(crm: CRM, ids: list[int]) -> dict[str, int]:
    """Rows naming one of ``ids`` in every table with a ``customer_id`` column."""
    out = {}
    with crm.db.read() as conn:
        for name, table in sorted(crm.db.tables.items()):
            if "customer_id" not in table.c:
                continue
            n = conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.customer_id.in_(ids))
            ).scalar_one()
            if n:
                out[name] = n
    return out


PLUGINS = ("ecrm_analytics.plugin", "ecrm_campaigns.plugin", "ecrm_personalize.plugin", "ecrm_api.plugin")

# A second process on the same file: it deletes or merges, and the first
# implementation of the after-commit event (registered last, so pluggy calls
# it first) kills it with SIGKILL, so nothing after the COMMIT runs.
DIES_AFTER_COMMIT = textwrap.dedent(
    """
    import importlib, os, signal, sys

    from ecrm_core import CRM, hookimpl
    from ecrm_core.testing import CapturingChannel

    class DiesAfterCommit:
        @hookimpl
        def ecrm_customers_deleted(self):
            os.kill(os.getpid(), signal.SIGKILL)

        @hookimpl
        def ecrm_customers_merged(self):
            os.kill(os.getpid(), signal.SIGKILL)

    path, secret, action, *ids = sys.argv[1:]
    plugins = [importlib.import_module(name) for name in os.environ["PLUGINS"].split()]
    crm = CRM(f"sqlite:///{path}", plugins=[*plugins, CapturingChannel().plugin()], secret=secret,
              load_entrypoints=False)
    crm.register_plugin(DiesAfterCommit(), name="dies-after-commit")
    if action == "delete":
        crm.customers.delete(int(ids[0]))
    else:
        crm.customers.merge(int(ids[0]), into=int(ids[1]))
    sys.exit("the process outlived the COMMIT: the after-commit event did not run")
    """
)


def _in_a_process_killed_after_the_commit(crm: CRM, action: str, *ids: int) -> None:
    """``action`` ("delete" or "merge") on ``crm``'s file in another process,
    SIGKILLed right after the COMMIT; the data must already be complete."""
    path = crm.db.engine.url.database
    assert path
    env = {**os.environ, "PLUGINS": " ".join(PLUGINS)}
    done = subprocess.run(
        [sys.executable, "-c", DIES_AFTER_COMMIT, path, SECRET, action, *map(str, ids)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


@pytest.fixture
def everything(crm_factory: Callable[..., CRM]) -> tuple[CRM, FakeClock]:
    plugins = [pytest.importorskip(name) for name in PLUGINS]
    clock = FakeClock(T0)
    channel = CapturingChannel()
    crm = crm_factory(plugins=[*plugins, channel.plugin()], clock=clock, secret=SECRET)
    return crm, clock


def _inbox(crm: CRM, *messages: dict[str, Any]) -> None:
    """Tracking messages as the gateway appends them to the inbox."""
    stamp = T0.isoformat().replace("+00:00", "Z")
    with crm.db.write() as conn:
        conn.execute(
            crm.db.tables["ingest_inbox"].insert(),
            {
                "workspace_id": crm.workspace,
                "received_at": crm.now(),
                "call": None,
                "count": len(messages),
                "payload": json.dumps(
                    {"batch": [{**m, "timestamp": stamp} for m in messages], "sentAt": stamp}
                ).encode(),
            },
        )


def _a_person_everywhere(crm: CRM, clock: FakeClock, email: str) -> int:
    """A customer with rows in the core's and every plugin's tables, by id and by identity."""
    from ecrm_analytics import analytics
    from ecrm_api.processor import process_inbox
    from ecrm_campaigns import campaigns
    from ecrm_personalize import personalize

    user = email.split("@")[0]
    # Tracking: one message stored, one rejected (a revenue that is not a number).
    _inbox(
        crm,
        {"type": "identify", "userId": user, "messageId": f"{user}-1", "traits": {"email": email}},
        {"type": "track", "userId": user, "event": "Order Completed", "messageId": f"{user}-2",
         "properties": {"revenue": "lots"}},
    )  # fmt: skip
    process_inbox(crm)

    found = crm.customers.find(external_id=user)
    assert found is not None and found.id is not None
    cid = found.id
    crm.customers.set_consent(cid, "capture", True)
    p = personalize(crm)
    p.add_products([{"sku": "S1", "title": "Shoe", "category": "shoes"}])
    for days in (30, 3):
        crm.interactions.track(
            "purchase",
            customer_id=cid,
            amount="20",
            currency="EUR",
            occurred_at=T0 - timedelta(days=days),
            properties={"skus": ["S1"]},
        )
    analytics(crm).refresh(full=True)
    p.set_preferences(cid, interests=["shoes"])
    if "home" not in {x.name for x in p.placements()}:
        p.define("home")
    p.report(p.decide(cid, "home").id, "impression")
    # A visitor cookie the customer was seen under (outcomes kept by visitor id, not customer id).
    seen = p.decide(None, "home")
    p.report(seen.id, "impression")
    from ecrm_personalize.tokens import verify_visitor

    visitor = verify_visitor(crm, str(seen.visitor))
    assert visitor is not None
    crm.customers.add_alias(cid, "anonymous", visitor)
    c = campaigns(crm)
    if "welcome" not in {k.key for k in c.list()}:
        c.save(
            {
                "key": "welcome",
                "name": "Welcome",
                "trigger": {"type": "api"},
                "steps": [
                    {
                        "id": "hi",
                        "type": "send",
                        "channel": "capture",
                        "template": {"subject": "hi", "body": "hi"},
                        "next": "w",
                    },
                    {"id": "w", "type": "wait", "duration": "7d"},
                ],
            }
        )
        c.start("welcome")
    c.trigger("welcome", [cid])
    return cid


def test_a_person_is_erased_from_every_table_even_if_the_process_is_killed_after_the_commit(
    everything: tuple[CRM, FakeClock],
) -> None:
    from ecrm_api.processor import process_inbox

    crm, clock = everything
    gone = _a_person_everywhere(crm, clock, "gone@example.com")
    kept = _a_person_everywhere(crm, clock, "kept@example.com")
    identities = [str(a.value) for a in crm.customers.aliases(gone)]
    assert len(identities) == 3  # e-mail, external id, visitor
    before = _rows_about(crm, [gone])
    named = _naming(crm, identities)
    # The data the test relies on is really there (a plugin that stopped storing would make this vacuous).
    assert {"analytics_rfm", "campaign_enrollments", "personalize_preferences", "interactions"} <= set(before), before
    assert {"customers", "aliases", "personalize_outcomes", "ingest_rejected", "ingest_rejected_ids"} <= set(named), (
        named
    )
    # A message of theirs arrives and waits in the inbox when they are deleted.
    _inbox(crm, {"type": "track", "userId": "gone", "event": "Product Viewed", "messageId": "gone-3"})
    _in_a_process_killed_after_the_commit(crm, "delete", gone)
    with pytest.raises(NotFound):
        crm.customers.get(gone)
    assert _rows_about(crm, [gone]) == {}
    # The waiting message is condemned by the tombstones committed with the deletion: the next tick drops it.
    assert process_inbox(crm).erased == 1
    assert _naming(crm, identities) == {"ingest_tombstones": 3}
    assert crm.customers.find(external_id="gone") is None
    assert set(_rows_about(crm, [kept])) == set(before)  # the other person keeps everything


def test_a_failing_erasure_rolls_the_whole_deletion_back(everything: tuple[CRM, FakeClock]) -> None:
    crm, clock = everything
    cid = _a_person_everywhere(crm, clock, "stays@example.com")
    before = _rows_about(crm, [cid])

    class Broken:
        @hookimpl
        def ecrm_customers_deleting(self, conn: sa.Connection, customer_ids: list[int]) -> None:
            raise RuntimeError("the archive is down")

    crm.register_plugin(Broken(), name="archive")
    with pytest.raises(PluginError, match=r"'archive' failed in ecrm_customers_deleting.*nothing was changed"):
        crm.customers.delete(cid)
    assert crm.plugins.failures[-1].plugin == "archive"
    assert crm.customers.get(cid).id == cid
    assert _rows_about(crm, [cid]) == before  # nobody's erasure half-done
    crm.unregister_plugin("archive")
    crm.customers.delete(cid)
    assert _rows_about(crm, [cid]) == {}


def test_an_erasure_that_ends_the_transaction_is_refused(crm: CRM) -> None:
    cid = crm.customers.create(email="x@example.com").id

    class Rude:
        @hookimpl
        def ecrm_customers_deleting(self, conn: sa.Connection) -> None:
            conn.commit()

    crm.register_plugin(Rude(), name="rude")
    with pytest.raises(PluginError, match="must not COMMIT or ROLLBACK"):
        crm.customers.delete(cid)
    crm.unregister_plugin("rude")


def test_the_hook_sees_the_ids_and_identities_and_writes_with_the_core(crm: CRM) -> None:
    notes = sa.Table(
        "erasure_notes",
        sa.MetaData(),
        sa.Column("customer_id", sa.Integer, primary_key=True),
        sa.Column("note", sa.Text),
    )
    notes.create(crm.db.engine)
    seen: list[Any] = []

    class Notes:
        @hookimpl
        def ecrm_customers_deleting(self, conn: sa.Connection, customer_ids: list[int], aliases: list[Any]) -> None:
            seen.append((list(customer_ids), sorted((a.kind, a.value) for a in aliases)))
            conn.execute(notes.delete().where(notes.c.customer_id.in_(customer_ids)))

    crm.register_plugin(Notes(), name="notes")
    a = crm.customers.create(email="a@example.com").id
    b = crm.customers.create(external_id="b-1").id
    crm.customers.merge(b, into=a)
    with crm.db.write() as conn:
        conn.execute(notes.insert(), [{"customer_id": a, "note": "x"}, {"customer_id": b, "note": "y"}])
    crm.customers.delete(a)
    assert seen == [(sorted([a, b]), [("email", "a@example.com"), ("external", "b-1")])]
    with crm.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one() == 0


def test_a_merge_moves_every_plugins_rows_even_if_the_process_is_killed_after_the_commit(
    everything: tuple[CRM, FakeClock],
) -> None:
    crm, clock = everything
    a = _a_person_everywhere(crm, clock, "ann@example.com")
    b = _a_person_everywhere(crm, clock, "ann.work@example.com")
    before = _rows_about(crm, [b])
    assert {"analytics_rfm", "campaign_enrollments", "personalize_preferences", "personalize_outcomes"} <= set(before)
    _in_a_process_killed_after_the_commit(crm, "merge", b, a)
    assert _rows_about(crm, [b]) == {}  # nothing left on the tombstone
    after = _rows_about(crm, [a])
    assert {"personalize_preferences", "personalize_outcomes", "campaign_enrollments", "interactions"} <= set(after)
    assert after["personalize_outcomes"] == 2 * before["personalize_outcomes"]
    # The survivor's scores are marked for the worker's analytics.refresh, which recomputes them.
    dirty = crm.db.tables["analytics_dirty"]
    with crm.db.read() as conn:
        assert conn.execute(sa.select(dirty.c.customer_id)).scalars().all() == [a]
    from ecrm_analytics import analytics

    analytics(crm).refresh()
    assert analytics(crm).customer(a)["rfm"]["orders"] == 4


def test_ecrm_customers_merging_moves_rows_in_the_merge_and_a_failing_one_is_isolated(crm: CRM) -> None:
    notes = sa.Table(
        "merge_notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, nullable=False),
    )
    notes.create(crm.db.engine)
    seen: list[tuple[int, int]] = []

    class Mover:
        @hookimpl
        def ecrm_customers_merging(self, conn: sa.Connection, merge: Any) -> None:
            seen.append((merge.source_id, merge.target_id))
            conn.execute(
                notes.update().where(notes.c.customer_id == merge.source_id).values(customer_id=merge.target_id)
            )

    class Broken:
        @hookimpl
        def ecrm_customers_merging(self, conn: sa.Connection) -> None:
            conn.execute(notes.delete())  # rolled back with its savepoint
            raise RuntimeError("boom")

    crm.register_plugin(Mover(), name="mover")
    crm.register_plugin(Broken(), name="broken-merging")
    a = crm.customers.create(email="a@example.com").id
    b = crm.customers.create(email="b@example.com").id
    with crm.db.write() as conn:
        conn.execute(notes.insert(), [{"customer_id": b}, {"customer_id": b}, {"customer_id": a}])
    crm.customers.merge(b, into=a)
    assert seen == [(b, a)]
    with crm.db.read() as conn:
        assert conn.execute(sa.select(notes.c.customer_id)).scalars().all() == [a, a, a]
    assert crm.plugins.failures[-1].plugin == "broken-merging"
    assert crm.customers.get(b).id == a  # the merge was kept
