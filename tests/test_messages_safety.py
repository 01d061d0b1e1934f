"""The pipeline's text safety: the fast pattern is exactly the per-character rule."""

from __future__ import annotations

import sys

from ecrm_core.services.messages.safety import _UNSAFE, _address_problem, _clean, _unsafe_char


def test_the_pattern_agrees_with_the_rule_on_every_code_point() -> None:
    differ = [cp for cp in range(sys.maxunicode + 1) if _unsafe_char(chr(cp)) != bool(_UNSAFE.match(chr(cp)))]
    assert differ == []


def test_clean_escapes_and_bounds() -> None:
    assert _clean("ok\nline\x00\u202eend", 100) == "ok\\nline\\x00\\u202eend"
    assert _clean("plain text", 100) == "plain text"
    assert _clean("x" * 50, 10) == "x" * 9 + "…"
    assert _address_problem("ada@example.com") is None
    assert _address_problem("ada@example.com\u2028") == "the address contains control, surrogate or bidi characters"
