"""Date triggers, set-based and indexed: the ``campaign_dates`` table.

A date trigger ("on their birthday, at 09:00 in their timezone", "a year
after their first purchase") must find, every few minutes, the few
customers whose day it is — without reading every customer's attributes.
So the plugin keeps, per date *source* (an attribute such as ``birthday``,
or ``first_purchase``) that a date campaign uses, one row per customer:
the date and its month-day as ``MMDD``, indexed by (workspace, source,
month-day).  "Whose birthday is on 4 March" is then an index range.

The rows are kept current set-based:

* a full build, in chunks driven by the customers' primary key, the first
  time the ``campaigns.schedule`` job meets a date campaign whose source has
  not been built (:func:`ensure_built`);
* after that, the core's batch events: customers created or updated (the
  attribute or the timezone may have changed), purchases recorded (a new
  first purchase), merges (the survivor is recomputed) and deletions (the
  foreign key cascades).

Around the date line a customer's local day can be the UTC day before or
after, so a lookup reads three month-days (plus 29 February on the 28th of
a common year: those birthdays are kept on the 28th) and keeps the ones
whose *local* day it is.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from .schema import CAMPAIGNS, DATES, VERSIONS

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .model import Campaign

__all__ = ["FIRST_PURCHASE", "as_date", "ensure_built", "lookup", "month_days", "source_of", "sync", "tracked"]

FIRST_PURCHASE = "first_purchase"
#: Customers per chunk of a build.
CHUNK = 5000


def source_of(c: Campaign) -> str:
    """The date source of a date trigger: ``first_purchase`` or the attribute's name."""
    attr = c.trigger.attribute or ""
    return FIRST_PURCHASE if attr == FIRST_PURCHASE else attr.removeprefix("attributes.")


def as_date(value: Any, tz: str | None) -> date | None:
    """A stored value as a calendar date: ``YYYY-MM-DD…`` text, or an instant seen in ``tz``."""
    if isinstance(value, datetime):
        try:
            return value.astimezone(ZoneInfo(tz or "UTC")).date()
        except Exception:
            return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _md(d: date) -> int:
    return d.month * 100 + d.day


def month_days(days: Iterable[date]) -> list[int]:
    """The ``MMDD`` keys to read for these calendar days (29 February is read on the 28th of a
    common year)."""
    out: set[int] = set()
    for d in days:
        out.add(_md(d))
        if d.month == 2 and d.day == 28 and not calendar.isleap(d.year):
            out.add(229)
    return sorted(out)


def falls_on(day: date, target: date) -> bool:
    """Whether a yearly date ``day`` falls on ``target`` (29 February on the 28th of a common year)."""
    if (day.month, day.day) == (target.month, target.day):
        return True
    return (
        (day.month, day.day) == (2, 29) and (target.month, target.day) == (2, 28) and not calendar.isleap(target.year)
    )


def tracked(crm: CRM) -> set[str]:
    """The date sources of the workspace's date campaigns that are not stopped."""
    if DATES not in crm.db.tables:
        return set()
    from .model import Campaign

    ct, vt = crm.db.tables[CAMPAIGNS], crm.db.tables[VERSIONS]
    q = (
        sa.select(vt.c.definition)
        .join(ct, sa.and_(ct.c.id == vt.c.campaign_id, ct.c.version == vt.c.version))
        .where(ct.c.workspace_id == crm.workspace, ct.c.trigger_type == "date", ct.c.status != "stopped")
    )
    with crm.db.read() as conn:
        return {source_of(Campaign.from_dict(d)) for d in conn.scalars(q)}


def _compute(crm: CRM, conn: sa.Connection, source: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    cu = crm.db.tables["customers"]
    rows = []
    if source == FIRST_PURCHASE:
        i = crm.db.tables["interactions"]
        q: Any = (
            sa.select(i.c.customer_id, cu.c.timezone, sa.func.min(i.c.occurred_at))
            .join(cu, cu.c.id == i.c.customer_id)
            .where(
                i.c.customer_id.in_(ids),
                i.c.workspace_id == crm.workspace,
                i.c.kind == "purchase",
                cu.c.merged_into.is_(None),
            )
            .group_by(i.c.customer_id, cu.c.timezone)
        )
    else:
        q = sa.select(cu.c.id, cu.c.timezone, cu.c.attributes).where(
            cu.c.id.in_(ids), cu.c.workspace_id == crm.workspace, cu.c.merged_into.is_(None)
        )
    for cid, tz, value in conn.execute(q):
        if source != FIRST_PURCHASE:
            value = (value or {}).get(source) if isinstance(value, dict) else None
        day = as_date(value, tz)
        if day is not None:
            rows.append(
                {"workspace_id": crm.workspace, "source": source, "customer_id": cid, "month_day": _md(day), "day": day}
            )
    return rows


def sync(crm: CRM, source: str, customer_ids: Iterable[int]) -> int:
    """Recompute the rows of ``source`` for these customers (set-based, in chunks); the number stored."""
    if DATES not in crm.db.tables:
        return 0
    dt = crm.db.tables[DATES]
    ids = sorted(set(customer_ids))
    stored = 0
    for k in range(0, len(ids), CHUNK):
        part = ids[k : k + CHUNK]
        with crm.db.write() as conn:
            rows = _compute(crm, conn, source, part)
            conn.execute(
                sa.delete(dt).where(
                    dt.c.workspace_id == crm.workspace, dt.c.source == source, dt.c.customer_id.in_(part)
                )
            )
            if rows:
                conn.execute(sa.insert(dt), rows)
            stored += len(rows)
    return stored


def build(crm: CRM, source: str) -> int:
    """Build the rows of ``source`` for every customer of the workspace (chunks by primary key)."""
    cu = crm.db.tables["customers"]
    after = 0
    stored = 0
    while True:
        with crm.db.read() as conn:
            ids = list(
                conn.scalars(
                    sa.select(cu.c.id)
                    .where(cu.c.id > after, cu.c.workspace_id == crm.workspace)
                    .order_by(cu.c.id)
                    .limit(CHUNK)
                )
            )
        if not ids:
            return stored
        stored += sync(crm, source, ids)
        after = ids[-1]


def ensure_built(crm: CRM, campaign_id: int, c: Campaign) -> bool:
    """Build the campaign's date source once (marked in the campaign's state); ``True`` if it ran."""
    ct = crm.db.tables[CAMPAIGNS]
    source = source_of(c)
    with crm.db.read() as conn:
        state = dict(conn.scalar(sa.select(ct.c.state).where(ct.c.id == campaign_id)) or {})
    if state.get("dates_built") == source:
        return False
    build(crm, source)
    state["dates_built"] = source
    with crm.db.write() as conn:
        conn.execute(sa.update(ct).where(ct.c.id == campaign_id).values(state=state))
    return True


def lookup(crm: CRM, source: str, keys: Sequence[int]) -> sa.Select[Any]:
    """The statement that reads the customers of ``source`` on the month-days ``keys`` (MMDD):
    ``(customer_id, day, timezone)``, through the index on (workspace, source, month_day)."""
    dt, cu = crm.db.tables[DATES], crm.db.tables["customers"]
    return (
        sa.select(dt.c.customer_id, dt.c.day, cu.c.timezone)
        .join(cu, cu.c.id == dt.c.customer_id)
        .where(
            dt.c.workspace_id == crm.workspace,
            dt.c.source == source,
            dt.c.month_day.in_(list(keys)),
            cu.c.merged_into.is_(None),
        )
    )


def candidates(crm: CRM, c: Campaign, start: datetime, end: datetime) -> list[tuple[int, str | None, date]]:
    """``(customer, timezone, date)`` of the customers whose date may fall between ``start`` and
    ``end`` (any timezone), read through the index."""
    shift = timedelta(days=c.trigger.offset or 0)
    first, last = (start - timedelta(days=1)).date(), (end + timedelta(days=1)).date()
    days = [first + timedelta(days=k) - shift for k in range((last - first).days + 1)]
    keys = month_days(days)
    with crm.db.read() as conn:
        return [(cid, tz, day) for cid, day, tz in conn.execute(lookup(crm, source_of(c), keys))]
