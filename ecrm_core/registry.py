# mypy: disable-error-code="misc"
# (the attrs mypy plugin cannot see through the _slug converter factory)
"""What plugins register: small frozen attrs objects, one per concern.

Registration hooks (``ecrm_register_*``) return lists of these.  The core
collects them once when a :class:`~ecrm_core.CRM` is built, checks that names
are unique, and exposes them through ``crm.registry``.  Each object carries
``plugin``, filled in by the core with the name of the plugin that returned
it, so an error or a listing can say where a thing came from.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from attrs import field, frozen

from .errors import ValidationError
from .validation import check_slug

__all__ = [
    "InteractionKind",
    "LifecycleStage",
    "AttributeDef",
    "ChannelSpec",
    "ConditionType",
    "StrategySpec",
    "AdminPage",
    "AdminWidget",
    "ADMIN_ROLES",
    "MigrationSource",
    "JobSpec",
    "JobResult",
    "JobContext",
    "DemoStage",
    "Registry",
]


def _strings(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _opt_strings(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _slug(what: str) -> Any:
    return lambda v: check_slug(v, "name", what)


@frozen(kw_only=True)
class InteractionKind:
    """A kind of interaction ``track`` accepts (``purchase``, ``page_view``…).

    ``sale`` kinds may carry an amount; ``lifecycle`` hints whether the kind
    signals acquisition, cultivation or retention activity.
    """

    name: str = field(converter=_slug("interaction kind"))
    description: str = ""
    sale: bool = False
    plugin: str | None = None


Phase = Literal["acquisition", "cultivation", "retention"]


@frozen(kw_only=True)
class LifecycleStage:
    """A lifecycle stage a customer can be in, mapped to a CRM phase."""

    name: str = field(converter=_slug("lifecycle stage"))
    phase: Phase
    description: str = ""
    order: int = 0
    #: The default rule that puts a customer in this stage (text or tree);
    #: hosts override it per workspace with ``crm.lifecycle.set_rules``.
    rule: str | Mapping[str, Any] | None = None
    #: Rules are tried by ascending precedence; the first that holds wins.
    precedence: int = 100
    plugin: str | None = None


@frozen(kw_only=True)
class AttributeDef:
    """A typed customer attribute (``attributes[name]``), e.g. computed by analytics.

    Declaring an attribute lets rules, the API and templates know its type.
    """

    name: str = field(converter=_slug("attribute name"))
    type: Literal["string", "number", "integer", "boolean", "datetime", "list"]
    description: str = ""
    plugin: str | None = None


def _identity_kinds(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    return tuple(check_slug(v, "identities", "identity kind") for v in value)


@frozen(kw_only=True)
class ChannelSpec:
    """A channel (email, sms, social, loyalty…).

    ``factory(crm)`` builds the channel object once per CRM; its interface is
    defined by the channel API.  ``capabilities`` are free-form flags
    (``templates``, ``receipts``, ``inbound``) the delivery pipeline reads.

    ``identities``: the identity (alias) kinds that hold this channel's
    addresses, so that an inbound event naming only an address (a STOP
    reply from a number never texted) finds its customer through stored
    identities: e.g. ``("phone",)`` for SMS, ``("push_token",)`` for a
    channel addressing customers by an alias of its own.  ``None`` (the
    default): an address containing ``@`` is looked up as an ``email``
    identity, any other as a ``phone`` identity.  ``()``: no identity
    lookup (only earlier messages to that address are used).
    """

    name: str = field(converter=_slug("channel name"))
    factory: Callable[[Any], Any]
    capabilities: frozenset[str] = field(factory=frozenset, converter=_strings)
    description: str = ""
    plugin: str | None = None
    identities: tuple[str, ...] | None = field(default=None, converter=_identity_kinds)


@frozen(kw_only=True)
class ConditionType:
    """A condition usable in segment, lifecycle and offer-eligibility rules.

    A rule uses it as ``{"condition": name, "args": {...}}`` (text:
    ``name(key=value, ...)``).  The two evaluators must agree, and the rules
    engine's property tests check the core's own conditions the same way:

    - ``compile(args, ctx)`` returns a SQLAlchemy boolean clause over
      ``ctx.customers`` (a :class:`~ecrm_core.rules.SqlContext`); it must
      never be NULL (wrap nullable expressions in ``coalesce``) and must only
      use bound parameters for values.
    - ``evaluate(args, ctx)`` answers for one customer in memory
      (a :class:`~ecrm_core.rules.EvalContext`).
    - ``validate(args)`` (optional) checks and normalises the arguments,
      raising :class:`~ecrm_core.errors.ValidationError`; the engine adds
      the path in the rule to the error.
    - ``kinds``: the interaction kinds whose arrival can change the answer
      (``None``: any interaction or customer change can), so that
      incremental refresh re-evaluates only what may have changed.
    """

    name: str = field(converter=_slug("condition type"))
    compile: Callable[..., Any]
    evaluate: Callable[..., bool]
    validate: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    kinds: frozenset[str] | None = field(default=None, converter=_opt_strings)
    description: str = ""
    plugin: str | None = None


@frozen(kw_only=True)
class StrategySpec:
    """A personalization strategy (cosmetic, transparent, adaptive, collaborative…)."""

    name: str = field(converter=_slug("strategy name"))
    kind: str
    factory: Callable[[Any], Any]
    description: str = ""
    plugin: str | None = None


#: The admin's roles, lowest first; each includes the ones before it.  They
#: match the API's scopes: ``agent`` reads (``read``), ``marketer`` also
#: changes segments, offers, templates and campaigns (``write``), ``admin``
#: may do everything (``admin``).
ADMIN_ROLES = ("agent", "marketer", "admin")

_ADMIN_PATH = re.compile(r"^(/[A-Za-z0-9_.\-]+|/\{[a-z_][a-z0-9_]*(:(str|int))?\})+$")


def _admin_role(value: Any) -> str:
    if value not in ADMIN_ROLES:
        raise ValidationError("role", value, "not an admin role", f"use one of {', '.join(ADMIN_ROLES)}")
    return str(value)


def _admin_path(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200 or not _ADMIN_PATH.match(value):
        raise ValidationError(
            "path",
            value,
            "not an admin page path",
            "use '/name' segments of letters, digits, '_', '.', '-', and '{param}' or '{param:int}' "
            "for path parameters, e.g. '/loyalty/{program}'",
        )
    return value


def _methods(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    out = tuple(str(m).upper() for m in value)
    if not out or any(m not in ("GET", "POST") for m in out):
        raise ValidationError("methods", value, "not GET/POST", "admin pages answer GET and POST (forms) only")
    return out


@frozen(kw_only=True)
class AdminPage:
    """A server-rendered admin page contributed by a plugin.

    ``path`` is relative to where the admin is mounted (``/loyalty``,
    ``/loyalty/{program}``); ``handler(request)`` gets an
    :class:`ecrm_admin.AdminRequest` (the workspace's ``crm``, the ``user``,
    ``params``, ``query``, ``form``…) and returns what to show: a ``str``
    (shown as text, escaped), an object with ``__html__`` (a
    ``markupsafe.Markup`` the plugin built with escaping: trusted HTML), a
    :class:`~ecrm_core.charts.Chart` (drawn as SVG), or a list of those.
    ``role``: the lowest role that may open it (:data:`ADMIN_ROLES`);
    ``methods``: ``("GET",)`` or also ``"POST"`` (forms; the admin checks
    their CSRF token before the handler runs).  ``nav_section`` groups the
    navigation entry; ``nav=False`` leaves the page out of the navigation
    (detail pages).  A handler that raises is isolated: the admin shows an
    error box in its place and records the failure
    (``crm.plugins.failures``), shown on the admin's plugins page.
    """

    path: str = field(converter=_admin_path)
    title: str
    handler: Callable[..., Any]
    nav_section: str | None = None
    plugin: str | None = None
    #: hook API 1.6: the lowest role that may open the page
    role: str = field(default="agent", converter=_admin_role)
    #: hook API 1.6: HTTP methods (GET, POST)
    methods: tuple[str, ...] = field(default=("GET",), converter=_methods)
    #: hook API 1.6: listed in the navigation
    nav: bool = True
    #: hook API 1.6: position in its navigation section (then title)
    order: int = 100


@frozen(kw_only=True)
class AdminWidget:
    """A box on the admin's customer (360°) view, contributed by a plugin (hook API 1.6).

    ``render(crm, customer)`` gets the workspace's CRM and the
    :class:`~ecrm_core.domain.Customer` and returns what to show, like an
    :class:`AdminPage` handler (text, ``__html__``, a
    :class:`~ecrm_core.charts.Chart`, a list of those) or ``None`` to show
    nothing for this customer.  Keep it one bounded query: the view renders
    every widget on each page load.  A widget that raises is isolated (an
    error box, the failure recorded).  ``role``: the lowest role that sees it.
    """

    name: str = field(converter=_slug("admin widget"))
    title: str
    render: Callable[[Any, Any], Any]
    role: str = field(default="agent", converter=_admin_role)
    order: int = 100
    plugin: str | None = None

    def __attrs_post_init__(self) -> None:
        if not callable(self.render):
            raise ValidationError("render", self.render, "not callable", "pass a function render(crm, customer)")


@frozen(kw_only=True)
class MigrationSource:
    """An Alembic version directory a plugin ships for its own tables.

    ``location`` is the directory (or ``package:subdir``); its first revision
    sets ``branch_labels=(branch,)`` and ``depends_on`` the core revision it
    needs, so ``ecrm db upgrade`` installs the plugin's tables after the
    core's.  ``metadata(naming)`` (optional) returns the plugin's
    :class:`sqlalchemy.MetaData` for drift checks.
    """

    branch: str = field(converter=_slug("migration branch"))
    location: str
    plugin: str | None = None


_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _job_name(value: Any) -> str:
    if not isinstance(value, str) or not _JOB_NAME.match(value) or len(value) > 64:
        raise ValidationError(
            "name",
            value,
            "not a valid job name",
            "use a dotted name of lower-case parts, '<plugin>.<what>' (max 64 chars), e.g. 'messages.deliver'",
        )
    return value


def _seconds(field_name: str, minimum: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= 366 * 86400:
            raise ValidationError(
                field_name, value, f"not a duration between {minimum} s and a year", "pass seconds or a timedelta"
            )
        return float(value)

    return convert


@frozen(kw_only=True)
class JobResult:
    """What one tick of a job did (returned by :attr:`JobSpec.tick`).

    ``done``: how many items the tick handled (messages sent, customers
    refreshed…); ``more``: work is still pending *now*, so the worker ticks
    the job again at once instead of waiting its interval; ``delay``: run the
    next tick after this many seconds instead of the job's ``every`` (a hint:
    e.g. the next message is due in 40 s); ``message``: a short line for
    ``ecrm worker status``.
    """

    done: int = 0
    more: bool = False
    delay: float | None = None
    message: str | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.done, bool) or not isinstance(self.done, int) or self.done < 0:
            raise ValidationError("done", self.done, "not a count", "return JobResult(done=<int >= 0>)")
        if self.delay is not None and (isinstance(self.delay, bool) or not 0 <= self.delay <= 366 * 86400):
            raise ValidationError("delay", self.delay, "not a delay in seconds", "use 0 .. one year, or None")


@frozen(kw_only=True)
class JobContext:
    """What a tick is given: everything it may depend on.

    A tick must not keep state in the process between calls (a distributed
    executor runs consecutive ticks in different processes): what it needs
    to remember belongs in the database.

    ``crm``: the CRM in the tick's workspace (for a ``global`` job, the
    CRM's default workspace); ``workspace``: that workspace, or ``None`` for
    a global job; ``job``: the :class:`JobSpec`; ``stopping()``: true once
    the worker was asked to stop — a long tick should return early (its work
    so far committed) when it turns true.
    """

    crm: Any
    job: JobSpec
    workspace: str | None
    stopping: Callable[[], bool] = lambda: False


JobScope = Literal["workspace", "global"]


@frozen(kw_only=True)
class JobSpec:
    """A kind of job that ``ecrm worker`` runs (``messages.deliver``, ``segments.refresh``…).

    ``tick(ctx)`` does one bounded, crash-safe unit of work and returns a
    :class:`JobResult` (or ``None`` for "nothing done").  It receives a
    :class:`JobContext`.  Crash-safe means: if the process dies in the
    middle, whatever the tick committed stays right and the next tick (in any
    worker) finishes the rest.

    * ``scope``: ``"workspace"`` (the default) — ticked once per workspace the
      worker serves, with a CRM in that workspace; ``"global"`` — ticked once
      for the whole database.
    * ``every``: seconds (or a :class:`~datetime.timedelta`) between ticks
      while the job is idle; a tick that returns ``more=True`` is followed
      at once by the next.
    * ``exclusive``: at most one tick of the job per workspace at a time
      across *all* worker processes — the core takes a lease row in the
      database before the tick and releases it after; the schedule
      (``every``) is then shared by all workers too (a refresh every 15
      minutes runs once per 15 minutes, not once per worker).  Otherwise the
      tick must be safe to run concurrently with itself (claim rows with a
      lease or ``SKIP LOCKED``, as the delivery pipeline does).
    * ``lease``: seconds an exclusive tick may run before another worker may
      consider its worker dead and take over; the worker renews it while the
      tick runs, so it only expires when the process is gone.
    * ``max_backoff``: after failures the job waits 2, 4, 8… seconds, at
      most this long (and at least ``every``), before it is tried again.
    """

    name: str = field(converter=_job_name)
    tick: Callable[[JobContext], JobResult | None]
    scope: JobScope = "workspace"
    every: float = field(default=60.0, converter=_seconds("every", 0.01))
    exclusive: bool = False
    lease: float = field(default=300.0, converter=_seconds("lease", 1.0))
    max_backoff: float = field(default=600.0, converter=_seconds("max_backoff", 0.01))
    description: str = ""
    plugin: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.scope not in ("workspace", "global"):
            raise ValidationError("scope", self.scope, "not a job scope", "use 'workspace' or 'global'")
        if not callable(self.tick):
            raise ValidationError("tick", self.tick, "not callable", "pass a function tick(ctx) -> JobResult")


@frozen(kw_only=True)
class DemoStage:
    """A stage a plugin adds to ``ecrm demo``, run after the core's sample shop is built.

    ``run(crm, progress)`` does the stage's work on the demo workspace (create
    and run a campaign, compute an analytics report…) and returns what to show:
    a rich renderable (a table, a group of them) or a string.  ``progress`` is
    a :class:`~ecrm_core.demo.DemoProgress` for long work (``start(stage,
    total)``, ``advance(n)``).  Stages run in ``order`` (then name); a stage
    that raises is reported with its error and the others still run.  A stage
    must be safe to run again on a demo that already holds its data (``ecrm
    demo`` reuses an existing demo).
    """

    name: str = field(converter=_job_name)
    title: str
    run: Callable[[Any, Any], Any]
    order: int = 100
    plugin: str | None = None

    def __attrs_post_init__(self) -> None:
        if not callable(self.run):
            raise ValidationError("run", self.run, "not callable", "pass a function run(crm, progress) -> renderable")


class LazyRoutes(Sequence[Any]):
    """The handlers of ``ecrm_register_routes``, collected on first use.

    Route handlers import their web framework; a CRM that serves no HTTP (a
    script, the worker, most CLI commands) never asks for them, so building
    it imports none.  The API's app factory reads them once.  A plugin whose
    hook raises is reported the way any hook failure is, when they are read.
    """

    __slots__ = ("_items", "_load", "_lock")

    def __init__(self, load: Callable[[], Iterable[Any]]) -> None:
        self._load: Callable[[], Iterable[Any]] | None = load
        self._items: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def _get(self) -> tuple[Any, ...]:
        items = self._items
        if items is None:
            with self._lock:
                if self._items is None:
                    assert self._load is not None
                    self._items = tuple(self._load())
                    self._load = None
                items = self._items
        return items

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._get())

    def __repr__(self) -> str:
        return f"LazyRoutes({list(self._items)!r})" if self._items is not None else "LazyRoutes(<not read yet>)"


@frozen
class Registry:
    """Everything the loaded plugins registered, by kind then name."""

    interaction_kinds: Mapping[str, InteractionKind]
    lifecycle_stages: Mapping[str, LifecycleStage]
    attributes: Mapping[str, AttributeDef]
    channels: Mapping[str, ChannelSpec]
    condition_types: Mapping[str, ConditionType]
    strategies: Mapping[str, StrategySpec]
    admin_pages: Mapping[str, AdminPage]
    #: route handlers (:class:`LazyRoutes`: the hook runs when they are first read)
    routes: Sequence[Any]
    migrations: Mapping[str, MigrationSource]
    #: :class:`~ecrm_core.channels.Purpose` objects, by name (hook API 1.1).
    purposes: Mapping[str, Any] = field(factory=dict)
    #: :class:`JobSpec` objects, by name (hook API 1.3).
    jobs: Mapping[str, JobSpec] = field(factory=dict)
    #: :class:`DemoStage` objects, by name (hook API 1.4).
    demo_stages: Mapping[str, DemoStage] = field(factory=dict)
    #: :class:`AdminWidget` objects, by name (hook API 1.6).
    admin_widgets: Mapping[str, AdminWidget] = field(factory=dict)
