"""Long and non-ASCII subjects read back exactly (issue 14, item 10).

Each subject of ``tests/fixtures/hardening/subjects.json`` is built into a
message by :func:`ecrm_email.mime.message_data` and parsed back by the
standard library (the modern ``policy.default`` parser and the legacy
``email.header`` decoder): the decoded subject must equal the input, and no
line may exceed 78 characters.  Before the fix, the header registry's folder
dropped or added spaces around the encoded-words it folded.
"""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from ecrm_email.mime import build_message, message_data

CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "hardening" / "subjects.json").read_text("utf-8"))
SUBJECTS = [pytest.param(s, id=f"hand-{i}") for i, s in enumerate(CORPUS["hand"])] + [
    pytest.param(s, id=f"gen-{i}") for i, s in enumerate(CORPUS["generated"])
]


def _data(subject: str) -> bytes:
    return message_data(
        message_id="m1", from_="Shop <news@shop.example>", to="ada@example.com", subject=subject, text="hi"
    )


@pytest.mark.parametrize("subject", SUBJECTS)
def test_subject_round_trips_through_the_stdlib_parser(subject):
    data = _data(subject)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    assert head.isascii()
    parsed = message_from_bytes(data, policy=policy.default)
    assert str(parsed["Subject"]) == subject
    legacy = message_from_bytes(data)  # compat32 + email.header, as older readers decode
    assert str(make_header(decode_header(legacy["Subject"]))) == subject
    assert (
        build_message(message_id="m1", from_="news@shop.example", to="ada@example.com", subject=subject, text="hi")[
            "Subject"
        ]
        == subject
    )


def test_short_ascii_subjects_stay_readable():
    for subject in ("Summer offers", "Re: your order #123", "a  b", "50% off = today"):
        assert f"Subject: {subject}\r\n".encode() in _data(subject)
