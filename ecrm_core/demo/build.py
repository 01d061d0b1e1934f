"""Building the demo: :func:`build_demo` and :func:`demo_customer_count`."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, EcrmError
from .catalog import _create_offers, _create_segments, _delete_demo
from .plan import _demo_ids, _interactions, _plan_customers
from .shop import _UTC, DEFAULT_CUSTOMERS, DEFAULT_SEED, DEMO_ID_PREFIX, DEMO_OFFER_PREFIX, DemoProgress, DemoSummary

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM


def demo_customer_count(crm: CRM) -> tuple[int, int]:
    """``(demo customers, all customers)`` in the CRM's workspace."""
    import sqlalchemy as sa

    crm.customers.ready()
    t = crm.db.tables["customers"]
    is_demo = t.c.external_id.like(f"{DEMO_ID_PREFIX}%")
    q = sa.select(sa.func.count(), sa.func.sum(sa.case((is_demo, 1), else_=0))).where(t.c.workspace_id == crm.workspace)
    with crm.db.read() as conn:
        total, demo = conn.execute(q).one()
    return int(demo or 0), int(total or 0)


def build_demo(
    crm: CRM,
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = DEFAULT_SEED,
    *,
    fresh: bool = False,
    months: int = 24,
    now: datetime | None = None,
    progress: DemoProgress | None = None,
) -> DemoSummary:
    """Fill the CRM's workspace with a sample shop and return a summary.

    Creates (or upgrades) the schema first.  When the workspace already
    holds the demo, it is kept as it is (``reused=True``) unless ``fresh``
    is true: then the demo customers, their interactions and the ``demo.*``
    offers are deleted and built again.  A workspace holding customers that
    are not demo data is never touched: :class:`~ecrm_core.errors.Conflict`.

    :param customers: how many customers to generate.
    :param seed: random seed; the same seed gives the same shop.
    :param months: how much history to generate, ending at ``now``.
    :param now: the end of the history (default: the CRM's clock).
    :param progress: receives progress (see :class:`DemoProgress`).
    """
    if isinstance(customers, bool) or not isinstance(customers, int) or not 1 <= customers <= 1_000_000:
        raise _bad("customers", customers, "send 1..1000000")
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 120:
        raise _bad("months", months, "send 1..120")
    started = time.perf_counter()
    crm.upgrade()
    demo, total = demo_customer_count(crm)
    if total > demo:
        raise Conflict(
            f"workspace {crm.workspace!r} holds {total - demo} customer(s) that are not demo data; "
            "build the demo in another workspace (--workspace demo) or database (--db sqlite:///demo.db)"
        )
    if demo and not fresh:
        if _create_segments(crm):  # a demo built before segments existed
            crm.segments.refresh()
        return DemoSummary(
            customers=demo,
            interactions=crm.interactions.count(),
            offers=len([o for o in crm.offers.list() if o.code.startswith(DEMO_OFFER_PREFIX)]),
            reused=True,
            seed=None,
            seconds=time.perf_counter() - started,
        )
    end = (now or crm.now()).astimezone(_UTC)
    if progress:
        progress.start("planning", customers)
    plans = _plan_customers(customers, seed, end, months, progress)
    # A bulk load: live segment upkeep waits, one full refresh follows.
    with crm.segments.paused(), crm.db.write() as conn:
        view = crm.using(conn)
        if demo:
            _delete_demo(view, conn)
        if progress:
            progress.start("customers", customers)
        result = view.customers.upsert_many(
            (p.row for p in plans), on_error="raise", progress=progress.advance if progress else None
        )
        ids = _demo_ids(view, conn)
        if progress:
            progress.start("interactions", customers)
        tracked = view.interactions.track_many(
            _interactions(plans, ids, seed, end, progress), on_error="raise", create_missing=False
        )
        if progress:
            progress.start("offers", None)
        offers = _create_offers(view, end)
    if progress:
        progress.start("segments", None)
    n_segments = _create_segments(crm)
    crm.segments.refresh()  # lifecycle stages by their rules, then every segment
    return DemoSummary(
        customers=len(result.created),
        interactions=tracked.stored,
        offers=offers,
        reused=False,
        seed=seed,
        seconds=time.perf_counter() - started,
        segments=n_segments,
    )


def _bad(field_name: str, value: Any, fix: str) -> EcrmError:
    from ..errors import ValidationError

    return ValidationError(field_name, value, "out of range", fix)
