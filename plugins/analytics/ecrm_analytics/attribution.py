"""Attribution: which channels and campaigns led to purchases — first touch, last touch, linear.

A **touch** is an interaction of one of ``kinds`` (:data:`TOUCH_KINDS`: a
message sent, an e-mail opened, a click, a page or screen view) by the same
customer in the ``lookback_days`` before a purchase (the purchase's own
time included).  Its channel is the interaction's channel; its campaign:

* the ``campaign``/``utm_campaign`` property the touch carries (links
  tagged by the shop, tracked clicks);
* else, for a touch about an ecrm message (the delivery pipeline records
  ``properties.message``, the message's ``uid``, on ``message_sent`` and on
  the channel's feedback — opens, clicks), the campaign that sent the
  message, as ``ecrm-campaigns`` records it: its sends carry the dedupe key
  ``cmp<campaign id>.<entry>.<step>.<customer id>`` (the key the campaigns
  plugin itself finds its messages by), and the campaign's ``key`` is read
  from its table.  Without that plugin, or for messages sent outside a
  campaign, the message has no campaign (the free-form ``metadata`` of a
  send is not read: any caller may set it);
* ``(none)`` otherwise.

Each purchase's value (converted to the reporting currency) and the
purchase itself (one conversion) are credited:

* ``first_touch``: all to the earliest touch in the window;
* ``last_touch``: all to the latest touch;
* ``linear``: split equally between all the touches.

A purchase without any touch is credited to ``(direct)`` under every model,
so each model's column adds up to the same total revenue and conversions.
Ties in time are broken by interaction id.  All in one SQL statement (a
join on customer and time window, window functions, ``GROUP BY``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError

from .common import Rates, Report, finite, get_rates
from .reports import Param, ReportSpec, register
from .sales import NONE, campaign_expr

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["BY", "DIRECT", "MODELS", "TOUCH_KINDS", "attribution", "attribution_report"]

TOUCH_KINDS: tuple[str, ...] = ("message_sent", "email_open", "click", "page_view", "screen_view")
MODELS: tuple[str, ...] = ("first_touch", "last_touch", "linear")
BY: tuple[str, ...] = ("channel", "campaign")
#: what purchases without a touch are credited to
DIRECT = "(direct)"


#: The campaigns plugin's table (short name), read when it is installed.
CAMPAIGNS_TABLE = "campaigns"


def _campaign_id_text(dedupe_key: Any, dialect: str) -> Any:
    """SQL: ``<id>`` of a dedupe key ``cmp<id>.…`` as text (compared with the campaign's id as text, so a key of
    another shape never fails a cast)."""
    rest = sa.func.substr(dedupe_key, 4)
    if dialect == "postgresql":
        return sa.func.split_part(rest, ".", 1)
    return sa.func.substr(rest, 1, sa.func.instr(rest, ".") - 1)


def _window_start(at: Any, days: int, dialect: str) -> Any:
    if dialect == "postgresql":
        return at - sa.literal(timedelta(days=days), sa.Interval())
    return sa.func.strftime("%Y-%m-%d %H:%M:%f", sa.type_coerce(at, sa.String()), f"-{days} days")


def attribution(
    crm: CRM,
    *,
    by: str = "channel",
    lookback_days: int = 30,
    since: datetime | None = None,
    until: datetime | None = None,
    kinds: Sequence[str] = TOUCH_KINDS,
    rates: Rates | None = None,
) -> list[dict[str, Any]]:
    """Revenue and conversions credited to each channel (or campaign) under each model.

    Rows: ``{by: name, "first_touch": revenue, "last_touch": …, "linear": …,
    "first_touch_orders": conversions, …}``, largest linear revenue first.
    Purchases between ``since`` and ``until`` (default: all up to now) are
    attributed; touches may precede ``since`` by up to ``lookback_days``.
    """
    if by not in BY:
        raise ValidationError("by", by, "not an attribution dimension", f"use one of {', '.join(BY)}")
    if isinstance(lookback_days, bool) or not isinstance(lookback_days, int) or not 0 <= lookback_days <= 3650:
        raise ValidationError("lookback_days", lookback_days, "not a whole number of days from 0 to 3650", "e.g. 30")
    kinds = tuple(kinds)
    if not kinds or not all(isinstance(k, str) and k for k in kinds):
        raise ValidationError("kinds", kinds, "no touch kinds", f"e.g. {', '.join(TOUCH_KINDS)}")
    for name, at in (("since", since), ("until", until)):
        if at is not None and at.tzinfo is None:
            raise ValidationError(name, at, "a naive datetime", "give an aware datetime (UTC)")
    rates = rates or get_rates(crm)
    db = crm.db
    dialect = db.engine.dialect.name
    it = db.tables["interactions"]
    msgs = db.tables["messages"]
    until = until or crm.now()
    value = rates.sql_convert(it.c.amount, it.c.currency)
    pwhere = [it.c.workspace_id == crm.workspace, it.c.kind == "purchase", it.c.occurred_at <= until]
    if since is not None:
        pwhere.append(it.c.occurred_at >= since)
    p = (
        sa.select(
            it.c.id.label("pid"), it.c.customer_id.label("cid"), it.c.occurred_at.label("at"), value.label("value")
        )
        .where(*pwhere)
        .cte("p")
    )
    t_it = it.alias("t_it")
    twhere = [t_it.c.workspace_id == crm.workspace, t_it.c.kind.in_(kinds), t_it.c.occurred_at <= until]
    if since is not None:
        twhere.append(t_it.c.occurred_at >= since - timedelta(days=lookback_days))
    source: Any = t_it
    if by == "channel":
        key = sa.func.coalesce(t_it.c.channel, NONE)
    else:
        sent_by = None
        if CAMPAIGNS_TABLE in db.tables:  # ecrm-campaigns is installed: its messages name it in their dedupe key
            camp = db.tables[CAMPAIGNS_TABLE]
            source = t_it.outerjoin(
                msgs,
                sa.and_(msgs.c.uid == t_it.c.properties["message"].as_string(), msgs.c.workspace_id == crm.workspace),
            ).outerjoin(
                camp,
                sa.and_(
                    camp.c.workspace_id == msgs.c.workspace_id,
                    msgs.c.dedupe_key.like("cmp%.%"),
                    sa.cast(camp.c.id, sa.String()) == _campaign_id_text(msgs.c.dedupe_key, dialect),
                ),
            )
            sent_by = camp.c.key
        key = sa.func.coalesce(campaign_expr(t_it.c.properties), sent_by, NONE)
    t = (
        sa.select(
            t_it.c.id.label("tid"), t_it.c.customer_id.label("cid"), t_it.c.occurred_at.label("at"), key.label("key")
        )
        .select_from(source)
        .where(*twhere)
        .cte("t")
    )
    joined = p.outerjoin(
        t, sa.and_(t.c.cid == p.c.cid, t.c.at <= p.c.at, t.c.at >= _window_start(p.c.at, lookback_days, dialect))
    )
    j = (
        sa.select(
            p.c.pid,
            p.c.value,
            sa.func.coalesce(t.c.key, DIRECT).label("key"),
            sa.func.row_number().over(partition_by=p.c.pid, order_by=(t.c.at, t.c.tid)).label("rn_first"),
            sa.func.row_number().over(partition_by=p.c.pid, order_by=(t.c.at.desc(), t.c.tid.desc())).label("rn_last"),
            sa.func.count(t.c.tid).over(partition_by=p.c.pid).label("n"),
        )
        .select_from(joined)
        .subquery("j")
    )
    share = sa.case((j.c.n > 1, 1.0 / sa.cast(j.c.n, sa.Float)), else_=1.0)
    money = sa.func.coalesce(j.c.value, 0.0)
    first = j.c.rn_first == 1
    last = j.c.rn_last == 1
    linear_rev = sa.func.sum(money * share)
    stmt = (
        sa.select(
            j.c.key,
            sa.func.coalesce(sa.func.sum(sa.case((first, money))), 0.0).label("first_touch"),
            sa.func.coalesce(sa.func.sum(sa.case((last, money))), 0.0).label("last_touch"),
            linear_rev.label("linear"),
            sa.func.count(sa.case((first, 1))).label("first_touch_orders"),
            sa.func.count(sa.case((last, 1))).label("last_touch_orders"),
            sa.func.sum(share).label("linear_orders"),
        )
        .group_by(j.c.key)
        .order_by(linear_rev.desc(), j.c.key)
    )
    out = []
    with db.read() as conn:
        for row in conn.execute(stmt):
            out.append(
                {
                    by: str(row.key),
                    "first_touch": round(finite(row.first_touch) or 0.0, 6),
                    "last_touch": round(finite(row.last_touch) or 0.0, 6),
                    "linear": round(finite(row.linear) or 0.0, 6),
                    "first_touch_orders": int(row.first_touch_orders),
                    "last_touch_orders": int(row.last_touch_orders),
                    "linear_orders": round(finite(row.linear_orders) or 0.0, 6),
                }
            )
    return out


def attribution_report(crm: CRM, by: str = "channel", lookback_days: int = 30, days: int = 365) -> Report:
    """The ``attribution`` report: the three models side by side for the purchases of the last ``days``."""
    from ecrm_core.charts import Chart, Series

    now = crm.now()
    rows = attribution(crm, by=by, lookback_days=lookback_days, since=now - timedelta(days=days), until=now)
    rates = get_rates(crm)
    columns = (by, *MODELS, "first_touch_orders", "last_touch_orders", "linear_orders")
    total = sum(r["linear"] for r in rows)
    orders = sum(r["first_touch_orders"] for r in rows)
    direct = next((r for r in rows if r[by] == DIRECT), None)
    chart = None
    if rows:
        top = rows[:20]
        chart = Chart(
            kind="bar",
            title=f"Revenue credited by {by}: first touch, last touch, linear ({rates.currency})",
            categories=[r[by] for r in top],
            series=[Series(name=m.replace("_", " "), values=[r[m] for r in top]) for m in MODELS],
            value_format="money",
            y_label=rates.currency,
        )
    if not rows:
        caption = "No purchases in the period."
    else:
        best_first = max(rows, key=lambda r: r["first_touch"])[by]
        best_last = max(rows, key=lambda r: r["last_touch"])[by]
        caption = f"First touch credits {best_first} most, last touch {best_last}"
        if direct:
            caption += (
                f"; {direct['first_touch_orders']:,} of {orders:,} purchases had no touch in {lookback_days} days"
            )
        caption += "."
    return Report(
        name="attribution",
        title=f"Attribution of purchases by {by} (last {days} days, {lookback_days}-day lookback)",
        columns=columns,
        rows=[tuple(r[c] for c in columns) for r in rows],
        summary={
            "currency": rates.currency,
            "revenue": round(total, 2),
            "purchases": orders,
            "lookback_days": lookback_days,
        },
        chart=chart,
        caption=caption[:500],
    )


register(
    ReportSpec(
        name="attribution",
        title="Attribution: first touch, last touch and linear",
        build=attribution_report,
        description="Purchases and revenue credited to the channels or campaigns that touched the buyer before.",
        params=(
            Param(name="by", type=str, default="channel", help="channel or campaign", choices=BY),
            Param(name="lookback_days", type=int, default=30, help="touches at most this long before", min=0, max=3650),
            Param(name="days", type=int, default=365, help="purchases of the last days", min=1, max=36500),
        ),
    )
)
