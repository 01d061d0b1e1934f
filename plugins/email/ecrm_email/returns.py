"""Per-message signed return addresses (VERP): how mail that comes back proves
which message it is about.

Every message leaves with its own envelope sender (``MAIL FROM``)::

    bounces+<message id>.<day>.<mac>@shop.example

built from ``bounce_address`` (``bounces@shop.example``); a DSN is sent to
that address, and a feedback-loop (ARF) report quotes it as the original's
``Return-Path``.  With ``unsubscribe_mailto`` set, the ``mailto:`` target of
``List-Unsubscribe`` is built the same way (``unsubscribe+<…>@shop.example``).

``<mac>`` is an HMAC-SHA256 (truncated to 80 bits, base32) over the kind
(``return`` or ``unsubscribe``), the message id and ``<day>`` (days since
1970, base 36), keyed with the CRM's signing secret (``CRM(secret=…)``, the
key of every signed link; the last of several keys signs, all verify).  It
is lower-case (a relay that folds the local part's case changes nothing) and
the local part stays within RFC 5321's 64 characters for a bounce mailbox of
up to 11 characters.  A token older than ``max_age`` (the channel's
``link_max_age_days``) is refused.

>>> from ecrm_core.signing import Signer
>>> returns = ReturnAddresses(Signer("a-long-enough-test-secret"), "bounces@shop.example")
>>> address = returns.return_path("0123456789abcdef0123456789abcdef", now=0.0)
>>> address.startswith("bounces+0123456789abcdef0123456789abcdef.0.")
True
>>> returns.verify(address, now=0.0)
ReturnToken(kind='return', message_id='0123456789abcdef0123456789abcdef')
>>> returns.verify(address.replace("bounces+0", "bounces+1"), now=0.0) is None
True
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any, Literal

from attrs import frozen
from ecrm_core.errors import ValidationError

__all__ = ["ReturnAddresses", "ReturnToken", "TokenKind", "return_addresses"]

TokenKind = Literal["return", "unsubscribe"]
_KINDS: tuple[TokenKind, ...] = ("return", "unsubscribe")
_DAY = 86400
_MAC_BYTES = 10  # 80 bits: 2**79 forged mails on average to hit one message
_ID = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_TOKEN = re.compile(r"(?P<mid>[A-Za-z0-9_.-]{1,200})\.(?P<day>[0-9a-z]{1,8})\.(?P<mac>[a-z2-7]{16})")


@frozen
class ReturnToken:
    """What a verified address proves: which message, and for what."""

    kind: TokenKind
    message_id: str


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _checked_signer(signer: Any) -> Any:
    # ecrm_core.signing.Signer's tokens (~100 characters, mixed case) do not
    # fit an address's local part: the short MACs of Signer.mac do.
    if signer is None or not callable(getattr(signer, "mac", None)):
        raise ValidationError("secret", "***", "the CRM has no signer", "configure CRM(secret=...) or ECRM_SECRET")
    return signer


def _mailbox(field: str, value: Any) -> tuple[str, str]:
    address = parseaddr(str(value or ""))[1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or not address.isascii() or any(c in address for c in ' <>"\\'):
        raise ValidationError(field, value, "is not an ASCII e-mail address", "use e.g. 'bounces@shop.example'")
    return local, domain


class ReturnAddresses:
    """Build and verify the signed per-message addresses of one e-mail channel.

    :param signer: ``crm.signer``.
    :param bounce_address: the return mailbox (``bounce_address``, default
        the sender); the token is added after a ``+``.
    :param unsubscribe_mailto: the ``List-Unsubscribe`` mailbox, or ``None``
        (then no unsubscribe token is made, and none verifies).
    :param max_age: seconds a token stays valid (default 90 days).
    """

    def __init__(
        self,
        signer: Any,
        bounce_address: str,
        unsubscribe_mailto: str | None = None,
        *,
        max_age: float = 90 * _DAY,
    ) -> None:
        self._signer = _checked_signer(signer)
        self.bounce = _mailbox("channels.email.bounce_address", bounce_address)
        self.unsubscribe = (
            _mailbox("channels.email.unsubscribe_mailto", unsubscribe_mailto) if unsubscribe_mailto else None
        )
        self.max_days = int(max_age // _DAY) + 1

    @classmethod
    def from_config(cls, signer: Any, config: Mapping[str, Any]) -> ReturnAddresses:
        """From the e-mail channel's settings (``bounce_address``, else the
        address of ``from``; ``unsubscribe_mailto``; ``link_max_age_days``)."""
        bounce = config.get("bounce_address") or parseaddr(str(config.get("from") or ""))[1]
        return cls(
            signer,
            str(bounce),
            str(config["unsubscribe_mailto"]) if config.get("unsubscribe_mailto") else None,
            max_age=float(config.get("link_max_age_days", 90)) * _DAY,
        )

    def __repr__(self) -> str:
        unsub = f" unsubscribe={'@'.join(self.unsubscribe)!r}" if self.unsubscribe else ""
        return f"<ReturnAddresses bounce={'@'.join(self.bounce)!r}{unsub}>"

    # -- building --------------------------------------------------------
    def _mac(self, kind: str, message_id: str, day: str) -> str:
        return str(self._signer.mac(f"email-{kind}", f"{message_id}:{day}", size=_MAC_BYTES))

    def token(self, kind: TokenKind, message_id: str, *, now: float | None = None) -> str:
        """``<message id>.<day>.<mac>`` for ``kind``."""
        if kind not in _KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        if not isinstance(message_id, str) or len(message_id) > 200 or not _ID.fullmatch(message_id):
            raise ValidationError("message_id", message_id, "not a message id", "pass the Message.id being sent")
        day = _base36(int((time.time() if now is None else now) // _DAY))
        return f"{message_id}.{day}.{self._mac(kind, message_id, day)}"

    def return_path(self, message_id: str, *, now: float | None = None) -> str:
        """The envelope sender (``MAIL FROM``) of one message."""
        local, domain = self.bounce
        return f"{local}+{self.token('return', message_id, now=now)}@{domain}"

    def unsubscribe_address(self, message_id: str, *, now: float | None = None) -> str | None:
        """The ``List-Unsubscribe`` mailbox of one message (``None`` without
        ``unsubscribe_mailto``)."""
        if self.unsubscribe is None:
            return None
        local, domain = self.unsubscribe
        return f"{local}+{self.token('unsubscribe', message_id, now=now)}@{domain}"

    # -- verifying -------------------------------------------------------
    def check(self, address: str, *, now: float | None = None) -> ReturnToken | str:
        """The :class:`ReturnToken` an address carries, or the reason it
        carries none (for the log; it names no secret)."""
        if not isinstance(address, str) or len(address) > 400:
            return "not an address"
        local = address.strip().strip("<>").rpartition("@")[0]
        if "+" not in local:
            return "no return token in the address"
        found = _TOKEN.fullmatch(local.rpartition("+")[2].lower())
        if found is None:
            return "malformed return token"
        raw_mid = local.rpartition("+")[2][: len(found["mid"])]
        day_text, mac = found["day"], found["mac"]
        today = int((time.time() if now is None else now) // _DAY)
        day = int(day_text, 36)
        for kind in _KINDS:
            if kind == "unsubscribe" and self.unsubscribe is None:
                continue
            for mid in dict.fromkeys((raw_mid, found["mid"])):
                if self._signer.check_mac(f"email-{kind}", f"{mid}:{day_text}", mac):
                    if day > today + 1:
                        return "return token dated in the future"
                    if today - day > self.max_days:
                        return f"return token expired ({today - day} days old, limit {self.max_days})"
                    return ReturnToken(kind, mid)
        return "return token does not verify (tampered, another secret, or an unsubscribe token without unsubscribe_mailto)"

    def verify(self, address: str, *, now: float | None = None) -> ReturnToken | None:
        """The :class:`ReturnToken` of ``address``, or ``None``."""
        found = self.check(address, now=now)
        return found if isinstance(found, ReturnToken) else None


def return_addresses(crm: Any, channel: str = "email") -> ReturnAddresses:
    """The :class:`ReturnAddresses` of a CRM's e-mail channel (from its
    settings and ``crm.signer``)."""
    return ReturnAddresses.from_config(crm.signer, crm.channels.config(channel))
