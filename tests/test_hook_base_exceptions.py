"""A plugin hook that raises what is not an Exception is isolated like one (review, round 25).

The core's dispatchers caught ``Exception`` only.  A plugin whose hook
raised ``SystemExit`` (a library calling ``sys.exit``), asyncio's
``CancelledError``, ``GeneratorExit`` or a ``BaseException`` of its own went
through them: in ``ecrm_interactions_inserted`` it rolled back the core's
write (the interaction was lost), in an event hook it reached the caller
after the commit, in a registration hook it stopped the host.  Each case of
the corpus raises one of them from each kind of dispatch; the policy must
be the one for an ``Exception``: recorded, the others and the core's write
go on (an erasure hook: ``HookFailed``, rolled back whole).  Ctrl-C
(``KeyboardInterrupt``) still propagates.

The same holds for plugin code the core calls outside the hooks: a channel's
``send_many``, ``address`` and ``render_many`` (that channel's messages are
deferred or not made, with the reason; the other channels' go out), and a
condition type's compiler (its segment fails and is marked; the others are
refreshed).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import sqlalchemy as sa

from ecrm_core import hookimpl
from ecrm_core.errors import HookFailed


class Doom(BaseException):
    pass


def _exit() -> None:
    sys.exit("a library called sys.exit")


def _cancelled() -> None:
    raise asyncio.CancelledError()


def _generator_exit() -> None:
    raise GeneratorExit()


def _doom() -> None:
    raise Doom("doomed")


RAISES = {"SystemExit": _exit, "CancelledError": _cancelled, "GeneratorExit": _generator_exit, "Doom": _doom}


def _rows(crm, table: str) -> int:
    with crm.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(crm.db.tables[table])).scalar() or 0)


@pytest.mark.parametrize("boom", list(RAISES.values()), ids=list(RAISES))
def test_every_dispatch_isolates_it(crm, boom) -> None:
    class Bad:
        @hookimpl
        def ecrm_interactions_inserted(self, crm, conn, batch):  # in the core's transaction
            boom()

        @hookimpl
        def ecrm_interactions_recorded(self, crm, batch):  # after the commit
            boom()

        @hookimpl
        def ecrm_register_interaction_kinds(self, crm):  # a registration
            boom()

        @hookimpl
        def ecrm_customers_deleting(self, crm, conn, customer_ids):  # all or nothing
            boom()

    crm.register_plugin(Bad(), name="bad")
    failed = {f.hook for f in crm.plugins.failures if f.plugin == "bad"}
    c = crm.customers.create(email="a@example.com")
    crm.interactions.track("purchase", customer_id=c.id, amount="1", currency="EUR")
    assert _rows(crm, "interactions") == 1  # the core's write is kept
    crm.plugins.collect("ecrm_register_interaction_kinds", crm=crm)
    failed = {f.hook for f in crm.plugins.failures if f.plugin == "bad"}
    assert {"ecrm_interactions_inserted", "ecrm_interactions_recorded", "ecrm_register_interaction_kinds"} <= failed
    with pytest.raises(HookFailed):
        crm.customers.delete(c.id)
    assert _rows(crm, "customers") == 1  # the erasure rolled back whole, as for an Exception


def test_ctrl_c_still_propagates(crm) -> None:
    class Interrupted:
        @hookimpl
        def ecrm_interactions_recorded(self, crm, batch):
            raise KeyboardInterrupt

    crm.register_plugin(Interrupted(), name="interrupted")
    c = crm.customers.create(email="a@example.com")
    with pytest.raises(KeyboardInterrupt):
        crm.interactions.track("purchase", customer_id=c.id, amount="1", currency="EUR")


# -- plugin code the core calls outside the hooks: channels and conditions ------------------


@pytest.mark.parametrize("boom", list(RAISES.values()), ids=list(RAISES))
@pytest.mark.parametrize("where", ["send_many", "address", "render_many"])
def test_a_channel_raising_it_is_isolated(crm_factory, boom, where) -> None:
    """A channel's code raising one of them fails that channel's messages (deferred, skipped or
    not rendered, with the reason); the other channel's messages go out in the same dispatch."""
    from ecrm_core.testing.channels import MemoryChannel

    class Broken(MemoryChannel):
        def send_many(self, messages):
            if where == "send_many":
                boom()
            return super().send_many(messages)

        def address(self, customer):
            if where == "address":
                boom()
            return super().address(customer)

        def render_many(self, template, contexts, **kw):
            if where == "render_many":
                boom()
            return super().render_many(template, contexts, **kw)

    good, bad = MemoryChannel(name="memory"), Broken(name="broken")
    crm = crm_factory(plugins=[good.plugin()], secret="s" * 32)
    crm.register_plugin(bad.plugin(), name="broken-channel")
    ids = [crm.customers.create(email=f"c{i}@example.com", consent={"memory": "granted", "broken": "granted"}).id
           for i in range(3)]  # fmt: skip
    broken = crm.messages.send_many("broken", {"body": "y"}, customer_ids=ids)
    sent = crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
    assert sent.queued == 3
    if where != "send_many":
        assert broken.queued == 0 and sum(broken.failed.values()) == 3, broken
    else:
        assert broken.queued == 3
    report = crm.messages.dispatch()
    assert report.sent == 3 and len(good.sent) == 3
    if where == "send_many":
        assert report.retrying >= 3 and bad.sent == []  # the group's call, then one call each
        assert {m.status for m in crm.messages.list(channel="broken")} == {"queued"}  # deferred, retried later


@pytest.mark.parametrize("boom", list(RAISES.values()), ids=list(RAISES))
def test_a_condition_raising_it_fails_its_segment_only(crm_factory, boom) -> None:
    from ecrm_core import ConditionType

    class Condition:
        @hookimpl
        def ecrm_register_condition_types(self):
            def compile(args, ctx):
                boom()

            return [ConditionType(name="doomed", compile=compile, evaluate=lambda args, ctx: boom())]

    crm = crm_factory(plugins=[Condition()])
    ada = crm.customers.create(email="ada@example.com")
    crm.segments.create("emails", "email exists")
    crm.segments.create("doomed", "email exists")
    s = crm.db.tables["segments"]
    with crm.db.write() as conn:  # a stored rule naming the plugin's condition
        conn.execute(sa.update(s).where(s.c.slug == "doomed").values(rule={"condition": "doomed", "args": {}}))
    report = crm.segments.refresh()
    assert [f.slug for f in report.failed] == ["doomed"]
    assert crm.segments.get("doomed").error
    assert crm.segments.is_member("emails", ada.id)
