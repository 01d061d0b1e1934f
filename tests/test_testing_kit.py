"""The test kit's clock and memory channels work where pytest is not installed
(``ecrm demo`` replays a campaign with them after the Quickstart's install)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
sys.modules["pytest"] = None          # import pytest fails, as where it is not installed
from datetime import UTC, datetime
from ecrm_core.testing import CapturingChannel, EventRecorder, FakeClock
import ecrm_core.testing as kit

clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
clock.advance(days=1)
assert clock() == datetime(2026, 1, 2, tzinfo=UTC)
assert CapturingChannel("demo").name == "demo"
EventRecorder()
try:
    kit.pytest.skip("x")
except ModuleNotFoundError as exc:
    assert "install pytest" in str(exc)
else:
    raise AssertionError("the stand-in must say pytest is missing")
print("ok")
"""


def test_the_kit_imports_and_runs_without_pytest() -> None:
    run = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
