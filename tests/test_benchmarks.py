"""The benchmarks run (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_segments_benchmark_smoke(tmp_path):
    env = {**os.environ, "COLUMNS": "250"}  # one table row per line
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "segments.py"),
            "--customers=2000",
            "--interactions=20000",
            "--new-interactions=1000",
            "--repeat=1",
            "--repeat-refresh=1",
            "--eval-seconds=0.05",
            f"--db={tmp_path / 'seg.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for figure in (
        "EXPLAIN QUERY PLAN",
        "full evaluation: compiled statement, count(*)",
        "full refresh of the segment",
        "incremental refresh, segment part",
        "incremental refresh(customer_ids=…): lifecycle + segment",
        "in-memory evaluator, fresh EvalContext per decision",
        "decisions/s",
    ):
        assert figure in out, figure
    assert not (tmp_path / "seg.db").exists()  # removed without --keep
