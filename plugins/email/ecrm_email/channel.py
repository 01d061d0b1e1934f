"""The e-mail channel: transport + MIME + templates + links, behind the core's channel API.

Configuration (``CRM(channels={"email": {...}})``):

``from`` (required)
    The sender, ``"Shop <news@shop.example>"``.
``base_url`` (required)
    The public URL under which the channel's routes are mounted (the HTTP
    API mounts them at ``<base_url>/channels/email/...``); unsubscribe,
    click, open and preference links point there.
``transport`` / ``smtp``
    The transport driver name (default ``"smtp"``, entry points in
    ``ecrm.transports.email``) and its options (host, port, security…).
``reply_to``, ``domain`` (Message-ID domain; default: the sender's),
``bounce_address`` (MAIL FROM, as ``<local>+<signed message token>@<domain>``;
default: the sender), ``templates_dir``,
``track_opens`` / ``track_clicks`` (default ``True``), ``link_max_age_days``
(default 90), ``webhook_secret`` (provider webhooks), ``unsubscribe_mailto``
(an extra ``mailto:`` in ``List-Unsubscribe``, with a signed per-message token).

Template rendering (see :class:`~ecrm_email.templates.Templates`):
``isolation`` (``"process"``, the default: sandbox processes with OS limits;
``"inline"``: in this process, for trusted templates only), ``max_output``
(bytes per rendered part, default 1,000,000), ``max_seconds`` (per message,
default 2.0), ``max_memory`` (bytes per sandbox process beyond its start-up
size, default 512 MiB), ``render_workers`` (sandbox processes at most,
default 2-4 by CPU count).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping, Sequence
from email.utils import parseaddr
from typing import Any

from ecrm_core.channels import (
    Channel,
    ChannelConfigError,
    Content,
    DeliveryResult,
    InboundRequest,
    InboundResponse,
    InboundRoute,
    Message,
    TemplateError,
    load_transport,
)
from ecrm_core.errors import ValidationError

log = logging.getLogger("ecrm.email")

__all__ = ["EmailChannel", "CAPABILITIES"]

CAPABILITIES = frozenset({"templates", "html", "links", "receipts", "inbound"})

_KNOWN = {
    "from",
    "base_url",
    "transport",
    "smtp",
    "reply_to",
    "domain",
    "bounce_address",
    "templates_dir",
    "track_opens",
    "track_clicks",
    "link_max_age_days",
    "webhook_secret",
    "unsubscribe_mailto",
    "max_output",
    "max_seconds",
    "max_memory",
    "isolation",
    "render_workers",
}
_TEMPLATE_OPTIONS = {
    "max_output": "max_output",
    "max_seconds": "max_seconds",
    "max_memory": "max_memory",
    "isolation": "isolation",
    "render_workers": "workers",
}


class EmailChannel(Channel):
    """``email``: see the module documentation for its settings."""

    name = "email"

    def __init__(self, crm: Any, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(crm, config)
        conf = self.config
        unknown = sorted(set(conf) - _KNOWN)
        if unknown:
            raise ChannelConfigError(
                f"channels.email: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
            )
        sender = conf.get("from")
        if not sender:
            raise ChannelConfigError(
                "channels.email.from: missing; set the sender, e.g. {'from': 'Shop <news@shop.example>'}"
            )
        _name, addr = parseaddr(str(sender))
        if "@" not in addr:
            raise ChannelConfigError(f"channels.email.from: {sender!r} is not an address; use 'Name <a@b.example>'")
        self.sender = str(sender)
        self.sender_address = addr
        base_url = conf.get("base_url")
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ChannelConfigError(
                "channels.email.base_url: missing or not http(s); set the public URL where ecrm's routes are "
                "mounted, e.g. 'https://shop.example/crm' (unsubscribe and tracking links point there)"
            )
        self.base_url = str(base_url).rstrip("/")
        self.domain = str(conf.get("domain") or addr.rsplit("@", 1)[1])
        self.bounce_address = str(conf.get("bounce_address") or addr)
        self.reply_to = conf.get("reply_to")
        self.track_opens = bool(conf.get("track_opens", True))
        self.track_clicks = bool(conf.get("track_clicks", True))
        self.max_age = float(conf.get("link_max_age_days", 90)) * 86400
        self.webhook_secret = conf.get("webhook_secret")
        self.unsubscribe_mailto = conf.get("unsubscribe_mailto")
        self._template_options = _template_options(conf)
        self._transport: Any = None
        self._templates: dict[str, Any] = {}
        self._links: Any = None
        self._returns: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<EmailChannel from={self.sender_address!r} base_url={self.base_url!r}>"

    # -- parts, built on first use ------------------------------------------
    @property
    def transport(self) -> Any:
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    options = dict(self.config.get("smtp") or {})
                    self._transport = load_transport("email", str(self.config.get("transport", "smtp")), **options)
        return self._transport

    @property
    def links(self) -> Any:
        if self._links is None:
            from .links import Links

            self._links = Links(self.crm.signer, self.base_url, max_age=self.max_age)
        return self._links

    @property
    def returns(self) -> Any:
        """The signed per-message return and unsubscribe addresses (:mod:`ecrm_email.returns`)."""
        if self._returns is None:
            from .returns import ReturnAddresses

            self._returns = ReturnAddresses.from_config(self.crm.signer, self.config)
        return self._returns

    def templates(self, workspace: str | None = None) -> Any:
        """The :class:`~ecrm_email.templates.Templates` of a workspace."""
        ws = workspace or self.crm.workspace
        found = self._templates.get(ws)
        if found is None:
            from .templates import Templates

            kwargs: dict[str, Any] = {"directory": self.config.get("templates_dir"), **self._template_options}
            try:
                found = Templates(self.crm.in_workspace(ws), **kwargs)
            except ChannelConfigError as exc:
                raise ChannelConfigError(f"channels.email: {exc}") from None
            self._templates[ws] = found
        return found

    # -- the channel API ------------------------------------------------------
    def address(self, customer: Mapping[str, Any]) -> str | None:
        email = customer.get("email")
        return str(email) if email else None

    def render(self, template: Any, context: Mapping[str, Any], *, message_id: str, purpose: str) -> Content:
        result = self.render_many(template, [context], message_ids=[message_id], purpose=purpose)[0]
        if isinstance(result, TemplateError):
            raise result
        return result

    def render_many(
        self, template: Any, contexts: Sequence[Mapping[str, Any]], *, message_ids: Sequence[str], purpose: str
    ) -> list[Content | TemplateError]:
        """Render ``template`` for each context in one round trip to a sandbox
        process: the :class:`Content` of each message, or the
        :class:`TemplateError` of a context that failed (a limit, bad data, a
        crash of the sandbox), in order; the others are rendered."""
        if len(message_ids) != len(contexts):
            raise ValueError(f"render_many: {len(contexts)} contexts but {len(message_ids)} message ids")
        results: list[Content | TemplateError | None] = [None] * len(contexts)
        prepared: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        for i, (context, message_id) in enumerate(zip(contexts, message_ids, strict=True)):
            try:
                ws, ctx, headers = self._prepare(context, message_id, purpose)
            except ValidationError as exc:
                results[i] = _template_error(exc)
                continue
            prepared.setdefault(ws, []).append((i, ctx, headers))
        clicks, opens = self.track_clicks, self.track_opens
        nonce = "ecrm" + secrets.token_hex(12)
        for ws, batch in prepared.items():
            if isinstance(template, Content):
                for i, _ctx, headers in batch:
                    results[i] = self._content(template, message_ids[i], headers)
                continue
            track = {"nonce": nonce, "clicks": clicks, "pixel": opens, "skip": f"{self.base_url}/channels/email/"}
            try:
                rendered = self.templates(ws)._render(
                    template, [ctx for _i, ctx, _h in batch], ws, track if (clicks or opens) else None
                )
            except TemplateError as exc:  # the template itself (unknown, no subject...): every message fails
                rendered = [exc] * len(batch)
            for (i, _ctx, headers), r in zip(batch, rendered, strict=True):
                if isinstance(r, TemplateError):
                    results[i] = r
                    continue
                html = r.html
                if html is not None and (clicks or opens):
                    try:
                        html = self._fill(html, nonce, r.links, message_ids[i])
                    except ValidationError as exc:
                        results[i] = _template_error(exc)
                        continue
                results[i] = Content(subject=r.subject, body=r.text, html=html, headers=headers)
        return [r if r is not None else TemplateError("template", None, "not rendered", "try again") for r in results]

    def _prepare(
        self, context: Mapping[str, Any], message_id: str, purpose: str
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The workspace, the context with the channel's links, and the headers of one message."""
        if not isinstance(context, Mapping):
            raise ValidationError("context", type(context).__name__, "not a mapping", "pass a dict of plain data")
        message = dict(context.get("message") or {})
        workspace = message.get("workspace") or self.crm.workspace
        transactional = bool(message.get("transactional"))
        ctx = dict(context)
        headers: dict[str, str] = {}
        customer = ctx.get("customer") or {}
        if not transactional:
            unsubscribe = self.links.unsubscribe_url(message_id=message_id, purpose=purpose)
            ctx["unsubscribe_url"] = unsubscribe
            targets = [f"<{unsubscribe}>"]
            if self.unsubscribe_mailto:  # a signed per-message address (ecrm_email.returns)
                mailto = self.returns.unsubscribe_address(message_id, now=self.crm.now().timestamp())
                targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
            headers["List-Unsubscribe"] = ", ".join(targets)
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        if customer.get("id") is not None:
            ctx["preferences_url"] = self.links.preferences_url(customer_id=int(customer["id"]), workspace=workspace)
        return str(workspace), ctx, headers

    def _fill(self, html: str, nonce: str, links: Sequence[str], message_id: str) -> str:
        from .html import fill_placeholders

        urls = [self.links.click_url(message_id=message_id, url=url) for url in links]
        pixel = self.links.open_url(message_id=message_id) if self.track_opens else None
        return fill_placeholders(html, nonce, urls, pixel)

    def _content(self, content: Content, message_id: str, headers: dict[str, str]) -> Content | TemplateError:
        """Ready-made content (no template): tracked in this process (it is the caller's own HTML)."""
        from .html import HTMLTooDeep, track_html

        html = content.html
        if html is not None and (self.track_clicks or self.track_opens):
            own = f"{self.base_url}/channels/email/"

            def track(url: str) -> str | None:
                # ecrm's own links (unsubscribe, preferences) are already signed
                return None if url.startswith(own) else self.links.click_url(message_id=message_id, url=url)

            pixel = self.links.open_url(message_id=message_id) if self.track_opens else None
            try:
                html = track_html(html, track if self.track_clicks else None, pixel)
            except HTMLTooDeep as exc:
                return TemplateError("content.html", None, str(exc), "send less deeply nested HTML")
            except ValidationError as exc:
                return _template_error(exc)
        return Content(subject=content.subject or "", body=content.body, html=html, headers=headers)

    def _envelope(self, message: Message) -> Any:
        from .mime import _message_data
        from .transport import Envelope

        content = message.content
        data, recipient = _message_data(
            message_id=message.id,
            from_=self.sender,
            to=message.to,
            subject=content.subject or "",
            text=content.body,
            html=content.html,
            headers=content.headers,
            reply_to=self.reply_to,
            domain=self.domain,
            date=None,
        )
        return Envelope(
            # VERP: a per-message signed return path, how a bounce proves its message (ecrm_email.returns)
            mail_from=self.returns.return_path(message.id, now=self.crm.now().timestamp()),
            rcpt=recipient.addr_spec,
            data=data,
            message_id=message.id,
            attempt_id=message.attempt_id,
        )

    def send(self, message: Message) -> DeliveryResult:
        return self.send_many([message])[0]

    def send_many(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        results: list[DeliveryResult | None] = [None] * len(messages)
        envelopes, where = [], []
        for i, m in enumerate(messages):
            try:
                envelopes.append(self._envelope(m))
                where.append(i)
            except (ValidationError, ValueError) as exc:
                # The content cannot become a valid e-mail: retrying won't help.
                results[i] = DeliveryResult.rejected(f"invalid message: {exc}")
        if envelopes:
            for i, result in zip(where, self.transport.send_many(envelopes), strict=True):
                results[i] = result
        return [r if r is not None else DeliveryResult.deferred("no result") for r in results]

    def inbound_routes(self) -> Sequence[InboundRoute]:
        from .inbound import ROUTES

        return ROUTES

    def handle_inbound(self, request: InboundRequest) -> InboundResponse:
        from ecrm_core.channels import InboundRejected

        from .inbound import error_response, handle

        try:
            return handle(self.crm, self.links, request, webhook_secret=self.webhook_secret)  # type: ignore[no-any-return]
        except InboundRejected as exc:
            browser = "text/html" in (request.header("accept") or "")
            if request.route == "webhook" or (request.method != "GET" and not browser):
                raise  # machines (a one-click POST from a mail provider, a webhook) get a problem document
            # A person followed a link from a mail, or submitted one of the
            # pages' forms (say, after its link expired): a page, not JSON.
            return error_response(exc)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _template_error(exc: ValidationError) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    return TemplateError(exc.field, exc.value, exc.problem, exc.fix)


def _template_options(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The template settings of the channel config, checked (Templates checks them again)."""
    options: dict[str, Any] = {}
    for key, kwarg in _TEMPLATE_OPTIONS.items():
        if conf.get(key) is None:
            continue
        value = conf[key]
        if key == "isolation":
            if value not in ("process", "inline"):
                raise ChannelConfigError(
                    f"channels.email.isolation: {value!r} is not 'process' (untrusted templates: sandbox "
                    "processes with OS limits, the default) or 'inline' (trusted templates only)"
                )
        elif key == "max_seconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
                raise ChannelConfigError(
                    f"channels.email.max_seconds: {value!r} is not a number of seconds in (0, 3600]"
                )
        else:
            minimum = {"max_output": 1, "max_memory": 32 << 20, "render_workers": 1}[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ChannelConfigError(f"channels.email.{key}: {value!r} is not a whole number >= {minimum}")
        options[kwarg] = value
    return options
