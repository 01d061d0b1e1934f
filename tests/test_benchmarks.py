"""The benchmarks run (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import ast
import os
import re
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


def test_api_benchmark_smoke(tmp_path):
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "api.py"),
            "--customers=300",
            "--events=1000",
            "--warmup-events=100",
            "--requests=300",
            "--warmup=30",
            "--concurrency=4",
            "--ingest-seconds=2",
            "--e2e-events=1000",
            "--latency-seconds=2",
            f"--dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for figure in (
        "POST /v1/batch",
        "events/s",
        "GET /customers/{id}",
        "p50 ms",
        "p99 ms",
        "vs bare",
        "2 cores" if os.cpu_count() == 2 else "cores",
    ):
        assert figure in out, figure
    for figure in (
        "end to end",
        "track_many on the same rows (same run)",
        "processor events per CPU-second",
        "floor: raw sqlite3 executemany",
        "drain rate the 200 -> visible goal needs",
        "right after the ingest (WAL",
        "200 -> visible",
        "every 200 is there",
    ):
        assert figure in out, figure
    answers = re.search(r"non-200 answers: (\{.*?\}) / paced (\{.*?\})", out)
    if answers is not None:  # the statuses answered: only 200s
        assert all(set(ast.literal_eval(a)) <= {200} for a in answers.groups()), answers.group(0)
    assert not (tmp_path / "api-bench.db").exists()  # removed without --keep


def test_email_benchmark_smoke():
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "email.py"), "--messages=150", "--repeat=1", "--batch-size=50"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in (
        "ecrm: send_many + dispatch (full pipeline)",
        "smtplib: the same messages pre-rendered",
        "ratio ecrm / smtplib",
    ):
        assert figure in proc.stdout, figure
