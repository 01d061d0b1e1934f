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
    "MESSAGE_EVENTS",
    "EVENT_KINDS",
    "as_template_error",
    "normalize_address",
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


_UNSET: Any = object()


class TemplateError(ValidationError):
    """A template failed to parse or render (sandbox violation, undefined value,
    output too large…).  ``field`` names the template part (``template.html``).

    Two forms::

        TemplateError("the subject is empty")                 # a plain message
        TemplateError("template.subject", value, "is empty", "write a subject")

    The plain form sets ``field="template"``, ``problem`` to the message and
    ``fix`` to ``""``; ``str(exc)`` is the message itself.  Both pickle with
    their fields (a channel may render in another process).

    ``original`` is set by :func:`as_template_error` when the error stands
    for another exception (a bug in a channel's ``render``): the pipeline
    reports those as plugin faults, by the original's type.
    """

    original: BaseException | None = None

    def __init__(self, field: str, value: Any = _UNSET, problem: str | None = None, fix: str | None = None) -> None:
        if value is _UNSET and problem is None and fix is None:
            message = str(field)
            self.field = "template"
            self.value = None
            self.problem = message
            self.fix = ""
            EcrmError.__init__(self, message)
            return
        if problem is None or fix is None:
            raise TypeError(
                "TemplateError takes a message, or (field, value, problem, fix): "
                "e.g. TemplateError('template.subject', value, 'is empty', 'write a subject')"
            )
        super().__init__(field, None if value is _UNSET else value, problem, fix)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.field == "template" and self.value is None and self.fix == "" and str(self) == self.problem:
            return (type(self), (self.problem,))
        value = self.value
        if not isinstance(value, str | int | float | bool | type(None)):
            value = repr(value)[:200]  # anything else may not pickle
        return (type(self), (self.field, value, self.problem, self.fix))


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


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def _header_map(value: Any) -> Mapping[str, str]:
    """Headers as given by any framework (a dict, Flask/Werkzeug ``Headers``,
    Starlette ``Headers``, ``email.message.Message``, a list of pairs, raw ASGI
    byte pairs) as one ``dict`` with lower-case names.  A header given more than
    once is joined with ``", "`` (RFC 9110 §5.3), so a duplicated signature
    header can never be read as the genuine one."""
    if value is None:
        return {}
    items: Any
    if hasattr(value, "multi_items"):  # litestar, multidicts: every pair, repeats included
        items = value.multi_items()
    elif hasattr(value, "items"):
        items = value.items()  # dict; werkzeug, starlette, email: every (name, value) pair
    else:
        items = value
    out: dict[str, str] = {}
    for pair in items:
        name, val = pair
        key = _text(name).strip().lower()
        text = _text(val)
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _plain_map(value: Any) -> Mapping[str, str]:
    return dict(value or {})


def _method(value: Any) -> str:
    return str(value).upper()


@frozen(kw_only=True)
class InboundRequest:
    """A framework-neutral HTTP request for :meth:`Channel.handle_inbound`.

    * ``route``: the :attr:`InboundRoute.name` that matched (``"click/{token}"``);
    * ``method``: the HTTP method, upper-case;
    * ``params``: the route's ``{placeholders}``; ``query``: the query string;
      ``form``: a url-encoded form body (the host parses it);
    * ``headers``: any header mapping the host has (a dict, Flask's or
      Starlette's ``Headers``, a list of pairs); names are made lower-case
      once, here, so :meth:`header` finds ``X-Signature`` whatever the case
      the host used;
    * ``body``: the raw body, for signature checks.
    """

    route: str
    method: str = field(converter=_method)
    params: Mapping[str, str] = field(factory=dict, converter=_plain_map)
    query: Mapping[str, str] = field(factory=dict, converter=_plain_map)
    headers: Mapping[str, str] = field(factory=dict, converter=_header_map)
    body: bytes = b""
    form: Mapping[str, str] = field(factory=dict, converter=_plain_map)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The header ``name`` (any case), or ``default``."""
        return self.headers.get(name.lower(), default)


#: Event types a channel reports back (``MessageEvent.type``).  What the core
#: does with each is in ``docs/channels.md`` ("Event types").
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

#: Event types that are about one message: applied only when ``message_id``
#: names a message ecrm sent (an event without one, or naming an unknown one,
#: is ignored).  The others (``unsubscribed``, ``resubscribed``, ``replied``)
#: may come without a message and are then matched to a customer through
#: ``customer_id`` or the customer's stored identities.
MESSAGE_EVENTS = frozenset({"delivered", "bounced", "soft_bounced", "complained", "opened", "clicked"})

#: The interaction kind each event type puts on the customer's timeline
#: (``opened`` on the ``email`` channel is ``email_open``).
EVENT_KINDS: Mapping[str, str] = {
    "delivered": "message_delivered",
    "bounced": "bounce",
    "soft_bounced": "bounce",
    "complained": "complaint",
    "unsubscribed": "unsubscribe",
    "resubscribed": "resubscribe",
    "opened": "message_opened",
    "clicked": "click",
    "replied": "reply",
}


@frozen(kw_only=True)
class MessageEvent:
    """Something that happened to a sent message, or to an address.

    * ``type``: one of :data:`EVENT_TYPES`; ``channel``: the channel's name;
    * ``message_id``: the :attr:`Message.id` the event is about.  When given,
      the event is applied only in that message's workspace, to that
      message's customer, and only if ``address`` (when given) is that
      message's recipient (compared after :meth:`Channel.normalize_address`)
      and ``customer_id``/``workspace`` (when given) agree; an unknown id is
      ignored.  The types in :data:`MESSAGE_EVENTS` need it;
    * ``address``: the recipient the provider names (a DSN's
      ``Final-Recipient``, the number a STOP came from).  Without a message,
      the customer is found through the channel's stored identities
      (:attr:`~ecrm_core.registry.ChannelSpec.identities`), then through the
      latest message sent to that address, in the event's workspace;
    * ``customer_id``: when the channel knows the customer (a signed
      preference-page token); ``workspace``: the workspace to act in when no
      message tells it (default: the customer's own, else the workspace of
      the view applying the event);
    * ``purpose`` (``unsubscribed``/``resubscribed``): a purpose name, or
      ``None`` for the whole channel;
    * ``occurred_at``: when it happened (default: now); ``url``: the link
      clicked; ``detail``: the provider's words (``550 5.1.1 …``), kept on the
      timeline and in a suppression's ``detail``; ``properties``: more plain
      data for the timeline;
    * ``key``: makes the event idempotent: the same key twice is applied once
      (a replayed webhook or link).

    What is ignored is logged with the reason and reported by
    :meth:`~ecrm_core.services.messages.Messages.apply` (never raised).
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
    """What to answer an inbound request with, and the events it carries.

    ``status``, ``body``, ``content_type`` and ``headers`` are the HTTP
    answer (the host sends them as they are); ``events`` are the
    :class:`MessageEvent` objects the core applies after the handler returns
    (:meth:`redirect` answers ``303`` with a ``location``).
    """

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

    def render_many(
        self,
        template: Any,
        contexts: Sequence[Mapping[str, Any]],
        *,
        message_ids: Sequence[str],
        purpose: str,
    ) -> list[Content | TemplateError]:
        """Render ``template`` once per context: one result per context, in order.

        The pipeline calls this once per chunk of a send.  A context that
        cannot be rendered gets a :class:`TemplateError` *in its place* (never
        raised), so one customer's data cannot stop the others.  The default
        calls :meth:`render` for each; any other exception it raises is
        converted to a ``TemplateError`` whose ``__cause__`` is the original
        (the pipeline then reports it as a plugin fault, naming its type).
        Override it to render a chunk at once (in a worker process, say),
        keeping this signature and contract.
        """
        if len(contexts) != len(message_ids):
            raise ValueError("render_many: one message id per context")
        out: list[Content | TemplateError] = []
        for context, message_id in zip(contexts, message_ids, strict=True):
            try:
                out.append(self.render(template, context, message_id=message_id, purpose=purpose))
            except TemplateError as exc:
                out.append(exc)
            except Exception as exc:
                out.append(as_template_error(exc))
        return out

    def normalize_address(self, address: str) -> str:
        """``address`` in the form the channel compares addresses in (an
        inbound event's address against a message's recipient).  The default
        (:func:`normalize_address`): surrounding white space removed, an
        address with ``@`` lower-cased, a phone number in E.164 form."""
        return normalize_address(address)

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


def as_template_error(exc: BaseException) -> TemplateError:
    """``exc`` as a :class:`TemplateError` (itself if it is one).  An ecrm error
    keeps its message; anything else is named by its type.  ``__cause__`` is
    the original exception, traceback included."""
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, EcrmError):
        err = TemplateError(str(exc))
    else:
        text = str(exc)
        err = TemplateError(f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__)
    err.__cause__ = exc
    if not isinstance(exc, EcrmError):
        err.original = exc
    return err


def normalize_address(address: str) -> str:
    """The default :meth:`Channel.normalize_address`: white space stripped;
    an address with ``@`` lower-cased; something that parses as a phone
    number in E.164 form (``+14155550101``); anything else as it is."""
    text = str(address).strip()
    if "@" in text:
        return text.lower()
    if text and len(text) <= 40 and all(ch.isdigit() or ch in "+-. ()" for ch in text):
        from .domain import Alias

        try:
            return Alias("phone", text).value
        except (EcrmError, ValueError):
            return text
    return text


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
