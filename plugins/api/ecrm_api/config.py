"""How the API app is set up: :class:`ApiConfig`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Literal

import attrs
from ecrm_core.errors import ValidationError

__all__ = ["ApiConfig", "DEFAULT_EVENT_KINDS"]

#: Segment "track" event names that become a core interaction kind (the
#: Segment e-commerce and lifecycle specs); any other name is stored as kind
#: ``event`` with the name in ``properties["event"]``.
DEFAULT_EVENT_KINDS: Mapping[str, str] = {
    "Order Completed": "purchase",
    "Order Refunded": "refund",
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Products Searched": "search",
    "Signed Up": "signup",
    "Signed In": "login",
    "Email Opened": "email_open",
    "Email Link Clicked": "click",
    "Unsubscribed": "unsubscribe",
}

RateUnit = Literal["second", "minute", "hour", "day"]


def _limit(value: tuple[str, int] | None) -> tuple[RateUnit, int] | None:
    if value is None:
        return None
    unit, count = value
    if unit not in ("second", "minute", "hour", "day") or not isinstance(count, int) or count < 1:
        raise ValidationError(
            "rate_limit", value, "not a rate", 'give (unit, count), e.g. ("second", 100), or None for no limit'
        )
    return unit, count  # type: ignore[return-value]


def _origins(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValidationError(
            "tracking_origins", value, "not a list", 'give a list of origins, e.g. ["https://www.example.com"]'
        )
    out: list[str] = []
    for origin in value:
        ok = isinstance(origin, str) and (
            origin == "*"
            or (
                origin.startswith(("http://", "https://"))
                and "/" not in origin.split("://", 1)[1]
                and origin.split("://", 1)[1] != ""
                and origin == origin.strip()
            )
        )
        if not ok:
            raise ValidationError(
                "tracking_origins",
                origin,
                "not an origin",
                'give scheme://host[:port] without a path, e.g. "https://www.example.com" (or "*" for any)',
            )
        out.append(origin.lower())
    return tuple(out)


def _public_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or value.endswith("/"):
        raise ValidationError(
            "tracking_public_url",
            value,
            "not a base URL",
            'give the URL browsers reach the API at, without a trailing slash, e.g. "https://crm.example.com"',
        )
    return value


def _secret(value: str | bytes | None) -> bytes:
    if value is None:
        value = os.environ.get("ECRM_API_SECRET") or secrets.token_bytes(32)
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) < 16:
        raise ValidationError("secret", "***", "too short", "use at least 16 random bytes (ECRM_API_SECRET)")
    return data


#: The choices of :attr:`ApiConfig.docs_assets`.
DOCS_ASSETS = ("auto", "bundled", "cdn")


@attrs.frozen
class ApiConfig:
    """Settings of :func:`ecrm_api.create_app` (all have defaults).

    :param path: where the API's routes sit inside the app (``""``: at the
        root).  To mount the app inside a host's ASGI app, leave it empty and
        mount the app at the host's path instead.
    :param max_body_bytes: request bodies larger than this get 413 before
        they are read (1 MiB).
    :param tracking_max_body_bytes: the same for the Segment-spec endpoints
        (500 KB per batch, as Segment's own API); gzip bodies are limited
        after decompression too.
    :param rate_limit: requests per key per time unit, e.g. ``("second", 100)``;
        ``None`` turns limiting off.  Counted per API key (per client address
        for requests without a key) in this process.
    :param secret: signs pagination cursors; default ``ECRM_API_SECRET`` or a
        random one per process (cursors then do not survive a restart).
    :param docs: serve the OpenAPI 3.1 document and the interactive docs.
    :param docs_assets: where the docs page's files come from.  ``"auto"``
        (default): Swagger UI from this app itself when the ``swagger-ui-py``
        package is installed (``pip install 'ecrm-api[docs]'``), so the page
        works offline and under a ``script-src 'self'`` policy; it is then
        the page at ``/docs`` and Scalar (from its CDN) moves to
        ``/docs/scalar``.  Without the package, or with ``"cdn"``: Scalar at
        ``/docs`` and Swagger UI at ``/docs/swagger``, both from jsDelivr.
        ``"bundled"``: like ``"auto"``, but an error when the package is
        missing.
    :param event_kinds: Segment ``track`` event names mapped to interaction
        kinds (default :data:`DEFAULT_EVENT_KINDS`).
    :param key_cache_seconds: how long an authenticated key is trusted
        before it is read again (a revocation by another process takes at
        most this long).
    :param future_tolerance: how far in the future a client timestamp may
        be (after clock-skew correction) before it is rejected.
    :param ingest_max_group: the tracking endpoints' group commit: at most
        this many messages (of any number of requests) are stored in one
        transaction (a larger request is a group alone).
    :param ingest_max_wait: how long (seconds) the group-commit writer,
        having work, may wait for requests that are still being read and
        parsed; 0 (default): a group is what queued up while the previous
        one was committed.
    :param tracking_sync: how the tracking routes (``/v1/*`` and the
        analytics.js routes) store.  ``False`` (default): the two-stage
        contract -- a 200 means the accepted messages are durably in the
        ingest inbox; the processor stores them shortly after (see
        ``docs/http/ingest.md``).  ``True``: the 200 comes once they are
        stored as customers and interactions, with per-message duplicates
        and conflicts in the answer (slower).  A request can ask for that
        itself with ``?sync=true``.
    :param ingest_processor: where the inbox is processed.  ``"thread"``
        (default): a thread of this server (single-process hosts; it also
        runs beside ``ecrm worker``).  ``"worker"``: only by the job
        ``ingest.process`` of ``ecrm worker`` (run at least one).
    :param ingest_max_depth: messages waiting in the inbox past which the
        tracking routes answer 503 with ``Retry-After`` (0: no limit).
    :param ingest_max_lag: seconds the oldest waiting message may wait
        before the tracking routes answer 503 (0: no limit).
    :param ingest_lock_timeout: how long (seconds) an inbox write waits for
        the database's lock before its requests get 503.
    :param ingest_retry_after: the ``Retry-After`` (seconds) of those 503s.
    :param tracking_origins: the web origins (``"https://www.example.com"``)
        whose pages may send events with Segment's analytics.js to the
        browser routes (``/v1/t``, ``/v1/p``… and the settings document):
        CORS is answered for them, on those routes only.  Empty (default):
        no CORS headers, so browsers refuse to send from any other origin.
        ``"*"`` allows every origin (the write key is public anyway).
    :param tracking_public_url: the URL browsers reach the API at (e.g.
        ``"https://crm.example.com"``, with the mount path if any), put in
        the settings document analytics.js fetches; default: taken from the
        request (its scheme, ``Host`` and mount path).
    :param gc_freeze: at startup (the app's lifespan), collect once and
        then :func:`gc.freeze` what exists: the modules, the app and the
        warm caches move to the collector's permanent generation, so a full
        collection, which otherwise walks all of them (tens of milliseconds
        at a time, stalling every request in flight), walks only what
        requests created since.  Once per process: nothing is done when
        something is frozen already (an earlier app, or the host's own
        ``gc.freeze()``).  ``True`` (default); turn it off for a host that
        manages the collector itself.
    """

    path: str = ""
    max_body_bytes: int = 1_048_576
    tracking_max_body_bytes: int = 512_000
    rate_limit: tuple[RateUnit, int] | None = attrs.field(default=("second", 200), converter=_limit)
    secret: bytes = attrs.field(default=None, converter=_secret, repr=False)
    docs: bool = True
    docs_assets: str = "auto"
    event_kinds: Mapping[str, str] = attrs.field(factory=lambda: dict(DEFAULT_EVENT_KINDS))
    key_cache_seconds: float = 2.0
    future_tolerance: timedelta = timedelta(days=1)
    ingest_max_group: int = 5000
    ingest_max_wait: float = 0.0
    tracking_sync: bool = False
    ingest_processor: str = "thread"
    ingest_max_depth: int = 2_000_000
    ingest_max_lag: float = 600.0
    ingest_lock_timeout: float = 5.0
    ingest_retry_after: int = 5
    tracking_origins: tuple[str, ...] = attrs.field(default=(), converter=_origins)
    tracking_public_url: str | None = attrs.field(default=None, converter=_public_url)
    gc_freeze: bool = True

    def __attrs_post_init__(self) -> None:
        if self.path and (not self.path.startswith("/") or self.path.endswith("/")):
            raise ValidationError("path", self.path, "not a route prefix", 'use "" or a path like "/crm"')
        if isinstance(self.ingest_max_group, bool) or not isinstance(self.ingest_max_group, int):
            raise ValidationError("ingest_max_group", self.ingest_max_group, "not an integer", "give 1 or more")
        if self.ingest_max_group < 1:
            raise ValidationError("ingest_max_group", self.ingest_max_group, "too small", "give 1 or more")
        wait = self.ingest_max_wait
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1:
            raise ValidationError("ingest_max_wait", wait, "out of range", "give seconds from 0 to 1, e.g. 0.005")
        if self.ingest_processor not in ("thread", "worker"):
            raise ValidationError(
                "ingest_processor", self.ingest_processor, "unknown choice", "give 'thread' or 'worker'"
            )
        for name, low in (("ingest_max_depth", 0), ("ingest_retry_after", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValidationError(name, v, "not a count", f"give an integer >= {low}")
        for name in ("ingest_max_lag", "ingest_lock_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 86400:
                raise ValidationError(name, v, "out of range", "give seconds from 0 to 86400")
        if not isinstance(self.gc_freeze, bool):
            raise ValidationError("gc_freeze", self.gc_freeze, "not a boolean", "give True or False")
        if self.docs_assets not in DOCS_ASSETS:
            raise ValidationError(
                "docs_assets", self.docs_assets, "unknown choice", f"give one of {', '.join(map(repr, DOCS_ASSETS))}"
            )
        for name in ("max_body_bytes", "tracking_max_body_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1024:
                raise ValidationError(name, v, "too small", "give at least 1024 bytes")
