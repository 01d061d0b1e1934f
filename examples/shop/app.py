"""A tiny shop that embeds ecrm in its own database and transactions.

The shop has its own ``orders`` table. When an order is placed, the order row
and ecrm's purchase interaction are written in ONE transaction (the shop's):
if the order fails, the CRM never hears of it. A small plugin of the shop's
own listens to ecrm's events and keeps a "first order" flag on the customer.

Run it:  python examples/shop/app.py [path/to/shop.db]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

from ecrm_core import CRM, hookimpl

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String(50), nullable=False),
    sa.Column("total", sa.Numeric(10, 2), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
)


class FirstOrderFlag:
    """The shop's own ecrm plugin: mark customers after their first purchase."""

    def __init__(self) -> None:
        self.crm: CRM | None = None

    @hookimpl
    def ecrm_startup(self, crm: CRM) -> None:
        self.crm = crm

    @hookimpl
    def ecrm_interactions_recorded(self, crm: CRM, batch) -> None:  # type: ignore[no-untyped-def]
        if "purchase" not in batch.kinds:
            return
        for customer_id in batch.customer_ids:
            customer = crm.customers.get(customer_id)
            if not customer.attributes.get("has_ordered"):
                crm.customers.update(customer_id, attributes={"has_ordered": True}, lifecycle_stage="new")


def place_order(engine: sa.Engine, crm: CRM, user_id: str, email: str, total: str) -> int:
    """Write the order and tell the CRM, atomically."""
    with engine.begin() as conn:
        order_id = conn.execute(
            orders.insert().values(user_id=user_id, total=Decimal(total), placed_at=datetime.now(UTC))
        ).inserted_primary_key[0]
        shop_crm = crm.using(conn)  # ecrm joins this transaction
        customer = shop_crm.customers.upsert(external_id=user_id, email=email)
        shop_crm.interactions.track(
            "purchase",
            customer_id=customer.id,
            amount=total,
            currency="EUR",
            channel="web",
            idempotency_key=f"order-{order_id}",
            properties={"order_id": order_id},
        )
        return int(order_id)


def main(path: str = "shop.db") -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    crm = CRM(engine=engine, table_prefix="crm_", plugins=[FirstOrderFlag()], load_entrypoints=False)
    crm.upgrade()

    place_order(engine, crm, "u-1", "ada@example.com", "42.00")
    place_order(engine, crm, "u-1", "ada@example.com", "18.50")
    try:
        with engine.begin() as conn:  # an order that fails after ecrm was told: both roll back
            crm.using(conn).interactions.track("purchase", external_id="u-1", amount="999", currency="EUR")
            raise RuntimeError("payment declined")
    except RuntimeError:
        pass

    ada = crm.customers.find(external_id="u-1")
    assert ada is not None
    view = crm.interactions.view(ada.id)
    spent = sum((s.amount or Decimal(0)) for s in view.summary if s.kind == "purchase")
    with engine.connect() as conn:
        n_orders = conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one()
    print(f"orders in the shop: {n_orders}")
    print(
        f"customer {ada.id} ({ada.email}): stage={ada.lifecycle_stage} has_ordered={ada.attributes.get('has_ordered')}"
    )
    print(
        f"purchases known to the CRM: {sum(s.count for s in view.summary if s.kind == 'purchase')}, spent {spent} EUR"
    )
    crm.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
