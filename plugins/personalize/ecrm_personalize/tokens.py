"""Signed visitor cookies and decision ids.

Both are HMAC-SHA256 MACs made with the CRM's secret (``CRM(secret=)`` /
``ECRM_SECRET``, rotation included) through the core's public
:attr:`CRM.signer <ecrm_core.CRM.signer>`; the MAC covers the **workspace**,
so a token made for one workspace is refused in every other.

* visitor cookie: ``<visitor id>.<expiry (unix seconds, base 36)>.<mac>``;
  an expired, tampered, truncated or other-workspace cookie is refused, and
  the caller then starts a *new* visitor — a forged cookie never maps to
  anyone's history.
* decision id: ``<uid>.<payload>.<mac>`` where payload is base64url JSON
  (placement, group, segment, alternatives shown, who): deciding writes
  nothing; an outcome verifies the id and needs no lookup.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["COOKIE_NAME", "DecisionToken", "decision_id", "issue_visitor", "read_decision", "verify_visitor"]

#: the cookie the HTTP routes read and set
COOKIE_NAME = "ecrm_visitor"
#: how long a visitor cookie stays valid (seconds): 400 days, the browsers' cap
VISITOR_MAX_AGE = 400 * 86400
_VISITOR_PURPOSE = "personalize.visitor"
_DECISION_PURPOSE = "personalize.decision"
_VID = re.compile(r"^v[A-Za-z0-9_-]{22}$")
_UID = re.compile(r"^[A-Za-z0-9_-]{16}$")
_MAC = re.compile(r"^[a-z2-7]{26}$")  # 16 bytes as base32, unpadded
_EXP = re.compile(r"^[0-9a-z]{1,12}$")


def _mac(crm: CRM, purpose: str, data: str) -> str:
    return str(crm.signer.mac(purpose, f"{crm.workspace}|{data}", size=16))


def _check(crm: CRM, purpose: str, data: str, mac: str) -> bool:
    return bool(crm.signer.check_mac(purpose, f"{crm.workspace}|{data}", mac))


def issue_visitor(crm: CRM, visitor_id: str | None = None, *, max_age: int = VISITOR_MAX_AGE) -> str:
    """A signed cookie value for a new visitor (or for ``visitor_id``), valid ``max_age`` seconds (by the CRM's clock)."""
    vid = visitor_id if visitor_id is not None else "v" + secrets.token_urlsafe(17)[:22]
    if not _VID.match(vid):
        raise ValueError("not a visitor id made by issue_visitor")
    expires = _b36(int(crm.now().timestamp()) + int(max_age))
    data = f"{vid}.{expires}"
    return f"{data}.{_mac(crm, _VISITOR_PURPOSE, data)}"


def verify_visitor(crm: CRM, cookie: Any) -> str | None:
    """The visitor id of a valid cookie of this workspace; ``None`` for anything else
    (missing, malformed, tampered, expired, signed for another workspace or with an unknown key)."""
    if not isinstance(cookie, str) or not 0 < len(cookie) <= 128:
        return None
    parts = cookie.split(".")
    if len(parts) != 3:
        return None
    vid, expires, mac = parts
    if not _VID.match(vid) or not _EXP.match(expires) or not _MAC.match(mac):
        return None
    if not _check(crm, _VISITOR_PURPOSE, f"{vid}.{expires}", mac):
        return None
    if int(expires, 36) <= crm.now().timestamp():
        return None
    return vid


class DecisionToken:
    """The verified content of a decision id."""

    __slots__ = ("alternatives", "customer_id", "group", "placement", "segment", "uid", "visitor")

    def __init__(self, uid: str, data: Mapping[str, Any]) -> None:
        self.uid = uid
        self.placement: str = str(data["p"])
        self.group: str = str(data["g"])
        self.segment: str = str(data["s"])
        self.alternatives: tuple[str, ...] = tuple(str(a) for a in data.get("a", ()))
        cid = data.get("c")
        self.customer_id: int | None = cid if isinstance(cid, int) and not isinstance(cid, bool) else None
        v = data.get("v")
        self.visitor: str | None = v if isinstance(v, str) else None


def decision_id(
    crm: CRM,
    *,
    placement: str,
    group: str,
    segment: str,
    alternatives: tuple[str, ...],
    customer_id: int | None,
    visitor: str | None,
) -> str:
    uid = secrets.token_urlsafe(12)
    payload: dict[str, Any] = {"p": placement, "g": group, "s": segment}
    if alternatives:
        payload["a"] = list(alternatives)
    if customer_id is not None:
        payload["c"] = customer_id
    if visitor is not None:
        payload["v"] = visitor
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    data = f"{uid}.{body}"
    return f"{data}.{_mac(crm, _DECISION_PURPOSE, data)}"


def read_decision(crm: CRM, token: Any) -> DecisionToken | None:
    """The verified content of a decision id of this workspace, else ``None``."""
    if not isinstance(token, str) or not 0 < len(token) <= 4096:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    uid, body, mac = parts
    if not _UID.match(uid) or not _MAC.match(mac) or not body:
        return None
    if not _check(crm, _DECISION_PURPOSE, f"{uid}.{body}", mac):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return DecisionToken(uid, data)
    except (ValueError, KeyError, TypeError):
        return None


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
