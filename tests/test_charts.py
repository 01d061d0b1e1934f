"""``ecrm_core.charts``: the one chart description, its limits and its renderers."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from rich.console import Console

from ecrm_core import ValidationError
from ecrm_core.charts import MAX_CATEGORIES, MAX_CELLS, MAX_SERIES, Chart, Series, render, to_rich, write

pytest.importorskip("matplotlib")


def bar(**kw: Any) -> Chart:
    args: dict[str, Any] = {
        "kind": "bar",
        "title": "Orders",
        "categories": ["EUR", "USD"],
        "series": [Series(name="orders", values=[12, 7])],
    }
    args.update(kw)
    return Chart(**args)


EXAMPLES = {
    "bar": bar(series=[Series(name="a", values=[1, 2]), Series(name="b", values=[3, None], lower=[2, None], upper=[4, None])]),
    "line": Chart(kind="line", title="Revenue", categories=["w1", "w2", "w3"], series=[Series(name="net", values=[1.5, None, Decimal("2.25")])]),
    "interval": Chart(
        kind="interval", title="Uplift", categories=["holdout", "A"], reference=0, value_format="percent",
        series=[Series(name="conversion", values=[0.02, 0.03], lower=[0.01, 0.02], upper=[0.03, 0.04])],
    ),
    "heatmap": Chart(kind="heatmap", title="Retention", rows=["2026-01", "2026-02"], columns=["m0", "m1"], values=[[1, 0.4], [1, None]]),
    "scatter": Chart(kind="scatter", title="Clusters", series=[Series(name="c1", x=[1, 2, 3], values=[3, 2, 1])]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_kind_renders_svg_and_png_repeatably(name: str, tmp_path: Path) -> None:
    chart = EXAMPLES[name]
    svg = render(chart)
    assert svg.startswith(b"<?xml") and b"<svg" in svg
    assert render(chart) == svg, "the SVG must be byte-for-byte repeatable"
    assert chart.title.encode() in svg, "text stays text in the SVG"
    png = render(chart, "png", width=3, height=2, dpi=50)
    assert png.startswith(b"\x89PNG")
    assert write(chart, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert Chart.from_dict(json.loads(json.dumps(chart.to_dict()))) == chart
    Console(width=100, file=open(tmp_path / "t.txt", "w")).print(to_rich(chart))


# Hostile labels: SVG/XML markup, mathtext, rich markup, control characters, very long text.
HOSTILE = [
    "<script>alert(1)</script>",
    "]]><svg onload=alert(1)>",
    "$\\frac{1}{0}$",
    "$" * 50,
    "$\\sqrt{\\sqrt{\\sqrt{x}}}$" * 5,
    "[bold red]boom[/]",
    "[link=javascript:alert(1)]x[/link]",
    "a & b \" ' < >",
    "x" * 10_000,
    "\x00\x07 control",
    "tab\tnew\nline",
    "🙂 ünïcödé 한국어",
]


@pytest.mark.parametrize("label", HOSTILE)
def test_user_text_is_text_everywhere(label: str, tmp_path: Path) -> None:
    chart = Chart(
        kind="bar",
        title=label,
        x_label=label,
        caption=label,
        categories=[label, "ok"],
        series=[Series(name=label, values=[1, 2])],
    )
    assert len(chart.title) <= 120 and len(chart.caption) <= 500
    svg = render(chart)
    root = ElementTree.fromstring(svg)  # well-formed XML whatever the label
    for element in root.iter():
        assert not element.tag.endswith("script"), "no script element"
        assert not [a for a in element.attrib if a.lower().startswith("on")], element.attrib
    console = Console(width=200, record=True, file=open(tmp_path / "t.txt", "w"))
    console.print(to_rich(chart))
    text = console.export_text()
    if label.startswith("[bold"):
        assert "[bold red]boom" in text, "rich markup in a label is shown, not interpreted"


BAD: list[tuple[dict[str, Any], str]] = [
    ({"kind": "pie"}, "kind"),
    ({"value_format": "euros"}, "value_format"),
    ({"series": [Series(name="s", values=[1])]}, "series[0].values"),
    ({"series": [{"name": "s", "values": [1, math.inf]}]}, "series[0].values[1]"),
    ({"series": [{"name": "s", "values": [1, -math.inf]}]}, "series[0].values[1]"),
    ({"series": [{"name": "s", "values": [float("nan"), 1]}]}, "series[0].values[0]"),
    ({"series": [{"name": "s", "values": [Decimal("NaN"), 1]}]}, "series[0].values[0]"),
    ({"series": [{"name": "s", "values": ["12", 1]}]}, "series[0].values[0]"),
    ({"series": [{"name": "s", "values": [True, 1]}]}, "series[0].values[0]"),
    ({"series": [{"name": "s", "values": [1, 2], "upper": [1, math.nan]}]}, "series[0].upper[1]"),
    ({"series": [{"name": "s", "values": [1, 2], "lower": [0]}]}, "series[0].lower"),
    ({"series": [{"name": "s", "values": [1, 2], "bogus": 1}]}, "series[0].bogus"),
    ({"kind": "interval"}, "series"),
    ({"kind": "scatter"}, "series[0].x"),
    ({"series": [{"name": "s", "values": [1, 2]}] * (MAX_SERIES + 1)}, "series"),
    ({"kind": "heatmap", "rows": ["a"], "columns": ["x", "y"], "values": [[1]]}, "values[0]"),
    ({"kind": "heatmap", "rows": ["a", "b"], "columns": ["x"], "values": [[1]]}, "values"),
    ({"categories": [str(i) for i in range(MAX_CATEGORIES + 1)]}, "categories"),
    ({"series": [Series(name=str(i), values=[1, 2]) for i in range(MAX_SERIES + 1)]}, "series"),
    ({"reference": float("nan")}, "reference"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_charts_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        bar(**change)
    assert info.value.field == field, str(info.value)


def test_the_number_of_cells_is_bounded() -> None:
    many = MAX_CELLS // 2 + 1
    with pytest.raises(ValidationError, match="more than"):
        Chart(kind="scatter", title="t", series=[Series(name="a", x=range(many), values=range(many))] * 2)


def test_from_dict_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError) as info:
        Chart.from_dict({"kind": "bar", "title": "t", "script": "x"})
    assert info.value.field == "script"


@pytest.mark.parametrize(
    ("options", "field"),
    [({"format": "pdf"}, "format"), ({"width": 500}, "width"), ({"dpi": 10_000}, "dpi"), ({"height": -1}, "height")],
)
def test_render_size_is_bounded(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        render(bar(), **options)
    assert info.value.field == field


def test_write_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"\.svg or \.png"):
        write(bar(), tmp_path / "chart.pdf")
