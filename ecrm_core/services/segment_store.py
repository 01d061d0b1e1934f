"""What a segment is (the records ``crm.segments`` returns) and reading
segments: the rule catalogue, lookups, members.

The base of :class:`~ecrm_core.services.segments.Segments` (split from
:mod:`.segments`, which re-exports these records).
"""

from __future__ import annotations

import builtins
import difflib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.dialects import postgresql, sqlite

from ..domain import Customer
from ..errors import NotFound, ValidationError
from ..rules import Catalogue, Rule, SqlContext, compile_rule
from ..validation import thaw
from ._base import Service

CHUNK = 5000
_SLUG_FIX = "use 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter, e.g. 'vip'"


@frozen
class Segment:
    """A stored segment: ``dynamic`` (a rule) or ``static`` (an uploaded list)."""

    id: int
    workspace: str
    slug: str
    name: str
    description: str
    kind: Literal["dynamic", "static"]
    rule: Mapping[str, Any] | None
    member_count: int
    created_at: datetime
    updated_at: datetime
    refreshed_at: datetime | None
    #: Why the rule last failed to evaluate (None: it evaluated at the last
    #: refresh); the segment keeps its last membership meanwhile.
    error: str | None = None
    #: When it failed (cleared with ``error`` once it evaluates again).
    error_at: datetime | None = None

    @property
    def text(self) -> str | None:
        """The rule in the text syntax (None for static segments)."""
        from ..rules import to_text

        return None if self.rule is None else to_text(self.rule)


@frozen
class Member:
    customer_id: int
    entered_at: datetime


@frozen
class Preview:
    """What a rule would select, without storing anything."""

    count: int
    sample: tuple[Customer, ...]
    sql: str
    plan: tuple[str, ...]
    warnings: tuple[str, ...]
    text: str


@frozen
class SegmentChange:
    segment: Segment
    entered: tuple[int, ...]
    exited: tuple[int, ...]


@frozen
class RefreshFailure:
    """A segment (or ``lifecycle``) a refresh skipped because its rule failed to evaluate."""

    slug: str
    error: str


@frozen
class RefreshReport:
    """What a refresh changed; ``customers`` is None for a full refresh;
    ``failed``: the segments skipped because their rule failed (recorded on
    them as ``error``), the others were refreshed."""

    changes: tuple[SegmentChange, ...]
    stage_changes: int
    customers: int | None
    seconds: float
    failed: tuple[RefreshFailure, ...] = ()

    @property
    def entered(self) -> int:
        return sum(len(c.entered) for c in self.changes)

    @property
    def exited(self) -> int:
        return sum(len(c.exited) for c in self.changes)


class _SegmentStore(Service):
    """Reading segments and compiling rules against them (the base of ``crm.segments``)."""

    # ------------------------------------------------------------------
    # rules
    # ------------------------------------------------------------------
    def catalogue(self, *, segments: Iterable[str] | None = None) -> Catalogue:
        """The names rules may use here (fields, kinds, stages, conditions, segments)."""
        base = Catalogue.from_registry(self.crm.registry)
        if segments is None:
            segments = self._slugs()
        return Catalogue(base.fields, base.kinds, base.stages, base.conditions, frozenset(segments))

    def compile(self, rule: str | Mapping[str, Any] | Rule) -> Rule:
        """Validate rule text or a tree against this CRM's plugins and segments."""
        return compile_rule(rule, self.catalogue())

    def _cached(self, rule: str | Mapping[str, Any], segments: Iterable[str]) -> Rule:
        """Compile a stored rule once per registry (stored rules are re-read on every refresh)."""
        segs = frozenset(segments)
        key = (
            id(self.crm.registry),
            rule if isinstance(rule, str) else json.dumps(thaw(rule), sort_keys=True, default=str),
            segs,
        )
        cache = self.crm._shared.rule_cache
        hit = cache.get(key)
        if hit is None:
            hit = compile_rule(rule, self.catalogue(segments=segs))
            if len(cache) > 512:
                cache.clear()
            cache[key] = hit
        return hit

    def _sql_context(self, conn: sa.Connection, *, restrict: Collection[int] | None = None) -> SqlContext:
        return SqlContext(
            tables=self.db.tables,
            workspace=self.workspace,
            now=self.crm.now(),
            dialect=conn.dialect.name,
            segment_ids=self._ids(conn),
            restrict=restrict,
            crm=self.crm,
        )

    def _ids(self, conn: sa.Connection) -> dict[str, int]:
        s = self.t("segments")
        return {
            r.slug: r.id for r in conn.execute(sa.select(s.c.slug, s.c.id).where(s.c.workspace_id == self.workspace))
        }

    def _slugs(self) -> builtins.list[str]:
        s = self.t("segments")
        with self.db.read() as conn:
            return builtins.list(conn.scalars(sa.select(s.c.slug).where(s.c.workspace_id == self.workspace)))

    # ------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------
    def _from_row(self, row: Any) -> Segment:
        m = row._mapping
        return Segment(
            id=m["id"],
            workspace=m["workspace_id"],
            slug=m["slug"],
            name=m["name"],
            description=m["description"],
            kind=m["kind"],
            rule=m["rule"],
            member_count=m["member_count"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            refreshed_at=m["refreshed_at"],
            error=m.get("error"),
            error_at=m.get("error_at"),
        )

    def _where(self, ref: str | int) -> sa.ColumnElement[bool]:
        s = self.t("segments")
        if isinstance(ref, int) and not isinstance(ref, bool):
            return sa.and_(s.c.workspace_id == self.workspace, s.c.id == ref)
        if isinstance(ref, str):
            return sa.and_(s.c.workspace_id == self.workspace, s.c.slug == ref)
        raise ValidationError("segment", ref, "not a segment slug or id", "pass the slug, e.g. 'vip'")

    def get(self, ref: str | int) -> Segment:
        """The segment with this slug (or id), or :class:`NotFound` with a suggestion."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(self.t("segments")).where(self._where(ref))).first()
        if row is None:
            err = NotFound("segment", ref)
            close = difflib.get_close_matches(str(ref), self._slugs(), n=1)
            if close:
                err.args = (f'{err.args[0]} — did you mean "{close[0]}"?',)
            raise err
        return self._from_row(row)

    def list(self) -> builtins.list[Segment]:
        s = self.t("segments")
        with self.db.read() as conn:
            rows = conn.execute(sa.select(s).where(s.c.workspace_id == self.workspace).order_by(s.c.slug))
            return [self._from_row(r) for r in rows]

    def members(self, ref: str | int, *, limit: int = 100, after: int | None = None) -> builtins.list[Member]:
        """Members in customer-id order; pass the last id as ``after`` for the next page."""
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ValidationError("limit", limit, "not between 1 and 100000", "ask for at most 100000 per page")
        seg = self.get(ref)
        m = self.t("segment_members")
        q = sa.select(m.c.customer_id, m.c.entered_at).where(m.c.segment_id == seg.id)
        if after is not None:
            q = q.where(m.c.customer_id > after)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(m.c.customer_id).limit(limit))
            return [Member(r.customer_id, r.entered_at) for r in rows]

    def count(self, ref: str | int) -> int:
        """How many customers are members (from the stored membership)."""
        seg = self.get(ref)
        m = self.t("segment_members")
        with self.db.read() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).where(m.c.segment_id == seg.id)) or 0)

    def is_member(self, ref: str | int, customer_id: int) -> bool:
        seg = self.get(ref)
        m = self.t("segment_members")
        with self.db.read() as conn:
            q = sa.select(m.c.customer_id).where(m.c.segment_id == seg.id, m.c.customer_id == customer_id)
            return conn.execute(q).first() is not None

    def of(self, customer_id: int) -> builtins.list[str]:
        """Slugs of the segments the customer is a member of."""
        with self.db.read() as conn:
            return sorted(self._memberships(conn, customer_id))

    def _memberships(self, conn: sa.Connection, customer_id: int) -> set[str]:
        m, s = self.t("segment_members"), self.t("segments")
        q = sa.select(s.c.slug).join(m, m.c.segment_id == s.c.id).where(m.c.customer_id == customer_id)
        return set(conn.scalars(q))

    def _insert(self, conn: sa.Connection) -> Any:
        m = self.t("segment_members")
        return postgresql.insert(m) if conn.dialect.name == "postgresql" else sqlite.insert(m)


def _refers_to(tree: Any, slug: str) -> bool:
    """Whether a stored rule tree uses ``segment(slug)``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if node.get("segment") == slug:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _check_slug(slug: Any) -> str:
    import re

    if not isinstance(slug, str) or not re.match(r"^[a-z][a-z0-9_\-]{0,63}$", slug):
        raise ValidationError("slug", slug, "not a valid segment slug", _SLUG_FIX)
    return slug


def _ids(values: Iterable[int], field_name: str, *, allow_empty: bool = True) -> builtins.list[int]:
    if isinstance(values, (str, bytes)):
        raise ValidationError(field_name, values, "not a list of ids", "pass customer ids, e.g. [1, 2, 3]")
    out: dict[int, None] = {}
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValidationError(f"{field_name}[{i}]", v, "not a customer id", "pass positive integer ids")
        out[v] = None
    return builtins.list(out)


def _id_rows(ids: Sequence[int], dialect: str) -> Any:
    """The ids as a column of rows (``json_each`` on SQLite, ``unnest`` on
    PostgreSQL): one bound parameter, however many ids."""
    if dialect == "sqlite":
        return (
            sa.func.json_each(sa.bindparam("ids", json.dumps(list(ids)), type_=sa.String)).table_valued("value").c.value
        )
    if dialect == "postgresql":
        return sa.func.unnest(sa.bindparam("ids", list(ids), type_=postgresql.ARRAY(sa.BigInteger))).column_valued("id")
    return sa.values(sa.column("id", sa.BigInteger), name="ids").data([(i,) for i in ids]).c.id


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]
