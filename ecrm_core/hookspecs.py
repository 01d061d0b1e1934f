"""Hook specifications: the whole plugin API of ecrm in one module.

Every hook is named ``ecrm_*``.  A plugin implements a hook by defining a
function of the same name decorated with :data:`ecrm_core.hookimpl`; it may
accept *fewer* arguments than the spec lists (pluggy passes only the ones it
names), so adding an argument to a spec never breaks a plugin.

Three families:

* **Registration** (``ecrm_register_*``) — called once, when a
  :class:`~ecrm_core.CRM` is built.  Each returns a list of objects from
  :mod:`ecrm_core.registry` (or ``None``).  Results of all plugins are merged;
  a name registered twice is a :class:`~ecrm_core.errors.PluginError` naming
  both plugins.  Order never matters.
* **Events** (``ecrm_customers_*``, ``ecrm_interactions_*``,
  ``ecrm_segment_*``, ``ecrm_lifecycle_changed``) — notifications
  fired *after* the core's write committed.  Return values are ignored.  Each
  implementation is called in isolation: one that raises is logged against
  its plugin and recorded in ``crm.plugins.failures``; the others still run
  and the core's write is kept.  Events are batch-aware: bulk calls fire
  once per committed batch, never once per row.
* **Transactional** (``ecrm_interactions_inserted``,
  ``ecrm_customers_merging``, ``ecrm_customers_deleting``) — called
  *inside* the core's write transaction, before its COMMIT, with its
  connection, so a plugin's rows commit (or roll back) together with the
  core's.  For the first two each implementation runs in its own
  SAVEPOINT: one that raises is rolled back to it, logged and recorded like
  a failing event, and the core's write (and the other plugins' writes)
  still commit.  ``ecrm_customers_deleting`` is all or nothing: an
  erasure is complete or not done, so one implementation that raises is
  recorded and the whole deletion rolls back with a
  :class:`~ecrm_core.errors.PluginError` naming it.
* **Lifecycle** (``ecrm_startup``/``ecrm_shutdown``) — once per CRM.
* **Queries** (``ecrm_computed_attributes``) — called whenever the core
  needs what plugins know about some customers; the answers of all plugins
  are merged.  One that raises is recorded like a failing event and left
  out; the others still answer.

The version of this API is :data:`HOOK_API_VERSION`; a plugin module may set
``ECRM_HOOK_API = ">=1,<2"`` and is refused with a clear error outside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click
    import sqlalchemy as sa

    from .channels import MessageEvent, Purpose
    from .crm import CRM
    from .domain import Alias, Customer, CustomerChange, InteractionBatch, MergeRecord
    from .registry import (
        AdminPage,
        AdminWidget,
        AttributeDef,
        ChannelSpec,
        ConditionType,
        DemoStage,
        InteractionKind,
        JobSpec,
        LifecycleStage,
        MigrationSource,
        StrategySpec,
    )
    from .services.lifecycle import StageChange
    from .services.messages import Outcome
    from .services.segments import Segment
    from .storage import Naming

#: The hook API version this core implements (``major.minor``).  Minor
#: versions only add hooks or arguments; a major version removes or changes.
HOOK_API_VERSION = "1.8"

hookspec = pluggy.HookspecMarker("ecrm")
hookimpl = pluggy.HookimplMarker("ecrm")

#: Hooks whose implementations are isolated notifications (see module doc).
EVENT_HOOKS = (
    "ecrm_customers_created",
    "ecrm_customers_updated",
    "ecrm_customers_merged",
    "ecrm_customers_deleted",
    "ecrm_interactions_recorded",
    "ecrm_segment_entered",
    "ecrm_segment_exited",
    "ecrm_lifecycle_changed",
    "ecrm_messages_dispatched",
    "ecrm_message_events",
)

#: Hooks called inside the core's transaction, each implementation in its own SAVEPOINT.
TRANSACTIONAL_HOOKS = ("ecrm_interactions_inserted", "ecrm_customers_merging", "ecrm_customers_deleting")


# ---------------------------------------------------------------------------
# Registration hooks: called once per CRM, results merged by name
# ---------------------------------------------------------------------------


@hookspec
def ecrm_register_interaction_kinds(crm: CRM) -> Sequence[InteractionKind] | None:
    """Interaction kinds that ``track`` accepts.

    :param crm: the CRM being built.
    :return: a list of :class:`~ecrm_core.registry.InteractionKind`.

    The core's own kinds (``purchase``, ``page_view``, ``email_open``,
    ``click``, ``complaint``…) come from the default plugin
    ``ecrm_core.default_plugins.kinds``.  A kind not registered by any plugin
    is rejected by ``track`` with a "did you mean" suggestion.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_lifecycle_stages(crm: CRM) -> Sequence[LifecycleStage] | None:
    """Lifecycle stages a customer can be in, each mapped to acquisition,
    cultivation or retention.

    :return: a list of :class:`~ecrm_core.registry.LifecycleStage`.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_attributes(crm: CRM) -> Sequence[AttributeDef] | None:
    """Typed customer attributes (e.g. ``rfm_score`` from an analytics plugin).

    :return: a list of :class:`~ecrm_core.registry.AttributeDef`.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_channels(crm: CRM) -> Sequence[ChannelSpec] | None:
    """Channels through which messages reach customers (email, sms, social…).

    :return: a list of :class:`~ecrm_core.registry.ChannelSpec`.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_message_purposes(crm: CRM) -> Sequence[Purpose] | None:
    """Why messages are sent — the "kinds of mail" a customer can opt out of.

    :return: a list of :class:`~ecrm_core.channels.Purpose`.

    The core registers ``transactional`` (receipts, password resets: no
    marketing consent needed) and ``marketing``.  A purpose is what a
    preference page lists and what a one-click unsubscribe opts out of;
    consent for it is stored as ``consent["<channel>:<purpose>"]``.

    .. versionadded:: 1.1
    """


@hookspec
def ecrm_register_condition_types(crm: CRM) -> Sequence[ConditionType] | None:
    """Condition types for segment and offer-eligibility rules.

    :return: a list of :class:`~ecrm_core.registry.ConditionType`.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_strategies(crm: CRM) -> Sequence[StrategySpec] | None:
    """Personalization strategies.

    :return: a list of :class:`~ecrm_core.registry.StrategySpec`.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_routes(crm: CRM) -> Sequence[Any] | None:
    """HTTP route handlers (Litestar handlers or routers) to mount in the API.

    :return: a list of route handlers; the API layer mounts them under its
        prefix.  The core does not import the web framework, and calls this
        hook only when the routes are first read (``crm.registry.routes``,
        by the API's app factory): a CRM that serves no HTTP never imports
        them, so keep the handlers' imports inside the implementation.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_admin_pages(crm: CRM) -> Sequence[AdminPage] | None:
    """Server-rendered admin pages.

    :return: a list of :class:`~ecrm_core.registry.AdminPage`: a ``path``
        relative to the admin's mount point, a ``title``, a
        ``handler(request)`` returning text, ``__html__`` markup, a
        :class:`~ecrm_core.charts.Chart` or a list of those, and (API 1.6)
        the lowest ``role`` that may open it (``agent``, ``marketer``,
        ``admin``), its ``methods``, ``nav``/``nav_section``/``order`` for
        the navigation.

    The admin (``ecrm-admin``) mounts each page under its own path, behind
    its login, role check and CSRF check; a handler that raises is shown as
    an error box and recorded, the rest of the admin keeps working.  Keep
    the handler's imports inside it.

    .. versionadded:: 1.0
    .. versionchanged:: 1.6 ``role``, ``methods``, ``nav`` and ``order``.
    """


@hookspec
def ecrm_register_admin_widgets(crm: CRM) -> Sequence[AdminWidget] | None:
    """Boxes on the admin's customer (360°) view: value scores, the
    personalization a customer gets, loyalty points, open cases…

    :param crm: the CRM being built.
    :return: a list of :class:`~ecrm_core.registry.AdminWidget`: a ``name``,
        a ``title``, ``render(crm, customer)`` returning what to show (like
        an admin page handler) or ``None``, the lowest ``role`` that sees it
        and an ``order``.

    Widgets are rendered on every load of the customer view, each isolated:
    one that raises becomes an error box and is recorded.

    .. versionadded:: 1.6
    """


@hookspec
def ecrm_computed_attributes(crm: CRM, customer_ids: Sequence[int]) -> Mapping[int, Mapping[str, Any]] | None:
    """Attributes a plugin computes about customers and keeps in its own
    tables (value scores, predictions, groups), offered wherever a person's
    attributes are read, without copying them into ``customers.attributes``.

    :param crm: the CRM.
    :param customer_ids: the customers asked about (a batch: up to a few
        thousand; answer with one bounded query, not one per customer).
    :return: ``{customer_id: {name: value}}`` for the customers the plugin
        knows (plain JSON values; prefix the names with the plugin's, e.g.
        ``rfm_group``), or ``None``.

    The core calls it for the customers of each chunk of a send, so every
    template reads the values as ``customer.attributes.<name>``, and
    :meth:`crm.customers.computed <ecrm_core.services.customers.Customers.computed>`
    gives them to plugins (personalization, the admin).  A stored attribute
    of the same name wins; between plugins, the first answer for a name wins.

    .. versionadded:: 1.7
    """


@hookspec
def ecrm_register_jobs(crm: CRM) -> Sequence[JobSpec] | None:
    """Kinds of job that ``ecrm worker`` runs: delivery, campaign steps,
    ingest processing, scheduled refreshes…

    :param crm: the CRM being built.
    :return: a list of :class:`~ecrm_core.registry.JobSpec`: a dotted
        ``name`` (``"<plugin>.<what>"``), a ``tick(ctx)`` callable that does
        one bounded, crash-safe unit of work and returns a
        :class:`~ecrm_core.registry.JobResult`, its ``scope`` (per workspace
        or global), its idle interval ``every`` and whether it is
        ``exclusive`` (at most one tick per workspace across all workers,
        enforced with a lease row in the database).

    The core registers ``messages.deliver`` and ``segments.refresh`` from
    the default plugin ``core.jobs``.  The executor that runs the ticks is a
    driver (``ecrm.executors``, default ``inprocess``); a tick receives all
    it may depend on in its :class:`~ecrm_core.registry.JobContext` and
    keeps no state in the process, so a distributed executor can run
    consecutive ticks anywhere.

    .. versionadded:: 1.3
    """


@hookspec
def ecrm_register_demo_stages(crm: CRM) -> Sequence[DemoStage] | None:
    """Stages a plugin adds to ``ecrm demo``, so a newcomer sees what it does.

    :param crm: the CRM in the demo's workspace.
    :return: a list of :class:`~ecrm_core.registry.DemoStage`: a dotted
        ``name``, a ``title``, ``run(crm, progress)`` returning a rich
        renderable or a string, and an ``order``.

    The stages run after the core's sample shop is built (or reused), in
    ``order``; each is isolated: one that raises is shown with its error and
    the rest still run.  Keep heavy imports inside ``run``.

    .. versionadded:: 1.4
    """


@hookspec
def ecrm_register_commands(cli: click.Group) -> None:
    """Add commands to the ``ecrm`` command line.

    :param cli: the top-level :class:`click.Group`; add commands or groups
        to it with ``cli.add_command(...)`` or ``@cli.command()``.

    Called when the CLI starts, before arguments are parsed, so keep it
    cheap: import heavy modules inside your command functions.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the plugin's own tables on ecrm's :class:`~sqlalchemy.MetaData`.

    :param metadata: the CRM's metadata (carries the configured schema).
    :param naming: use ``naming.table("stats")`` for table names so the
        host's table prefix applies.

    Create the tables themselves through a migration branch
    (:func:`ecrm_register_migrations`); this hook makes them available as
    ``crm.db.tables[...]`` for queries.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_register_migrations() -> Sequence[MigrationSource] | None:
    """Alembic version directories with the plugin's own migration branch.

    :return: a list of :class:`~ecrm_core.registry.MigrationSource`.

    .. versionadded:: 1.0
    """


# ---------------------------------------------------------------------------
# Event hooks: after commit, isolated, batch-aware
# ---------------------------------------------------------------------------


@hookspec
def ecrm_customers_created(crm: CRM, customers: Sequence[Customer]) -> None:
    """Customers were created (one call per committed batch).

    :param customers: the stored customers, with their ids.

    Fired after commit; return value ignored; a raising implementation is
    isolated and recorded (see the failure policy).

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_customers_updated(crm: CRM, changes: Sequence[CustomerChange]) -> None:
    """Customers were changed (fields, attributes, consent or stage).

    :param changes: one :class:`~ecrm_core.domain.CustomerChange` (before,
        after, ``changed`` field names) per customer.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    """A customer was merged into another.

    :param merge: the audit record: source (now a tombstone redirecting to
        the target), target, and how many interactions and aliases moved.

    Fired after the merge committed (and not at all if the process dies
    right after the COMMIT): move per-customer rows in
    ``ecrm_customers_merging``, in the merge's transaction; recompute
    derived data here.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_customers_merging(crm: CRM, conn: sa.Connection, merge: MergeRecord) -> None:
    """A customer is being merged into another: move, with ``conn``, what the
    plugin keeps about the source onto the target.

    Called inside the merge's transaction, after the core moved its rows
    (interactions, aliases, consent) and wrote the audit record, before the
    COMMIT: the plugin's rows move together with the core's, so a process
    killed right after the COMMIT cannot leave them on the source (a
    tombstone).  Each implementation runs in its own SAVEPOINT: one that
    raises is rolled back to it and recorded in ``crm.plugins.failures``;
    the merge and the other plugins' moves still commit (the failed
    plugin's rows stay on the source, which redirects to the target).  The
    write lock is held: a few set-based statements; recompute derived data
    (scores, models) in ``ecrm_customers_merged`` or a worker job, after
    the COMMIT.  Never COMMIT or ROLLBACK ``conn``.

    :param merge: the audit record, as ``ecrm_customers_merged`` gets it.

    .. versionadded:: 1.8
    """


@hookspec
def ecrm_customers_deleting(
    crm: CRM, conn: sa.Connection, customer_ids: Sequence[int], aliases: Sequence[Alias]
) -> None:
    """Customers are being deleted: erase, with ``conn``, what the plugin keeps
    about them in the database.

    Called inside the delete's transaction, after the core's rows are gone
    and before the COMMIT: the plugin's erasure commits together with the
    core's, so no crash, kill or failing hook can leave a deleted person's
    data behind in a plugin's tables (an ``ecrm_customers_deleted``
    implementation runs only after the COMMIT, and not at all if the
    process dies in between).

    All or nothing: an implementation that raises is recorded in
    ``crm.plugins.failures``, the whole deletion rolls back (the customer
    and every plugin's rows stay) and ``crm.customers.delete`` raises
    :class:`~ecrm_core.errors.PluginError` naming the plugin.  The write lock
    is held: keep it to a few set-based statements.  Never COMMIT or
    ROLLBACK ``conn``.  Work outside the database (files, caches, other
    systems) belongs in ``ecrm_customers_deleted``.

    :param conn: the connection of the delete's transaction.
    :param customer_ids: the customer and the tombstones of the customers
        merged into it.
    :param aliases: every identity they had, as for ``ecrm_customers_deleted``.

    .. versionadded:: 1.8
    """


@hookspec
def ecrm_customers_deleted(crm: CRM, customer_ids: Sequence[int], aliases: Sequence[Alias]) -> None:
    """Customers were deleted, with everything ecrm kept about them.

    :param customer_ids: the deleted ids: the customer and the tombstones of
        the customers that had been merged into it.
    :param aliases: every identity the deleted customers had, read inside
        the delete's transaction before the rows went: their alias rows
        (``external``, ``email``, ``phone``, ``anonymous``, plugins' kinds)
        and the identity columns of the customer rows, as
        :class:`~ecrm_core.domain.Alias` objects, sorted, each once.

    Fired after the delete committed (and not at all if the process dies
    right after the COMMIT): erase rows in ecrm's database in
    ``ecrm_customers_deleting`` instead, in the delete's transaction.  Here,
    erase what lives outside it (files, caches, rows in other systems).  In
    both hooks, data kept by *identity* rather than by customer id (messages
    waiting in an inbox, rejected messages, rows keyed by e-mail) is found
    through ``aliases``.

    .. versionadded:: 1.0
    .. versionchanged:: 1.5
       ``aliases`` (an implementation that does not name it is unaffected).
    """


@hookspec
def ecrm_interactions_recorded(crm: CRM, batch: InteractionBatch) -> None:
    """Interactions were stored (one call per committed batch).

    :param batch: :class:`~ecrm_core.domain.InteractionBatch`; use
        ``batch.customer_ids`` / ``batch.kinds`` for cheap set-based work,
        iterate it for :class:`~ecrm_core.domain.Interaction` objects.
        Duplicates dropped by idempotency keys are not in the batch.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_interactions_inserted(crm: CRM, conn: sa.Connection, batch: InteractionBatch) -> None:
    """Interactions were inserted and are not committed yet (one call per batch).

    Called inside the transaction that stores ``batch``, right after its
    INSERT and before the COMMIT (for ``track_many(atomic=True)``, once per
    ``batch_size`` rows, all in the one transaction).  Write the plugin's
    derived rows (aggregates, points, counters) with ``conn``: they become
    durable in the same COMMIT as the interactions, and vanish with them if
    the transaction rolls back (a later bad row with ``on_error="raise"``, or
    the host's own ROLLBACK when ecrm works inside the host's transaction).

    Each implementation runs inside its own SAVEPOINT.  One that raises is
    rolled back to it, logged against its plugin and recorded in
    ``crm.plugins.failures``; the interactions and the other plugins' writes
    still commit.  The write lock is held meanwhile: keep it set-based (one
    statement per batch; on SQLite ``batch.ids`` is the batch's id range).
    Never COMMIT or ROLLBACK ``conn``.  ``ecrm_interactions_recorded`` fires
    later, after the COMMIT, with the same batch.

    :param conn: the connection of the core's transaction.
    :param batch: :class:`~ecrm_core.domain.InteractionBatch`, as for
        ``ecrm_interactions_recorded``.

    .. versionadded:: 1.2
    """


@hookspec
def ecrm_segment_entered(crm: CRM, segment: Segment, customer_ids: Sequence[int]) -> None:
    """Customers became members of a segment (one call per segment per refresh).

    Fires after the membership change is committed, exactly once per
    change: a customer who enters is reported once, however many refreshes
    (or concurrent refreshes) run.  Campaigns trigger on this.

    :param segment: the :class:`~ecrm_core.services.segments.Segment` after
        the change (``member_count`` is current).
    :param customer_ids: the customers who entered, in no particular order.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_segment_exited(crm: CRM, segment: Segment, customer_ids: Sequence[int]) -> None:
    """Customers stopped being members of a segment; like :func:`ecrm_segment_entered`.

    Deleting a segment does not fire it.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_lifecycle_changed(crm: CRM, changes: Sequence[StageChange]) -> None:
    """Customers moved between lifecycle stages (one call per refresh).

    :param changes: :class:`~ecrm_core.services.lifecycle.StageChange`
        objects (``customer_id``, ``before``, ``after``, ``phase``), after
        the change is committed.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_messages_dispatched(crm: CRM, outcomes: Sequence[Outcome]) -> None:
    """Delivery attempts finished (one call per committed dispatch batch).

    :param outcomes: :class:`~ecrm_core.services.messages.Outcome` objects
        (``message`` uid, ``customer_id``, ``channel``, ``purpose``,
        ``status`` — ``sent``, ``retrying`` or ``dead`` — and the channel's
        :class:`~ecrm_core.channels.DeliveryResult`).  Campaigns and
        analytics count sends here; the core already logged each attempt
        and put it on the customer's timeline.

    .. versionadded:: 1.1
    """


@hookspec
def ecrm_message_events(crm: CRM, events: Sequence[MessageEvent]) -> None:
    """Events came back from a channel (opens, clicks, bounces, complaints,
    unsubscribes, replies), after the core applied them (suppressions,
    consent, timeline).  A replayed event (same ``key``) is not reported
    twice.

    :param events: :class:`~ecrm_core.channels.MessageEvent` objects, with
        ``customer_id`` filled in where the core could resolve it.

    .. versionadded:: 1.1
    """


# ---------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------


@hookspec
def ecrm_startup(crm: CRM) -> None:
    """The CRM was built and every plugin registered.

    Start background resources here (not at import).  A raising
    implementation is isolated and recorded like an event hook.

    .. versionadded:: 1.0
    """


@hookspec
def ecrm_shutdown(crm: CRM) -> None:
    """``crm.close()`` was called: release what ``ecrm_startup`` acquired.

    .. versionadded:: 1.0
    """
