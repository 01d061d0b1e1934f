"""Signed, expiring links for what comes back from an e-mail.

Every public link the e-mail channel puts in a message is a signed token
(HMAC-SHA256 through :class:`ecrm_core.signing.Signer`, i.e. itsdangerous,
with a timestamp), never a guessable id:

============  ==========================================  =======================
kind          URL                                         payload
============  ==========================================  =======================
unsubscribe   ``{base}/channels/email/unsubscribe/<t>``   message id, purpose
click         ``{base}/channels/email/click/<t>``         message id, target URL
open          ``{base}/channels/email/open/<t>``          message id
preferences   ``{base}/channels/email/preferences/<t>``   customer id, workspace
============  ==========================================  =======================

Each kind is signed for its own signer purpose (``email-unsubscribe``,
``email-click``…): a click token is not an unsubscribe token.  The click
target is *inside* the signed payload, so the redirect can only ever go to
the URL that was signed.

>>> from ecrm_core.signing import Signer
>>> links = Links(Signer("a-long-enough-test-secret"), "https://shop.example/crm")
>>> url = links.click_url(message_id="m1", url="https://shop.example/p/1")
>>> url.startswith("https://shop.example/crm/channels/email/click/")
True
>>> links.verify("click", url.rsplit("/", 1)[1])
{'message_id': 'm1', 'url': 'https://shop.example/p/1'}
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from ecrm_core.channels import InboundRejected
from ecrm_core.errors import ValidationError

__all__ = ["Links", "LinkKind", "KINDS", "check_target_url"]

LinkKind = Literal["unsubscribe", "click", "open", "preferences"]
#: The link kinds, each with its own signer purpose.
KINDS: tuple[LinkKind, ...] = ("unsubscribe", "click", "open", "preferences")

_MAX_URL = 2048
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _signer_purpose(kind: str) -> str:
    return f"email-{kind}"


def check_target_url(url: Any, field: str = "url") -> str:
    """``url`` if it is an absolute http(s) URL a click may redirect to, else
    a :class:`~ecrm_core.errors.ValidationError` naming ``field``."""
    fix = "use an absolute http:// or https:// URL, e.g. 'https://shop.example/p/1'"
    if not isinstance(url, str) or not url:
        raise ValidationError(field, url, "not a URL", fix)
    if len(url) > _MAX_URL:
        raise ValidationError(field, url, f"longer than {_MAX_URL} characters", "shorten the link")
    if _SPACE_OR_CONTROL.search(url):
        raise ValidationError(field, url, "contains spaces or control characters", "percent-encode them")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValidationError(field, url, "not a valid URL", fix) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise ValidationError(field, url, "only http(s) links can be tracked", fix)
    return url


def _check_base_url(base_url: Any) -> str:
    fix = "pass the public URL under which /channels/email/... is mounted, e.g. 'https://shop.example/crm'"
    if not isinstance(base_url, str) or not base_url:
        raise ValidationError("base_url", base_url, "missing", fix)
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("base_url", base_url, "not an absolute http(s) URL", fix)
    if parts.query or parts.fragment:
        raise ValidationError("base_url", base_url, "has a query or fragment", fix)
    return base_url.rstrip("/")


class Links:
    """Build and verify the e-mail channel's public links.

    :param signer: a :class:`ecrm_core.signing.Signer` (``crm.signer``).
    :param base_url: the public URL the HTTP layer mounts ``/channels/email/…``
        under (``"https://shop.example/crm"``).
    :param max_age: how long a link stays valid, in seconds (default 90
        days); an older one is rejected with status 410.
    """

    def __init__(self, signer: Any, base_url: str, *, max_age: float = 90 * 86400) -> None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
            raise ValidationError("max_age", max_age, "not a positive number of seconds", "use e.g. 90 * 86400")
        self.signer = signer
        self.base_url = _check_base_url(base_url)
        self.max_age = float(max_age)

    def __repr__(self) -> str:
        return f"<Links {self.base_url!r} max_age={self.max_age:g}s>"

    # -- building --------------------------------------------------------
    def route_url(self, kind: LinkKind, token: str) -> str:
        """The public URL of ``token`` for route ``kind``."""
        return f"{self.base_url}/channels/email/{kind}/{token}"

    def _url(self, kind: LinkKind, payload: dict[str, Any]) -> str:
        return self.route_url(kind, self.signer.sign(_signer_purpose(kind), payload))

    @staticmethod
    def _message_id(message_id: Any) -> str:
        if not isinstance(message_id, str) or not message_id or len(message_id) > 200:
            raise ValidationError("message_id", message_id, "not a message id", "pass the Message.id being sent")
        return message_id

    def unsubscribe_url(self, *, message_id: str, purpose: str | None) -> str:
        """The one-click unsubscribe link of a message (``List-Unsubscribe``).

        ``purpose`` is what the customer opts out of (the message's purpose),
        or ``None`` for every non-transactional e-mail.
        """
        if purpose is not None and (not isinstance(purpose, str) or not purpose):
            raise ValidationError(
                "purpose", purpose, "not a purpose name", "pass the message's purpose, e.g. 'marketing'"
            )
        return self._url("unsubscribe", {"m": self._message_id(message_id), "p": purpose})

    def click_url(self, *, message_id: str, url: str) -> str:
        """A tracked link that records a click and redirects to ``url``
        (http(s) only; the target is part of the signed payload)."""
        return self._url("click", {"m": self._message_id(message_id), "u": check_target_url(url)})

    def open_url(self, *, message_id: str) -> str:
        """The URL of the 1x1 open-tracking image of a message."""
        return self._url("open", {"m": self._message_id(message_id)})

    def preferences_url(self, *, customer_id: int, workspace: str) -> str:
        """The preference page of one customer (which kinds of mail they get)."""
        if isinstance(customer_id, bool) or not isinstance(customer_id, int) or customer_id < 1:
            raise ValidationError("customer_id", customer_id, "not a customer id", "pass Customer.id")
        if not isinstance(workspace, str) or not workspace:
            raise ValidationError("workspace", workspace, "not a workspace id", "pass crm.workspace")
        return self._url("preferences", {"c": customer_id, "w": workspace})

    # -- verifying -------------------------------------------------------
    def verify(self, kind: LinkKind, token: str) -> dict[str, Any]:
        """The payload of a token of ``kind``, with readable keys.

        ``unsubscribe`` → ``{"message_id", "purpose"}``; ``click`` →
        ``{"message_id", "url"}``; ``open`` → ``{"message_id"}``;
        ``preferences`` → ``{"customer_id", "workspace"}``.

        Raises :class:`~ecrm_core.channels.InboundRejected`: 403 for a tampered
        token or one of another kind, 410 for an expired one, 400 for a
        malformed one.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown link kind {kind!r}; use one of {', '.join(KINDS)}")
        data = self.signer.verify(_signer_purpose(kind), token, max_age=self.max_age)
        bad = InboundRejected(f"malformed {kind} link", status=400)
        if not isinstance(data, dict):
            raise bad
        try:
            if kind == "preferences":
                cid, ws = data["c"], data["w"]
                if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(ws, str) or not ws:
                    raise bad
                return {"customer_id": cid, "workspace": ws}
            mid = data["m"]
            if not isinstance(mid, str) or not mid:
                raise bad
            if kind == "unsubscribe":
                purpose = data["p"]
                if purpose is not None and (not isinstance(purpose, str) or not purpose):
                    raise bad
                return {"message_id": mid, "purpose": purpose}
            if kind == "click":
                try:
                    url = check_target_url(data["u"])
                except ValidationError:
                    raise bad from None
                return {"message_id": mid, "url": url}
            return {"message_id": mid}
        except KeyError:
            raise bad from None
