"""``ecrm_core.testing``: the test kit for ecrm and for plugin authors.

Installed as a pytest plugin (entry point ``pytest11``), so with ecrm-core
installed these fixtures are available in any test suite:

* ``crm`` — a :class:`~ecrm_core.CRM` on a fresh, migrated SQLite file in
  ``tmp_path`` (installed entry-point plugins are *not* loaded: register what
  the test needs);
* ``crm_factory`` — build more CRMs (``crm_factory(plugins=[...])``), each
  closed after the test;
* ``events`` — an :class:`EventRecorder` registered on ``crm``.

And these helpers:

* :func:`registered` — a context manager that registers a plugin on a CRM for
  the duration of a block;
* :class:`EventRecorder` — a plugin that records every event hook call;
* :class:`CapturingChannel` / :class:`MemoryChannel` — a channel that keeps
  what it was sent, with scriptable failures (:mod:`ecrm_core.testing.channels`);
* :class:`ChannelConformance` — the suite every channel plugin subclasses;
* :class:`FakeClock` — a settable clock for ``CRM(clock=...)``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ..crm import CRM
from ..hookspecs import hookimpl
from ._pytest_optional import pytest
from .channels import ChannelConformance, FakeClock, MemoryChannel

__all__ = [
    "registered",
    "EventRecorder",
    "CapturingChannel",
    "MemoryChannel",
    "ChannelConformance",
    "FakeClock",
    "make_crm",
]


@contextmanager
def registered(crm: CRM, plugin: Any, *, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` on ``crm`` for the duration of the block.

    Yields the plugin's registered name; the plugin is removed afterwards,
    even if the block raises, so no test leaks a plugin into another.
    """
    registered_name = crm.register_plugin(plugin, name=name)
    try:
        yield registered_name
    finally:
        crm.unregister_plugin(registered_name)


@attrs.define
class EventRecorder:
    """A plugin recording every event hook call as ``(hook, kwargs)``."""

    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def of(self, hook: str) -> list[dict[str, Any]]:
        """The keyword arguments of every call of ``hook``, in order."""
        return [kw for name, kw in self.calls if name == hook]

    def clear(self) -> None:
        self.calls.clear()

    @hookimpl
    def ecrm_customers_created(self, customers: Any) -> None:
        self.calls.append(("ecrm_customers_created", {"customers": list(customers)}))

    @hookimpl
    def ecrm_customers_updated(self, changes: Any) -> None:
        self.calls.append(("ecrm_customers_updated", {"changes": list(changes)}))

    @hookimpl
    def ecrm_customers_merged(self, merge: Any) -> None:
        self.calls.append(("ecrm_customers_merged", {"merge": merge}))

    @hookimpl
    def ecrm_customers_deleted(self, customer_ids: Any, aliases: Any) -> None:
        self.calls.append(("ecrm_customers_deleted", {"customer_ids": list(customer_ids), "aliases": list(aliases)}))

    @hookimpl
    def ecrm_interactions_recorded(self, batch: Any) -> None:
        self.calls.append(("ecrm_interactions_recorded", {"batch": batch}))

    @hookimpl
    def ecrm_segment_entered(self, segment: Any, customer_ids: Any) -> None:
        self.calls.append(("ecrm_segment_entered", {"segment": segment, "customer_ids": sorted(customer_ids)}))

    @hookimpl
    def ecrm_segment_exited(self, segment: Any, customer_ids: Any) -> None:
        self.calls.append(("ecrm_segment_exited", {"segment": segment, "customer_ids": sorted(customer_ids)}))

    @hookimpl
    def ecrm_lifecycle_changed(self, changes: Any) -> None:
        self.calls.append(("ecrm_lifecycle_changed", {"changes": list(changes)}))


class CapturingChannel(MemoryChannel):
    """A :class:`~ecrm_core.testing.channels.MemoryChannel` named ``capture``
    with the ``templates`` capability: ``sent`` keeps what it was given; set
    ``fail_with`` to an exception to make every send raise."""

    def __init__(self, name: str = "capture") -> None:
        super().__init__(name=name, capabilities=("templates",))


_TEMPLATES: dict[tuple[str, ...], Path] = {}


def make_crm(path: Path, **options: Any) -> CRM:
    """A CRM on a migrated SQLite file at ``path``.

    Migrating runs Alembic once per distinct set of plugin migration
    branches per session; later CRMs copy that template file.
    """
    options.setdefault("load_entrypoints", False)
    crm = CRM(f"sqlite:///{path}", **options)
    key = (*sorted(f"{k}={v}" for k, v in crm.migration_locations().items()), crm.db.naming.prefix)
    template = _TEMPLATES.get(key)
    if template is None or not template.exists():
        crm.upgrade()
        crm.db.engine.dispose()
        template = path.with_name(path.name + ".template")
        with crm.db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        crm.db.engine.dispose()
        shutil.copyfile(path, template)
        _TEMPLATES[key] = template
    else:
        crm.db.engine.dispose()
        shutil.copyfile(template, path)
    return crm


@pytest.fixture
def crm_factory(tmp_path: Path) -> Iterator[Callable[..., CRM]]:
    """Build CRMs on fresh migrated SQLite files; all are closed after the test."""
    made: list[CRM] = []

    def factory(**options: Any) -> CRM:
        crm = make_crm(tmp_path / f"crm{len(made)}.db", **options)
        made.append(crm)
        return crm

    yield factory
    for crm in made:
        crm.close()


@pytest.fixture
def crm(crm_factory: Callable[..., CRM]) -> CRM:
    """A CRM on a fresh migrated SQLite file (no entry-point plugins)."""
    return crm_factory()


@pytest.fixture
def events(crm: CRM) -> Iterator[EventRecorder]:
    """An :class:`EventRecorder` registered on ``crm`` for the test."""
    recorder = EventRecorder()
    with registered(crm, recorder, name="test-events"):
        yield recorder
