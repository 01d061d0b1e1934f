"""The CDNOW sample from the ``lifetimes`` wheel on PyPI: downloaded once, only its data files read.

``lifetimes`` is archived; it is never installed or imported.  The wheel is
fetched with ``pip download --no-deps lifetimes==0.11.3`` into
``$ECRM_TEST_CACHE`` (default ``~/.cache/ecrm-tests``) and opened as a zip.
A failed download fails the test with pip's output: the validation against
the published figures must not be skipped silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest

VERSION = "0.11.3"


def cache_dir() -> Path:
    path = Path(os.environ.get("ECRM_TEST_CACHE") or Path.home() / ".cache" / "ecrm-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel() -> Path:
    folder = cache_dir()
    found = sorted(folder.glob(f"[Ll]ifetimes-{VERSION}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           f"lifetimes=={VERSION}", "-d", str(folder)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    found = sorted(folder.glob(f"[Ll]ifetimes-{VERSION}-*.whl"))
    if done.returncode != 0 or not found:
        pytest.fail(
            f"could not download the lifetimes {VERSION} wheel from PyPI into {folder} (needed for the CDNOW "
            f"sample; set ECRM_TEST_CACHE to a folder holding the wheel to work offline):\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return found[0]


def transactions() -> dict[int, list[tuple[date, float]]]:
    """CDNOW_sample.txt: customer id -> [(date, dollar value)]."""
    with zipfile.ZipFile(wheel()) as z:
        text = z.read("lifetimes/datasets/CDNOW_sample.txt").decode("ascii")
    out: dict[int, list[tuple[date, float]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        d = parts[2]
        out.setdefault(int(parts[0]), []).append((date(int(d[:4]), int(d[4:6]), int(d[6:])), float(parts[4])))
    return out


def calibration_summary(end: date = date(1997, 9, 30)) -> tuple[np.ndarray, ...]:
    """``x, t_x, T`` in weeks and ``m`` (mean value of repeat transaction days) up to ``end`` (39 weeks)."""
    xs, txs, Ts, ms = [], [], [], []
    for rows in transactions().values():
        days: dict[date, float] = {}
        for d, v in rows:
            if d <= end:
                days[d] = days.get(d, 0.0) + v
        items = sorted(days.items())
        first, last = items[0][0], items[-1][0]
        xs.append(len(items) - 1)
        txs.append((last - first).days / 7)
        Ts.append((end - first).days / 7)
        repeat = [v for _, v in items[1:]]
        ms.append(sum(repeat) / len(repeat) if repeat else 0.0)
    return np.array(xs, float), np.array(txs), np.array(Ts), np.array(ms)
