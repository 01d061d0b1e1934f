"""What every analysis of the plugin shares: money in one reporting currency, and reports.

This module is public within the plugin (and for plugins building on it):
every analysis — RFM, CLV, churn, and the needs analysis — converts money
with :class:`Rates` and returns a :class:`Report`, which the CLI prints as a
table and writes as a chart, the API returns as JSON, and the admin embeds.

Money
-----

Analytics reports money in **one reporting currency** per workspace
(default ``EUR``).  An amount in another currency is converted with a fixed
rate — *units of the reporting currency per unit of the other currency* —
set with :func:`set_rates`; historical rates are not applied (an analysis
compares customers with each other, and one rate per currency keeps the
comparison fair).  An interaction without a currency is taken to be in the
reporting currency.  An amount in a currency without a rate is **left out**
of sums and counted as ``unconverted``, so a missing rate shows up instead of
silently mixing currencies.  Amounts that are not finite never reach a
result: :func:`finite` turns NaN and infinity into ``None``.

>>> r = Rates("EUR", {"USD": 0.5})
>>> r.convert(10, "USD"), r.convert(10, None), r.convert(10, "JPY")
(5.0, 10.0, None)

Reports
-------

A :class:`Report` is plain data: a name, a title, column names, rows of
plain values (str, int, float, None), an optional :class:`ecrm_core.charts.Chart`
and a caption.  :meth:`Report.to_dict` is what API routes return and what
the admin UI reads; :meth:`Report.to_rich` is the terminal table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import field, frozen
from ecrm_core.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.charts import Chart
    from ecrm_core.crm import CRM
    from rich.console import RenderableType

__all__ = [
    "DEFAULT_CURRENCY",
    "MAX_ROWS",
    "Rates",
    "Report",
    "SALE_KINDS",
    "const",
    "finite",
    "get_rates",
    "set_rates",
]

#: The reporting currency of a workspace that set none.
DEFAULT_CURRENCY = "EUR"
#: The interaction kinds that move money: a purchase adds, a refund takes back.
SALE_KINDS = ("purchase", "refund")
#: A report lists at most this many rows (aggregate before reporting).
MAX_ROWS = 10_000


def finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _currency(value: Any, where: str = "currency") -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise ValidationError(where, value, "not a three-letter currency code", "use ISO 4217, e.g. 'EUR'")
    return value.upper()


def _rates(value: Mapping[str, Any] | None) -> Mapping[str, float]:
    out: dict[str, float] = {}
    for code, rate in (value or {}).items():
        key = _currency(code, f"rates.{code}")
        number = rate if isinstance(rate, (int, float, Decimal)) and not isinstance(rate, bool) else None
        if number is None or not math.isfinite(float(number)) or float(number) <= 0:
            raise ValidationError(
                f"rates.{code}", rate, "not a positive number", "give units of the reporting currency per unit"
            )
        out[key] = float(number)
    return out


@frozen
class Rates:
    """The reporting currency and the rates that convert other currencies into it.

    ``rates[code]`` is how many units of ``currency`` one unit of ``code`` is
    worth (``Rates("EUR", {"USD": 0.92})``: 1 USD = 0.92 EUR).
    """

    currency: str = field(converter=_currency)
    rates: Mapping[str, float] = field(factory=dict, converter=_rates)

    def rate(self, code: str | None) -> float | None:
        """The rate of ``code`` (1 for the reporting currency and for ``None``; ``None`` if unknown)."""
        if code is None or code.upper() == self.currency:
            return 1.0
        return self.rates.get(code.upper())

    def convert(self, amount: Any, code: str | None) -> float | None:
        """``amount`` in the reporting currency (``None``: no rate for ``code``, or no amount)."""
        rate = self.rate(code)
        if rate is None or amount is None:
            return None
        return finite(float(amount) * rate)

    def sql_rate(self, currency: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """A SQL expression: the rate of the row's ``currency`` column, NULL when unknown.

        A "simple" ``CASE currency WHEN 'EUR' THEN 1.0 WHEN 'USD' THEN 0.92 …``
        (one comparison per rate, the cheapest form to evaluate per row), with
        a NULL currency taken as the reporting currency.
        """
        known = {self.currency: 1.0, **self.rates}
        whens = {const(code): const(float(rate), sa.Float()) for code, rate in sorted(known.items())}
        return sa.case(whens, value=currency, else_=sa.case((currency.is_(None), const(1.0, sa.Float()))))

    def sql_convert(self, amount: sa.ColumnElement[Any], currency: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """A SQL expression: ``amount`` in the reporting currency (NULL when the rate is unknown)."""
        return sa.type_coerce(amount, sa.Float()) * self.sql_rate(currency)

    def to_dict(self) -> dict[str, Any]:
        return {"currency": self.currency, "rates": dict(sorted(self.rates.items()))}


def const(value: Any, type_: Any = None) -> sa.ColumnElement[Any]:
    """A constant rendered into the statement by SQLAlchemy (``literal_execute``), not sent as a parameter.

    For the values of an expression repeated in one statement (a rate table,
    a kind): the same constant renders as the same text everywhere, so the
    database can recognise the repeated expression (SQLite computes an
    aggregate that appears twice once, but only when both are the same text).
    Values are quoted by SQLAlchemy's literal rendering for the dialect.
    """
    return sa.literal(value, type_, literal_execute=True)


def get_rates(crm: CRM) -> Rates:
    """The reporting currency and rates of ``crm``'s workspace (``EUR`` and none if never set)."""
    from .schema import SETTINGS

    table = crm.db.tables[SETTINGS]
    with crm.db.read() as conn:
        row = conn.execute(
            sa.select(table.c.currency, table.c.rates).where(table.c.workspace_id == crm.workspace)
        ).first()
    return Rates(DEFAULT_CURRENCY) if row is None else Rates(row.currency, row.rates)


def set_rates(crm: CRM, currency: str | None = None, rates: Mapping[str, Any] | None = None) -> Rates:
    """Set the reporting currency and/or the conversion rates of the workspace; return them.

    ``rates`` replaces the stored rates (pass all of them).  Every customer's
    analytics are marked for recomputation (money changes meaning).
    """
    from .schema import SETTINGS

    current = get_rates(crm)
    new = Rates(currency if currency is not None else current.currency, current.rates if rates is None else rates)
    table = crm.db.tables[SETTINGS]
    now = crm.now()
    with crm.db.write() as conn:
        conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
        conn.execute(
            sa.insert(table).values(
                workspace_id=crm.workspace, currency=new.currency, rates=dict(new.rates), updated_at=now
            )
        )
        from .store import mark_all

        mark_all(crm, conn)
    return new


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, (float, Decimal)):
        return finite(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def _rows(value: Iterable[Sequence[Any]]) -> tuple[tuple[Any, ...], ...]:
    out = []
    for row in value:
        out.append(tuple(_plain(v) for v in row))
        if len(out) > MAX_ROWS:
            raise ValidationError("rows", f"more than {MAX_ROWS}", "too many rows", "aggregate or page first")
    return tuple(out)


@frozen(kw_only=True)
class Report:
    """The result of one analysis, as plain data (see the module docs).

    ``columns`` name the values of each row; ``rows`` hold only str, int,
    float, bool or None (NaN and infinity become None; datetimes ISO text);
    ``summary`` holds the analysis' headline figures by name; ``chart`` is
    the picture (an :class:`ecrm_core.charts.Chart`) or ``None``.
    """

    name: str
    title: str
    columns: tuple[str, ...] = field(converter=tuple)
    rows: tuple[tuple[Any, ...], ...] = field(converter=_rows)
    summary: Mapping[str, Any] = field(factory=dict, converter=lambda d: {k: _plain(v) for k, v in dict(d).items()})
    chart: Chart | None = None
    caption: str = ""

    def __attrs_post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValidationError(f"rows[{i}]", len(row), "not one value per column", "fix the report")

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data: what API routes return and the admin UI reads."""
        return {
            "name": self.name,
            "title": self.title,
            "caption": self.caption,
            "summary": dict(self.summary),
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "chart": None if self.chart is None else self.chart.to_dict(),
        }

    def to_rich(self, limit: int = 50) -> RenderableType:
        """A terminal rendering: the summary, the table (first ``limit`` rows) and the chart's table."""
        from ecrm_core.charts import to_rich
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(self.title), caption=escape(self.caption) or None)
        for col in self.columns:
            table.add_column(escape(col))
        for row in self.rows[:limit]:
            table.add_row(*(escape(_cell(v)) for v in row))
        parts: list[Any] = []
        if self.summary:
            parts.append(escape("  ".join(f"{k}: {_cell(v)}" for k, v in self.summary.items())))
        parts.append(table)
        if len(self.rows) > limit:
            parts.append(f"… {len(self.rows) - limit} more row(s)")
        if self.chart is not None:
            parts.append(to_rich(self.chart))
        return Group(*parts)

    def write_chart(self, path: str | Path) -> Path:
        """Write the chart to ``path`` (``.svg`` or ``.png``) through :mod:`ecrm_core.charts`."""
        from ecrm_core.charts import write

        if self.chart is None:
            raise ValidationError("chart", None, f"the {self.name} report has no chart", "omit --chart")
        write(self.chart, path)
        return Path(path)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    return str(value)
