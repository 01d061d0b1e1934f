"""benchmarks/decide.py runs (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent.parent / "benchmarks" / "decide.py"

pytest.importorskip("ecrm_api")


def test_decide_benchmark_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--customers=400",
            "--products=60",
            "--interactions=3000",
            "--requests=200",
            "--warmup=20",
            "--concurrency=2",
            "--rate=50",
            "--open-seconds=2",
            "--open-connections=4",
            f"--db={tmp_path / 'decide.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for figure in (
        "smaller than the issue's scale",
        "recommender refresh",
        "goal: refresh < 60 s",
        "SELECTs for customers with",
        "(constant)",
        "ecrm decide",
        "bare Litestar, same-size JSON",
        "p99 vs bare",
        "CLOSED LOOP (saturation)",
        "OPEN LOOP: 50 requests/s offered",
        "goal, open loop at 50 req/s",
        "load average",
    ):
        assert figure in out, (figure, out)
    assert "{4" not in out and "{5" not in out  # no 4xx/5xx answers in the non-200 column
    assert not list(tmp_path.glob("*.db"))  # removed without --keep
