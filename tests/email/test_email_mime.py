"""ecrm_email.mime: the message is built by the email package, and no input
can add, remove or rewrite a header (issue 5, "Bad input")."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any, cast

import pytest
from ecrm_email import mime
from ecrm_email.mime import build_message, envelope_sender, message_bytes, message_data, parse_mailbox
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ecrm_core.errors import ValidationError

WHEN = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


def build(**overrides: Any) -> EmailMessage:
    kwargs: dict[str, Any] = {
        "message_id": "0f3a9c",
        "from_": "Shop <shop@example.com>",
        "to": "Ada Lovelace <ada@example.com>",
        "subject": "Your order",
        "text": "Thanks for your order.",
        "domain": "mail.example.com",
        "date": WHEN,
    }
    kwargs.update(overrides)
    return build_message(**kwargs)


def reparse(msg: EmailMessage) -> EmailMessage:
    data = message_bytes(msg)
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def content(part: Any) -> str:
    """A part's decoded text (the wire format keeps CRLF line ends)."""
    return cast(str, part.get_content()).replace("\r\n", "\n")


HEAD = ["Message-ID", "Date", "From", "To", "Subject", "X-Ecrm-Message"]
#: The header set of a text-only message (single part).
TEXT_ONLY = [*HEAD, "Content-Type", "Content-Transfer-Encoding", "MIME-Version"]


# ---------------------------------------------------------------------------
# Headers and parts
# ---------------------------------------------------------------------------


def test_text_only_message_headers_and_body() -> None:
    parsed = reparse(build())
    assert parsed.keys() == TEXT_ONLY
    assert parsed["Message-ID"] == "<0f3a9c@mail.example.com>"
    assert parsed["X-Ecrm-Message"] == "0f3a9c"
    assert parsed["Date"].datetime == WHEN
    assert parsed["From"].addresses[0].display_name == "Shop"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    assert parsed["To"].addresses[0].addr_spec == "ada@example.com"
    assert parsed["Subject"] == "Your order"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert content(parsed) == "Thanks for your order.\n"


def test_alternative_text_then_html_and_reply_to() -> None:
    parsed = reparse(build(html="<p>Thanks <b>Ada</b></p>", reply_to="Support <help@example.com>"))
    assert parsed.keys() == [*HEAD[:4], "Reply-To", *HEAD[4:], "MIME-Version", "Content-Type"]
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == "Thanks for your order.\n"
    assert content(parts[1]) == "<p>Thanks <b>Ada</b></p>\n"
    assert content(parsed.get_body(("html",))).startswith("<p>Thanks")


def test_wire_format_is_crlf_and_7bit() -> None:
    data = message_bytes(build(subject="Grüße", text="Grüße, Zoë\n" + "x" * 2000, html="<p>ü</p>"))
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert data.isascii()  # quoted-printable/base64 parts, RFC 2047 headers: no 8BITMIME needed
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_non_ascii_subject_names_and_bodies_round_trip() -> None:
    msg = build(
        from_="Zoë's Café <cafe@example.com>",
        to='"Dvořák, Antonín" <antonin@example.com>',
        subject="Ihre Bestellung — Grüße 🎉",
        text="Grüße 🎉",
        html="<p>Grüße 🎉</p>",
    )
    raw = message_bytes(msg)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in headers  # encoded by the email package
    parsed = reparse(msg)
    assert parsed["Subject"] == "Ihre Bestellung — Grüße 🎉"
    assert parsed["From"].addresses[0].display_name == "Zoë's Café"
    assert parsed["To"].addresses[0].display_name == "Dvořák, Antonín"
    assert len(parsed["To"].addresses) == 1
    assert content(parsed.get_body(("plain",))) == "Grüße 🎉\n"


def test_idn_domain_is_punycoded_and_envelope_sender() -> None:
    parsed = reparse(build(to="Zoë <zoe@bücher.example>"))
    assert parsed["To"].addresses[0].addr_spec == "zoe@xn--bcher-kva.example"
    assert envelope_sender("Shop <shop@example.com>") == "shop@example.com"
    assert envelope_sender("shop@example.com") == "shop@example.com"


def test_custom_headers_and_list_unsubscribe_stay_verbatim() -> None:
    url = "https://crm.example.com/channels/email/unsubscribe/" + "t" * 180
    headers = {
        "List-Unsubscribe": f"<{url}>, <mailto:unsubscribe@example.com?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-Campaign": "spring-sale",
        "X-Note": "naïve text",
    }
    msg = build(headers=headers)
    raw = message_bytes(msg)
    # RFC 8058: the URIs must be readable as-is (not folded into encoded-words).
    assert f"List-Unsubscribe: <{url}>, <mailto:".encode() in raw
    parsed = reparse(msg)
    assert parsed.keys() == [*HEAD, *headers, *TEXT_ONLY[len(HEAD) :]]
    for name, value in headers.items():
        assert parsed[name] == value


def test_naive_or_default_date() -> None:
    with pytest.raises(ValidationError) as err:
        build(date=datetime(2025, 1, 1))
    assert err.value.field == "date"
    local = datetime(2025, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    assert reparse(build(date=local))["Date"].datetime == WHEN
    fresh = reparse(build(date=None))["Date"].datetime
    assert abs((fresh - datetime.now(UTC)).total_seconds()) < 3600


# ---------------------------------------------------------------------------
# Injection: CR/LF, control characters, encoded-words
# ---------------------------------------------------------------------------

CONTROL = ["\r\nBcc: evil@example.net", "\nBcc: evil@example.net", "\rX: y", "a\x00b", "a\x0bb", "a\x85b", "a\u2028b"]


@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_in_subject_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(subject=f"Hello{bad}")
    assert err.value.field == "subject"
    assert "control character" in str(err.value)


@pytest.mark.parametrize("bad", CONTROL)
@pytest.mark.parametrize(("argument", "field"), [("from_", "from"), ("to", "to"), ("reply_to", "reply_to")])
def test_control_characters_in_addresses_are_rejected(argument: str, field: str, bad: str) -> None:
    for value in (f"Ada{bad} <ada@example.com>", f"ada@example.com{bad}"):
        with pytest.raises(ValidationError) as err:
            build(**{argument: value})
        assert err.value.field == field


@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_in_custom_header_values_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(headers={"X-Foo": f"ok{bad}"})
    assert err.value.field == "headers.X-Foo"


def test_literal_encoded_word_in_subject_comes_back_literally() -> None:
    subject = "=?utf-8?q?Bcc:_x@evil?="
    parsed = reparse(build(subject=subject))
    assert parsed["Subject"] == subject
    assert "Bcc" not in parsed
    assert parsed.keys() == TEXT_ONLY
    mixed = "Sale =?utf-8?b?QmNjOiB4QGV2aWw=?= ünï and more"
    assert reparse(build(subject=mixed))["Subject"] == mixed


def test_literal_encoded_word_in_custom_header_comes_back_literally() -> None:
    parsed = reparse(build(headers={"X-Tag": "=?utf-8?q?To:_x@evil?="}))
    assert parsed["X-Tag"] == "=?utf-8?q?To:_x@evil?="
    assert len(parsed.get_all("To")) == 1


@pytest.mark.parametrize("field", ["from_", "to", "reply_to"])
@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?Ada?= <ada@example.com>",
        "=?utf-8?q?ada=40example.com?=@example.com",
        "ada@=?utf-8?q?example.com?=",
        "<=?utf-8?b?YWRhQGV4YW1wbGUuY29t?=>",
    ],
)
def test_encoded_words_in_addresses_are_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(**{field: value})
    assert err.value.field == field.rstrip("_")
    assert "encoded-word" in err.value.problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ada@example.com, eve@example.net", "2 addresses"),
        ("Ada <ada@example.com>, Eve <eve@example.net>", "2 addresses"),
        ("friends: ada@example.com, eve@example.net;", "group"),
        ("undisclosed-recipients:;", "group"),
        ("", "empty"),
        ("   ", "empty"),
        ("ada", "not"),
        ("ada@", "not"),
        ("@example.com", "not"),
        ("Ada <ada@example.com> eve@example.net", "not"),
        ("ada@exa mple.com", "not"),
        ("ada@-example.com", "domain"),
        ("ada@[127.0.0.1]", "domain"),
        ("zoë@example.com", "non-ASCII"),
        ("<@relay.example:ada@example.com>", "not"),
    ],
)
def test_addresses_must_be_exactly_one_mailbox(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(to=value)
    assert err.value.field == "to"
    assert problem in err.value.problem


def test_addresses_must_be_strings() -> None:
    with pytest.raises(ValidationError) as err:
        parse_mailbox("to", ["ada@example.com"])
    assert err.value.field == "to"
    for argument, field in (("from_", "from"), ("to", "to"), ("reply_to", "reply_to")):
        with pytest.raises(ValidationError) as err:
            build(**{argument: ["ada@example.com"]})
        assert err.value.field == field


def test_display_name_with_header_syntax_is_quoted_not_interpreted() -> None:
    msg = build(to='"Bcc: eve@example.net, x" <ada@example.com>', from_='"Shop: <sale@evil>" <shop@example.com>')
    parsed = reparse(msg)
    assert parsed.keys() == TEXT_ONLY
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ada@example.com"]
    assert parsed["To"].addresses[0].display_name == "Bcc: eve@example.net, x"
    assert [a.addr_spec for a in parsed["From"].addresses] == ["shop@example.com"]
    assert parsed["From"].addresses[0].display_name == "Shop: <sale@evil>"


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "Reply-To",
        "Return-Path",
        "Received",
        "DKIM-Signature",
        "X-Ecrm-Message",
    ],
)
def test_protected_headers_cannot_be_overridden(name: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(headers={name: "x"})
    assert err.value.field == f"headers.{name}"
    assert "may not be set" in err.value.problem


@pytest.mark.parametrize("name", ["X Foo", "X-Foo:", "Bcc:\r\nX", "", "Ünï", "X-Foo\n", "A" * 77])
def test_custom_header_names_must_be_field_name_tokens(name: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(headers={name: "x"})
    assert err.value.field == f"headers.{name}"
    assert "field name" in err.value.problem


def test_custom_header_edge_cases() -> None:
    with pytest.raises(ValidationError) as err:
        build(headers={"X-Foo": "a", "x-foo": "b"})
    assert "twice" in err.value.problem
    with pytest.raises(ValidationError) as err:
        build(headers={"List-Unsubscribe": "<https://exämple.com/u>"})
    assert err.value.field == "headers.List-Unsubscribe"
    with pytest.raises(ValidationError) as err:
        build(headers={"X-Long": "x" * 1000})
    assert "too long" in err.value.problem
    with pytest.raises(ValidationError) as err:
        build(headers={"X-Num": 3})
    assert err.value.field == "headers.X-Num"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"message_id": "<abc>"}, "message_id"),
        ({"message_id": "a b"}, "message_id"),
        ({"message_id": "abc@x"}, "message_id"),
        ({"message_id": ""}, "message_id"),
        ({"domain": "exa mple.com"}, "domain"),
        ({"domain": "example.com>\r\nBcc: x"}, "domain"),
        ({"domain": ""}, "domain"),
        ({"subject": None}, "subject"),
        ({"text": None}, "text"),
        ({"html": b"<p>"}, "html"),
    ],
)
def test_other_bad_arguments(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(**overrides)
    assert err.value.field == field


# ---------------------------------------------------------------------------
# The bytes are written directly (message_data): same message, same checks
# ---------------------------------------------------------------------------


def data(**overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "message_id": "0f3a9c",
        "from_": "Shop <shop@example.com>",
        "to": "Ada Lovelace <ada@example.com>",
        "subject": "Your order",
        "text": "Thanks for your order.",
        "domain": "mail.example.com",
        "date": WHEN,
    }
    kwargs.update(overrides)
    return message_data(**kwargs)


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"html": "<p>Thanks <b>Ada</b></p>", "reply_to": "Support <help@example.com>"},
        {"subject": "Grüße 🎉 " * 12, "text": "Привет, мир\n" * 40, "html": "<p>" + "ü" * 300 + "</p>"},
        {"headers": {"List-Unsubscribe": "<https://crm.example.com/u/" + "t" * 200 + ">", "X-Note": "naïve"}},
    ],
)
def test_message_data_is_what_build_message_holds(overrides: dict[str, Any]) -> None:
    raw = data(**overrides)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"") and raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    # Written the way the email package writes it: parsing and writing again gives the same bytes.
    assert message_bytes(parse(raw)) == raw
    built = build(**overrides)
    assert parse(message_bytes(built)).keys() == parse(raw).keys()


def test_body_transfer_encodings() -> None:
    def part_cte(text: str) -> tuple[str, str]:
        parsed = parse(data(text=text))
        return parsed["Content-Transfer-Encoding"], content(parsed)

    assert part_cte("short ASCII lines\n.\nFrom here\n") == ("7bit", "short ASCII lines\n.\nFrom here\n")
    long_line = "x = 1; " * 40 + "trailing space \n=?utf-8?q?x?=\n"
    assert part_cte(long_line) == ("quoted-printable", long_line)
    latin = "Grüße aus Köln: wir freuen uns auf Ihren nächsten Besuch.  \n" * 3
    assert part_cte(latin) == ("quoted-printable", latin)
    cyrillic = "Привет, мир\n" * 20
    assert part_cte(cyrillic) == ("base64", cyrillic)
    assert part_cte("a\r\nb\rc\n") == ("7bit", "a\nb\nc\n")  # line ends normalised to CRLF on the wire
    assert part_cte("") == ("7bit", "\n")


def test_multipart_boundary_never_occurs_in_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = "===============0000000000000000042=="
    draws = iter([42, 42, 7])
    monkeypatch.setattr(mime.secrets, "randbits", lambda _bits: next(draws))
    text = f"--{taken}\nContent-Type: text/html\n\n<script>evil</script>\n--{taken}--\n"
    raw = data(text=text, html="<p>hi</p>")
    parsed = parse(raw)
    assert parsed.get_boundary() == "===============0000000000000000007=="
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == text
    assert content(parts[1]) == "<p>hi</p>\n"


@pytest.mark.parametrize("name", ["Bcc: eve@evil.example, A Very Long Display Name, Inc. " * 3, "Zoë, " * 80])
def test_long_display_names_stay_one_mailbox(name: str) -> None:
    """A long quoted display name is not folded inside its quotes (the header
    registry drops them when it folds, which turned the name into a list of
    addresses); a non-ASCII one is folded between encoded-words."""
    raw = data(to=f'"{name}" <ada@example.com>')
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in headers.split(b"\r\n")) <= 998
    parsed = parse(raw)
    assert parsed.keys() == TEXT_ONLY
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].addr_spec == "ada@example.com"
    assert display_name(raw) == parse_mailbox("to", f'"{name}" <ada@example.com>').display_name


def display_name(raw: bytes, field: str = "To") -> str:
    """The display name of the (one) mailbox in ``field`` as an RFC 2047 reader
    decodes it.  (The email package's own address parser keeps the folding
    space between two encoded-words of a phrase, which RFC 2047 6.2 drops.)"""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = "".join(str(parsed[field]).splitlines())
    if "=?" not in value:
        return parse(raw)[field].addresses[0].display_name  # type: ignore[no-any-return]
    words, _, _ = value.rpartition(" <")
    return str(make_header(decode_header(words)))


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ATEXT + '.@ "<>(),;:[]\\é', min_size=1, max_size=24))
def test_plain_address_shortcut_agrees_with_the_parser(value: str) -> None:
    """Bare addr-specs skip the header parser: same Address, same errors."""

    def outcome() -> tuple[str, ...]:
        try:
            a = parse_mailbox("to", value)
        except ValidationError as exc:
            return ("error", exc.problem)
        return ("ok", a.username, a.domain, a.display_name, a.addr_spec)

    fast = outcome()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mime, "_PLAIN_ADDRESS", re.compile(r"(?!)"))
        slow = outcome()
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=90),
    subject=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120),
)
def test_any_name_and_subject_round_trip_with_the_exact_header_set(name: str, subject: str) -> None:
    """What was validated is what a reader gets back: one mailbox with the same
    display name, the same subject (as a reader unfolds it), the same headers."""
    assume("=?" not in name)
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '" <ada@example.com>'
    try:
        expected = parse_mailbox("to", quoted)
    except ValidationError:
        return  # refused (e.g. U+0085 is a control character): nothing is built either
    raw = data(to=quoted, subject=subject, html="<p>x</p>")
    parsed = parse(raw)
    assert parsed.keys() == [*HEAD, "MIME-Version", "Content-Type"]
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].addr_spec == "ada@example.com"
    assert " ".join(display_name(raw).split()) == " ".join(expected.display_name.split())
    assert parsed["Subject"] == subject.strip() or " ".join(parsed["Subject"].split()) == " ".join(subject.split())
