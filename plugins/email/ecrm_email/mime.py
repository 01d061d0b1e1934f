"""Build the RFC 5322 / MIME message of one e-mail, safely.

:func:`message_data` writes the message bytes for ``DATA`` (what the e-mail
channel sends); :func:`build_message` returns the same message parsed back
as an :class:`~email.message.EmailMessage` (:func:`message_bytes` gives its
bytes).  Every encoding is done by the standard library's :mod:`email`
package: ASCII header fields that fit on a line are written as they are;
non-ASCII or long subjects are RFC 2047-encoded whole by
:class:`email.header.Header` (so folding can never add or drop a space),
display names quoted by :func:`email.utils.formataddr` (never folded inside
the quotes) or encoded by :class:`email.header.Header`, as are encoded-word
lookalikes, bodies encoded by :func:`binascii.b2a_qp` /
:mod:`email.base64mime`.  This module *validates* what goes into the
headers, so that no caller input can add, remove or rewrite a header:

* CR, LF, NUL and every other control character (C0, DEL, C1, U+2028/9) in
  the subject, the addresses and custom header values is rejected with a
  :class:`~ecrm_core.errors.ValidationError` naming the field (``subject``,
  ``from``, ``to``, ``reply_to``, ``headers.X-Foo``).
* Each address is exactly one mailbox (no lists, groups, empty values,
  routes or comments trickery) and contains no RFC 2047 encoded-word.
* Non-ASCII display names and subjects are encoded (RFC 2047) by the email
  package; text that merely *looks* like an encoded-word (``=?utf-8?q?…?=``)
  is itself encoded, so a reader decodes it back to the same literal text.
* Custom headers have RFC 5322 field names and may not override the headers
  this module owns (From, To, Subject, Message-ID, Content-*…), except
  ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` which the channel sets.
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from email import base64mime
from email import policy as email_policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr
from typing import Any, cast

from ecrm_core.errors import ValidationError

__all__ = [
    "PROTECTED_HEADERS",
    "ALLOWED_OVERRIDES",
    "build_message",
    "message_data",
    "message_bytes",
    "envelope_sender",
    "parse_mailbox",
]

#: Headers a caller may never set through ``headers=`` (lower-case).
PROTECTED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "reply-to",
        "return-path",
        "received",
        "dkim-signature",
        "sender",
        "x-ecrm-message",
    }
)
#: Custom headers the e-mail channel itself sets (RFC 8058 one-click unsubscribe).
ALLOWED_OVERRIDES = frozenset({"list-unsubscribe", "list-unsubscribe-post"})

# C0 controls (tab included), DEL, C1 controls, and Unicode line/paragraph
# separators (str.splitlines() breaks on them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 5322 field-name: printable US-ASCII except ':'.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
# Something an RFC 2047 decoder would treat as an encoded-word.
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.DOTALL)
# The left part of a Message-ID (a safe subset of RFC 5322 dot-atom-text).
_ID_LEFT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# The common case of an address: a bare addr-spec ``local@host`` whose local
# part is an RFC 5322 dot-atom and whose host is ASCII labels (_LABEL).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"({_ATEXT}(?:\.{_ATEXT})*)@((?:(?!-)[A-Za-z0-9-]{{1,63}}(?<!-)\.)*(?!-)[A-Za-z0-9-]{{1,63}}(?<!-))"
)
_MAX_LINE = 998

# SMTP line endings; 7-bit transfer encodings (quoted-printable/base64 for
# non-ASCII parts, so no 8BITMIME is needed); headers stored raw (the
# verbatim List-Unsubscribe, the pre-encoded ones) are not refolded.
_POLICY = email_policy.SMTP.clone(cte_type="7bit", refold_source="none")
_CRLF = "\r\n"
# Header lines and 7bit body lines up to this length are written as they are
# (the policy's max_line_length); longer ones are folded / encoded.
_FOLD_AT = 78


def _describe_control(value: str) -> str:
    match = _CONTROL.search(value)
    assert match is not None
    return f"U+{ord(match.group()):04X}"


def _check_text(field: str, value: Any, *, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, value, f"{what} must be a string", f"pass the {what} as text")
    if _CONTROL.search(value):
        raise ValidationError(
            field,
            value,
            f"contains a line break or control character ({_describe_control(value)})",
            f"remove CR, LF, NUL and other control characters from the {what} (header injection is refused)",
        )
    return value


def _check_domain(field: str, value: str, domain: str) -> str:
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise ValidationError(
            field, value, f"the domain {domain!r} is not a valid host name", "use an address like ada@example.com"
        ) from None
    labels = ascii_domain.rstrip(".").split(".") if ascii_domain else []
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValidationError(
            field, value, f"the domain {domain!r} is not a valid host name", "use an address like ada@example.com"
        )
    return ascii_domain


def parse_mailbox(field: str, value: Any) -> Address:
    """Parse ``value`` as exactly one mailbox (``"Ada <ada@example.com>"`` or
    ``"ada@example.com"``); return an :class:`~email.headerregistry.Address`
    whose domain is ASCII (IDNA-encoded).  Raise :class:`ValidationError`
    naming ``field`` otherwise."""
    text = _check_text(field, value, what="address")
    fix = "pass exactly one address, e.g. 'Ada Lovelace <ada@example.com>' or 'ada@example.com'"
    if not text.strip():
        raise ValidationError(field, value, "is empty", fix)
    if _ENCODED_WORD.search(text) or "=?" in text:
        raise ValidationError(
            field,
            value,
            "contains an RFC 2047 encoded-word ('=?...?=')",
            "pass the display name as plain Unicode text (it is encoded for you) and a plain address",
        )
    plain = _PLAIN_ADDRESS.fullmatch(text)
    if plain is not None:
        # A bare dot-atom addr-spec with an ASCII host name: what the parser
        # below would return for it, without running the parser.
        return Address(username=plain[1], domain=plain[2])
    try:
        header: Any = email_policy.default.header_factory("to", text)
    except Exception:  # the parser raises assorted errors on broken input
        raise ValidationError(field, value, "is not a valid address", fix) from None
    if header.defects:
        raise ValidationError(field, value, f"is not a valid address ({header.defects[0]})", fix)
    groups = header.groups
    if any(group.display_name is not None for group in groups):
        raise ValidationError(field, value, "is a group of addresses", fix)
    addresses = header.addresses
    if len(addresses) != 1:
        raise ValidationError(field, value, f"holds {len(addresses)} addresses, not one", fix)
    address = addresses[0]
    username, domain = address.username, address.domain
    if not username or not domain:
        raise ValidationError(field, value, "is not a complete address (local-part@domain)", fix)
    if not username.isascii():
        raise ValidationError(
            field,
            value,
            "has a non-ASCII local part (SMTPUTF8 addresses are not supported)",
            "use an ASCII address; non-ASCII domains are accepted (they are IDNA-encoded)",
        )
    ascii_domain = _check_domain(field, text, domain)
    try:
        return Address(display_name=address.display_name or "", username=username, domain=ascii_domain)
    except Exception as exc:  # pragma: no cover - defensive
        raise ValidationError(field, value, f"is not a valid address ({exc})", fix) from None


def envelope_sender(from_: str) -> str:
    """The bare address of ``from_`` (for ``MAIL FROM``): ``"Shop <shop@example.com>"``
    → ``"shop@example.com"``."""
    return parse_mailbox("from", from_).addr_spec


def _encoded_raw(name: str, value: str) -> str:
    """RFC 2047-encode the whole ``value`` with the email package (used when the
    text contains something a reader would otherwise decode as an encoded-word)."""
    return Header(value, "utf-8", header_name=name).encode(linesep="\n")


def _check_custom_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    if not isinstance(headers, Mapping):
        raise ValidationError("headers", headers, "is not a mapping", "pass a dict of header name to value")
    for name, value in headers.items():
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise ValidationError(
                f"headers.{name}",
                name,
                "is not a valid header field name",
                "use printable ASCII without spaces or ':' (e.g. 'X-Campaign'), at most 76 characters",
            )
        lower = name.lower()
        if lower in PROTECTED_HEADERS or (lower.startswith("content-") and lower not in ALLOWED_OVERRIDES):
            raise ValidationError(
                f"headers.{name}",
                value,
                "may not be set as a custom header",
                "pass from_, to, subject, reply_to… as arguments; Content-* and trace headers are set by the mailer",
            )
        if lower in seen:
            raise ValidationError(f"headers.{name}", value, "is given twice", "set each header once")
        seen.add(lower)
        _check_text(f"headers.{name}", value, what="header value")
        if lower in ALLOWED_OVERRIDES and not value.isascii():
            raise ValidationError(
                f"headers.{name}", value, "must be ASCII", "percent-encode the URIs (RFC 8058 / RFC 2369)"
            )
        if len(name) + 2 + len(value) > _MAX_LINE and value.isascii():
            raise ValidationError(
                f"headers.{name}", value, "is too long", f"keep a header under {_MAX_LINE} characters"
            )
        out.append((name, value))
    return out


def _validated(
    *,
    message_id: str,
    from_: str,
    to: str,
    subject: str,
    text: str,
    html: str | None,
    headers: Mapping[str, str] | None,
    reply_to: str | None,
    domain: str,
    date: datetime | None,
) -> tuple[Address, Address, Address | None, list[tuple[str, str]], datetime]:
    if not isinstance(message_id, str) or len(message_id) > 200 or not _ID_LEFT.fullmatch(message_id):
        raise ValidationError(
            "message_id", message_id, "is not a valid Message-ID left part", "use letters, digits, '.', '-', '_'"
        )
    if (
        not isinstance(domain, str)
        or not domain.isascii()
        or not all(_LABEL.fullmatch(label) for label in domain.split("."))
    ):
        raise ValidationError("domain", domain, "is not a valid domain", "use a host name such as 'mail.example.com'")
    sender = _configured_mailbox("from", from_) if isinstance(from_, str) else parse_mailbox("from", from_)
    recipient = parse_mailbox("to", to)
    reply = None
    if reply_to is not None:
        reply = (
            _configured_mailbox("reply_to", reply_to)
            if isinstance(reply_to, str)
            else parse_mailbox("reply_to", reply_to)
        )
    _check_text("subject", subject, what="subject")
    if not isinstance(text, str):
        raise ValidationError("text", text, "must be a string", "pass the plain-text part as text")
    if html is not None and not isinstance(html, str):
        raise ValidationError("html", html, "must be a string or None", "pass the HTML part as text")
    custom = _check_custom_headers(headers or {})
    when = date if date is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise ValidationError("date", date, "is a naive datetime", "pass an aware datetime (e.g. in UTC)")
    return sender, recipient, reply, custom, when


@functools.lru_cache(maxsize=64)
def _configured_mailbox(field: str, value: str) -> Address:
    """:func:`parse_mailbox` for the few values that repeat on every message
    (the sender, the reply-to): parsed once.  Errors are not cached."""
    return parse_mailbox(field, value)


def _fits(name: str, value: str) -> bool:
    return value.isascii() and len(name) + 2 + len(value) <= _FOLD_AT


def _unstructured(name: str, value: str) -> str:
    """An unstructured field (the subject): as it is when it is plain ASCII
    that fits on a line; otherwise the whole value is RFC 2047-encoded by
    :class:`email.header.Header`.  Every space (leading, trailing, runs of
    several, next to non-ASCII words) is inside an encoded-word, so a reader
    that joins adjacent encoded-words (RFC 2047 6.2) gets the exact text back.
    The header registry's folder (policy ``SMTP``) is not used here: it drops
    or adds spaces around the encoded-words it folds (one long non-ASCII
    subject in three lost a space in ``tests/email/test_email_subject_folding.py``)."""
    if "=?" not in value and _fits(name, value) and value == value.strip(" "):
        return f"{name}: {value}{_CRLF}"
    return f"{name}: " + _encoded_raw(name, value).replace("\n", _CRLF) + _CRLF


def _mailbox(name: str, address: Address) -> str:
    display = address.display_name
    if not display.strip():
        return f"{name}: {address.addr_spec}{_CRLF}"
    if display.isascii():
        value = formataddr((display, address.addr_spec))  # a quoted-string when the name has specials
        if len(name) + 2 + len(value) <= _MAX_LINE:
            return f"{name}: {value}{_CRLF}"  # not folded: folding could split the quoted-string
    # Non-ASCII (or huge) display names: RFC 2047 encoded-words, folded between words.
    words = Header(display, "utf-8", header_name=name).encode(linesep=_CRLF)
    return f"{name}: {words} <{address.addr_spec}>{_CRLF}"


def _custom(name: str, value: str) -> str:
    if value.isascii() and ("=?" not in value or name.lower() in ALLOWED_OVERRIDES):
        return f"{name}: {value}{_CRLF}"  # verbatim: URIs must not be folded into encoded-words
    return f"{name}: " + _encoded_raw(name, value).replace("\n", _CRLF) + _CRLF


def _body(text: str) -> tuple[str, bytes]:
    """``(Content-Transfer-Encoding, CRLF body)`` of a UTF-8 text part, 7-bit clean.

    The email package's choice: ``7bit`` for ASCII text with short lines,
    else quoted-printable, or base64 when that is shorter (mostly non-Latin
    text).  The encoders are :func:`binascii.b2a_qp` and
    :func:`email.base64mime.body_encode`.
    """
    lines = text.encode("utf-8").splitlines()
    if text.isascii() and max(map(len, lines), default=0) <= _FOLD_AT:
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    qp = binascii.b2a_qp(b"\n".join(lines) + b"\n", istext=True).replace(b"\n", b"\r\n")
    if not text.isascii():
        raw = b"\r\n".join(lines) + b"\r\n"
        if _base64_size(len(raw)) < len(qp):
            return "base64", base64mime.body_encode(raw, 76, _CRLF).encode("ascii")
    return "quoted-printable", qp


def _base64_size(n: int) -> int:
    """The length of :func:`email.base64mime.body_encode` of ``n`` bytes
    (lines of 76 characters, 57 bytes each, and CRLF)."""
    lines, rest = divmod(n, 57)
    return lines * 78 + (4 * -(-rest // 3) + 2 if rest else 0)


def _boundary(*parts: bytes) -> str:
    """A random multipart boundary that occurs in none of the (encoded) parts."""
    while True:
        boundary = f"==============={secrets.randbits(63):019d}=="
        raw = boundary.encode("ascii")
        if not any(raw in part for part in parts):
            return boundary


def message_data(
    *,
    message_id: str,
    from_: str,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    reply_to: str | None = None,
    domain: str = "localhost",
    date: datetime | None = None,
) -> bytes:
    """The message of :func:`build_message` as the CRLF bytes for ``DATA``
    (what the e-mail channel sends), without building an
    :class:`~email.message.EmailMessage` first.  Same arguments, same
    validation (:class:`ValidationError` on unsafe input)."""
    return _message_data(
        message_id=message_id,
        from_=from_,
        to=to,
        subject=subject,
        text=text,
        html=html,
        headers=headers,
        reply_to=reply_to,
        domain=domain,
        date=date,
    )[0]


def _message_data(
    *,
    message_id: str,
    from_: str,
    to: str,
    subject: str,
    text: str,
    html: str | None,
    headers: Mapping[str, str] | None,
    reply_to: str | None,
    domain: str,
    date: datetime | None,
) -> tuple[bytes, Address]:
    """The bytes and the parsed recipient (for ``RCPT TO``)."""
    sender, recipient, reply, custom, when = _validated(
        message_id=message_id,
        from_=from_,
        to=to,
        subject=subject,
        text=text,
        html=html,
        headers=headers,
        reply_to=reply_to,
        domain=domain,
        date=date,
    )
    # The header fields in the order the email package writes them.
    fields = [
        f"Message-ID: <{message_id}@{domain}>{_CRLF}",
        f"Date: {format_datetime(when)}{_CRLF}",
        _mailbox("From", sender),
        _mailbox("To", recipient),
    ]
    if reply is not None:
        fields.append(_mailbox("Reply-To", reply))
    fields.append(_unstructured("Subject", subject))
    fields.append(f"X-Ecrm-Message: {message_id}{_CRLF}")
    fields.extend(_custom(name, value) for name, value in custom)
    cte, body = _body(text)
    if html is None:
        fields.append(f'Content-Type: text/plain; charset="utf-8"{_CRLF}')
        fields.append(f"Content-Transfer-Encoding: {cte}{_CRLF}")
        fields.append(f"MIME-Version: 1.0{_CRLF}{_CRLF}")
        return "".join(fields).encode("ascii") + body, recipient
    html_cte, html_body = _body(html)
    boundary = _boundary(body, html_body)
    fields.append(f"MIME-Version: 1.0{_CRLF}")
    fields.append(f'Content-Type: multipart/alternative;{_CRLF} boundary="{boundary}"{_CRLF}{_CRLF}')
    fields.append(f"--{boundary}{_CRLF}")
    fields.append(f'Content-Type: text/plain; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}{_CRLF}')
    between = (
        f"{_CRLF}--{boundary}{_CRLF}"
        f'Content-Type: text/html; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {html_cte}{_CRLF}{_CRLF}'
    )
    end = f"{_CRLF}--{boundary}--{_CRLF}"
    return b"".join(
        ("".join(fields).encode("ascii"), body, between.encode("ascii"), html_body, end.encode("ascii"))
    ), recipient


def build_message(
    *,
    message_id: str,
    from_: str,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    reply_to: str | None = None,
    domain: str = "localhost",
    date: datetime | None = None,
) -> EmailMessage:
    """Build the message (``multipart/alternative`` text + HTML, or text only).

    ``message_id`` is the stable ecrm message uid: the header becomes
    ``Message-ID: <{message_id}@{domain}>`` (so a retry carries the same id)
    and ``X-Ecrm-Message: {message_id}`` (so a bounce quoting the original
    can be matched).  Raises :class:`ValidationError` on unsafe input.

    The message is :func:`message_data` parsed back by the email package,
    so ``message_bytes(build_message(...))`` are the bytes the channel sends.
    """
    data = message_data(
        message_id=message_id,
        from_=from_,
        to=to,
        subject=subject,
        text=text,
        html=html,
        headers=headers,
        reply_to=reply_to,
        domain=domain,
        date=date,
    )
    return cast(EmailMessage, BytesParser(policy=_POLICY).parsebytes(data))


def message_bytes(msg: EmailMessage) -> bytes:
    """The message as bytes for ``DATA`` (policy SMTP: CRLF line endings)."""
    return msg.as_bytes(policy=_POLICY)
