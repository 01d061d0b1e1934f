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
"""

from __future__ import annotations

import logging
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

            kwargs: dict[str, Any] = {"directory": self.config.get("templates_dir")}
            if self.config.get("max_output"):
                kwargs["max_output"] = int(self.config["max_output"])
            found = Templates(self.crm.in_workspace(ws), **kwargs)
            self._templates[ws] = found
        return found

    # -- the channel API ------------------------------------------------------
    def address(self, customer: Mapping[str, Any]) -> str | None:
        email = customer.get("email")
        return str(email) if email else None

    def render(self, template: Any, context: Mapping[str, Any], *, message_id: str, purpose: str) -> Content:
        from .templates import track_html

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
        if isinstance(template, Content):
            rendered_subject, html, text = template.subject or "", template.html, template.body
        else:
            rendered = self.templates(workspace).render(template, ctx)
            rendered_subject, html, text = rendered.subject, rendered.html, rendered.text
        if html is not None and (self.track_clicks or self.track_opens):
            own = f"{self.base_url}/channels/email/"

            def track(url: str) -> str | None:
                # ecrm's own links (unsubscribe, preferences) are already signed
                return None if url.startswith(own) else self.links.click_url(message_id=message_id, url=url)

            pixel = self.links.open_url(message_id=message_id) if self.track_opens else None
            html = track_html(html, track if self.track_clicks else None, pixel)
        return Content(subject=rendered_subject, body=text, html=html, headers=headers)

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
