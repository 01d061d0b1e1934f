"""ecrm's tables, built for a given table prefix and schema.

Tables are defined by :func:`build_metadata` rather than at import, because
their names depend on the host's configuration (``table_prefix``/``schema``)
and several CRMs with different prefixes can live in one process.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.types import TypeDecorator

__all__ = ["Naming", "UTCDateTime", "Amount", "build_metadata", "CORE_TABLES"]


@frozen
class Naming:
    """Where ecrm's tables live: ``prefix`` + name, in ``schema`` (or default)."""

    prefix: str = "ecrm_"
    schema: str | None = None

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def version_table(self) -> str:
        return self.table("alembic_version")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff`` text in UTC (so text order is
    time order); PostgreSQL uses ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer; ecrm stores aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL paths on SQLite
            value = datetime.fromisoformat(value)
        result: datetime = value
        return result.replace(tzinfo=UTC) if result.tzinfo is None else result.astimezone(UTC)


class Amount(TypeDecorator[Decimal]):
    """Money amounts as :class:`~decimal.Decimal`; NUMERIC on every backend.

    Read back without trailing zeros (``10.5``, ``100``), whatever the
    column's scale, so every backend returns the same value.
    """

    impl = sa.Numeric(20, 6, asdecimal=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        # SQLite has no decimal type (it would warn about a float
        # conversion); backends with a real NUMERIC return Decimals, kept
        # exact instead of passing through float (sums of many amounts).
        if dialect.name == "sqlite":
            return dialect.type_descriptor(self.impl)
        return dialect.type_descriptor(sa.Numeric(20, 6, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None:
            return None
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
        if not amount.is_finite():
            return amount
        amount = amount.normalize()
        exponent = amount.as_tuple().exponent
        return amount.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else amount


#: Short names of the core's tables (``crm.db.tables["customers"]``).
CORE_TABLES = (
    "workspaces",
    "customers",
    "aliases",
    "interactions",
    "offers",
    "consent_events",
    "audit_log",
    "segments",
    "segment_members",
    "lifecycle_rules",
    "messages",
    "delivery_attempts",
    "suppressions",
    "jobs",
)


def build_metadata(naming: Naming) -> sa.MetaData:
    """Return the core's tables on a fresh :class:`~sqlalchemy.MetaData`.

    The initial Alembic migration creates exactly these; a test compares the
    two so they cannot drift.
    """
    md = sa.MetaData(schema=naming.schema)
    t = naming.table

    def fk(table: str, ondelete: str | None = None) -> sa.ForeignKey:
        target = f"{naming.schema}.{t(table)}.id" if naming.schema else f"{t(table)}.id"
        return sa.ForeignKey(target, ondelete=ondelete)

    def ws() -> sa.Column[str]:
        return sa.Column("workspace_id", sa.String(64), nullable=False)

    sa.Table(
        t("workspaces"),
        md,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    customers = sa.Table(
        t("customers"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("external_id", sa.String(200)),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(32)),
        sa.Column("name", sa.String(200)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("consent", sa.JSON, nullable=False),
        sa.Column("lifecycle_stage", sa.String(64), nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("locale", sa.String(35)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("merged_into", sa.Integer, fk("customers")),
    )
    sa.Index(f"ix_{t('customers')}_ws_email", customers.c.workspace_id, customers.c.email)
    sa.Index(f"ix_{t('customers')}_ws_stage", customers.c.workspace_id, customers.c.lifecycle_stage)
    sa.Index(f"ix_{t('customers')}_merged_into", customers.c.merged_into)

    aliases = sa.Table(
        t("aliases"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("customer_id", sa.Integer, fk("customers", "CASCADE"), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(320), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "kind", "value", name=f"uq_{t('aliases')}_ws_kind_value"),
    )
    sa.Index(f"ix_{t('aliases')}_customer", aliases.c.customer_id)

    interactions = sa.Table(
        t("interactions"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("customer_id", sa.Integer, fk("customers"), nullable=False),
        # The customer the interaction was recorded against: kept through
        # merges so that a merge can be audited (and undone).
        sa.Column("origin_customer_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("amount", Amount()),
        sa.Column("currency", sa.String(3)),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("payload_hash", sa.String(32)),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    # Covering for behaviour conditions over a few customers (incremental
    # refresh): kind and amount are read from the index, not the rows.
    sa.Index(
        f"ix_{t('interactions')}_ws_customer_time",
        interactions.c.workspace_id,
        interactions.c.customer_id,
        interactions.c.occurred_at,
        interactions.c.kind,
        interactions.c.amount,
    )
    sa.Index(
        f"ix_{t('interactions')}_ws_kind_time",
        interactions.c.workspace_id,
        interactions.c.kind,
        interactions.c.occurred_at,
    )
    sa.Index(
        f"uq_{t('interactions')}_ws_key",
        interactions.c.workspace_id,
        interactions.c.idempotency_key,
        unique=True,
    )

    offers = sa.Table(
        t("offers"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("valid_from", UTCDateTime()),
        sa.Column("valid_until", UTCDateTime()),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("eligibility", sa.JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "code", name=f"uq_{t('offers')}_ws_code"),
    )
    sa.Index(f"ix_{t('offers')}_ws_status", offers.c.workspace_id, offers.c.status)

    consent_events = sa.Table(
        t("consent_events"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("customer_id", sa.Integer, fk("customers", "CASCADE"), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(500)),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    sa.Index(f"ix_{t('consent_events')}_customer", consent_events.c.customer_id, consent_events.c.at)

    audit = sa.Table(
        t("audit_log"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("details", sa.JSON, nullable=False),
    )
    sa.Index(f"ix_{t('audit_log')}_entity", audit.c.workspace_id, audit.c.entity, audit.c.entity_id)

    # --- segments and lifecycle rules (migration 0002_segments) ---
    sa.Table(
        t("segments"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rule", sa.JSON),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("refreshed_at", UTCDateTime()),
        # why the rule last failed to evaluate, and when (migration 0005_segment_errors)
        sa.Column("error", sa.String(2000)),
        sa.Column("error_at", UTCDateTime()),
        sa.UniqueConstraint("workspace_id", "slug", name=f"uq_{t('segments')}_ws_slug"),
    )
    members = sa.Table(
        t("segment_members"),
        md,
        sa.Column("segment_id", sa.Integer, fk("segments", "CASCADE"), primary_key=True),
        sa.Column("customer_id", sa.Integer, fk("customers", "CASCADE"), primary_key=True),
        sa.Column("entered_at", UTCDateTime(), nullable=False),
        sqlite_with_rowid=False,
    )
    sa.Index(f"ix_{t('segment_members')}_customer", members.c.customer_id)
    sa.Table(
        t("lifecycle_rules"),
        md,
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("rule", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("error", sa.String(2000)),
        sa.Column("error_at", UTCDateTime()),
    )
    # --- the delivery pipeline (migration 0003_messages) ---
    messages = sa.Table(
        t("messages"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        # Stable across attempts: the idempotency key handed to the provider.
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer, fk("customers", "CASCADE"), nullable=False),
        sa.Column("address", sa.String(320)),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("template", sa.String(200)),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        # queued | sending | sent | blocked | dead | cancelled
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("provider_id", sa.String(500)),
        sa.Column("dedupe_key", sa.String(200)),
        sa.Column("transactional", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime()),
        sa.UniqueConstraint("uid", name=f"uq_{t('messages')}_uid"),
    )
    sa.Index(f"ix_{t('messages')}_due", messages.c.status, messages.c.next_attempt_at)
    sa.Index(
        f"ix_{t('messages')}_customer",
        messages.c.workspace_id,
        messages.c.customer_id,
        messages.c.channel,
        messages.c.created_at,
    )
    sa.Index(f"uq_{t('messages')}_ws_dedupe", messages.c.workspace_id, messages.c.dedupe_key, unique=True)
    attempts = sa.Table(
        t("delivery_attempts"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Integer, fk("messages", "CASCADE"), nullable=False),
        sa.Column("attempt_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        # started | accepted | deferred | rejected | lost (lease expired)
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("code", sa.String(100)),
        sa.Column("reason", sa.String(1000)),
        sa.Column("provider_id", sa.String(500)),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.UniqueConstraint("attempt_id", name=f"uq_{t('delivery_attempts')}_attempt"),
    )
    sa.Index(f"ix_{t('delivery_attempts')}_message", attempts.c.message_id, attempts.c.number)
    sa.Table(
        t("suppressions"),
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        ws(),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        # all: nothing is sent (hard bounce, manual); marketing: only transactional
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(1000)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "channel", "address", name=f"uq_{t('suppressions')}_ws_channel_address"),
    )
    # --- the worker's job state (migration 0006_jobs) ---
    _jobs_table(md, t)
    return md


def _jobs_table(md: sa.MetaData, t: Any) -> sa.Table:
    """One row per (job, workspace): schedule, exclusive lease, last outcome.

    ``workspace_id`` is ``"*"`` for a global job.  The lease columns are only
    used by exclusive jobs (taken with one conditional UPDATE).
    """
    return sa.Table(
        t("jobs"),
        md,
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("next_run_at", UTCDateTime()),
        sa.Column("last_started_at", UTCDateTime()),
        sa.Column("last_finished_at", UTCDateTime()),
        sa.Column("last_done", sa.Integer, nullable=False),
        sa.Column("last_more", sa.Boolean, nullable=False),
        sa.Column("last_message", sa.String(500)),
        sa.Column("last_error", sa.String(2000)),
        sa.Column("last_error_at", UTCDateTime()),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("total_done", sa.BigInteger, nullable=False),
    )
