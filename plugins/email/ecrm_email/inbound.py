"""What comes back to the e-mail channel: links, the preference page, the
provider webhook, and bounces/complaints delivered to an inbound address.

Everything here is framework-neutral: :func:`handle` takes an
:class:`~ecrm_core.channels.InboundRequest` (the HTTP layer mounts every
:data:`ROUTES` entry at ``/channels/email/<name>``) and answers with an
:class:`~ecrm_core.channels.InboundResponse` whose events the core applies
(``crm.channels.handle_inbound``).  A request that is not authentic raises
:class:`~ecrm_core.channels.InboundRejected` and changes nothing.

Routes:

* ``unsubscribe/{token}`` — GET shows a confirmation page and changes
  nothing (link scanners and prefetchers GET every link); POST with
  ``List-Unsubscribe=One-Click`` (RFC 8058, sent by mail clients, and by the
  confirmation page's form) opts the customer out of the link's purpose.
* ``click/{token}`` — records a click and redirects (303) to the signed target.
* ``open/{token}`` — records an open and answers a 1x1 GIF.
* ``preferences/{token}`` — the customer's preference page (GET) and its form (POST).
* ``webhook`` — provider notifications, signed like Stripe's webhooks
  (``X-Ecrm-Signature: t=<unix>,v1=<hex hmac>``, see :func:`sign_webhook`).

Mail delivered to the bounce address (DSNs, ARF complaints, mailto
unsubscribes) is parsed by :func:`~ecrm_email.mailparse.parse_inbound_mail`
and verified against the signed per-message return addresses
(:mod:`ecrm_email.returns`) by :mod:`ecrm_email.mailserver`
(:class:`InboundMailHandler`, :func:`serve_inbound`); they are re-exported here.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from email.parser import BytesParser
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from ecrm_core.channels import InboundRejected, InboundRequest, InboundResponse, InboundRoute, MessageEvent
from ecrm_core.errors import NotFound, ValidationError

from .links import Links, check_target_url
from .mailparse import InboundReport, MailLimits, MailRejected, parse_inbound_mail
from .mailserver import InboundMail, InboundMailHandler, serve_inbound

__all__ = [
    "ROUTES",
    "PIXEL_GIF",
    "WEBHOOK_EVENT_TYPES",
    "WEBHOOK_TOLERANCE",
    "handle",
    "error_response",
    "sign_webhook",
    "verify_webhook_signature",
    "parse_inbound_mail",
    "InboundReport",
    "MailLimits",
    "MailRejected",
    "InboundMail",
    "InboundMailHandler",
    "serve_inbound",
]

log = logging.getLogger("ecrm.email.inbound")

#: The public routes of the e-mail channel (mounted at ``/channels/email/<name>``).
ROUTES: tuple[InboundRoute, ...] = (
    InboundRoute(
        name="unsubscribe/{token}",
        methods=("GET", "HEAD", "POST"),
        description="RFC 8058 one-click unsubscribe (POST List-Unsubscribe=One-Click); GET shows a confirmation page",
    ),
    InboundRoute(name="click/{token}", methods=("GET", "HEAD"), description="click tracking: 303 to the signed target"),
    InboundRoute(name="open/{token}", methods=("GET", "HEAD"), description="open tracking: a 1x1 GIF"),
    InboundRoute(
        name="preferences/{token}", methods=("GET", "HEAD", "POST"), description="the customer's e-mail preference page"
    ),
    InboundRoute(
        name="webhook",
        methods=("POST",),
        description="provider notifications (bounces, complaints…), signed with X-Ecrm-Signature",
    ),
)

#: A transparent 1x1 GIF (the open-tracking image).
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

#: Event types the webhook accepts.
WEBHOOK_EVENT_TYPES = ("bounced", "soft_bounced", "complained", "delivered", "opened", "clicked")
#: Seconds a webhook signature's timestamp may be away from now.
WEBHOOK_TOLERANCE = 300
#: The most events one webhook request may carry.
WEBHOOK_MAX_EVENTS = 1000

_HTML = "text/html; charset=utf-8"
_NO_STORE = {"cache-control": "no-store", "x-robots-tag": "noindex"}
#: The pages load nothing and run no script; no other site may frame them
#: (clickjacking the one-click unsubscribe button) or take their forms elsewhere.
_PAGE_HEADERS = {
    **_NO_STORE,
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}
_ID = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")


# ---------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _pages() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("ecrm_email", "pages"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )


def _page(name: str, *, status: int = 200, events: Sequence[MessageEvent] = (), **context: Any) -> InboundResponse:
    html = _pages().get_template(name).render(**context)
    return InboundResponse(status=status, body=html, content_type=_HTML, headers=dict(_PAGE_HEADERS), events=events)


def error_response(exc: InboundRejected, *, title: str = "E-mail preferences") -> InboundResponse:
    """An HTML page for a rejected link (for the HTTP layer to answer a
    browser with, instead of a bare problem document)."""
    heading = {
        400: "This request is not valid",
        404: "Not found",
        410: "This link has expired",
    }.get(exc.status, "This link is not valid")
    return _page(
        "error.html", status=exc.status, title=title, heading=heading, reason=exc.reason, status_code=exc.status
    )


def _label(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").capitalize()


# ---------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------


def _route(request: InboundRequest) -> tuple[str, str | None]:
    """The route's kind (``"click"``…) and its token, from ``route``/``params``."""
    name = (request.route or "").strip("/")
    kind, _, rest = name.partition("/")
    token = request.params.get("token") if request.params else None
    if token is None and rest and not rest.startswith("{"):
        token = rest
    return kind, token


def _form(request: InboundRequest) -> dict[str, str]:
    """The submitted form: ``request.form`` if the HTTP layer parsed it, else
    the body (``application/x-www-form-urlencoded`` or ``multipart/form-data``)."""
    if request.form:
        return {str(k): str(v) for k, v in request.form.items()}
    if not request.body:
        return {}
    ctype = request.header("content-type", "") or ""
    if ctype.lower().startswith("multipart/form-data"):
        parsed = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1", "replace") + b"\r\n\r\n" + request.body
        )
        out: dict[str, str] = {}
        for part in parsed.iter_parts() if parsed.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True) or b""
                out[name] = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
        return out
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise InboundRejected("the form body is not UTF-8", status=400) from None
    return dict(parse_qsl(text, keep_blank_values=True))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_method(request: InboundRequest, allowed: Iterable[str]) -> str:
    method = (request.method or "").upper()
    allowed = tuple(allowed)
    if method not in allowed:
        raise InboundRejected(f"method {method or '?'} not allowed here; use {' or '.join(allowed)}", status=405)
    return method


def _check_form_token(form: Mapping[str, str], token: str, *, required: bool) -> None:
    sent = form.get("token")
    if sent is None:
        if required:
            raise InboundRejected("the form has no 'token' field; submit the form of the page", status=400)
        return
    if not hmac.compare_digest(sent.encode("utf-8"), token.encode("utf-8")):
        raise InboundRejected("the form's token does not match the link", status=403)


def _message_owner(crm: Any, message_id: str) -> tuple[str, int] | None:
    """``(workspace, customer_id)`` of a message, in any workspace."""
    record = crm.messages.locate(message_id)
    return (record.workspace, record.customer_id) if record is not None else None


def _purposes(crm: Any) -> list[Any]:
    """The purposes a customer may opt out of (every non-transactional one)."""
    return [p for p in crm.registry.purposes.values() if not p.transactional]


def _purpose_label(crm: Any, purpose: str | None) -> str:
    if purpose is None:
        return ""
    p = crm.registry.purposes.get(purpose)
    return _label(purpose) + (f" ({p.description})" if p is not None and p.description else "")


# ---------------------------------------------------------------------------
# The handler
# ---------------------------------------------------------------------------


def handle(
    crm: Any,
    links: Links,
    request: InboundRequest,
    *,
    webhook_secret: str | Sequence[str] | None,
    unsubscribe_page_title: str = "E-mail preferences",
) -> InboundResponse:
    """Verify and interpret one request to an e-mail route (see :data:`ROUTES`).

    Returns the response to send and the :class:`MessageEvent` objects to
    apply (``crm.channels.handle_inbound`` applies them).  Raises
    :class:`~ecrm_core.channels.InboundRejected` — and returns no events —
    for a tampered (403), expired (410) or malformed (400) link, a webhook
    with a missing (401) or bad (403) signature, unknown routes (404) and
    wrong methods (405).
    """
    kind, token = _route(request)
    title = unsubscribe_page_title
    if kind == "webhook":
        _check_method(request, ("POST",))
        return _webhook(request, webhook_secret, now=crm.now().timestamp())
    if kind not in ("unsubscribe", "click", "open", "preferences"):
        raise InboundRejected(f"the e-mail channel has no inbound route {request.route!r}", status=404)
    if not token:
        raise InboundRejected(f"the {kind} link has no token", status=400)
    if kind == "unsubscribe":
        return _unsubscribe(crm, links, request, token, title)
    if kind == "click":
        method = _check_method(request, ("GET", "HEAD"))
        data = links.verify("click", token)
        if method == "HEAD":  # link checkers: answer, record nothing
            return InboundResponse.redirect(data["url"])
        event = MessageEvent(
            type="clicked",
            channel="email",
            message_id=data["message_id"],
            url=data["url"],
            key=f"click:{_token_hash(token)}",
        )
        return InboundResponse(
            status=303, headers={"location": data["url"], "cache-control": "no-store"}, events=[event]
        )
    if kind == "open":
        method = _check_method(request, ("GET", "HEAD"))
        data = links.verify("open", token)
        events = []
        if method == "GET":
            events.append(
                MessageEvent(
                    type="opened", channel="email", message_id=data["message_id"], key=f"open:{_token_hash(token)}"
                )
            )
        return InboundResponse(
            status=200,
            body=PIXEL_GIF,
            content_type="image/gif",
            headers={"cache-control": "no-store, no-cache, must-revalidate, max-age=0", "pragma": "no-cache"},
            events=events,
        )
    return _preferences(crm, links, request, token, title)


def _unsubscribe(crm: Any, links: Links, request: InboundRequest, token: str, title: str) -> InboundResponse:
    method = _check_method(request, ("GET", "HEAD", "POST"))
    data = links.verify("unsubscribe", token)
    mid, purpose = data["message_id"], data["purpose"]
    label = _purpose_label(crm, purpose)
    if method in ("GET", "HEAD"):
        # A GET changes nothing: mail scanners and link prefetchers GET every link.
        return _page(
            "unsubscribe.html",
            title=title,
            purpose=purpose,
            purpose_label=label,
            token=token,
            action=links.route_url("unsubscribe", token),
        )
    form = _form(request)
    if form.get("List-Unsubscribe") != "One-Click":
        raise InboundRejected(
            "an unsubscribe POST must carry List-Unsubscribe=One-Click (RFC 8058); got "
            + (", ".join(sorted(form)[:5]) or "an empty body"),
            status=400,
        )
    _check_form_token(form, token, required=False)
    owner = _message_owner(crm, mid)
    if owner is None:
        raise InboundRejected(
            "the message of this link is not known any more; use the preference link of a newer e-mail", status=404
        )
    workspace, customer_id = owner
    event = MessageEvent(
        type="unsubscribed",
        channel="email",
        message_id=mid,
        purpose=purpose,
        key=f"unsub:{mid}:{purpose or '*'}",
        detail="unsubscribe page" if "token" in form else "List-Unsubscribe one-click",
    )
    return _page(
        "unsubscribed.html",
        title=title,
        purpose=purpose,
        purpose_label=label,
        preferences_url=links.preferences_url(customer_id=customer_id, workspace=workspace),
        events=[event],
    )


def _preferences(crm: Any, links: Links, request: InboundRequest, token: str, title: str) -> InboundResponse:
    method = _check_method(request, ("GET", "HEAD", "POST"))
    data = links.verify("preferences", token)
    customer_id, workspace = data["customer_id"], data["workspace"]
    try:
        customer = crm.in_workspace(workspace).customers.get(customer_id)
    except (NotFound, ValidationError):
        raise InboundRejected("this customer is not known any more", status=404) from None
    purposes = _purposes(crm)
    consent = customer.consent

    def denied(target: str) -> bool:
        state = consent.get(target)
        return state is not None and state.status == "denied"

    current = {p.name: not denied(f"email:{p.name}") for p in purposes}
    all_off = denied("email")
    events: list[MessageEvent] = []
    saved = False
    if method == "POST":
        form = _form(request)
        _check_form_token(form, token, required=True)
        known = set(current)
        unknown = sorted(
            k[len("purpose:") :] for k in form if k.startswith("purpose:") and k[len("purpose:") :] not in known
        )
        if unknown:
            raise InboundRejected(
                f"unknown purpose(s) in the form: {', '.join(repr(u[:50]) for u in unknown[:10])}; "
                f"this page offers {', '.join(sorted(known)) or 'no purposes'}",
                status=400,
            )
        nonce = hashlib.sha256(f"{token}:{time.time_ns()}".encode()).hexdigest()[:16]
        wanted = {name: f"purpose:{name}" in form for name in current}
        want_all_off = "unsubscribe_all" in form
        for name, want in wanted.items():
            if want != current[name]:
                events.append(
                    MessageEvent(
                        type="resubscribed" if want else "unsubscribed",
                        channel="email",
                        customer_id=customer_id,
                        workspace=workspace,
                        purpose=name,
                        key=f"prefs:{customer_id}:{name}:{nonce}",
                        detail="preference page",
                    )
                )
        if want_all_off != all_off:
            events.append(
                MessageEvent(
                    type="unsubscribed" if want_all_off else "resubscribed",
                    channel="email",
                    customer_id=customer_id,
                    workspace=workspace,
                    purpose=None,
                    key=f"prefs:{customer_id}:*:{nonce}",
                    detail="preference page",
                )
            )
        current, all_off, saved = wanted, want_all_off, True
    return _page(
        "preferences.html",
        title=title,
        saved=saved,
        email=customer.email,
        token=token,
        action=links.route_url("preferences", token),
        purposes=[
            {"name": p.name, "label": _label(p.name), "description": p.description, "checked": current[p.name]}
            for p in purposes
        ],
        all_unsubscribed=all_off,
        events=events,
    )


# ---------------------------------------------------------------------------
# The provider webhook
# ---------------------------------------------------------------------------


def _secrets(secret: str | bytes | Sequence[str | bytes] | None) -> list[bytes]:
    if secret is None:
        return []
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    return [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items if s]


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Ecrm-Signature`` header value for ``body``:
    ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>``."""
    if not isinstance(body, bytes):
        raise TypeError("sign the raw body bytes exactly as they are sent")
    t = int(time.time()) if timestamp is None else int(timestamp)
    (key,) = _secrets(secret) or [b""]
    if not key:
        raise ValueError("the webhook secret is empty")
    return f"t={t},v1={_mac(key, t, body)}"


def verify_webhook_signature(
    secret: str | bytes | Sequence[str | bytes],
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance: float = WEBHOOK_TOLERANCE,
) -> int:
    """Check an ``X-Ecrm-Signature`` header; return its timestamp.

    Any ``v1=`` value may match any of the secrets (both sides can rotate).
    Raises :class:`InboundRejected`: 401 if the header is missing or
    unreadable, 403 if no signature matches or the timestamp is more than
    ``tolerance`` seconds from ``now``.
    """
    keys = _secrets(secret)
    if not keys:
        raise InboundRejected("webhook not configured: set channels.email.webhook_secret", status=404)
    if not header:
        raise InboundRejected("missing X-Ecrm-Signature header", status=401)
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if not sep:
            continue
        if k == "t":
            try:
                timestamp = int(v)
            except ValueError:
                raise InboundRejected("X-Ecrm-Signature: t= is not a Unix time in seconds", status=401) from None
        elif k == "v1":
            signatures.append(v.strip().lower())
    if timestamp is None or not signatures:
        raise InboundRejected("X-Ecrm-Signature must look like t=<unix seconds>,v1=<hex hmac>", status=401)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise InboundRejected(
            f"X-Ecrm-Signature timestamp is {abs(now - timestamp):.0f} s away from now (tolerance {tolerance:g} s): "
            "a replayed request, or the sender's clock is wrong",
            status=403,
        )
    ok = False
    for key in keys:
        expected = _mac(key, timestamp, body).encode("ascii")
        for sig in signatures:
            ok |= hmac.compare_digest(expected, sig.encode("ascii", "replace"))
    if not ok:
        raise InboundRejected("X-Ecrm-Signature does not match the body", status=403)
    return timestamp


def _str_field(ev: Mapping[str, Any], name: str, where: str, *, limit: int, required: bool = False) -> str | None:
    value = ev.get(name)
    if value is None or value == "":
        if required:
            raise InboundRejected(f"{where}.{name}: missing; send a non-empty string", status=400)
        return None
    if not isinstance(value, str):
        raise InboundRejected(f"{where}.{name}: not a string (got {type(value).__name__})", status=400)
    if len(value) > limit:
        raise InboundRejected(f"{where}.{name}: longer than {limit} characters", status=400)
    if any(ch in value for ch in "\r\n\x00"):
        raise InboundRejected(f"{where}.{name}: contains line breaks or NUL", status=400)
    return value


def _webhook_events(payload: Any) -> list[MessageEvent]:
    if not isinstance(payload, dict) or "events" not in payload:
        raise InboundRejected('body: expected a JSON object {"events": [...]}', status=400)
    items = payload["events"]
    if not isinstance(items, list):
        raise InboundRejected("events: not a list", status=400)
    if len(items) > WEBHOOK_MAX_EVENTS:
        raise InboundRejected(f"events: {len(items)} events, send at most {WEBHOOK_MAX_EVENTS} per request", status=400)
    out: list[MessageEvent] = []
    for i, ev in enumerate(items):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            raise InboundRejected(f"{where}: not an object", status=400)
        kind = ev.get("type")
        if kind not in WEBHOOK_EVENT_TYPES:
            raise InboundRejected(
                f"{where}.type: unknown event type {str(kind)[:40]!r}; use one of {', '.join(WEBHOOK_EVENT_TYPES)}",
                status=400,
            )
        ident = _str_field(ev, "id", where, limit=200, required=True)
        message_id = _str_field(ev, "message_id", where, limit=200)
        address = _str_field(ev, "address", where, limit=320)
        if address is not None and "@" not in address:
            raise InboundRejected(f"{where}.address: not an e-mail address", status=400)
        if message_id is None and address is None:
            raise InboundRejected(f"{where}: needs message_id or address", status=400)
        detail = _str_field(ev, "detail", where, limit=2000) or ""
        url = _str_field(ev, "url", where, limit=2048)
        if url is not None:
            try:
                check_target_url(url)
            except ValidationError as exc:
                raise InboundRejected(f"{where}.url: {exc.problem}", status=400) from None
        occurred_at = None
        raw_at = _str_field(ev, "occurred_at", where, limit=64)
        if raw_at is not None:
            try:
                occurred_at = datetime.fromisoformat(raw_at)
            except ValueError:
                occurred_at = None
            if occurred_at is None or occurred_at.tzinfo is None:
                raise InboundRejected(
                    f"{where}.occurred_at: not an ISO 8601 time with a timezone (e.g. 2024-05-01T12:00:00Z)",
                    status=400,
                )
        out.append(
            MessageEvent(
                type=kind,
                channel="email",
                message_id=message_id,
                address=address,
                occurred_at=occurred_at,
                url=url,
                detail=detail,
                key=f"webhook:{ident}",
                properties={"source": "webhook"},
            )
        )
    return out


def _webhook(request: InboundRequest, secret: str | Sequence[str] | None, *, now: float) -> InboundResponse:
    verify_webhook_signature(secret or (), request.body, request.header("x-ecrm-signature"), now=now)
    try:
        payload = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InboundRejected(f"body: not valid JSON ({exc})", status=400) from None
    events = _webhook_events(payload)
    return InboundResponse(
        status=200,
        body=json.dumps({"received": len(events)}),
        content_type="application/json",
        events=events,
    )
