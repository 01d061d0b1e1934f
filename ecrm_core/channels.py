"""The channel API: how any channel (email, SMS, chat, push…) plugs into ecrm.

A channel plugin registers a :class:`~ecrm_core.registry.ChannelSpec` through
``ecrm_register_channels``; its ``factory(crm)`` returns a :class:`Channel`.
The core owns everything around the channel — consent, suppression,
frequency caps, quiet hours, the transactional outbox, retries, the dead
letter, the delivery log and the timeline (``crm.messages``) — so a channel
only does three things:

1. :meth:`Channel.address` — where this customer is reached (an e-mail
   address, a phone number…), from plain customer data;
2. :meth:`Channel.render` — turn a template and plain context data into the
   :class:`Content` to send (channels with the ``templates`` capability);
3. :meth:`Channel.send` — hand one :class:`Message` to the provider and
   *classify* what happened as a :class:`DeliveryResult`: accepted, deferred
   (try again later) or rejected (permanently).

Optionally, :meth:`Channel.inbound_routes` and :meth:`Channel.handle_inbound`
receive what comes back (receipts, bounces, replies, unsubscribe clicks) as
framework-neutral :class:`InboundRequest` objects; the HTTP layer
(``ecrm-api``) mounts them at ``/channels/<channel>/<route>``.  A handler
verifies the request's signature and answers with an :class:`InboundResponse`
carrying the :class:`MessageEvent` objects the core then applies
(suppressing a bounced address, recording opens and clicks…).

Transports are stevedore drivers in the namespace ``ecrm.transports.<channel>``
(e.g. ``ecrm.transports.email`` → ``smtp``), so a host chooses one by name
in configuration and a vendor package can add its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, time
from typing import Any, ClassVar, Literal

from attrs import field, frozen

from .errors import EcrmError, ValidationError
from .validation import check_slug

__all__ = [
    "CAPABILITIES",
    "Channel",
    "Content",
    "Message",
    "DeliveryResult",
    "InboundRoute",
    "InboundRequest",
    "InboundResponse",
    "MessageEvent",
    "EVENT_TYPES",
    "Purpose",
    "DeliveryPolicy",
    "ChannelConfigError",
    "InboundRejected",
    "TemplateError",
    "load_transport",
    "transport_names",
]

#: Capability flags a channel may declare on its ChannelSpec.
CAPABILITIES = frozenset({"templates", "html", "receipts", "inbound", "replies", "links"})


class ChannelConfigError(EcrmError, ValueError):
    """A channel or transport is misconfigured (unknown driver, missing setting…)."""


class InboundRejected(EcrmError):
    """An inbound request failed verification (bad or missing signature, expired
    or tampered link).  ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, *, status: int = 403) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class TemplateError(ValidationError):
    """A template failed to parse or render (sandbox violation, undefined value,
    output too large…).  ``field`` names the template part (``template.html``)."""


# ---------------------------------------------------------------------------
# What flows through the pipeline
# ---------------------------------------------------------------------------


@frozen(kw_only=True)
class Content:
    """Rendered content, ready to send.

    ``body`` is the plain-text part (SMS text, chat message, e-mail text
    part); ``html`` an optional HTML part; ``subject`` for channels that have
    one; ``headers`` extra channel headers (validated by the channel).
    """

    body: str = ""
    subject: str | None = None
    html: str | None = None
    headers: Mapping[str, str] = field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"body": self.body, "subject": self.subject, "html": self.html, "headers": dict(self.headers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Content:
        return cls(
            body=data.get("body") or "",
            subject=data.get("subject"),
            html=data.get("html"),
            headers=data.get("headers") or {},
        )


@frozen(kw_only=True)
class Message:
    """One message handed to :meth:`Channel.send`.

    ``id`` is stable across every attempt to deliver this message: a channel
    passes it to the provider as the idempotency key (the e-mail plugin makes
    it the ``Message-ID``), so a retry after a crash is recognised as the
    same message.  ``attempt_id`` is new for every attempt and is never sent
    twice.
    """

    id: str
    attempt_id: str
    attempt: int
    channel: str
    workspace: str
    customer_id: int
    to: str
    purpose: str
    content: Content
    metadata: Mapping[str, Any] = field(factory=dict)


DeliveryStatus = Literal["accepted", "deferred", "rejected"]


@frozen(kw_only=True)
class DeliveryResult:
    """What a channel says happened to one :meth:`Channel.send`.

    * ``accepted``: the provider took the message (``provider_id`` is its id);
    * ``deferred``: a temporary failure — the pipeline retries with
      exponential backoff, no sooner than ``retry_after`` seconds;
    * ``rejected``: a permanent failure — no retry.  ``suppress=True`` says
      the *address* is bad (hard bounce, invalid number): the pipeline puts
      it on the suppression list for the channel.

    ``code`` is the provider's status (``"550 5.1.1"``) and ``reason`` a
    human-readable explanation; neither may contain secrets.
    """

    status: DeliveryStatus
    provider_id: str | None = None
    retry_after: float | None = None
    code: str | None = None
    reason: str = ""
    suppress: bool = False

    def __attrs_post_init__(self) -> None:
        if self.status not in ("accepted", "deferred", "rejected"):
            raise ValidationError(
                "status", self.status, "unknown delivery status", "use 'accepted', 'deferred' or 'rejected'"
            )

    @classmethod
    def accepted(cls, provider_id: str | None = None, *, code: str | None = None) -> DeliveryResult:
        return cls(status="accepted", provider_id=provider_id, code=code)

    @classmethod
    def deferred(cls, reason: str, *, retry_after: float | None = None, code: str | None = None) -> DeliveryResult:
        return cls(status="deferred", reason=reason, retry_after=retry_after, code=code)

    @classmethod
    def rejected(cls, reason: str, *, code: str | None = None, suppress: bool = False) -> DeliveryResult:
        return cls(status="rejected", reason=reason, code=code, suppress=suppress)


# ---------------------------------------------------------------------------
# Inbound: receipts, bounces, replies, link clicks
# ---------------------------------------------------------------------------


@frozen(kw_only=True)
class InboundRoute:
    """A public endpoint a channel needs (``/channels/<channel>/<name>``).

    ``name`` may hold ``{param}`` placeholders (``"click/{token}"``); the
    values arrive in :attr:`InboundRequest.params`.  Every inbound route is
    public (no API key): the handler must verify a signature or a signed
    token itself.
    """

    name: str
    methods: tuple[str, ...] = ("POST",)
    description: str = ""


@frozen(kw_only=True)
class InboundRequest:
    """A framework-neutral HTTP request for :meth:`Channel.handle_inbound`."""

    route: str
    method: str
    params: Mapping[str, str] = field(factory=dict)
    query: Mapping[str, str] = field(factory=dict)
    headers: Mapping[str, str] = field(factory=dict)  # lower-case names
    body: bytes = b""
    form: Mapping[str, str] = field(factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


#: Event types a channel reports back (``MessageEvent.type``).
EVENT_TYPES = frozenset(
    {
        "delivered",  # the provider confirmed delivery
        "bounced",  # hard bounce: the address is bad (suppressed)
        "soft_bounced",  # temporary delivery problem reported later (recorded only)
        "complained",  # marked as spam (suppressed for non-transactional mail)
        "unsubscribed",  # opted out of a purpose (or the whole channel)
        "resubscribed",  # opted back in (preference page)
        "opened",
        "clicked",
        "replied",
    }
)


@frozen(kw_only=True)
class MessageEvent:
    """Something that happened to a sent message, or to an address.

    Identify the message by ``message_id`` (the :attr:`Message.id`) when the
    provider echoes it, else by ``address`` (a DSN names the recipient).
    ``workspace`` is needed only when neither the message nor the address
    tells it (a preference page knows the customer, not a message).
    ``purpose`` (for ``unsubscribed``/``resubscribed``) is a purpose name, or
    ``None`` for the whole channel.  ``key`` makes the event idempotent: the
    same key twice is applied once (a replayed webhook or link).
    """

    type: str
    channel: str
    message_id: str | None = None
    address: str | None = None
    customer_id: int | None = None
    workspace: str | None = None
    purpose: str | None = None
    occurred_at: datetime | None = None
    url: str | None = None
    detail: str = ""
    key: str | None = None
    properties: Mapping[str, Any] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValidationError("type", self.type, "unknown message event", f"use one of {sorted(EVENT_TYPES)}")


@frozen(kw_only=True)
class InboundResponse:
    """What to answer an inbound request with, and the events it carries."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(factory=dict)
    events: Sequence[MessageEvent] = ()

    @classmethod
    def redirect(cls, location: str, events: Sequence[MessageEvent] = ()) -> InboundResponse:
        return cls(status=303, headers={"location": location}, events=events)


# ---------------------------------------------------------------------------
# Purposes and policy
# ---------------------------------------------------------------------------


def _purpose_name(value: Any) -> str:
    return check_slug(value, "name", "purpose name")


@frozen(kw_only=True)
class Purpose:
    """Why a message is sent: the "kinds of mail" a customer can opt out of.

    ``transactional`` purposes (receipts, password resets) need no marketing
    consent and ignore caps and quiet hours; they still respect hard
    suppressions (a bounced address).  Others need the channel's consent
    (``consent["email"]`` granted) and are blocked when the customer opted
    out of the purpose (``consent["email:newsletter"]`` denied).
    """

    name: str = field(converter=_purpose_name)
    description: str = ""
    transactional: bool = False
    plugin: str | None = None


def _caps(value: Any) -> tuple[tuple[int, float], ...]:
    out: list[tuple[int, float]] = []
    for i, item in enumerate(value or ()):
        try:
            count, window = item
            seconds = window.total_seconds() if hasattr(window, "total_seconds") else float(window)
            count = int(count)
        except (TypeError, ValueError):
            raise ValidationError(
                f"frequency_caps[{i}]", item, "not a (count, window) pair", "use e.g. (3, timedelta(days=7))"
            ) from None
        if count < 1 or seconds <= 0:
            raise ValidationError(
                f"frequency_caps[{i}]", item, "count and window must be positive", "use e.g. (3, timedelta(days=7))"
            )
        out.append((count, seconds))
    return tuple(out)


def _clock_time(value: Any) -> time | None:
    if value is None or isinstance(value, time):
        return value
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValidationError("quiet_hours", value, "not a time of day", "use 'HH:MM', e.g. '21:00'") from None


@frozen(kw_only=True)
class DeliveryPolicy:
    """How the pipeline paces one channel (``CRM(channels={"email": {"policy": {...}}})``).

    * ``frequency_caps``: ``(count, window)`` pairs — at most ``count``
      non-transactional messages per customer in any ``window``
      (a ``timedelta`` or seconds); over a cap, a message is *blocked*.
    * ``quiet_start``/``quiet_end``: no non-transactional send between these
      local times in the customer's ``timezone`` (else ``default_timezone``);
      a message due then waits until ``quiet_end``.
    * ``max_attempts``, ``backoff`` (first retry delay, seconds, doubled each
      time, with ±10 % jitter) and ``max_backoff``: the retry schedule; after
      ``max_attempts`` the message is dead-lettered.
    * ``lease``: seconds a claimed message may take before another worker
      may take it over (a crashed worker's messages are retried after it).
    """

    frequency_caps: tuple[tuple[int, float], ...] = field(default=(), converter=_caps)
    quiet_start: time | None = field(default=None, converter=_clock_time)
    quiet_end: time | None = field(default=None, converter=_clock_time)
    default_timezone: str = "UTC"
    max_attempts: int = 5
    backoff: float = 60.0
    max_backoff: float = 6 * 3600.0
    lease: float = 300.0

    def __attrs_post_init__(self) -> None:
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValidationError(
                "quiet_hours", (self.quiet_start, self.quiet_end), "needs both ends", "set quiet_start and quiet_end"
            )
        if not 1 <= self.max_attempts <= 100:
            raise ValidationError("max_attempts", self.max_attempts, "out of range", "use 1..100")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise ValidationError("backoff", self.backoff, "invalid backoff", "use 0 <= backoff <= max_backoff")
        if self.lease <= 0:
            raise ValidationError("lease", self.lease, "must be positive", "use seconds, e.g. 300")
        from .validation import check_timezone

        check_timezone(self.default_timezone, "default_timezone")

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | DeliveryPolicy | None) -> DeliveryPolicy:
        if data is None:
            return cls()
        if isinstance(data, DeliveryPolicy):
            return data
        if not isinstance(data, Mapping):
            raise ValidationError("policy", data, "not a mapping", "pass e.g. {'max_attempts': 5}")
        data = dict(data)
        quiet = data.pop("quiet_hours", None)
        if quiet is not None:
            try:
                data["quiet_start"], data["quiet_end"] = quiet
            except (TypeError, ValueError):
                raise ValidationError(
                    "policy.quiet_hours", quiet, "not a (start, end) pair", "use e.g. ('21:00', '08:00')"
                ) from None
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValidationError("policy", data, str(exc), "see DeliveryPolicy for the known settings") from None


# ---------------------------------------------------------------------------
# The channel interface
# ---------------------------------------------------------------------------


class Channel:
    """Base class for channels; subclass it and override what you need.

    ``config`` is the channel's part of ``CRM(channels={name: {...}})``.  A
    channel object is built once per CRM and shared by threads: keep
    per-send state local or guarded.
    """

    #: The channel's name (the ChannelSpec's name).
    name: ClassVar[str] = ""

    def __init__(self, crm: Any, config: Mapping[str, Any] | None = None) -> None:
        self.crm = crm
        if config is None and crm is not None and self.name:
            config = crm.channels.config(self.name)
        self.config: Mapping[str, Any] = dict(config or {})

    def address(self, customer: Mapping[str, Any]) -> str | None:
        """Where ``customer`` (plain data: ``email``, ``phone``, ``attributes``…)
        is reached on this channel, or ``None`` if they cannot be."""
        raise NotImplementedError(f"channel {self.name!r} must implement address()")

    def render(self, template: Any, context: Mapping[str, Any], *, message_id: str, purpose: str) -> Content:
        """Render ``template`` with plain-data ``context`` into :class:`Content`.

        ``template`` is whatever the channel accepts (a template name, a
        mapping of parts…).  Raise :class:`TemplateError` on bad templates.
        The default accepts a :class:`Content` or a mapping of its fields.
        """
        if isinstance(template, Content):
            return template
        if isinstance(template, Mapping):
            return Content.from_json(template)
        raise TemplateError(
            "template", template, f"channel {self.name!r} does not render templates", "pass Content(...) instead"
        )

    def send(self, message: Message) -> DeliveryResult:
        """Send one message and classify the outcome.  Must not raise for
        provider failures (return ``deferred``/``rejected``); an exception is
        treated as ``deferred`` and logged against the channel."""
        raise NotImplementedError(f"channel {self.name!r} must implement send()")

    def send_many(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        """Send a batch (default: one :meth:`send` each).  Override to reuse
        a connection or call a provider's batch API; return one result per
        message, in order."""
        return [self.send(m) for m in messages]

    def inbound_routes(self) -> Sequence[InboundRoute]:
        """Public endpoints the channel needs (receipts, bounces, links…)."""
        return ()

    def handle_inbound(self, request: InboundRequest) -> InboundResponse:
        """Verify and interpret one inbound request; raise :class:`InboundRejected`
        when it is not authentic.  The events returned are applied by the core."""
        raise InboundRejected(f"channel {self.name!r} has no inbound route {request.route!r}", status=404)

    def close(self) -> None:
        """Release connections (called by ``crm.close()``)."""


# ---------------------------------------------------------------------------
# Transports (stevedore drivers)
# ---------------------------------------------------------------------------


def transport_names(channel: str) -> list[str]:
    """Names of the installed transports for ``channel``."""
    from stevedore import ExtensionManager

    return sorted(ExtensionManager(f"ecrm.transports.{channel}", invoke_on_load=False).names())


def load_transport(channel: str, name: str, **options: Any) -> Any:
    """Load the transport driver ``name`` for ``channel`` and build it with ``options``.

    Drivers are entry points in ``ecrm.transports.<channel>``; the driver is
    called with the options (usually a class).  An unknown name raises
    :class:`ChannelConfigError` listing the installed ones.
    """
    from stevedore import DriverManager
    from stevedore.exception import NoMatches

    try:
        manager: Any = DriverManager(f"ecrm.transports.{channel}", name, invoke_on_load=False)
    except NoMatches:
        known = transport_names(channel)
        raise ChannelConfigError(
            f"channels.{channel}.transport: unknown transport {name!r}; installed: "
            f"{', '.join(known) or 'none'} (a transport is an entry point in 'ecrm.transports.{channel}')"
        ) from None
    factory: Callable[..., Any] = manager.driver
    return factory(**options)
