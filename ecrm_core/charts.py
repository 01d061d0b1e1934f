"""Charts: one description, rendered the same way for the CLI, the API and the admin.

Analysis in ecrm comes with pictures, and every picture goes through this
module.  A plugin builds a :class:`Chart` — plain data: a kind, labels,
categories and series of numbers — and hands it to whoever shows it:

* the CLI writes it to a file with :func:`write` (``--chart report.svg``) or
  prints :func:`to_rich` in the terminal;
* an API route returns :meth:`Chart.to_dict` as JSON, or :func:`render`'s
  SVG/PNG bytes (``image/svg+xml``, ``?format=png``);
* an admin page embeds the same SVG.

Rendering uses matplotlib (``pip install 'ecrm-core[charts]'``) through its
object API and the Agg/SVG backends, never ``pyplot``: it is thread-safe,
needs no display, and the SVG is byte-for-byte repeatable (fixed hash salt,
no date).  Text from users (segment or campaign names) is drawn as text,
never parsed as mathtext, and escaped by the SVG writer.

A chart's size is bounded (:data:`MAX_CATEGORIES`, :data:`MAX_SERIES`,
:data:`MAX_CELLS`), and its numbers must be finite: a chart that breaks
these rules is refused when it is built, with a
:class:`~ecrm_core.errors.ValidationError` naming the field, so no NaN
reaches a picture or a JSON answer.

Kinds:

``bar``
    one bar per category for each series (grouped when there are several);
``line``
    one line per series over the categories (periods, days);
``interval``
    a point per category with its ``lower``/``upper`` bounds (confidence
    intervals: uplift per arm), and an optional ``reference`` line (0);
``heatmap``
    a matrix of ``values`` with ``rows`` and ``columns`` labels (cohort
    retention);
``scatter``
    points with ``x`` and ``values`` per series (clusters).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attrs import field, frozen

from .errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import RenderableType

__all__ = [
    "Chart",
    "ChartKind",
    "Series",
    "render",
    "write",
    "to_rich",
    "MAX_CATEGORIES",
    "MAX_SERIES",
    "MAX_CELLS",
    "FORMATS",
]

ChartKind = Literal["bar", "line", "interval", "heatmap", "scatter"]
KINDS: tuple[str, ...] = ("bar", "line", "interval", "heatmap", "scatter")
#: the formats :func:`render` produces, with their media types
FORMATS: Mapping[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
#: at most this many categories (x positions) or heatmap rows/columns
MAX_CATEGORIES = 500
#: at most this many series in one chart
MAX_SERIES = 24
#: at most this many numbers in one chart (all series, or the heatmap)
MAX_CELLS = 20_000
#: labels are cut to this many characters (control characters become U+FFFD: SVG is XML)
MAX_LABEL = 120

Number = float | None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _label(value: Any, name: str) -> str:
    text = _CONTROL.sub("\ufffd", "" if value is None else str(value))
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _number(value: Any, where: str) -> Number:
    if value is None:
        return None
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise ValidationError(where, value, "not a number", "pass an int, float or Decimal, or None for a gap")
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(
            where, value, "not a finite number", "pass None for a missing value, never NaN or infinity"
        )
    return number


def _caption(value: Any) -> str:
    text = _CONTROL.sub("\ufffd", "" if value is None else str(value))
    return text if len(text) <= 500 else text[:499] + "…"


def _numbers(values: Iterable[Any] | None, where: str) -> tuple[Number, ...] | None:
    if values is None:
        return None
    out = tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(values))
    if len(out) > MAX_CELLS:
        raise ValidationError(where, f"{len(out)} values", f"more than {MAX_CELLS} values", "aggregate before charting")
    return out


def _text(value: Any) -> str:
    return _label(value, "")


def _values(value: Iterable[Any]) -> tuple[Number, ...]:
    return _numbers(value, "values") or ()


def _lower(value: Iterable[Any] | None) -> tuple[Number, ...] | None:
    return _numbers(value, "lower")


def _upper(value: Iterable[Any] | None) -> tuple[Number, ...] | None:
    return _numbers(value, "upper")


def _xs(value: Iterable[Any] | None) -> tuple[Number, ...] | None:
    return _numbers(value, "x")


def _reference(value: Any) -> float | None:
    return _number(value, "reference")


def _category_labels(value: Iterable[Any]) -> tuple[str, ...]:
    return _labels(value, "categories")


def _row_labels(value: Iterable[Any]) -> tuple[str, ...]:
    return _labels(value, "rows")


def _column_labels(value: Iterable[Any]) -> tuple[str, ...]:
    return _labels(value, "columns")


@frozen(kw_only=True)
class Series:
    """One named row of numbers in a :class:`Chart`.

    ``values`` has one number per category (``None`` leaves a gap);
    ``lower``/``upper`` give an interval around each value (``interval``
    charts, error bars on ``bar``); ``x`` gives the x positions of a
    ``scatter`` series.
    """

    name: str = field(converter=_text)
    values: tuple[Number, ...] = field(converter=_values)
    lower: tuple[Number, ...] | None = field(default=None, converter=_lower)
    upper: tuple[Number, ...] | None = field(default=None, converter=_upper)
    x: tuple[Number, ...] | None = field(default=None, converter=_xs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "values": list(self.values)}
        for key in ("lower", "upper", "x"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        return out


def _series(value: Iterable[Series | Mapping[str, Any]]) -> tuple[Series, ...]:
    out: list[Series] = []
    for i, s in enumerate(value):
        if isinstance(s, Series):
            out.append(s)
            continue
        data = dict(s)
        unknown = sorted(set(data) - {"name", "values", "lower", "upper", "x"})
        if unknown:
            raise ValidationError(
                f"series[{i}].{unknown[0]}", data[unknown[0]], "not a series field", "use name, values, lower, upper, x"
            )
        try:
            out.append(Series(**data))
        except ValidationError as exc:
            raise exc.at(f"series[{i}]") from None
        if len(out) > MAX_SERIES:
            break
    if len(out) > MAX_SERIES:
        raise ValidationError("series", "too many", f"more than {MAX_SERIES} series", "chart fewer series")
    return tuple(out)


def _labels(value: Iterable[Any], name: str) -> tuple[str, ...]:
    out = tuple(_label(v, name) for v in value)
    if len(out) > MAX_CATEGORIES:
        raise ValidationError(
            name, f"{len(out)} labels", f"more than {MAX_CATEGORIES} labels", "aggregate (e.g. by week) first"
        )
    return out


def _matrix(value: Iterable[Iterable[Any]]) -> tuple[tuple[Number, ...], ...]:
    return tuple(_numbers(row, f"values[{i}]") or () for i, row in enumerate(value))


@frozen(kw_only=True)
class Chart:
    """What to draw: a kind, labels and numbers (see the module docs for the kinds).

    >>> Chart(kind="bar", title="Orders", categories=["EUR", "USD"],
    ...       series=[Series(name="orders", values=[12, 7])]).to_dict()["kind"]
    'bar'
    """

    kind: ChartKind
    title: str = field(converter=_text)
    x_label: str = field(default="", converter=_text)
    y_label: str = field(default="", converter=_text)
    categories: tuple[str, ...] = field(default=(), converter=_category_labels)
    series: tuple[Series, ...] = field(default=(), converter=_series)
    #: heatmap only: row labels, column labels and one row of numbers per row label
    rows: tuple[str, ...] = field(default=(), converter=_row_labels)
    columns: tuple[str, ...] = field(default=(), converter=_column_labels)
    values: tuple[tuple[Number, ...], ...] = field(default=(), converter=_matrix)
    #: a horizontal line at this value (``0`` under an uplift chart)
    reference: float | None = field(default=None, converter=_reference)
    #: how numbers are shown in labels and the terminal: ``"number"``, ``"percent"`` (0.25 → 25 %) or ``"money"``
    value_format: Literal["number", "percent", "money"] = "number"
    #: a sentence under the chart (the plain-language reading of it)
    caption: str = field(default="", converter=_caption)

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError("kind", self.kind, "not a chart kind", f"use one of {', '.join(KINDS)}")
        if self.value_format not in ("number", "percent", "money"):
            raise ValidationError("value_format", self.value_format, "unknown", "use 'number', 'percent' or 'money'")
        if self.kind == "heatmap":
            if len(self.values) != len(self.rows):
                raise ValidationError(
                    "values", f"{len(self.values)} rows", f"expected {len(self.rows)} rows", "one row per label in rows"
                )
            for i, row in enumerate(self.values):
                if len(row) != len(self.columns):
                    raise ValidationError(
                        f"values[{i}]", f"{len(row)} values", f"expected {len(self.columns)}", "one value per column"
                    )
            if len(self.rows) * len(self.columns) > MAX_CELLS:
                raise ValidationError("values", "heatmap", f"more than {MAX_CELLS} cells", "show fewer rows or columns")
            return
        cells = 0
        for i, s in enumerate(self.series):
            where = f"series[{i}]"
            if self.kind == "scatter":
                if s.x is None or len(s.x) != len(s.values):
                    raise ValidationError(
                        f"{where}.x", s.x, "scatter needs one x per value", "pass x=[...] as long as values"
                    )
            elif len(s.values) != len(self.categories):
                raise ValidationError(
                    f"{where}.values",
                    f"{len(s.values)} values",
                    f"expected {len(self.categories)} (one per category)",
                    "pass None for a missing value",
                )
            for bound in ("lower", "upper"):
                b = getattr(s, bound)
                if b is not None and len(b) != len(s.values):
                    raise ValidationError(
                        f"{where}.{bound}", f"{len(b)} values", f"expected {len(s.values)}", "one bound per value"
                    )
            cells += len(s.values)
        if cells > MAX_CELLS:
            raise ValidationError(
                "series", f"{cells} values", f"more than {MAX_CELLS} values", "aggregate before charting"
            )
        if self.kind == "interval" and any(s.lower is None or s.upper is None for s in self.series):
            raise ValidationError("series", "interval", "an interval chart needs lower and upper", "pass both bounds")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the API returns); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {"kind": self.kind, "title": self.title}
        for key in ("x_label", "y_label", "caption"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.value_format != "number":
            out["value_format"] = self.value_format
        if self.kind == "heatmap":
            out.update(rows=list(self.rows), columns=list(self.columns), values=[list(r) for r in self.values])
        else:
            if self.kind != "scatter":
                out["categories"] = list(self.categories)
            out["series"] = [s.to_dict() for s in self.series]
        if self.reference is not None:
            out["reference"] = self.reference
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chart:
        """Build a chart from :meth:`to_dict`'s form (validated like any chart)."""
        allowed = {"kind", "title", "x_label", "y_label", "categories", "series", "rows", "columns", "values",
                   "reference", "value_format", "caption"}  # fmt: skip
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValidationError(
                unknown[0], data[unknown[0]], "not a chart field", f"use only {', '.join(sorted(allowed))}"
            )
        return cls(**dict(data))


def _format(value: float, how: str) -> str:
    if how == "percent":
        return f"{value:.1%}"
    if how == "money":
        return f"{value:,.2f}"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"


# ---------------------------------------------------------------------------
# rendering (matplotlib)
# ---------------------------------------------------------------------------

_RC = {
    "text.parse_math": False,  # user text is text, never mathtext
    "svg.hashsalt": "ecrm",  # repeatable ids
    "svg.fonttype": "none",  # text stays text in the SVG (small, selectable, accessible)
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("charts need matplotlib: pip install 'ecrm-core[charts]'") from None
    return matplotlib


def render(chart: Chart, format: str = "svg", *, width: float = 7.0, height: float = 4.0, dpi: int = 100) -> bytes:
    """Draw ``chart`` and return the file's bytes (``"svg"`` or ``"png"``).

    ``width``/``height`` are inches (at most 20), ``dpi`` only matters for
    PNG (at most 300).  Needs ``ecrm-core[charts]``.
    """
    if format not in FORMATS:
        raise ValidationError("format", format, "not a chart format", "use 'svg' or 'png'")
    for name, value, top in (("width", width, 20.0), ("height", height, 20.0), ("dpi", dpi, 300)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= top:
            raise ValidationError(name, value, f"must be > 0 and <= {top}", f"pass a number up to {top}")
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        ax = fig.add_subplot()
        _DRAW[chart.kind](fig, ax, chart)
        ax.set_title(chart.title, loc="left")
        if chart.x_label:
            ax.set_xlabel(chart.x_label)
        if chart.y_label:
            ax.set_ylabel(chart.y_label)
        if chart.reference is not None and chart.kind != "heatmap":
            ax.axhline(chart.reference, color="0.4", linewidth=0.8, linestyle="--")
        if chart.kind in ("bar", "line", "interval", "scatter") and chart.value_format == "percent":
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if len(chart.series) > 1 and chart.kind != "heatmap":
            ax.legend(frameon=False)
        if chart.caption:
            fig.supxlabel(chart.caption, fontsize=8, color="0.3", wrap=True)
        buffer = io.BytesIO()
        metadata = {"Date": None} if format == "svg" else {"Software": None}
        with warnings.catch_warnings():  # a glyph missing from the font is drawn as a box, not an error
            warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
            fig.savefig(buffer, format=format, metadata=metadata)
    return buffer.getvalue()


def _positions(chart: Chart) -> list[int]:
    return list(range(len(chart.categories)))


def _category_axis(ax: Any, chart: Chart) -> None:
    ax.set_xticks(_positions(chart), list(chart.categories))
    if len(chart.categories) > 8 or max((len(c) for c in chart.categories), default=0) > 10:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")


def _nan(values: Sequence[Number]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _errors(s: Series) -> Any:
    if s.lower is None or s.upper is None:
        return None
    low = [0.0 if v is None or lo is None else max(0.0, v - lo) for v, lo in zip(s.values, s.lower, strict=True)]
    high = [0.0 if v is None or hi is None else max(0.0, hi - v) for v, hi in zip(s.values, s.upper, strict=True)]
    return [low, high]


def _draw_bar(fig: Any, ax: Any, chart: Chart) -> None:
    n = max(1, len(chart.series))
    width = 0.8 / n
    for i, s in enumerate(chart.series):
        offset = (i - (n - 1) / 2) * width
        xs = [p + offset for p in _positions(chart)]
        ax.bar(xs, _nan(s.values), width=width, label=s.name, yerr=_errors(s), capsize=3 if s.lower else 0)
    _category_axis(ax, chart)


def _draw_line(fig: Any, ax: Any, chart: Chart) -> None:
    for s in chart.series:
        ax.plot(_positions(chart), _nan(s.values), marker="o" if len(s.values) <= 40 else None, label=s.name)
        if s.lower is not None and s.upper is not None:
            ax.fill_between(_positions(chart), _nan(s.lower), _nan(s.upper), alpha=0.2)
    _category_axis(ax, chart)


def _draw_interval(fig: Any, ax: Any, chart: Chart) -> None:
    n = max(1, len(chart.series))
    for i, s in enumerate(chart.series):
        offset = (i - (n - 1) / 2) * (0.3 / n)
        xs = [p + offset for p in _positions(chart)]
        ax.errorbar(xs, _nan(s.values), yerr=_errors(s), fmt="o", capsize=4, label=s.name)
    _category_axis(ax, chart)
    ax.set_xlim(-0.5, max(0.5, len(chart.categories) - 0.5))


def _draw_heatmap(fig: Any, ax: Any, chart: Chart) -> None:
    import numpy as np

    data = np.array([_nan(r) for r in chart.values], dtype=float).reshape(len(chart.rows), len(chart.columns))
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(chart.columns)), list(chart.columns))
    ax.set_yticks(range(len(chart.rows)), list(chart.rows))
    if len(chart.columns) > 8:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
    if data.size <= 400:
        for (r, c), v in np.ndenumerate(data):
            if not math.isnan(v):
                ax.text(c, r, _format(float(v), chart.value_format), ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(True)


def _draw_scatter(fig: Any, ax: Any, chart: Chart) -> None:
    for s in chart.series:
        ax.scatter(_nan(s.x or ()), _nan(s.values), s=12, alpha=0.7, label=s.name)


_DRAW = {
    "bar": _draw_bar,
    "line": _draw_line,
    "interval": _draw_interval,
    "heatmap": _draw_heatmap,
    "scatter": _draw_scatter,
}


def write(chart: Chart, path: str | Path, **options: Any) -> Path:
    """Render ``chart`` into ``path``; the suffix (``.svg``/``.png``) picks the format."""
    target = Path(path)
    format = target.suffix.lower().lstrip(".")
    if format not in FORMATS:
        raise ValidationError("path", str(path), "must end in .svg or .png", "e.g. --chart report.svg")
    target.write_bytes(render(chart, format, **options))
    return target


# ---------------------------------------------------------------------------
# terminal
# ---------------------------------------------------------------------------


def to_rich(chart: Chart, *, width: int = 30) -> RenderableType:
    """The chart as a rich table for the terminal: one row per category, bars of ``█``.

    ``bar``/``line`` draw the value of each series; ``interval`` shows the
    value with its bounds; ``heatmap`` prints the matrix; ``scatter`` lists
    the series sizes (a scatter plot needs a file: use :func:`write`).
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=escape(chart.title), title_justify="left", caption=escape(chart.caption) or None, caption_justify="left"
    )
    fmt = chart.value_format
    if chart.kind == "heatmap":
        table.add_column("")
        for column in chart.columns:
            table.add_column(escape(column), justify="right")
        for label, row in zip(chart.rows, chart.values, strict=True):
            table.add_row(escape(label), *("" if v is None else _format(v, fmt) for v in row))
        return table
    if chart.kind == "scatter":
        table.add_column("series")
        table.add_column("points", justify="right")
        for s in chart.series:
            table.add_row(escape(s.name), f"{len(s.values):,}")
        return table
    table.add_column(escape(chart.x_label))
    values = [abs(v) for s in chart.series for v in s.values if v is not None]
    peak = max(values, default=0.0) or 1.0
    for s in chart.series:
        table.add_column(escape(s.name), justify="right")
        if chart.kind == "interval":
            table.add_column("interval", justify="right")
        else:
            table.add_column("", no_wrap=True)
    for i, category in enumerate(chart.categories):
        cells: list[str] = [escape(category)]
        for s in chart.series:
            v = s.values[i]
            cells.append("" if v is None else _format(v, fmt))
            if chart.kind == "interval":
                lo = s.lower[i] if s.lower else None
                hi = s.upper[i] if s.upper else None
                cells.append("" if lo is None or hi is None else f"[{_format(lo, fmt)}, {_format(hi, fmt)}]")
            else:
                cells.append("" if v is None else "[cyan]" + "█" * round(width * abs(v) / peak) + "[/]")
        table.add_row(*cells)
    return table
