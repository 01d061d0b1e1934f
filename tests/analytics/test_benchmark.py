"""benchmarks/analytics.py runs (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"


def test_analytics_benchmark_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "analytics.py"), "--customers=300", "--purchases=3000",
         f"--dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in (
        "ecrm full build",
        "ecrm after 1 % of customers bought again",
        "hand-written SQLite + covering index",
        "DuckDB load + query",
        "pandas read_sql + groupby",
        "BG/NBD fit",
        "clv.fit(crm) end to end",
        "load",
    ):
        assert figure in proc.stdout, figure
