"""The host applications in examples/ run and tell the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_shop_example(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "shop" / "app.py"), str(tmp_path / "shop.db")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "orders in the shop: 2" in out
    assert "stage=new has_ordered=True" in out
    assert "purchases known to the CRM: 2, spent 60.5 EUR" in out
