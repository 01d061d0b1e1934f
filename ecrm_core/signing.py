"""Signed, expiring tokens for public links (unsubscribe, click, open…).

Built on :mod:`itsdangerous` (HMAC-SHA256 with a per-purpose salt and a
timestamp).  The CRM's secret comes from ``CRM(secret=...)`` or the
``ECRM_SECRET`` environment variable; a list of secrets rotates keys (the
*last* one signs, all of them verify).  The secret is never logged.

>>> signer = Signer(["old-secret", "new-secret"])
>>> token = signer.sign("unsubscribe", {"m": "msg-1"})
>>> signer.verify("unsubscribe", token, max_age=3600)
{'m': 'msg-1'}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .channels import InboundRejected
from .errors import EcrmError

__all__ = ["Signer", "MissingSecret", "secret_from_env"]


class MissingSecret(EcrmError):
    """Signing was needed but no secret is configured."""

    def __init__(self) -> None:
        super().__init__(
            "no signing secret configured: pass CRM(secret=...) or set ECRM_SECRET to a long random string "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(48))"); '
            "public links (unsubscribe, click, open) cannot be signed without one"
        )


def secret_from_env() -> list[str] | None:
    value = os.environ.get("ECRM_SECRET")
    if not value:
        return None
    return [s for s in value.split(",") if s]


class Signer:
    """Sign and verify JSON-able payloads for one named purpose each."""

    def __init__(self, secrets: str | bytes | Sequence[str | bytes]) -> None:
        keys = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
        if not keys or any(len(k) < 16 for k in keys):
            raise ValueError("signing secrets must be at least 16 characters long")
        self._keys: Any = keys
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:  # never show the keys
        return f"<Signer keys={len(self._keys)}>"

    def _serializer(self, purpose: str) -> Any:
        s = self._cache.get(purpose)
        if s is None:
            from itsdangerous import URLSafeTimedSerializer

            s = URLSafeTimedSerializer(self._keys, salt=f"ecrm:{purpose}", signer_kwargs={"digest_method": _sha256()})
            self._cache[purpose] = s
        return s

    def sign(self, purpose: str, payload: Any) -> str:
        """A URL-safe token for ``payload`` (JSON data), bound to ``purpose``."""
        token: str = self._serializer(purpose).dumps(payload)
        return token

    def mac(self, purpose: str, data: str, *, size: int = 10) -> str:
        """A short MAC of ``data`` for ``purpose``: ``size`` bytes of
        HMAC-SHA256 with the newest secret, as lower-case base32 (16
        characters for the default 10 bytes, 80 bits).

        For places a :meth:`sign` token does not fit, such as the local part
        of an e-mail address (64 characters, case-insensitive); check it with
        :meth:`check_mac`, which accepts every configured secret, so rotating
        secrets keeps older MACs valid.
        """
        return self._mac(self._keys[-1], purpose, data, size)

    def check_mac(self, purpose: str, data: str, mac: str) -> bool:
        """Whether ``mac`` is :meth:`mac` of ``data`` for ``purpose`` under
        any configured secret (compared in constant time)."""
        import hmac

        if not isinstance(mac, str) or not mac or len(mac) > 128:
            return False
        size = len(mac) * 5 // 8
        return any(hmac.compare_digest(self._mac(k, purpose, data, size), mac.lower()) for k in self._keys)

    @staticmethod
    def _mac(key: str | bytes, purpose: str, data: str, size: int) -> str:
        import base64
        import hmac

        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        digest = hmac.new(raw, f"ecrm:{purpose}:{data}".encode(), _sha256()).digest()
        return base64.b32encode(digest[:size]).decode("ascii").rstrip("=").lower()

    def verify(self, purpose: str, token: str, *, max_age: float | None = None) -> Any:
        """The payload of a token signed for ``purpose``.

        Raises :class:`~ecrm_core.channels.InboundRejected` (403) for a
        tampered token or one signed for another purpose, and (410) for one
        older than ``max_age`` seconds.
        """
        from itsdangerous import BadSignature, SignatureExpired

        if not isinstance(token, str) or not token or len(token) > 4096:
            raise InboundRejected("missing or malformed token", status=400)
        try:
            return self._serializer(purpose).loads(token, max_age=max_age)
        except SignatureExpired:
            raise InboundRejected("this link has expired", status=410) from None
        except BadSignature:
            raise InboundRejected("invalid link signature", status=403) from None


def _sha256() -> Any:
    import hashlib

    return hashlib.sha256
