"""The :class:`CRM` facade: what a host application builds and calls."""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from .domain import DEFAULT_WORKSPACE
from .errors import PluginError, ValidationError
from .plugins import Plugins
from .registry import LazyRoutes, Registry
from .storage import Database, Naming
from .validation import check_slug

__all__ = ["CRM"]

Clock = Callable[[], datetime]


def _system_clock() -> datetime:
    return datetime.now(UTC)


class _Shared:
    """What every view of one CRM shares: plugins, registry, clock."""

    def __init__(self, plugins: Plugins, clock: Clock) -> None:
        self.plugins = plugins
        self.clock = clock
        self.registry: Registry | None = None
        self.listening: weakref.WeakSet[sa.Connection] = weakref.WeakSet()
        self.tables_from: set[str] = set()
        self.root_db: Database | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.live_segments: bool | str = True
        self.live_worker: Any = None  # default_plugins.segments.LiveWorker, made on first use
        self.rule_cache: dict[Any, Any] = {}
        self.secret: Any = None  # str | list[str] | None
        self.signer: Any = None  # signing.Signer, made on first use
        self.channel_config: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, Any] = {}  # name -> Channel, built on first use
        self.root_workspace: str | None = None  # the workspace the CRM was built for (channels' view)


class CRM:
    """An embedded e-CRM: customers, interactions, offers, plugins.

    Build one per application (it is thread-safe) and keep it::

        crm = CRM("sqlite:///shop-crm.db")
        crm.upgrade()                      # create/upgrade the tables
        ada = crm.customers.create(email="ada@example.com", name="Ada")
        crm.interactions.track("purchase", customer_id=ada.id, amount="42.00", currency="EUR")

    :param url: SQLAlchemy URL; defaults to ``sqlite:///ecrm.db``.
    :param engine: the host's engine instead of a URL (ecrm shares its pool).
    :param connection: the host's connection: ecrm joins its transaction.
    :param table_prefix: put in front of every ecrm table name.
    :param schema: database schema for ecrm's tables (PostgreSQL).
    :param workspace: the tenant this object works in.
    :param plugins: plugin objects to register besides the installed ones.
    :param load_entrypoints: discover installed plugins (``ecrm.plugins``).
    :param enable: allow-list of entry-point plugin names (default: all, or
        ``ECRM_PLUGINS``); ``disable``: block-list (or ``ECRM_DISABLE_PLUGINS``).
    :param clock: returns "now" as an aware datetime (tests, simulations).
    :param live_segments: keep segments and lifecycle stages current after
        every committed change (incremental refresh): ``True`` right after
        the commit, in the writing thread; ``"background"`` in one worker
        thread that coalesces changes and refreshes every ~0.1 s (writers do
        not wait; ``crm.segments.flush()`` waits for it, ``close()`` drains
        it); ``False`` leaves it to ``crm.segments.refresh()`` (e.g. from a
        worker or cron).
    :param secret: the key that signs public links (unsubscribe, click,
        open); a list rotates keys (the last signs, all verify).  Defaults
        to ``ECRM_SECRET`` (comma-separated for rotation).  Never logged.
    :param channels: per-channel configuration, e.g.
        ``{"email": {"transport": "smtp", "host": "...", "policy": {...}}}``;
        ``policy`` is a :class:`~ecrm_core.channels.DeliveryPolicy`, the rest
        goes to the channel plugin.

    Nothing is connected or imported beyond the plugins until first use.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: sa.Engine | None = None,
        connection: sa.Connection | None = None,
        table_prefix: str = "ecrm_",
        schema: str | None = None,
        workspace: str = DEFAULT_WORKSPACE,
        plugins: Sequence[Any] = (),
        load_entrypoints: bool = True,
        enable: Iterable[str] | None = None,
        disable: Iterable[str] | None = None,
        clock: Clock | None = None,
        echo: bool = False,
        live_segments: bool | Literal["background"] = True,
        secret: str | Sequence[str] | None = None,
        channels: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not isinstance(table_prefix, str) or not all(c.isalnum() or c == "_" for c in table_prefix):
            raise ValidationError(
                "table_prefix", table_prefix, "not a valid prefix", "use letters, digits and '_' only"
            )
        self.db = Database(url, engine=engine, connection=connection, naming=Naming(table_prefix, schema), echo=echo)
        manager = Plugins()
        manager.load(plugins=plugins, entrypoints=load_entrypoints, enable=enable, disable=disable)
        self._shared = _Shared(manager, clock or _system_clock)
        self._shared.live_segments = _live_mode(live_segments)
        self._shared.root_db = self.db
        self._shared.secret = secret
        self._shared.channel_config = _channel_config(channels)
        self.workspace = check_slug(workspace, "workspace", "workspace id")
        self._shared.root_workspace = self.workspace
        self._build_services()
        self._shared.registry = self._collect_registry()
        self._add_plugin_tables()
        manager.notify("ecrm_startup", crm=self)

    def _build_services(self) -> None:
        from .services.customers import Customers
        from .services.interactions import Interactions
        from .services.lifecycle import Lifecycle
        from .services.messages import Channels, Messages
        from .services.offers import Offers
        from .services.segments import Segments

        self.customers = Customers(self)
        self.interactions = Interactions(self)
        self.offers = Offers(self)
        self.segments = Segments(self)
        self.lifecycle = Lifecycle(self)
        self.channels = Channels(self)
        self.messages = Messages(self)

    # ------------------------------------------------------------------
    # views
    # ------------------------------------------------------------------
    def _view(self, *, workspace: str | None = None, db: Database | None = None) -> CRM:
        view = object.__new__(CRM)
        view.db = db or self.db
        view._shared = self._shared
        view.workspace = check_slug(workspace, "workspace", "workspace id") if workspace else self.workspace
        view._build_services()
        return view

    def in_workspace(self, workspace: str) -> CRM:
        """The same CRM working in another workspace (tenant).

        Cheap: the view shares the engine, plugins and registry.
        """
        return self._view(workspace=workspace)

    def using(self, connection: sa.Connection) -> CRM:
        """The same CRM working on the host's ``connection``.

        ecrm's writes join the host's transaction (in a SAVEPOINT) and commit
        or roll back with it; event hooks fire only after the host commits.
        """
        return self._view(db=self.db.bind(connection))

    # ------------------------------------------------------------------
    # plugins
    # ------------------------------------------------------------------
    @property
    def plugins(self) -> Plugins:
        """The plugin manager: ``.info`` (name, version, hooks, status), ``.failures``."""
        return self._shared.plugins

    def register_plugin(self, plugin: Any, *, name: str | None = None) -> str:
        """Register a plugin on a running CRM and refresh the registry.

        Returns the plugin's name.  Raises :class:`~ecrm_core.errors.PluginError`
        for an invalid plugin or a name clash (nothing is changed then).
        """
        manager = self._shared.plugins
        name = manager.register(plugin, name=name, source="host")
        try:
            self._refresh_registry()
        except PluginError:
            manager.unregister(name)
            raise
        return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin by name and refresh the registry."""
        self._shared.plugins.unregister(name)
        self._refresh_registry()

    def _refresh_registry(self) -> None:
        self._shared.registry = self._collect_registry()
        self._add_plugin_tables()

    def _add_plugin_tables(self) -> None:
        """Let plugins that have not done so yet define their tables (once each)."""
        manager = self._shared.plugins
        done = self._shared.tables_from
        new = {i.plugin_name for i in manager.pm.hook.ecrm_register_tables.get_hookimpls()} - done
        if new:
            self.db.add_tables(
                lambda md, naming: manager.collect("ecrm_register_tables", only=new, metadata=md, naming=naming)
            )
            done |= new

    @property
    def registry(self) -> Registry:
        """Everything plugins registered (kinds, stages, channels, conditions…)."""
        assert self._shared.registry is not None
        return self._shared.registry

    def _collect_registry(self) -> Registry:
        plugins = self._shared.plugins

        def by_name(hook: str, what: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for plugin, items in plugins.collect(hook, crm=self):
                for item in items:
                    key = str(getattr(item, "name", None) or getattr(item, "path", None))
                    if key in out:
                        first, second = sorted([str(out[key].plugin), plugin])
                        raise PluginError(
                            f"{what} {key!r} is registered twice: by plugins {first!r} and {second!r}; "
                            f"disable one of them (CRM(disable=[...]) or ECRM_DISABLE_PLUGINS)"
                        )
                    out[key] = _with_plugin(item, plugin)
            return out

        def routes() -> list[Any]:
            return [item for _plugin, items in plugins.collect("ecrm_register_routes", crm=self) for item in items]

        migrations: dict[str, Any] = {}
        for plugin, items in plugins.collect("ecrm_register_migrations"):
            for item in items:
                if item.branch in migrations:
                    raise PluginError(f"migration branch {item.branch!r} is registered twice (second by {plugin!r})")
                migrations[item.branch] = _with_plugin(item, plugin)
        return Registry(
            interaction_kinds=by_name("ecrm_register_interaction_kinds", "interaction kind"),
            lifecycle_stages=by_name("ecrm_register_lifecycle_stages", "lifecycle stage"),
            attributes=by_name("ecrm_register_attributes", "attribute"),
            channels=by_name("ecrm_register_channels", "channel"),
            condition_types=by_name("ecrm_register_condition_types", "condition type"),
            strategies=by_name("ecrm_register_strategies", "strategy"),
            admin_pages=by_name("ecrm_register_admin_pages", "admin page"),
            routes=LazyRoutes(routes),
            migrations=migrations,
            purposes=by_name("ecrm_register_message_purposes", "message purpose"),
            jobs=by_name("ecrm_register_jobs", "job"),
            demo_stages=by_name("ecrm_register_demo_stages", "demo stage"),
            admin_widgets=by_name("ecrm_register_admin_widgets", "admin widget"),
        )

    def check_kind(self, kind: Any, field: str = "kind") -> str:
        """Return ``kind`` if a plugin registered it, else raise with a suggestion."""
        return _registered(kind, self.registry.interaction_kinds, field, "interaction kind")

    def check_stage(self, stage: Any, field: str = "lifecycle_stage") -> str:
        """Return ``stage`` if a plugin registered it, else raise with a suggestion."""
        return _registered(stage, self.registry.lifecycle_stages, field, "lifecycle stage")

    # ------------------------------------------------------------------
    # events
    # ------------------------------------------------------------------
    def emit(self, hook: str, **kwargs: Any) -> None:
        """Fire an event hook once the current write is durable.

        Called by services after their transaction committed.  When ecrm
        works inside the host's transaction (:meth:`using`), the event waits
        for the host's COMMIT and is dropped on ROLLBACK.
        """
        plugins = self._shared.plugins
        if not plugins.has_impls(hook):
            return
        conn = self.db.connection
        if conn is not None and conn.in_transaction():
            # Listeners run after the host's commit, on the CRM's own engine
            # connections (not inside the host's finished transaction).
            base = self._view(db=self._shared.root_db)
            self._defer(conn, lambda: plugins.notify(hook, crm=base, **kwargs))
        else:
            plugins.notify(hook, crm=self, **kwargs)

    def _defer(self, conn: sa.Connection, fire: Callable[[], None]) -> None:
        pending: list[Callable[[], None]] = conn.info.setdefault("ecrm_pending_events", [])
        pending.append(fire)
        with self._shared.lock:
            if conn in self._shared.listening:
                return
            self._shared.listening.add(conn)

        def on_commit(c: sa.Connection) -> None:
            pending = c.info.pop("ecrm_pending_events", [])
            if not pending:
                return
            # SQLAlchemy's "commit" event comes *before* the DBAPI commit:
            # commit now, so listeners only ever see durable data (a failing
            # COMMIT raises here, to the host, and no event fires).  The
            # DBAPI commit SQLAlchemy issues next finds nothing to do.
            c.connection.dbapi_connection.commit()  # type: ignore[union-attr]
            for f in pending:
                f()

        def on_rollback(c: sa.Connection) -> None:
            c.info.pop("ecrm_pending_events", None)

        sa.event.listen(conn, "commit", on_commit)
        sa.event.listen(conn, "rollback", on_rollback)

    # ------------------------------------------------------------------
    # schema and lifetime
    # ------------------------------------------------------------------
    @property
    def signer(self) -> Any:
        """The :class:`~ecrm_core.signing.Signer` for public links (``CRM(secret=)``
        or ``ECRM_SECRET``); raises :class:`~ecrm_core.signing.MissingSecret`
        when neither is set."""
        shared = self._shared
        if shared.signer is None:
            from .signing import MissingSecret, Signer, secret_from_env

            secret = shared.secret if shared.secret is not None else secret_from_env()
            if not secret:
                raise MissingSecret()
            try:
                shared.signer = Signer(secret)
            except ValueError as exc:
                raise ValidationError("secret", "***", str(exc), "use a long random string") from None
        return shared.signer

    def now(self) -> datetime:
        """The CRM's clock (aware, UTC)."""
        return self._shared.clock()

    def migration_locations(self) -> dict[str, str]:
        return {name: m.location for name, m in self.registry.migrations.items()}

    def upgrade(self, revision: str = "heads") -> None:
        """Create or upgrade ecrm's tables (core and every plugin branch)."""
        self.db.upgrade(self.migration_locations(), revision)

    def schema_status(self) -> Mapping[str, Any]:
        """Where the schema stands: ``current`` and ``heads`` revisions, ``pending``
        heads not reached yet, and ``up_to_date`` (no pending head)."""
        locations = self.migration_locations()
        pending = self.db.pending_revisions(locations)
        return {
            "current": self.db.current_revisions(),
            "heads": self.db.head_revisions(locations),
            "pending": pending,
            "up_to_date": not pending,
        }

    def close(self) -> None:
        """Fire ``ecrm_shutdown`` and release the engine (if ecrm created it)."""
        if self._shared.closed:
            return
        self._shared.closed = True
        self._shared.plugins.notify("ecrm_shutdown", crm=self)
        self.channels.close_all()
        self.db.dispose()

    def __enter__(self) -> CRM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        url = self.db.engine.url.render_as_string(hide_password=True)
        return f"<CRM {url} workspace={self.workspace!r} plugins={len(self.plugins.loaded())}>"


def _channel_config(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("channels", value, "not a mapping", "pass e.g. {'email': {'transport': 'smtp'}}")
    out: dict[str, dict[str, Any]] = {}
    for name, conf in value.items():
        check_slug(name, f"channels.{name}", "channel name")
        if not isinstance(conf, Mapping):
            raise ValidationError(f"channels.{name}", "...", "not a mapping", "pass the channel's settings as a dict")
        out[name] = dict(conf)
    return out


def _live_mode(value: Any) -> bool | str:
    if value == "background":
        return "background"
    if isinstance(value, bool):
        return value
    raise ValidationError(
        "live_segments", value, "not a live-segments mode", "use True (at commit), 'background' or False"
    )


def _registered(name: Any, known: Mapping[str, Any], field: str, what: str) -> str:
    if name in known:
        return name  # type: ignore[no-any-return]
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValidationError(
        field, name, f"unknown {what}", f"{hint}known: {', '.join(sorted(known))} (plugins register more)"
    )


def _with_plugin(item: Any, plugin: str) -> Any:
    import attrs

    if attrs.has(type(item)) and hasattr(item, "plugin") and item.plugin is None:
        return attrs.evolve(item, plugin=plugin)
    return item
