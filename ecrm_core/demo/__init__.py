"""A sample web shop, generated: customers, two years of interactions, offers.

Used by ``ecrm demo`` and handy in notebooks and tests::

    from ecrm_core import CRM
    from ecrm_core.demo import build_demo, shop_report

    crm = CRM("sqlite:///demo.db")
    summary = build_demo(crm, customers=3000)     # creates the schema if needed
    report = shop_report(crm)                     # what ecrm knows now

The data is reproducible: the same ``seed`` gives the same customers and the
same interaction pattern (timestamps are relative to ``now``).  Demo
customers have ``external_id`` ``demo-00001``…; offers have codes
``demo.*``.  Everything is written in one transaction.

Needs the ``faker`` package (``pip install ecrm-core[demo]``); it is
imported only when a demo is built.
"""

from __future__ import annotations

from .build import build_demo as build_demo
from .build import demo_customer_count as demo_customer_count
from .catalog import DEMO_SEGMENT_PREFIX as DEMO_SEGMENT_PREFIX
from .catalog import DEMO_SEGMENTS as DEMO_SEGMENTS
from .report import ShopReport as ShopReport
from .report import TopCustomer as TopCustomer
from .report import shop_report as shop_report
from .shop import DEFAULT_CUSTOMERS as DEFAULT_CUSTOMERS
from .shop import DEFAULT_SEED as DEFAULT_SEED
from .shop import DEMO_ID_PREFIX as DEMO_ID_PREFIX
from .shop import DEMO_OFFER_PREFIX as DEMO_OFFER_PREFIX
from .shop import FX_TO_EUR as FX_TO_EUR
from .shop import DemoProgress as DemoProgress
from .shop import DemoSummary as DemoSummary

__all__ = [
    "DEFAULT_CUSTOMERS",
    "DEFAULT_SEED",
    "DEMO_ID_PREFIX",
    "DEMO_OFFER_PREFIX",
    "FX_TO_EUR",
    "DemoProgress",
    "DemoSummary",
    "ShopReport",
    "TopCustomer",
    "build_demo",
    "demo_customer_count",
    "shop_report",
]
