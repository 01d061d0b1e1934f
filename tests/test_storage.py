"""Storage: migrations, SQLite discipline, prefixes, host engines and transactions."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from ecrm_core import CRM, Conflict, SchemaNotInitialised, hookimpl
from ecrm_core.registry import MigrationSource
from ecrm_core.testing import EventRecorder

NOTES = str(Path(__file__).parent / "fixtures" / "notes_migrations")


class NotesPlugin:
    """A plugin with its own table and migration branch."""

    @hookimpl
    def ecrm_register_migrations(self):
        return [MigrationSource(branch="notes", location=NOTES)]

    @hookimpl
    def ecrm_register_tables(self, metadata, naming):
        sa.Table(
            naming.table("notes"),
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("customer_id", sa.Integer, nullable=False),
            sa.Column("text", sa.String(500), nullable=False),
        )


def test_migrations_match_the_table_definitions(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    crm = CRM(f"sqlite:///{tmp_path / 'm.db'}", load_entrypoints=False)
    crm.upgrade()
    with crm.db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": crm.db.naming.version_table})
        diff = [d for d in compare_metadata(ctx, crm.db.metadata)]
    assert diff == []
    assert crm.schema_status()["up_to_date"]
    crm.upgrade()  # idempotent


def test_unmigrated_database_says_what_to_do(tmp_path):
    crm = CRM(f"sqlite:///{tmp_path / 'empty.db'}", load_entrypoints=False)
    with pytest.raises(SchemaNotInitialised, match="ecrm db upgrade"):
        crm.customers.count()


def test_sqlite_pragmas(crm):
    with crm.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_writes_begin_immediate(crm):
    """A write transaction takes the write lock at BEGIN, not at the first write."""
    seen = []
    sa.event.listen(crm.db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    crm.customers.create(email="a@example.com")
    assert "BEGIN IMMEDIATE" in seen


def test_table_prefix_beside_host_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'host.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, login TEXT)")  # the host's own
    crm = CRM(engine=engine, table_prefix="crm_", load_entrypoints=False)
    crm.upgrade()
    crm.customers.create(email="a@example.com")
    names = set(sa.inspect(engine).get_table_names())
    assert {"customers", "crm_customers", "crm_interactions", "crm_alembic_version"} <= names
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM customers").scalar() == 0
    with pytest.raises(Exception, match="prefix"):
        CRM(engine=engine, table_prefix="bad prefix;", load_entrypoints=False)


def test_joining_the_host_transaction(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    recorder = EventRecorder()
    crm = CRM(engine=engine, load_entrypoints=False, plugins=[recorder])
    crm.upgrade()
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER)")
        conn.commit()
        # Rolled back by the host: neither the host's row nor ecrm's, and no events.
        with conn.begin() as tx:
            c = crm.using(conn).customers.create(email="a@example.com")
            conn.exec_driver_sql(f"INSERT INTO orders (customer_id) VALUES ({c.id})")
            assert recorder.calls == []  # not yet: the host has not committed
            tx.rollback()
        assert recorder.calls == []
        assert crm.customers.count() == 0
        # Committed by the host: both, and the event after the commit.
        with conn.begin():
            view = crm.using(conn)
            c = view.customers.create(email="a@example.com")
            view.interactions.track("signup", customer_id=c.id)
            conn.exec_driver_sql(f"INSERT INTO orders (customer_id) VALUES ({c.id})")
            assert recorder.calls == []
        assert [name for name, _ in recorder.calls] == ["ecrm_customers_created", "ecrm_interactions_recorded"]
    assert crm.customers.count() == 1


def test_ecrm_error_inside_host_transaction_rolls_back_only_ecrm(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    crm = CRM(engine=engine, load_entrypoints=False)
    crm.upgrade()
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.commit()
        with conn.begin():
            view = crm.using(conn)
            conn.exec_driver_sql("INSERT INTO orders DEFAULT VALUES")
            view.customers.create(email="a@example.com")
            with pytest.raises(Conflict):
                view.customers.create(email="a@example.com")  # conflict: rolled back to its savepoint
        assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 1
    assert crm.customers.count() == 1


def test_plugin_migration_branch(crm_factory):
    crm = crm_factory(plugins=[NotesPlugin()])
    status = crm.schema_status()
    assert status["up_to_date"] and "notes_0001" in status["current"]
    notes = crm.db.tables["notes"]
    with crm.db.write() as conn:
        conn.execute(notes.insert().values(customer_id=1, text="hello"))
    with crm.db.read() as conn:
        assert conn.execute(sa.select(notes.c.text)).scalar_one() == "hello"


def test_plugin_tables_follow_the_prefix(tmp_path):
    crm = CRM(f"sqlite:///{tmp_path / 'p.db'}", table_prefix="x_", load_entrypoints=False, plugins=[NotesPlugin()])
    crm.upgrade()
    assert "x_notes" in sa.inspect(crm.db.engine).get_table_names()
    assert crm.db.tables["notes"].name == "x_notes"


def test_registering_another_plugin_keeps_plugin_tables(crm_factory):
    crm = crm_factory(plugins=[NotesPlugin()])

    class Other:
        @hookimpl
        def ecrm_startup(self, crm):
            pass

    crm.register_plugin(Other(), name="other")
    crm.unregister_plugin("other")
    assert list(crm.plugins.failures) == []  # ecrm_register_tables ran once per plugin
    assert crm.db.tables["notes"].name == "ecrm_notes"


def test_deferred_events_see_durable_data_and_can_write(tmp_path):
    """Listeners of a joined transaction run after the host's COMMIT, on their own connections."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    seen = []

    class Follower:
        @hookimpl
        def ecrm_customers_created(self, crm, customers):
            seen.append(crm.customers.count())  # another connection: sees committed data only
            crm.customers.update(customers[0].id, attributes={"welcomed": True})  # its own write

    crm = CRM(engine=engine, load_entrypoints=False, plugins=[Follower()])
    crm.upgrade()
    with engine.connect() as conn, conn.begin():
        c = crm.using(conn).customers.create(email="a@example.com")
    assert seen == [1]
    assert crm.customers.get(c.id).attributes["welcomed"] is True


def test_signer_short_macs_verify_across_rotation_and_purpose():
    from ecrm_core.signing import Signer

    old = Signer("an-old-secret-of-16+")
    rotated = Signer(["an-old-secret-of-16+", "the-new-secret-16+chars"])
    mac = old.mac("email-return", "m1:abc")
    assert len(mac) == 16 and mac == mac.lower() and mac.isalnum()
    assert rotated.check_mac("email-return", "m1:abc", mac)  # older secrets still verify
    assert rotated.check_mac("email-return", "m1:abc", mac.upper())  # local parts are case-insensitive
    assert not rotated.check_mac("email-unsubscribe", "m1:abc", mac)  # bound to its purpose
    assert not rotated.check_mac("email-return", "m2:abc", mac)
    assert not rotated.check_mac("email-return", "m1:abc", mac[:-1] + ("a" if mac[-1] != "a" else "b"))
    assert not rotated.check_mac("email-return", "m1:abc", "")
    assert rotated.mac("p", "d") != old.mac("p", "d")  # the newest secret signs
    assert "secret" not in repr(rotated)
