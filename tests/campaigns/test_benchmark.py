"""benchmarks/campaigns.py runs (tiny sizes, no timing assertions: the figures are for people)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent.parent / "benchmarks" / "campaigns.py"


def test_campaigns_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--customers=3000", "--entering=1000"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in (
        "trigger -> enrolled",
        "steps -> outbox",
        "outbox -> channel",
        "raw sqlite3 insert",
        "trigger -> outbox / raw insert",
        "the same in CPU time of this process",
        "campaign state rows: 1,000 = 1.00 per customer",
        "simulation of the same campaign over 30 days (",
    ):
        assert figure in proc.stdout, proc.stdout
