"""Authentication (API keys in ``Authorization``) and the scope guard.

Every route is guarded, fail-closed: a handler declares the scope it needs
with ``opt={"scope": "read"}`` (or ``"write"``, ``"ingest"``, ``"admin"``),
or declares itself public with ``opt={"public": "why"}`` (a reason, shown
in the route table; e.g. signed links that carry their own proof), or
``opt={"write_key": "why"}`` for a route whose handler authenticates a
write key sent in the body (analytics.js; rate-limited per address).  A
handler that declares neither is refused when the app is built, so a
plugin cannot add an unguarded route by forgetting.

Credentials: ``Authorization: Bearer <token>``, or ``Authorization: Basic``
with the token as user name and an empty password (how Segment's and
RudderStack's SDKs send their *write key*).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from .keys import SCOPES, ApiKey, Keys

if TYPE_CHECKING:  # pragma: no cover
    from litestar.handlers.base import BaseRouteHandler

__all__ = ["KeyAuthMiddleware", "require_scope", "credential", "route_policy"]


def credential(authorization: str | None) -> str | None:
    """The token in an ``Authorization`` header value, or ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return value
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


class KeyAuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every request and enforces the route's scope, fail-closed.

    The route's policy (:func:`route_policy`) decides: a ``public`` route is
    passed through untouched; any other needs a key, put in
    ``request.auth``, that has the route's scope.  A missing, malformed,
    unknown, revoked or expired key is a 401 problem (the message does not
    say which, so keys cannot be probed); a key without the scope is a 403.

    The scope is checked here rather than in a Litestar guard: Litestar
    copies the route handler object for every guard call, which costs more
    than the check itself on every request.
    """

    def __init__(self, app: Any, keys: Keys) -> None:
        super().__init__(app, exclude_from_auth_key="public")
        self.keys = keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            kind, value = route_policy(scope["route_handler"])
            if kind == "scope":
                key = await self.key_for(scope)
                if not key.allows(value):
                    raise PermissionDeniedException(
                        f"this API key lacks the {value!r} scope (it has: {', '.join(sorted(key.scopes))}); "
                        f"use a key with {value!r}, or create one with `ecrm keys create --scope {value}`"
                    )
                scope["user"] = scope["auth"] = key
        await self.app(scope, receive, send)

    async def key_for(self, scope: Any) -> ApiKey:
        """The active key the request presents; raises the 401."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        token = credential(authorization)
        if token is None:
            raise NotAuthorizedException(
                "no API key: send `Authorization: Bearer <key>` (or Basic auth with the key as user name); "
                "create one with `ecrm keys create`"
            )
        known, found = self.keys.cached(token)
        if not known:
            found = await anyio.to_thread.run_sync(self.keys.authenticate, token)
        if found is None:
            raise NotAuthorizedException("the API key is not valid (unknown, revoked or expired)")
        return found

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        found = await self.key_for(connection.scope)
        return AuthenticationResult(user=found, auth=found)


def route_policy(handler: BaseRouteHandler) -> tuple[str, str]:
    """``("scope", name)`` or ``("public", reason)`` for a handler; raises if it has neither."""
    opt = handler.opt or {}
    if getattr(handler, "http_methods", None) == {"OPTIONS"} and handler.handler_name == "options_handler":
        return "public", "Litestar's automatic OPTIONS answer: the allowed methods, no data"
    if opt.get("public"):
        return "public", str(opt["public"])
    if opt.get("write_key"):
        # No key in the headers for the middleware: the handler authenticates
        # the write key in the body itself (analytics.js, routes/browser.py).
        # Rate-limited per client address (not excluded like "public").
        return "public", str(opt["write_key"])
    scope = opt.get("scope")
    if scope in SCOPES:
        return "scope", str(scope)
    raise ValueError(
        f"route handler {handler.handler_name!r} ({', '.join(sorted(getattr(handler, 'paths', [])))}) declares "
        f"no access policy: give it opt={{'scope': one of {SCOPES}}} or opt={{'public': 'why it is public'}}"
    )


async def require_scope(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A guard doing what :class:`KeyAuthMiddleware` enforces on every route of
    the app (for a host's own router that does not use the middleware): the
    request's key must have the handler's scope."""
    kind, value = route_policy(handler)
    if kind == "public":
        return
    key = connection.scope.get("auth")
    if not isinstance(key, ApiKey):
        raise NotAuthorizedException("no API key")
    if not key.allows(value):
        raise PermissionDeniedException(
            f"this API key lacks the {value!r} scope (it has: {', '.join(sorted(key.scopes))}); "
            f"use a key with {value!r}, or create one with `ecrm keys create --scope {value}`"
        )
