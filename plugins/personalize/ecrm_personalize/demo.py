"""The ``ecrm demo`` stage: a catalogue from the sample shop's products, a refresh, and decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["run_demo"]

DEMO_SECRET = "ecrm-demo-secret-not-for-production"


def _catalogue(crm: CRM) -> list[dict[str, Any]]:
    """One product per sku the demo shop's customers viewed (its category from the view)."""
    from .recommend import skus_of

    t = crm.db.tables["interactions"]
    found: dict[str, str | None] = {}
    with crm.db.read() as conn:
        q = (
            sa.select(t.c.properties)
            .where(t.c.workspace_id == crm.workspace, t.c.kind == "product_view")
            .limit(200_000)
        )
        for (props,) in conn.execute(q):
            for s in skus_of("product_view", props):
                found.setdefault(s, props.get("category") if isinstance(props, dict) else None)
    return [
        {
            "sku": s,
            "title": f"{(c or 'item').title()} {s.split('-')[-1]}",
            "category": c,
            "attributes": {"line": s.split("-")[0]},
        }
        for s, c in sorted(found.items())
    ]


def run_demo(crm: CRM, progress: Any = None) -> Any:
    from ecrm_core import CRM
    from ecrm_core.signing import MissingSecret

    try:
        crm.signer  # noqa: B018 - a configured secret is used as is
    except MissingSecret:
        # no secret configured for the demo: a CRM on the same engine with a demo-only secret
        own = CRM(
            engine=crm.db.engine,
            table_prefix=crm.db.naming.prefix,
            schema=crm.db.naming.schema,
            workspace=crm.workspace,
            secret=DEMO_SECRET,
            live_segments=False,
        )
        try:
            return _run(own)
        finally:
            own.close()
    return _run(crm)


def _run(crm: CRM) -> Any:
    from rich.table import Table

    from . import personalize

    p = personalize(crm)
    products = _catalogue(crm)
    p.add_products(products)
    report = p.refresh()
    p.define(
        "demo_home",
        k=4,
        offers=2,
        control=0.1,
        alternatives=[
            {"name": "grid", "variant": {"layout": "grid"}},
            {"name": "carousel", "variant": {"layout": "carousel"}},
        ],
    )
    c = crm.db.tables["customers"]
    with crm.db.read() as conn:
        ids = [
            r.id
            for r in conn.execute(
                sa.select(c.c.id)
                .where(c.c.workspace_id == crm.workspace, c.c.merged_into.is_(None), c.c.name.is_not(None))
                .order_by(c.c.id)
                .limit(3)
            )
        ]
    table = Table(
        title=f"Decisions for 'demo_home' ({len(products)} products, {sum(report.lists.values())} lists in {report.seconds['total']:.1f} s)"
    )
    for col in ("customer", "group", "greeting", "items", "why"):
        table.add_column(col)
    for cid in ids:
        d = p.decide(cid, "demo_home")
        table.add_row(
            str(cid),
            d.group,
            str(d.variant.get("greeting", "")),
            ", ".join(i.sku for i in d.items),
            "; ".join(d.explanation[:2]),
        )
    d = p.decide(None, "demo_home")
    table.add_row(
        "new visitor",
        d.group,
        str(d.variant.get("greeting", "")),
        ", ".join(i.sku for i in d.items),
        "; ".join(d.explanation[:2]),
    )
    return table
