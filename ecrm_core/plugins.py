"""Plugin loading (stevedore) and hook calling (pluggy).

One :class:`Plugins` object per :class:`~ecrm_core.CRM`; nothing global.

Sources of plugins, in registration order:

1. the core's default plugins (``ecrm_core.default_plugins``);
2. installed distributions with an entry point in the ``ecrm.plugins``
   group, discovered by stevedore, filtered by the allow-list
   (``enable=`` or ``ECRM_PLUGINS``) and the block-list (``disable=`` or
   ``ECRM_DISABLE_PLUGINS``) *before* anything is imported;
3. plugin objects the host passes as ``CRM(plugins=[...])``.

Failure policy: an entry-point plugin that fails to import, implements an
unknown hook, or declares a hook API range this core does not satisfy is
reported (``crm.plugins.info``, ``ecrm plugins``) and skipped — the host
starts anyway.  A plugin the host passes explicitly raises
:class:`~ecrm_core.errors.PluginError` instead: that is a programming error.
"""

from __future__ import annotations

import difflib
import logging
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Literal

import pluggy
from attrs import frozen

from . import hookspecs
from .errors import HookApiVersionError, PluginError

__all__ = ["Plugins", "PluginInfo", "HookFailure", "ENTRY_POINT_GROUP", "DEFAULT_PLUGINS"]

log = logging.getLogger("ecrm.plugins")

#: The entry-point group plugins publish under.
ENTRY_POINT_GROUP = "ecrm.plugins"

#: The core's own features, registered through the same manager.
DEFAULT_PLUGINS = (
    ("core.kinds", "ecrm_core.default_plugins.kinds"),
    ("core.lifecycle", "ecrm_core.default_plugins.lifecycle"),
    ("core.segments", "ecrm_core.default_plugins.segments"),
    ("core.messages", "ecrm_core.default_plugins.messages"),
    ("core.jobs", "ecrm_core.default_plugins.jobs"),
)

ISOLATED_HOOKS = (
    frozenset(hookspecs.EVENT_HOOKS) | frozenset(hookspecs.TRANSACTIONAL_HOOKS) | {"ecrm_startup", "ecrm_shutdown"}
)

Source = Literal["default", "entrypoint", "host"]
Status = Literal["loaded", "failed", "disabled"]


@frozen
class PluginInfo:
    """What ``ecrm plugins`` and ``/-/plugins`` show for one plugin."""

    name: str
    source: Source
    status: Status
    version: str | None = None
    hooks: tuple[str, ...] = ()
    hook_api: str | None = None
    error: str | None = None


@frozen
class HookFailure:
    """A hook implementation that raised; the call went on without it."""

    plugin: str
    hook: str
    error: str
    traceback: str
    at: datetime


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [n.strip() for n in raw.split(",") if n.strip()]


class Plugins:
    """The plugin manager of one CRM: a typed face over pluggy and stevedore."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("ecrm")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        #: The most recent hook failures (bounded), newest last.
        self.failures: deque[HookFailure] = deque(maxlen=1000)

    # ------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------
    def load(
        self,
        *,
        plugins: Sequence[Any] = (),
        entrypoints: bool = True,
        enable: Iterable[str] | None = None,
        disable: Iterable[str] | None = None,
    ) -> None:
        """Register default, entry-point and host plugins (see module doc)."""
        allow = list(enable) if enable is not None else _env_list("ECRM_PLUGINS")
        deny = set(disable or ()) | set(_env_list("ECRM_DISABLE_PLUGINS") or ())
        for name, module in DEFAULT_PLUGINS:
            if name in deny:
                self.info[name] = PluginInfo(name, "default", "disabled")
                continue
            import importlib

            self.register(importlib.import_module(module), name=name, source="default")
        if entrypoints:
            self._load_entrypoints(allow, deny)
        for plugin in plugins:
            self.register(plugin, source="host")

    def _load_entrypoints(self, allow: list[str] | None, deny: set[str]) -> None:
        from importlib.metadata import entry_points

        from stevedore import NamedExtensionManager

        available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        names = [n for n in (allow if allow is not None else sorted(available)) if n not in deny]
        for name in sorted(set(available) - set(names)):
            self.info[name] = PluginInfo(name, "entrypoint", "disabled", version=_dist_version(available[name]))
        for name in names:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "; is its distribution installed?"
                self._fail(name, None, f"no installed plugin has the entry point {name!r}{hint}")
        failed: dict[str, str] = {}
        missing: set[str] = set()

        def on_failure(_mgr: Any, ep: Any, exc: BaseException) -> None:
            failed[ep.name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()

        mgr = NamedExtensionManager(
            ENTRY_POINT_GROUP,
            names=[n for n in names if n in available],
            name_order=True,
            on_load_failure_callback=on_failure,
            on_missing_entrypoints_callback=lambda names: missing.update(names),
            invoke_on_load=False,
        )
        for name, error in failed.items():
            self._fail(name, _dist_version(available[name]), f"import failed: {error}")
        for name in missing - set(failed):
            self._fail(name, _dist_version(available[name]), "entry point not found by stevedore; reinstall the plugin")
        for ext in mgr.extensions:
            try:
                version = _dist_version(available[ext.name])
                self.register(ext.plugin, name=ext.name, source="entrypoint", version=version)
            except PluginError as exc:
                self._fail(ext.name, _dist_version(available[ext.name]), str(exc))

    def _fail(self, name: str, version: str | None, error: str) -> None:
        log.error("ecrm plugin %r was not loaded: %s", name, error)
        self.info[name] = PluginInfo(name, "entrypoint", "failed", version=version, error=error)

    def register(
        self, plugin: Any, *, name: str | None = None, source: Source = "host", version: str | None = None
    ) -> str:
        """Register one plugin object (module, class instance…); return its name.

        Checks, before the plugin can be called: the hook API range it
        declares (``ECRM_HOOK_API``), unknown (misspelled) hook names, and
        that event hooks are not implemented as wrappers.
        """
        name = name or getattr(plugin, "ECRM_PLUGIN_NAME", None) or _default_name(plugin)
        if name in self.info and self.info[name].status == "loaded":
            raise PluginError(f"a plugin named {name!r} is already registered; give the new one another name")
        api = getattr(plugin, "ECRM_HOOK_API", None)
        if api is not None:
            _check_api(name, api)
        try:
            self.pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} could not be registered: {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from None
        try:
            self._validate(name, plugin)
        except PluginError:
            self.pm.unregister(plugin)
            raise
        hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
        self.info[name] = PluginInfo(
            name, source, "loaded", version=version or getattr(plugin, "__version__", None), hooks=hooks, hook_api=api
        )
        return name

    def _validate(self, name: str, plugin: Any) -> None:
        known = {name for name, caller in self.pm.hook.__dict__.items() if getattr(caller, "spec", None) is not None}
        for attr in dir(plugin):
            if not attr.startswith("ecrm_"):
                continue
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            if attr not in known:
                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PluginError(f"plugin {name!r} implements unknown hook {attr!r}{hint}")
            if attr in ISOLATED_HOOKS and (opts.get("hookwrapper") or opts.get("wrapper")):
                raise PluginError(
                    f"plugin {name!r}: {attr} is a notification hook and cannot be a wrapper; drop wrapper=True"
                )

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.info.pop(name, None)

    def loaded(self) -> list[PluginInfo]:
        return [i for i in self.info.values() if i.status == "loaded"]

    # ------------------------------------------------------------------
    # calling
    # ------------------------------------------------------------------
    def has_impls(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def collect(self, hook: str, *, only: Iterable[str] | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a registration hook on every plugin; return ``(plugin, result)`` pairs.

        ``only`` limits the call to the named plugins.  A plugin whose
        implementation raises is recorded as a failure and skipped, like an
        event hook: one broken plugin must not stop the host.
        """
        out = []
        names = None if only is None else set(only)
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if names is not None and impl.plugin_name not in names:
                continue
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit, CancelledError…: the plugin failed, not the host
                self._record(impl.plugin_name, hook, exc)
                continue
            if result is not None:
                out.append((impl.plugin_name, result))
        return out

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an event hook: every implementation, each in isolation."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        for impl in reversed(impls):
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit, CancelledError…: the plugin failed, not the host
                self._record(impl.plugin_name, hook, exc)

    def notify_in_transaction(self, hook: str, conn: Any, **kwargs: Any) -> None:
        """Call a transactional hook with ``conn``: every implementation in
        its own SAVEPOINT, rolled back (and recorded) if it raises."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        kwargs["conn"] = conn
        for impl in reversed(impls):
            savepoint = conn.begin_nested()
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit, CancelledError…: the plugin failed, not the host
                if savepoint.is_active:
                    savepoint.rollback()
                self._record(impl.plugin_name, hook, exc)
            else:
                if not savepoint.is_active:
                    raise RuntimeError(
                        f"ecrm plugin {impl.plugin_name!r} ended the transaction in {hook}; "
                        "a transactional hook must not COMMIT or ROLLBACK the connection it is given"
                    )
                savepoint.commit()

    def call_all_or_nothing(self, hook: str, conn: Any, **kwargs: Any) -> None:
        """Call a transactional hook whose work must be complete or not at all
        (``ecrm_customers_deleting``): every implementation with ``conn``, in
        the core's transaction; the first that raises is recorded and ends
        the call with a :class:`~ecrm_core.errors.HookFailed` naming the
        plugin, so the caller's transaction rolls back as a whole."""
        from .errors import HookFailed, PluginError

        kwargs["conn"] = conn
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit, CancelledError…: the plugin failed, not the host
                self._record(impl.plugin_name, hook, exc)
                raise HookFailed(impl.plugin_name, hook, f"{type(exc).__name__}: {exc}") from exc
            if not conn.in_transaction():
                raise PluginError(
                    f"ecrm plugin {impl.plugin_name!r} ended the transaction in {hook}; "
                    "a transactional hook must not COMMIT or ROLLBACK the connection it is given"
                )

    def record_failure(self, plugin: str, hook: str, exc: BaseException) -> None:
        """Record (and log) that ``plugin`` failed in ``hook``; the caller goes on without it."""
        self._record(plugin, hook, exc)

    def _record(self, plugin: str, hook: str, exc: BaseException) -> None:
        log.exception("ecrm plugin %r failed in %s; the call went on without it", plugin, hook, exc_info=exc)
        self.failures.append(
            HookFailure(
                plugin=plugin,
                hook=hook,
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
                at=datetime.now(UTC),
            )
        )


def _default_name(plugin: Any) -> str:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def _dist_version(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "version", None)


def _check_api(name: str, spec: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        ok = hookspecs.HOOK_API_VERSION in SpecifierSet(spec)
    except InvalidSpecifier:
        raise HookApiVersionError(
            f"plugin {name!r} declares ECRM_HOOK_API = {spec!r}, which is not a version range; use e.g. '>=1,<2'"
        ) from None
    if not ok:
        raise HookApiVersionError(
            f"plugin {name!r} supports the ecrm hook API {spec}, but this ecrm-core implements "
            f"{hookspecs.HOOK_API_VERSION}; install a version of the plugin made for it, or an ecrm-core it supports"
        )


Notify = Callable[..., None]
