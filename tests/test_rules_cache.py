"""The rule parser's LALR tables are cached in a private directory, safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners only")

PARSE = (
    "from ecrm_core.rules.parser import parse, _tables_cache; "
    "print(_tables_cache()); "
    "print(parse('purchase.count(30d) >= 2 and attributes.country == \"KR\"'))"
)


def _run(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PARSE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_tables_are_cached_in_a_private_directory_and_read_back(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "ECRM_RULES_CACHE": "1"}
    first = _run(env)
    folder = tmp_path / "ecrm"
    assert first[0].startswith(str(folder)) and Path(first[0]).is_file()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert _run(env) == first  # the second process reads the cache: same parser, same tree
    Path(first[0]).write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    assert _run(env) == first
    assert Path(first[0]).read_bytes() != b"garbage"


def test_no_cache_in_a_directory_others_can_write_or_when_turned_off(tmp_path: Path) -> None:
    folder = tmp_path / "ecrm"
    folder.mkdir()
    folder.chmod(0o777)
    env = {"XDG_CACHE_HOME": str(tmp_path), "ECRM_RULES_CACHE": "1"}
    lines = _run(env)
    assert lines[0] == "False" and not any(folder.iterdir())
    folder.chmod(0o700)
    assert _run({**env, "ECRM_RULES_CACHE": "0"})[0] == "False"
    assert not any(folder.iterdir())
