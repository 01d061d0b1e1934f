"""``properties_json`` (the bulk path's check, with a fast path over the
encoded text) refuses exactly what ``check_json`` (the walk over the data)
refuses, with the same field path: a differential test over random data
built from the characters, numbers and shapes that matter, and over the
hostile corpus of ``tests/fixtures/hardening/hostile_json.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ecrm_core.errors import ValidationError
from ecrm_core.validation import MAX_KEY_LENGTH, check_json, properties_json

CHARS = [
    "a",
    "é",
    "\u2028",
    "\x7f",
    '"',
    "\\",
    "\t",
    "\n",
    "\r",
    "\x00",
    "\x01",
    "\x08",
    "\x0c",
    "\x1f",
    "\ud800",
    "\udfff",
    "😀",
    ":",
    "{",
    "[",
    "1",
]
NUMBERS = [
    0,
    1,
    -1,
    2**53,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    10**18,
    10**19,
    1.5,
    1e300,
    float("inf"),
    True,
    None,
]


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(CHARS) if rng.random() < 0.3 else "x" for _ in range(n))


def _value(rng: random.Random, depth: int) -> Any:
    r = rng.random()
    if depth > 0 and r < 0.25:
        return {
            _text(rng, rng.choice((1, 3, 8, MAX_KEY_LENGTH, MAX_KEY_LENGTH + 1))): _value(rng, depth - 1)
            for _ in range(rng.randint(0, 3))
        }
    if depth > 0 and r < 0.4:
        return [_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if r < 0.7:
        return _text(rng, rng.randint(0, 6))
    return rng.choice(NUMBERS)


def _deep(rng: random.Random) -> Any:
    node: Any = _value(rng, 1)
    for _ in range(rng.choice((30, 31, 32, 33, 40))):
        node = {"k": node} if rng.random() < 0.5 else [node]
    return node


def _outcome(fn: Any, value: Any) -> tuple[str, str] | None:
    try:
        fn(value)
    except ValidationError as exc:
        return exc.field, exc.problem
    return None


def _walk_then_size(value: Any) -> None:
    check_json(value, "p")
    properties_json(value, "p", limit=10**9)


@pytest.mark.parametrize("seed", range(8))
def test_fast_path_agrees_with_the_walk(seed: int) -> None:
    rng = random.Random(seed)
    refused = 0
    for _ in range(1500):
        value = {
            "v": _deep(rng) if rng.random() < 0.1 else _value(rng, 4),
            _text(rng, rng.randint(1, 4)): _value(rng, 2),
        }
        fast = _outcome(lambda v: properties_json(v, "p", limit=10**9), value)
        assert fast == _outcome(_walk_then_size, value), value
        refused += fast is not None
    assert 300 < refused < 1400  # both outcomes are well represented


def test_fast_path_agrees_on_the_hostile_corpus() -> None:
    cases = json.loads((Path(__file__).parent / "fixtures" / "hardening" / "hostile_json.json").read_text())["cases"]
    for case in cases:
        text = f'{{"plan": {case["json"]}}}' if case["as"] == "value" else f"{{{case['json']}: 1}}"
        value = json.loads(text)
        fast = _outcome(lambda v: properties_json(v, "p"), value)
        assert fast is not None and case["problem"] in fast[1], (case["name"], fast)


def test_allowed_values_pass() -> None:
    ok = {"t": "a\tb\nc\r", "q": 'say "hi" \\ back', "u": "é\u2028😀\x7f", "n": [2**63 - 1, -(2**63), 1e300]}
    assert json.loads(properties_json(ok)) == ok
    check_json(ok)
