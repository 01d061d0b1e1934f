"""The demo stage's clusters table fits an 80-column terminal: one column per
cluster, the labels listed above it, no value cut or wrapped."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("ecrm_analytics")


def _render(renderable: object, width: int) -> list[str]:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, legacy_windows=False).print(renderable)
    return out.getvalue().splitlines()


def test_the_clusters_table_fits_80_columns() -> None:
    from ecrm_analytics.clusters import FEATURES
    from ecrm_analytics.common import Report
    from ecrm_analytics.needs_demo import clusters_table

    labels = ["low spend, small baskets", "high spend, big baskets", "frequent, long-standing", "lapsed", "new", "x"]
    rows = [
        (n + 1, labels[n], 12_345 + n, *(round(1234.5678 * (n + 1) + i, 2) for i, _ in enumerate(FEATURES)))
        for n in range(6)
    ]
    report = Report(
        name="clusters",
        title="Customer clusters (k=6)",
        columns=("cluster", "label", "customers", *FEATURES),
        rows=rows,
        summary={"customers": 74_070, "k": 6, "silhouette": 0.343},
        caption="74,070 buyers in 6 clusters (silhouette 0.34); the largest is 'x'.",
    )
    lines = _render(clusters_table(report), 80)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text  # nothing cut
    for n, label in enumerate(labels, 1):
        assert f"cluster {n}: {label}" in lines  # each label whole, on its own line
    for feature in FEATURES:  # one row per measure, every cluster's value on it
        (row,) = [line for line in lines if line.startswith(f"│ {feature} ")]
        assert row.count("│") == 8
    assert "7,407.41" in text and "12,350" in text
    # the generic rendering of the same report does not fit: the reason for this layout
    assert "…" in "\n".join(_render(report.to_rich(), 80))


def test_no_clusters_falls_back_to_the_report_message() -> None:
    from ecrm_analytics.common import Report
    from ecrm_analytics.needs_demo import clusters_table

    report = Report(name="clusters", title="Customer clusters", columns=("cluster",), rows=[], caption="too few buyers")
    assert "too few buyers" in " ".join(part.strip() for part in _render(clusters_table(report), 80))
