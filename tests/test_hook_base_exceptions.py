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
