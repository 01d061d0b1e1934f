"""Read a mail delivered to the bounce address: what it *claims*, within limits.

:func:`parse_inbound_mail` parses the bytes with the standard library's
:mod:`email` parser, bounded by :class:`MailLimits` (size, number and
nesting depth of MIME parts, header sizes, seconds), and returns an
:class:`InboundReport`: the kind of mail (an RFC 3464 DSN, an RFC 5965 ARF
complaint, a non-standard bounce recognised by ``flufl.bounce``, or plain
mail), the recipients it reports as failed or complained about, and the
``Return-Path`` of the original it quotes.

Nothing here is trusted: a report is only a claim.  :mod:`ecrm_email.mailserver`
accepts a claim only for the recipient of a message ecrm sent, proven by a
signed return address (:mod:`ecrm_email.returns`).  This module touches no
database, so it can run in a thread or process pool, off the SMTP server's
event loop.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.feedparser import BytesFeedParser
from email.message import Message as MimeMessage
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Any, Literal

from attrs import field, frozen

__all__ = ["MailLimits", "MailRejected", "Claim", "InboundReport", "parse_inbound_mail", "DEFAULT_LIMITS"]

log = logging.getLogger("ecrm.email.inbound")

ReportKind = Literal["dsn", "arf", "bounce", "mail"]
ClaimType = Literal["bounced", "soft_bounced", "complained"]

_ID = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")
_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}")
_CHUNK = 64 * 1024
_FIELD = 1000  # characters of a header value this module looks at


def _positive(kind: type, name: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or (kind is int and not isinstance(number, int)) or not number > 0:
            raise ValueError(f"MailLimits.{name}: {value!r} is not a positive number")

    return check


@frozen(kw_only=True)
class MailLimits:
    """What one inbound mail may cost.  Larger or more complex mail is refused
    with the SMTP reply of :class:`MailRejected` (``552``; ``451`` for time).

    ``max_bytes``: the whole mail (also the SMTP server's ``SIZE``);
    ``max_parts``: MIME parts, counting each header block of a
    ``message/delivery-status`` part; ``max_depth``: nesting of multiparts
    and quoted messages; ``max_header_bytes``: one header field;
    ``max_headers``: header fields of one part; ``max_seconds``: parsing
    time; ``max_recipients``: recipients read from one report;
    ``max_heuristic_bytes``: the largest mail searched for a non-standard
    bounce (``flufl.bounce`` reads every line; a larger one that is neither
    a DSN nor an ARF report is read as plain mail).
    """

    max_bytes: int = field(default=4 * 1024 * 1024, validator=_positive(int, "max_bytes"))
    max_parts: int = field(default=200, validator=_positive(int, "max_parts"))
    max_depth: int = field(default=10, validator=_positive(int, "max_depth"))
    max_header_bytes: int = field(default=8 * 1024, validator=_positive(int, "max_header_bytes"))
    max_headers: int = field(default=500, validator=_positive(int, "max_headers"))
    max_seconds: float = field(default=5.0, validator=_positive(float, "max_seconds"))
    max_recipients: int = field(default=50, validator=_positive(int, "max_recipients"))
    max_heuristic_bytes: int = field(default=128 * 1024, validator=_positive(int, "max_heuristic_bytes"))


DEFAULT_LIMITS = MailLimits()


class MailRejected(Exception):
    """The mail exceeds a :class:`MailLimits` limit; ``reply`` is the SMTP
    answer (``"552 5.3.4 …"``), ``reason`` names the limit."""

    def __init__(self, reason: str, *, code: str = "552 5.3.4") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.reply = f"{code} {reason}"

    def __reduce__(self) -> Any:  # raised in a process pool: keep the code
        return (_rejected, (self.reason, self.code))


def _rejected(reason: str, code: str) -> MailRejected:
    return MailRejected(reason, code=code)


@frozen(kw_only=True)
class Claim:
    """One failed or complaining recipient a report names (``addresses``: the
    original and the final recipient, lower-case)."""

    type: ClaimType
    addresses: tuple[str, ...]
    detail: str
    source: Literal["dsn", "arf", "bounce"]


@frozen(kw_only=True)
class InboundReport:
    """What a mail says (see :func:`parse_inbound_mail`); nothing of it is verified."""

    report_id: str
    kind: ReportKind
    claims: tuple[Claim, ...] = ()
    #: ``Return-Path`` values of the quoted original (where a feedback loop
    #: shows the signed return address).
    return_paths: tuple[str, ...] = ()
    #: The ecrm message id the quoted original names (informational only:
    #: anyone can write it).
    quoted_message_id: str | None = None
    sender: str | None = None
    occurred_at: datetime | None = None


# ---------------------------------------------------------------------------
# Bounded parsing
# ---------------------------------------------------------------------------


def _bounded_factory(limits: MailLimits, deadline: float) -> Any:
    """A message class for the feed parser that counts the parts it creates
    and the depth at which each is attached, and enforces the limits there
    (the parser creates and attaches a part before reading its content)."""
    state = {"parts": 0}

    class Part(MimeMessage):
        _depth = 0

        def __init__(self, policy: Any = compat32) -> None:
            super().__init__(policy)
            state["parts"] += 1
            if state["parts"] > limits.max_parts:
                raise MailRejected(f"more than {limits.max_parts} MIME parts (max_parts)")
            if time.monotonic() > deadline:
                raise MailRejected(f"parsing took more than {limits.max_seconds:g} s (max_seconds)", code="451 4.3.2")

        def set_raw(self, name: str, value: Any) -> None:
            # the parser stores each header here before it reads any of them
            # (the Content-Type parameters it reads next cost quadratic time)
            if len(name) + len(value) > limits.max_header_bytes:
                raise MailRejected(
                    f"the header field {name[:40]!r} is longer than {limits.max_header_bytes} bytes (max_header_bytes)"
                )
            if len(self) >= limits.max_headers:
                raise MailRejected(f"a part has more than {limits.max_headers} header fields (max_headers)")
            if time.monotonic() > deadline:
                raise MailRejected(f"parsing took more than {limits.max_seconds:g} s (max_seconds)", code="451 4.3.2")
            super().set_raw(name, value)

        def attach(self, payload: Any) -> None:
            depth = self._depth + 1
            if depth > limits.max_depth:
                raise MailRejected(f"MIME parts nested deeper than {limits.max_depth} (max_depth)")
            if isinstance(payload, Part):
                payload._depth = depth
            super().attach(payload)

    return Part, state


def _parse(raw: bytes, limits: MailLimits) -> MimeMessage:
    started = time.monotonic()
    deadline = started + limits.max_seconds
    factory, state = _bounded_factory(limits, deadline)
    parser = BytesFeedParser(factory, policy=compat32)
    state["parts"] = 0  # the parser made one to probe the factory
    view = memoryview(raw)
    for offset in range(0, len(raw), _CHUNK):
        parser.feed(bytes(view[offset : offset + _CHUNK]))
        if time.monotonic() > deadline:
            raise MailRejected(f"parsing took more than {limits.max_seconds:g} s (max_seconds)", code="451 4.3.2")
    msg: MimeMessage = parser.close()
    return msg


def _walk(msg: MimeMessage) -> Iterator[MimeMessage]:
    """Every part, iteratively (depth and count are bounded by the parser)."""
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, MimeMessage)]))


# ---------------------------------------------------------------------------
# Reading the report
# ---------------------------------------------------------------------------


def _header(part: MimeMessage, name: str) -> str:
    value = part.get(name)
    return " ".join(str(value)[:_FIELD].split()) if value is not None else ""


def _report_id(msg: MimeMessage, raw: bytes) -> str:
    value = _header(msg, "Message-ID").strip("<> ")
    if value and len(value) <= 500 and value.isascii() and value.isprintable() and " " not in value:
        return value
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _occurred(msg: MimeMessage) -> datetime | None:
    try:
        value = parsedate_to_datetime(_header(msg, "Date"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if value is None:
        return None
    # "-0000" (RFC 5322: UTC, local zone unknown) parses as naive: it is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _address(value: str) -> str | None:
    """A bare, lower-case address from a header value (``rfc822; a@b`` too)."""
    if ";" in value:
        value = value.partition(";")[2]
    addr = parseaddr(value[:_FIELD])[1].strip()
    if not addr or "@" not in addr or len(addr) > 320 or any(c.isspace() or ord(c) < 32 for c in addr):
        return None
    return addr.lower()


def _header_block(part: MimeMessage) -> MimeMessage | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], MimeMessage) else None
    if isinstance(payload, str):
        return HeaderParser().parsestr(payload[:65536].lstrip("\r\n"), headersonly=True)
    return None


def _original(msg: MimeMessage) -> MimeMessage | None:
    """The headers of the message a report is about (its ``message/rfc822``
    or ``text/rfc822-headers`` part)."""
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype == "message/rfc822" and part is not msg:
            block = _header_block(part)
            if block is not None:
                return block
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(part.get_payload())
            return HeaderParser().parsestr(text[:65536].lstrip("\r\n"), headersonly=True)
    return None


def _quoted_message_id(original: MimeMessage | None) -> str | None:
    if original is None:
        return None
    value = _header(original, "X-Ecrm-Message")
    if _ID.match(value):
        return value
    mid = _header(original, "Message-ID").strip("<>")
    local = mid.rpartition("@")[0] if "@" in mid else ""
    return local if _ID.match(local) else None


def _return_paths(original: MimeMessage | None) -> tuple[str, ...]:
    if original is None:
        return ()
    found = (_address(str(v)[:_FIELD]) for v in original.get_all("Return-Path", [])[:5])
    return tuple(dict.fromkeys(a for a in found if a))


def _dsn_claims(msg: MimeMessage, limits: MailLimits) -> list[Claim]:
    """One claim per failed or delayed recipient of the ``message/delivery-status`` parts."""
    claims: list[Claim] = []
    for part in _walk(msg):
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        blocks = [b for b in part.get_payload() if isinstance(b, MimeMessage)]
        for block in blocks[1:]:  # the first block is about the message, the rest about recipients
            action = _header(block, "Action").lower()
            status = _header(block, "Status")
            code = _STATUS.match(status)
            if action == "failed":
                kind: ClaimType = "soft_bounced" if code is not None and code.group(1) == "4" else "bounced"
            elif action == "delayed":
                kind = "soft_bounced"
            else:  # delivered, relayed, expanded: nothing failed
                continue
            addresses = tuple(
                dict.fromkeys(
                    a for a in (_address(_header(block, h)) for h in ("Original-Recipient", "Final-Recipient")) if a
                )
            )
            if not addresses:
                continue
            detail = " ".join(x for x in (status, _header(block, "Diagnostic-Code")) if x)
            claims.append(Claim(type=kind, addresses=addresses, detail=detail[:1000] or action, source="dsn"))
            if len(claims) >= limits.max_recipients:
                return claims
    return claims


def _arf_claims(msg: MimeMessage, original: MimeMessage | None, limits: MailLimits) -> list[Claim]:
    fields = None
    for part in _walk(msg):
        if part.get_content_type() == "message/feedback-report":
            fields = _header_block(part)
            break
    if fields is None:
        return []
    if _header(fields, "Feedback-Type").lower() != "abuse":
        return []
    values = [str(v)[:_FIELD] for v in fields.get_all("Original-Rcpt-To", [])[: limits.max_recipients]]
    if not values and original is not None:
        values = [str(v)[:_FIELD] for v in original.get_all("To", [])[:5]]
    addresses = []
    for _name, addr in getaddresses(values):
        norm = _address(addr)
        if norm:
            addresses.append(norm)
    agent = _header(fields, "User-Agent")
    detail = ("abuse report" + (f" from {agent}" if agent else ""))[:1000]
    return [
        Claim(type="complained", addresses=(a,), detail=detail, source="arf")
        for a in list(dict.fromkeys(addresses))[: limits.max_recipients]
    ]


def _heuristic_claims(msg: MimeMessage, limits: MailLimits) -> list[Claim]:
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choked on a strange mail: not a bounce we understand
        log.info("flufl.bounce could not scan an inbound mail; read as plain mail")
        return []

    def decode(values: Any) -> list[str]:
        out = (_address(v.decode("ascii", "replace")) for v in values if isinstance(v, bytes) and b"@" in v)
        return sorted({a for a in out if a})

    hard = decode(permanent)
    soft = [a for a in decode(temporary) if a not in hard]
    claims = [Claim(type="bounced", addresses=(a,), detail="permanent failure", source="bounce") for a in hard]
    claims += [Claim(type="soft_bounced", addresses=(a,), detail="delayed", source="bounce") for a in soft]
    return claims[: limits.max_recipients]


def parse_inbound_mail(raw: bytes, *, limits: MailLimits = DEFAULT_LIMITS, heuristics: bool = True) -> InboundReport:
    """What a mail delivered to the bounce address claims (nothing verified).

    * an RFC 3464 DSN (``multipart/report; report-type=delivery-status``):
      ``bounced`` for each recipient whose ``Action`` is ``failed`` (a ``4.x.x``
      status makes it ``soft_bounced``), ``soft_bounced`` for ``delayed``;
    * an RFC 5965 ARF report with ``Feedback-Type: abuse``: ``complained``
      for ``Original-Rcpt-To`` (else the quoted original's ``To``);
    * a non-standard bounce that ``flufl.bounce`` recognises (kind
      ``bounce``), looked for only with ``heuristics`` (the mail server
      passes ``False`` unless the envelope carries a valid return token) and
      in mail of at most ``limits.max_heuristic_bytes``;
    * anything else: kind ``mail``, no claims (a person's mail, an auto-reply).

    Raises :class:`MailRejected` when the mail exceeds ``limits``.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if len(raw) > limits.max_bytes:
        raise MailRejected(f"the mail is {len(raw)} bytes, more than {limits.max_bytes} (max_bytes)")
    msg = _parse(raw, limits)
    original = _original(msg)
    common: dict[str, Any] = {
        "report_id": _report_id(msg, raw),
        "return_paths": _return_paths(original),
        "quoted_message_id": _quoted_message_id(original),
        "sender": _address(_header(msg, "From")),
        "occurred_at": _occurred(msg),
    }
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    has_status = any(p.get_content_type() == "message/delivery-status" for p in _walk(msg))
    if report_type == "feedback-report":
        return InboundReport(kind="arf", claims=tuple(_arf_claims(msg, original, limits)), **common)
    if report_type == "delivery-status" or has_status:
        return InboundReport(kind="dsn", claims=tuple(_dsn_claims(msg, limits)), **common)
    claims = _heuristic_claims(msg, limits) if heuristics and len(raw) <= limits.max_heuristic_bytes else []
    return InboundReport(kind="bounce" if claims else "mail", claims=tuple(claims), **common)
