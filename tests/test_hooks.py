"""Every hook, exercised through a real CRM (see docs/hooks.md).

ecrm_register_tables and ecrm_register_migrations are tested in test_storage.py,
ecrm_register_commands in test_cli.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecrm_core import (
    AdminPage,
    AdminWidget,
    AttributeDef,
    BatchError,
    ConditionType,
    InteractionKind,
    LifecycleStage,
    StrategySpec,
    ValidationError,
    hookimpl,
)
from ecrm_core.testing import CapturingChannel, EventRecorder, registered

T0 = datetime(2025, 1, 1, tzinfo=UTC)


# -- registration hooks --------------------------------------------------------


def test_ecrm_register_interaction_kinds(crm):
    class Loyalty:
        @hookimpl
        def ecrm_register_interaction_kinds(self, crm):
            return [InteractionKind(name="points_earned", description="loyalty points")]

    c = crm.customers.create(email="a@example.com")
    with registered(crm, Loyalty(), name="loyalty"):
        crm.interactions.track("points_earned", customer_id=c.id, properties={"points": 10})
        assert crm.registry.interaction_kinds["points_earned"].plugin == "loyalty"
    with pytest.raises(Exception, match="unknown interaction kind"):
        crm.interactions.track("points_earned", customer_id=c.id)


def test_ecrm_register_lifecycle_stages(crm):
    class Stages:
        @hookimpl
        def ecrm_register_lifecycle_stages(self):
            return [LifecycleStage(name="vip", phase="retention", order=9)]

    with registered(crm, Stages()):
        c = crm.customers.create(email="a@example.com", lifecycle_stage="vip")
        assert crm.registry.lifecycle_stages["vip"].phase == "retention"
    assert c.lifecycle_stage == "vip"
    assert {s.phase for s in crm.registry.lifecycle_stages.values()} == {"acquisition", "cultivation", "retention"}


def test_ecrm_register_attributes(crm):
    class Rfm:
        @hookimpl
        def ecrm_register_attributes(self):
            return [AttributeDef(name="rfm_score", type="integer", description="1..555")]

    with registered(crm, Rfm(), name="rfm"):
        assert crm.registry.attributes["rfm_score"].type == "integer"
        assert crm.registry.attributes["rfm_score"].plugin == "rfm"


def test_ecrm_register_channels(crm):
    channel = CapturingChannel()
    with registered(crm, channel.plugin()):
        spec = crm.registry.channels["capture"]
        assert "templates" in spec.capabilities
        ada = crm.customers.create(email="a@example.com", consent={"capture": "granted"})
        record = crm.messages.send("capture", ada.id, {"body": "hi"})
        assert crm.messages.dispatch().sent == 1
    assert [m.id for m in channel.sent] == [record.id] and channel.sent[0].to == "a@example.com"
    assert "capture" not in crm.registry.channels


def test_ecrm_register_condition_types(crm):
    def compile_(node, ctx):
        return sa.true()

    def evaluate(node, ctx):
        return True

    class Cond:
        @hookimpl
        def ecrm_register_condition_types(self):
            return [ConditionType(name="always", compile=compile_, evaluate=evaluate)]

    with registered(crm, Cond()):
        ct = crm.registry.condition_types["always"]
        assert ct.evaluate({}, None) and ct.compile({}, None) is not None


def test_ecrm_register_strategies_routes_and_admin_pages(crm):
    def handler():
        return "ok"

    class Web:
        @hookimpl
        def ecrm_register_strategies(self):
            return [StrategySpec(name="greeting", kind="cosmetic", factory=lambda crm: handler)]

        @hookimpl
        def ecrm_register_routes(self):
            return [handler]

        @hookimpl
        def ecrm_register_admin_pages(self):
            return [AdminPage(path="/stats", title="Stats", handler=handler, nav_section="Analytics")]

    with registered(crm, Web(), name="web"):
        assert crm.registry.strategies["greeting"].kind == "cosmetic"
        assert handler in crm.registry.routes
        assert crm.registry.admin_pages["/stats"].plugin == "web"


def test_ecrm_register_admin_widgets(crm):
    class Widgets:
        @hookimpl
        def ecrm_register_admin_widgets(self):
            return [AdminWidget(name="points", title="Points", render=lambda crm, customer: "12", role="marketer")]

    with registered(crm, Widgets(), name="widgets"):
        widget = crm.registry.admin_widgets["points"]
        assert widget.plugin == "widgets" and widget.role == "marketer" and widget.render(crm, None) == "12"
    with pytest.raises(ValidationError):
        AdminWidget(name="x", title="X", render=lambda crm, customer: "", role="owner")
    with pytest.raises(ValidationError):
        AdminPage(path="javascript:alert(1)", title="X", handler=lambda r: "")
    assert AdminPage(path="/loyalty/{program}", title="P", handler=lambda r: "", methods="post").methods == ("POST",)


# -- event hooks ----------------------------------------------------------------


def test_ecrm_customers_created_updated_merged(crm, events):
    a = crm.customers.create(email="a@example.com")
    assert [c.id for c in events.of("ecrm_customers_created")[0]["customers"]] == [a.id]
    crm.customers.update(a.id, name="Ada")
    change = events.of("ecrm_customers_updated")[0]["changes"][0]
    assert change.before.name is None and change.after.name == "Ada" and change.changed == {"name"}
    crm.customers.update(a.id, name="Ada")  # no change: no event
    assert len(events.of("ecrm_customers_updated")) == 1
    b = crm.customers.create(email="b@example.com")
    crm.customers.merge(b.id, into=a.id)
    assert events.of("ecrm_customers_merged")[0]["merge"].source_id == b.id
    result = crm.customers.upsert_many([{"external_id": str(i)} for i in range(2500)], batch_size=1000)
    assert len(result.created) == 2500
    assert len(events.of("ecrm_customers_created")) == 3  # once per committed call, not per row


def test_ecrm_interactions_recorded_is_batch_aware(crm, events):
    c = crm.customers.create(email="a@example.com")
    rows = [{"kind": "page_view", "customer_id": c.id, "occurred_at": T0 + timedelta(seconds=i)} for i in range(12000)]
    crm.interactions.track_many(rows, batch_size=5000)
    batches = [e["batch"] for e in events.of("ecrm_interactions_recorded")]
    assert [len(b) for b in batches] == [5000, 5000, 2000]
    assert batches[0].customer_ids == {c.id} and batches[0].kinds == {"page_view"}
    first = next(iter(batches[0]))
    assert first.kind == "page_view" and first.occurred_at == T0 and first.customer_id == c.id


def test_a_raising_listener_is_isolated_and_the_write_kept(crm):
    class Broken:
        @hookimpl
        def ecrm_interactions_recorded(self, batch):
            raise RuntimeError("listener down")

    recorder = EventRecorder()
    c = crm.customers.create(email="a@example.com")
    with registered(crm, Broken(), name="broken"), registered(crm, recorder, name="rec"):
        stored = crm.interactions.track("page_view", customer_id=c.id)
    assert crm.interactions.get(stored.id).kind == "page_view"  # the core's write is kept
    assert len(recorder.of("ecrm_interactions_recorded")) == 1  # the other listener still ran
    failure = crm.plugins.failures[-1]
    assert (failure.plugin, failure.hook) == ("broken", "ecrm_interactions_recorded")
    assert "listener down" in failure.error


class Tally:
    """Writes one row per batch with the core's connection (ecrm_interactions_inserted)."""

    def __init__(self, table, fail=False):
        self.table, self.fail, self.calls = table, fail, []

    @hookimpl
    def ecrm_interactions_inserted(self, crm, conn, batch):
        self.calls.append((conn.in_transaction(), len(batch), batch.ids))
        # the batch's own rows are visible: the same transaction
        seen = conn.execute(sa.select(sa.func.count()).select_from(crm.db.tables["interactions"])).scalar_one()
        conn.execute(sa.insert(self.table).values(n=len(batch), seen=seen))
        if self.fail:
            raise RuntimeError("tally down")


@pytest.fixture
def tally_table(crm):
    t = sa.Table(
        "test_tally",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer),
        sa.Column("seen", sa.Integer),
    )
    t.create(crm.db.engine)
    return t


def tallies(crm, table):
    with crm.db.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table.c.n, table.c.seen).order_by(table.c.id))]


def test_ecrm_interactions_inserted_runs_inside_the_core_transaction(crm, tally_table):
    c = crm.customers.create(email="a@example.com")
    tally = Tally(tally_table)
    rows = [{"kind": "page_view", "customer_id": c.id, "idempotency_key": f"k{i}"} for i in range(7)]
    with registered(crm, tally, name="tally"):
        crm.interactions.track_many(rows, batch_size=3)  # atomic: three batches, one transaction
        assert [(inside, n) for inside, n, _ in tally.calls] == [(True, 3), (True, 3), (True, 1)]
        assert tallies(crm, tally_table) == [(3, 3), (3, 6), (1, 7)]
        if crm.db.is_sqlite:
            assert [ids for *_, ids in tally.calls] == [range(1, 4), range(4, 7), range(7, 8)]
        # duplicates are not in the batch; a bad row rolls back the plugin's rows with the core's
        bad = [*rows[:2], {"kind": "page_view", "customer_id": c.id, "idempotency_key": "new"}, {"kind": "nope"}]
        with pytest.raises(BatchError):
            crm.interactions.track_many(bad, batch_size=1)
        assert crm.interactions.count() == 7 and len(tallies(crm, tally_table)) == 3
        # the host's transaction: the plugin's rows go with the host's ROLLBACK
        with crm.db.engine.connect() as host:
            with host.begin() as tx:
                crm.using(host).interactions.track("click", customer_id=c.id)
                tx.rollback()
        assert crm.interactions.count() == 7 and len(tallies(crm, tally_table)) == 3


def test_a_raising_transactional_hook_is_rolled_back_alone(crm, tally_table):
    c = crm.customers.create(email="a@example.com")
    good, broken = Tally(tally_table), Tally(tally_table, fail=True)
    recorder = EventRecorder()
    with registered(crm, good, name="good"), registered(crm, broken, name="broken"):
        with registered(crm, recorder, name="rec"):
            crm.interactions.track_many([{"kind": "click", "customer_id": c.id}] * 2)
    assert crm.interactions.count() == 2  # the core's write is kept
    assert len(good.calls) == len(broken.calls) == 1
    assert tallies(crm, tally_table) == [(2, 2)]  # the broken plugin's row is gone, the good one's stays
    failure = crm.plugins.failures[-1]
    assert (failure.plugin, failure.hook) == ("broken", "ecrm_interactions_inserted")
    assert "tally down" in failure.error
    assert len(recorder.of("ecrm_interactions_recorded")) == 1  # and the after-commit event still fires


def test_implementations_may_take_fewer_arguments(crm):
    seen = []

    class Minimal:
        @hookimpl
        def ecrm_customers_created(self):  # takes none of crm, customers
            seen.append(True)

    with registered(crm, Minimal()):
        crm.customers.create(email="a@example.com")
    assert seen == [True]


def test_ecrm_startup_and_ecrm_shutdown(crm_factory):
    calls = []

    class Life:
        @hookimpl
        def ecrm_startup(self, crm):
            calls.append(("start", crm.workspace))

        @hookimpl
        def ecrm_shutdown(self, crm):
            calls.append("stop")

    crm = crm_factory(plugins=[Life()])
    assert calls == [("start", "default")]
    crm.close()
    crm.close()  # idempotent
    assert calls == [("start", "default"), "stop"]
