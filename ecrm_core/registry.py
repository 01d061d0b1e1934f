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

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from attrs import field, frozen

from .validation import check_slug

__all__ = [
    "InteractionKind",
    "LifecycleStage",
    "AttributeDef",
    "ChannelSpec",
    "ConditionType",
    "StrategySpec",
    "AdminPage",
    "MigrationSource",
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


@frozen(kw_only=True)
class AdminPage:
    """A server-rendered admin page contributed by a plugin."""

    path: str
    title: str
    handler: Callable[..., Any]
    nav_section: str | None = None
    plugin: str | None = None


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
    routes: tuple[Any, ...]
    migrations: Mapping[str, MigrationSource]
    #: :class:`~ecrm_core.channels.Purpose` objects, by name (hook API 1.1).
    purposes: Mapping[str, Any] = field(factory=dict)
