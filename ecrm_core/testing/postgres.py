"""``ecrm_core.testing.postgres``: a throwaway PostgreSQL server for tests.

A pytest plugin of its own (not loaded by the ``ecrm_core.testing`` entry
point); enable it in a ``conftest.py``::

    pytest_plugins = ["ecrm_core.testing.postgres"]

Where the server comes from, in order:

1. ``ECRM_TEST_POSTGRES_URL`` set: that database is used (an SQLAlchemy URL,
   e.g. ``postgresql+psycopg://ci:secret@db:5432/ecrm_test``); its role needs
   ``CREATEDB`` because every test gets a database of its own.
2. Otherwise ``initdb`` and ``pg_ctl`` are looked up on ``PATH``, then in
   ``/usr/lib/postgresql/*/bin`` (highest version first; override those
   directories with ``ECRM_TEST_POSTGRES_BIN_DIRS``, glob patterns separated
   by ``os.pathsep``, empty for ``PATH`` only).  A cluster is created in a
   temporary directory and started on a free loopback port (listening on
   127.0.0.1 only, its unix socket in the same directory, ``fsync=off``), and
   stopped and deleted afterwards.  As root, ``initdb``/``pg_ctl`` run as the
   ``postgres`` system user (``runuser -u postgres --``): PostgreSQL refuses
   to run as root.
3. No binaries: the tests are skipped, with the reason — unless
   ``ECRM_REQUIRE_POSTGRES=1``, then they fail (CI sets it, so PostgreSQL
   tests can never silently skip).

The server's ``TimeZone`` is ``Asia/Kathmandu`` (UTC+05:45), so code that
depends on the server's zone shows up in tests.

Fixtures:

* ``postgres_url`` (session) — URL of a database on the server (one server
  per test session: under pytest-xdist, one per worker, each in its own
  directory on its own port);
* ``postgres_databases`` (session) — :class:`PostgresDatabases` for that
  server: create and drop databases;
* ``pg_empty_url`` — URL of a fresh, empty database, dropped after the test;
* ``pg_crm_factory`` — ``pg_crm_factory(**options)`` builds CRMs like
  ``crm_factory`` does (same options as :class:`~ecrm_core.CRM`, entry-point
  plugins not loaded unless asked), each on a fresh migrated database
  cloned from a template migrated once per session; closed and dropped
  after the test;
* ``pg_crm`` — one such CRM.

Outside pytest, :func:`postgres_server` is a context manager yielding the URL.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ..crm import CRM

__all__ = [
    "ENV_BIN_DIRS",
    "ENV_REQUIRE",
    "ENV_URL",
    "PostgresDatabases",
    "PostgresUnavailable",
    "find_postgres_bin",
    "postgres_server",
]

#: An existing database to use instead of starting a server.
ENV_URL = "ECRM_TEST_POSTGRES_URL"
#: ``1``: fail instead of skipping when no PostgreSQL is available.
ENV_REQUIRE = "ECRM_REQUIRE_POSTGRES"
#: Where to look for ``initdb``/``pg_ctl`` after ``PATH`` (glob patterns).
ENV_BIN_DIRS = "ECRM_TEST_POSTGRES_BIN_DIRS"
DEFAULT_BIN_DIRS = "/usr/lib/postgresql/*/bin"
#: A zone that is neither UTC nor a whole hour away from it.
SERVER_TIMEZONE = "Asia/Kathmandu"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, and no ``ECRM_TEST_POSTGRES_URL``."""


# ---------------------------------------------------------------------------
# finding and running a server
# ---------------------------------------------------------------------------
def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path)))


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``.

    ``PATH`` first, then ``ECRM_TEST_POSTGRES_BIN_DIRS`` (default
    ``/usr/lib/postgresql/*/bin``), the highest version first.
    """

    def complete(directory: Path) -> bool:
        return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))

    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl") and complete(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    patterns = os.environ.get(ENV_BIN_DIRS, DEFAULT_BIN_DIRS)
    found = {Path(p) for pattern in patterns.split(os.pathsep) if pattern for p in glob.glob(pattern)}
    return next((d for d in sorted(found, key=_version_key, reverse=True) if complete(d)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _traversable_by_all(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _parent_dir(as_root: bool) -> str:
    """Where the cluster's directory goes: RAM (``/dev/shm``) when it has
    room, as cloning a database there is ~10x faster; else the temp dir
    (``/tmp`` as root when the temp dir is private, for the postgres user)."""
    shm = Path("/dev/shm")
    try:
        vfs = os.statvfs(shm)
        if os.access(shm, os.W_OK) and vfs.f_bavail * vfs.f_frsize >= 1 << 30:
            return str(shm)
    except OSError:
        pass
    base = Path(tempfile.gettempdir())
    return "/tmp" if as_root and not _traversable_by_all(base) else str(base)


class _Cluster:
    """An initdb'ed cluster in a temporary directory, started on a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        if self.as_root:
            import pwd

            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, and PostgreSQL refuses root: a 'postgres' system user is needed "
                    "(the Debian package 'postgresql' creates it)"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root without 'runuser' to start PostgreSQL as 'postgres'")
        # one cluster per process: under pytest-xdist each worker (gw0, gw1…) has its own
        worker = re.sub(r"[^A-Za-z0-9]", "", os.environ.get("PYTEST_XDIST_WORKER", ""))
        prefix = f"ecrm-pg-{worker}-" if worker else "ecrm-pg-"
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=_parent_dir(self.as_root)))
        if self.as_root:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, check=False)

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL {what} failed (exit {done.returncode}) in {self.dir}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{log}"
            )

    def start(self) -> None:
        self._check(
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ),
            "initdb",
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-k {shlex.quote(str(self.dir))}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c wal_level=minimal",
                "-c max_wal_senders=0",
                f"-c timezone={SERVER_TIMEZONE}",
            ]
        )
        for attempt in range(3):  # another process may take the free port first
            self.port = _free_port()
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} {options}",
                "start",
            )
            if done.returncode == 0:
                return
            if attempt == 2:
                self._check(done, "start")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@contextmanager
def postgres_server(database: str = "ecrm_test") -> Iterator[str]:
    """Yield the URL of a database on a throwaway PostgreSQL server.

    With ``ECRM_TEST_POSTGRES_URL`` set, yields that URL (nothing is started
    or created).  Otherwise starts a server from the binaries
    :func:`find_postgres_bin` finds, creates ``database`` and yields a
    ``postgresql+psycopg://`` URL to it; the server is stopped and its
    directory deleted afterwards.  Raises :class:`PostgresUnavailable` when
    there are no binaries (or, as root, no ``postgres`` user to run them).
    """
    given = os.environ.get(ENV_URL)
    if given:
        yield given
        return
    bindir = find_postgres_bin()
    if bindir is None:
        dirs = os.environ.get(ENV_BIN_DIRS, DEFAULT_BIN_DIRS)
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in {dirs or '(no directories)'}; "
            f"install PostgreSQL (Debian: apt-get install postgresql) or set {ENV_URL}"
        )
    cluster = _Cluster(bindir)
    try:
        cluster.start()
        admin = PostgresDatabases(cluster.url("postgres"))
        try:
            admin.create(database)
        finally:
            admin.close()
        yield cluster.url(database)
    finally:
        cluster.stop()


def describe() -> str:
    """Where the PostgreSQL for tests comes from (for the pytest header)."""
    given = os.environ.get(ENV_URL)
    if given:
        return f"{ENV_URL}={sa.make_url(given).render_as_string(hide_password=True)}"
    bindir = find_postgres_bin()
    required = " (required)" if os.environ.get(ENV_REQUIRE) == "1" else ""
    return f"throwaway server from {bindir}{required}" if bindir else f"none found: PostgreSQL tests skip{required}"


# ---------------------------------------------------------------------------
# databases on a server
# ---------------------------------------------------------------------------
class PostgresDatabases:
    """Create and drop databases on the server of ``url`` (needs ``CREATEDB``).

    Names are unique per instance (a random token), so several test runs
    can share one server.
    """

    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self.engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.token = uuid.uuid4().hex[:8]
        self._count = 0
        self._conn: sa.Connection | None = None
        self._templates: dict[tuple[str, ...], str] = {}
        self._released: list[str] = []

    def _admin(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def new_name(self, kind: str = "t") -> str:
        self._count += 1
        return f"ecrm_{kind}{self._count}_{self.token}"

    def url_for(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def create(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create database ``name`` (default: a new unique name), empty or
        cloned from ``template`` (which nobody may be connected to); return its URL."""
        name = name or self.new_name()
        self._drop_released()
        conn = self._admin()
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            sql += f' TEMPLATE "{template}"'
            version = conn.dialect.server_version_info or (0,)
            if version >= (15,):
                sql += " STRATEGY FILE_COPY"  # fast for small databases with fsync off
        conn.exec_driver_sql(sql)
        return self.url_for(name)

    def drop(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending its connections."""
        conn = self._admin()
        version = conn.dialect.server_version_info or (0,)
        force = " WITH (FORCE)" if version >= (13,) else ""
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')

    def release(self, name: str) -> None:
        """Drop database ``name`` soon: before the next :meth:`create`, or at
        :meth:`close` (by then its closed connections' backends have exited,
        so nothing waits for them)."""
        self._released.append(name)

    def _drop_released(self) -> None:
        while self._released:
            self.drop(self._released.pop())

    def make_crm(self, **options: Any) -> tuple[CRM, str]:
        """A :class:`~ecrm_core.CRM` on a fresh migrated database, and that database's name.

        ``options`` are those of ``CRM`` (``load_entrypoints`` defaults to
        False).  Migrations run once per set of migration branches, table
        prefix and schema; later databases are cloned from a template.
        """
        options.setdefault("load_entrypoints", False)
        name = self.new_name()
        crm = CRM(self.url_for(name), **options)  # connects on first use only
        naming = crm.db.naming
        key = (
            *sorted(f"{k}={v}" for k, v in crm.migration_locations().items()),
            f"prefix={naming.prefix}",
            f"schema={naming.schema}",
        )
        template = self._templates.get(key)
        if template is not None:
            self.create(name, template=template)
            return crm, name
        self.create(name)
        try:
            crm.upgrade()
            crm.db.engine.dispose()  # nobody may be connected to a template
            template = self.new_name("tpl")
            self.create(template, template=name)
        except BaseException:
            crm.close()
            self.drop(name)
            raise
        self._templates[key] = template
        return crm, name

    def close(self) -> None:
        """Drop the templates and release the admin connection."""
        try:
            self._drop_released()
            for template in self._templates.values():
                self.drop(template)
            self._templates.clear()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()


# ---------------------------------------------------------------------------
# pytest plugin
# ---------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: runs against a real PostgreSQL server (ecrm_core.testing.postgres)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"postgresql: {describe()}"


class _Prestarted:
    """:func:`postgres_server` entered in a background thread, so the server
    starts while the session's other tests run."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._url: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="ecrm-postgres-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._url = self._stack.enter_context(postgres_server())
        except BaseException as exc:  # re-raised in the test thread by url()
            self._error = exc

    def url(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._url is not None
        return self._url

    def close(self) -> None:
        self._thread.join()
        self._stack.close()


_PRESTARTED = pytest.StashKey[_Prestarted]()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("postgres_url" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[_PRESTARTED] = _Prestarted()


def pytest_unconfigure(config: pytest.Config) -> None:
    prestarted = config.stash.get(_PRESTARTED, None)
    if prestarted is not None:
        del config.stash[_PRESTARTED]
        prestarted.close()


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a database on the session's PostgreSQL server (see the module docs)."""
    prestarted = request.config.stash.get(_PRESTARTED, None)  # started once collection found tests needing it
    with ExitStack() as stack:
        try:
            url = prestarted.url() if prestarted is not None else stack.enter_context(postgres_server())
        except PostgresUnavailable as exc:
            problem = str(exc)
        else:
            problem = ""
        if problem:
            if os.environ.get(ENV_REQUIRE) == "1":
                pytest.fail(f"{ENV_REQUIRE}=1 but PostgreSQL is unavailable: {problem}", pytrace=False)
            pytest.skip(f"PostgreSQL unavailable: {problem}")
        yield url


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    """Create/drop databases on the session's server; migrated templates are dropped at the end."""
    databases = PostgresDatabases(postgres_url)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def pg_empty_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """URL of a fresh, empty database (no ecrm tables), dropped after the test."""
    name = postgres_databases.new_name()
    url = postgres_databases.create(name)
    try:
        yield url
    finally:
        postgres_databases.release(name)


@pytest.fixture
def pg_crm_factory(postgres_databases: PostgresDatabases) -> Iterator[Callable[..., CRM]]:
    """Build CRMs on fresh migrated PostgreSQL databases (options as for ``CRM``);
    all are closed and their databases dropped after the test."""
    made: list[tuple[CRM, str]] = []

    def factory(**options: Any) -> CRM:
        crm, name = postgres_databases.make_crm(**options)
        made.append((crm, name))
        return crm

    yield factory
    for crm, name in made:
        crm.close()
        postgres_databases.release(name)


@pytest.fixture
def pg_crm(pg_crm_factory: Callable[..., CRM]) -> CRM:
    """A CRM on a fresh migrated PostgreSQL database (no entry-point plugins)."""
    return pg_crm_factory()
