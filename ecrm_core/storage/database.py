"""The database handle: engine setup, transactions, schema migrations.

* Embedded default: a SQLite file, opened in WAL mode with a busy timeout;
  writes start with ``BEGIN IMMEDIATE`` so two writers queue instead of
  failing half-way with "database is locked".
* Any SQLAlchemy URL otherwise, or the host's own :class:`~sqlalchemy.engine.Engine`
  (ecrm then shares its pool) or :class:`~sqlalchemy.engine.Connection`
  (ecrm then joins the host's transaction, inside a SAVEPOINT).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import SchemaNotInitialised
from .schema import CORE_TABLES, Naming, build_metadata

__all__ = ["Database", "DEFAULT_URL", "configure_sqlite"]

#: Used when neither a URL nor an engine is given.
DEFAULT_URL = "sqlite:///ecrm.db"

SQLITE_WAL_AUTOCHECKPOINT = 10_000
SQLITE_BUSY_TIMEOUT_MS = 30_000


def configure_sqlite(engine: sa.Engine) -> sa.Engine:
    """Make a SQLite engine fit for ecrm; idempotent; returns the engine.

    WAL, a busy timeout, foreign keys, real transactions (``BEGIN`` when the
    transaction starts, so SAVEPOINTs work), and ``BEGIN IMMEDIATE`` for
    ecrm's writes.  pysqlite's own transaction handling is switched off, the
    recipe from SQLAlchemy's SQLite dialect documentation.  ecrm applies it
    to SQLite engines it creates and to SQLite engines a host passes in
    (connections already pooled are discarded so the settings apply to all).
    """
    if engine.dialect.name != "sqlite" or getattr(engine, "_ecrm_sqlite", False):
        return engine

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint the WAL every ~40 MB (10,000 pages) instead of ~4 MB:
            # a bulk write dirties more than 1,000 pages of random-keyed
            # indexes, so the default made nearly every commit checkpoint.
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        if dbapi_conn.in_transaction:  # pragma: no cover - defensive
            dbapi_conn.commit()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("ecrm_sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    engine._ecrm_sqlite = True  # type: ignore[attr-defined]
    engine.pool.dispose()
    return engine


class Database:
    """Connections, tables and transactions for one CRM."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: sa.Engine | None = None,
        connection: sa.Connection | None = None,
        naming: Naming | None = None,
        echo: bool = False,
    ) -> None:
        given = [x is not None for x in (url, engine, connection)]
        if sum(given) > 1:
            raise ValueError("pass at most one of url=, engine= and connection=")
        self.naming = naming or Naming()
        self._connection = connection
        self._owns_engine = engine is None and connection is None
        if connection is not None:
            self.engine = connection.engine
        elif engine is not None:
            self.engine = configure_sqlite(engine)
        else:
            self.engine = configure_sqlite(sa.create_engine(url or DEFAULT_URL, echo=echo))
        self.metadata = build_metadata(self.naming)
        self._schema_ok = False
        self._lock = threading.Lock()
        self.tables: dict[str, sa.Table] = {name: self.metadata.tables[self._key(name)] for name in CORE_TABLES}

    def bind(self, connection: sa.Connection) -> Database:
        """This database, working on the host's ``connection`` (shared tables)."""
        view = object.__new__(Database)
        view.__dict__.update(self.__dict__)
        view._connection = connection
        view._owns_engine = False
        view.engine = connection.engine
        return view

    # -- naming -----------------------------------------------------------
    def _key(self, short: str) -> str:
        full = self.naming.table(short)
        return f"{self.naming.schema}.{full}" if self.naming.schema else full

    def add_tables(self, register: Callable[[sa.MetaData, Naming], Any]) -> None:
        """Let a plugin define tables; they show up in :attr:`tables` by short name."""
        before = set(self.metadata.tables)
        register(self.metadata, self.naming)
        for key in set(self.metadata.tables) - before:
            table = self.metadata.tables[key]
            self.tables[table.name.removeprefix(self.naming.prefix)] = table

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    # -- transactions -----------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A connection in a write transaction, committed on success.

        On a host connection that is already in a transaction, the work runs
        in a SAVEPOINT: an ecrm error rolls back ecrm's part only, and the
        host decides when everything commits.
        """
        if self._connection is not None:
            conn = self._connection
            if conn.in_transaction():
                with conn.begin_nested():
                    yield conn
            else:
                with conn.begin():
                    yield conn
            return
        with self.engine.connect() as conn:
            if getattr(self.engine, "_ecrm_sqlite", False):
                conn = conn.execution_options(ecrm_sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for reads (the host's own, if one was given)."""
        if self._connection is not None:
            yield self._connection
            return
        with self.engine.connect() as conn:
            yield conn

    @property
    def joined(self) -> bool:
        """True when ecrm works inside a connection (and transaction) the host owns."""
        return self._connection is not None

    @property
    def connection(self) -> sa.Connection | None:
        return self._connection

    def dispose(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- schema -----------------------------------------------------------
    def alembic_config(self, conn: sa.Connection, locations: Mapping[str, str]) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
        cfg.set_main_option("path_separator", "os")
        import os

        cfg.set_main_option("version_locations", os.pathsep.join(locations.values()))
        cfg.attributes["connection"] = conn
        cfg.attributes["naming"] = self.naming
        return cfg

    def migration_locations(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        core = str(Path(__file__).parent.parent / "migrations" / "versions")
        return {"ecrm_core": core, **_resolve_locations(extra or {})}

    def upgrade(self, extra_locations: Mapping[str, str] | None = None, revision: str = "heads") -> None:
        """Bring the schema (core and every plugin branch) up to ``revision``."""
        from alembic import command

        with self.write() as conn:
            cfg = self.alembic_config(conn, self.migration_locations(extra_locations))
            command.upgrade(cfg, revision)
        self._schema_ok = True

    def current_revisions(self) -> set[str]:
        from alembic.runtime.migration import MigrationContext

        with self.read() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"version_table": self.naming.version_table, "version_table_schema": self.naming.schema}
            )
            return set(ctx.get_current_heads())

    def head_revisions(self, extra_locations: Mapping[str, str] | None = None) -> set[str]:
        from alembic.script import ScriptDirectory

        with self.read() as conn:
            cfg = self.alembic_config(conn, self.migration_locations(extra_locations))
            return set(ScriptDirectory.from_config(cfg).get_heads())

    def pending_revisions(self, extra_locations: Mapping[str, str] | None = None) -> set[str]:
        """Head revisions (core and plugin branches) the database has not reached."""
        from alembic.script import ScriptDirectory

        current = self.current_revisions()
        with self.read() as conn:
            cfg = self.alembic_config(conn, self.migration_locations(extra_locations))
            script = ScriptDirectory.from_config(cfg)
            reached = {r.revision for r in script.iterate_revisions(tuple(current), "base")} if current else set()
            return set(script.get_heads()) - reached

    def check_schema(self) -> None:
        """Raise :class:`SchemaNotInitialised` unless the core tables exist.

        Checked once per Database (then cached), on first use.
        """
        if self._schema_ok:
            return
        with self._lock:
            if self._schema_ok:
                return
            with self.read() as conn:
                present = sa.inspect(conn).has_table(self.naming.version_table, schema=self.naming.schema)
            if not present:
                raise SchemaNotInitialised(
                    f"no ecrm schema in {self.engine.url.render_as_string(hide_password=True)} "
                    f"(table prefix {self.naming.prefix!r}); run `ecrm db upgrade` or call crm.upgrade() first"
                )
            self._schema_ok = True


def _resolve_locations(sources: Mapping[str, str]) -> dict[str, str]:
    """``package:subdir`` locations become file system paths."""
    out = {}
    for name, loc in sources.items():
        if ":" in loc and not Path(loc).exists():
            package, _, sub = loc.partition(":")
            from importlib.resources import files

            loc = str(files(package).joinpath(sub))
        out[name] = loc
    return out
