"""Build the RFC 5322 / MIME message of one e-mail, safely.

Everything is done by the standard library's :mod:`email` package
(:class:`~email.message.EmailMessage` with :data:`email.policy.SMTP`): this
module only *validates* what goes into the headers, so that no caller input
can add, remove or rewrite a header.

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

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email import policy as email_policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from ecrm_core.errors import ValidationError

__all__ = [
    "PROTECTED_HEADERS",
    "ALLOWED_OVERRIDES",
    "build_message",
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
_MAX_LINE = 998

# SMTP line endings; 7-bit transfer encodings (quoted-printable/base64 for
# non-ASCII parts, so no 8BITMIME is needed); headers stored raw (the
# verbatim List-Unsubscribe, the pre-encoded ones) are not refolded.
_POLICY = email_policy.SMTP.clone(cte_type="7bit", refold_source="none")


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
    """
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
    sender = parse_mailbox("from", from_)
    recipient = parse_mailbox("to", to)
    reply = parse_mailbox("reply_to", reply_to) if reply_to is not None else None
    _check_text("subject", subject, what="subject")
    if not isinstance(text, str):
        raise ValidationError("text", text, "must be a string", "pass the plain-text part as text")
    if html is not None and not isinstance(html, str):
        raise ValidationError("html", html, "must be a string or None", "pass the HTML part as text")
    custom = _check_custom_headers(headers or {})
    when = date if date is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise ValidationError("date", date, "is a naive datetime", "pass an aware datetime (e.g. in UTC)")

    msg = EmailMessage(policy=_POLICY)
    msg["Message-ID"] = f"<{message_id}@{domain}>"
    msg["Date"] = when
    msg["From"] = sender
    msg["To"] = recipient
    if reply is not None:
        msg["Reply-To"] = reply
    if "=?" in subject:
        msg.set_raw("Subject", _encoded_raw("Subject", subject))
    else:
        msg["Subject"] = subject
    msg.set_raw("X-Ecrm-Message", message_id)
    for name, value in custom:
        if value.isascii() and ("=?" not in value or name.lower() in ALLOWED_OVERRIDES):
            msg.set_raw(name, value)  # verbatim: URIs must not be folded into encoded-words
        else:
            msg.set_raw(name, _encoded_raw(name, value))
    msg.set_content(text, charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def message_bytes(msg: EmailMessage) -> bytes:
    """The message as bytes for ``DATA`` (policy SMTP: CRLF line endings)."""
    return msg.as_bytes(policy=_POLICY)
