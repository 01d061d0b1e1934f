"""benchmarks/analytics_basket.py runs (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"


def test_basket_benchmark_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "analytics_basket.py"),
            "--customers=500",
            "--purchases=20000",
            "--products=100",
            "--min-support=0.005",
            "--fpgrowth",
            f"--db={tmp_path / 'b.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for figure in (
        "ecrm basket_rules, end to end",
        "pandas baseline",
        "ratio baseline / ecrm (wall; CPU)",
        "mlxtend FP-growth",
        "load average",
    ):
        assert figure in out, figure
    verdict = out.split("same rules as the baseline")[1].split("\n")[0]
    assert "yes" in verdict, out
    assert not (tmp_path / "b.db").exists()  # removed without --keep
