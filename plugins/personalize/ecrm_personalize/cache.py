"""The decision's in-process caches: the catalogue and the recommendation lists, by generation.

A decision must not read the whole catalogue or decode the same lists again
and again, and must never serve what another process has already changed.
So each process keeps, per workspace:

* the **catalogue** (``sku -> (title, category, available)``, plain tuples),
  loaded in one query when first needed; catalogues larger than
  :data:`CATALOGUE_MAX` products are not cached (the decision then reads
  its candidates by key, one ``IN`` query);
* the **lists** read so far (``key -> ((sku, score), ...)``, decoded once;
  a key with no list is remembered as empty), filled by one ``IN`` query
  for the keys a decision misses.

Both belong to a **generation**: the values of two rows of
``personalize_recs``, ``_meta`` (rewritten by every refresh with a new
random ``generation``) and ``_catalogue`` (rewritten with a new one by every
catalogue write of :class:`~ecrm_personalize.Personalize`: ``add_products``,
``remove_products``, ``set_available``).  Every decision reads those two rows
(one primary-key query) and drops the caches of the workspace when they
differ from what the caches were built from, so a refresh or a catalogue
change made by any process (a worker, another API process) is seen by the
next decision everywhere.  A catalogue changed with hand-written SQL is not
seen until the next refresh or catalogue write through the API.

Statements run on the DB-API cursor of the pooled connection with SQL
rendered once per CRM (:class:`Prepared`), which skips SQLAlchemy's
per-execution work on the hot path.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import msgspec
import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

from .schema import PRODUCTS, RECS
from .state import state

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "CATALOGUE_KEY",
    "CATALOGUE_MAX",
    "META_KEY",
    "Generation",
    "Prepared",
    "bump_catalogue",
    "generation",
    "json_value",
]

META_KEY = "_meta"
#: the row whose ``generation`` changes with every catalogue write (a refresh keeps it)
CATALOGUE_KEY = "_catalogue"
#: catalogues up to this many products are cached whole in each process
CATALOGUE_MAX = 200_000
#: at most this many lists are kept per workspace (then the cache starts again)
LISTS_MAX = 500_000


def json_value(value: Any) -> Any:
    """A JSON column's value as the DB-API returns it: text on SQLite, decoded already by psycopg."""
    if isinstance(value, str | bytes | bytearray):
        return json.loads(value)
    return value


class Prepared:
    """A statement compiled once for a dialect: its SQL text and how to order its parameters."""

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect) -> None:
        # the caller's parameters get a placeholder value, so that the literal IN lists can be rendered
        first = cast(SQLCompiler, stmt.compile(dialect=dialect))
        unset = {name: None for name, bind in first.binds.items() if bind.required}
        compiled = cast(SQLCompiler, stmt.params(unset).compile(dialect=dialect))
        expanded = compiled.construct_expanded_state()
        self.sql = expanded.statement
        self.positional = bool(compiled.positional)
        self.order = tuple(expanded.positiontup or ())
        self.defaults = dict(expanded.parameters)

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.defaults, **values}
        if self.positional:
            return tuple(merged[k] for k in self.order)
        return merged

    def rows(self, cur: Any, values: Mapping[str, Any]) -> list[Any]:
        cur.execute(self.sql, self.params(values))
        return list(cur.fetchall())


class Generation:
    """What one process knows about one workspace's catalogue and lists (see the module's doc)."""

    def __init__(self, token: Any) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.products: dict[str, tuple[str, str | None, bool]] | None = None
        self.lists: dict[str, tuple[tuple[str, float], ...]] = {}


class _Statements:
    def __init__(self, crm: CRM, dialect: sa.Dialect) -> None:
        r, p = crm.db.tables[RECS], crm.db.tables[PRODUCTS]
        self.dialect = dialect
        self.token = Prepared(
            sa.select(r.c.key, r.c["items"]).where(
                r.c.workspace_id == sa.bindparam("ws"), r.c.key.in_([META_KEY, CATALOGUE_KEY])
            ),
            dialect,
        )
        self.count = Prepared(
            sa.select(sa.func.count()).select_from(p).where(p.c.workspace_id == sa.bindparam("ws")), dialect
        )
        self.catalogue = Prepared(
            sa.select(p.c.sku, p.c.title, p.c.category, p.c.available).where(p.c.workspace_id == sa.bindparam("ws")),
            dialect,
        )
        self._r, self._p = r, p
        self._by_n: dict[tuple[str, int], Prepared] = {}

    def in_keys(self, what: str, n: int) -> Prepared:
        """``SELECT ... WHERE key IN (n parameters)``: lists (``recs``) or products (``products``)."""
        found = self._by_n.get((what, n))
        if found is None:
            cols: tuple[sa.Column[Any], ...]
            if what == "recs":
                t, col, cols = self._r, self._r.c.key, (self._r.c.key, self._r.c["items"])
            else:
                t, col = self._p, self._p.c.sku
                cols = (t.c.sku, t.c.title, t.c.category, t.c.available)
            stmt = sa.select(*cols).where(
                t.c.workspace_id == sa.bindparam("ws"), col.in_([sa.bindparam(f"k{i}") for i in range(n)])
            )
            found = self._by_n[(what, n)] = Prepared(stmt, self.dialect)
        return found


def statements(crm: CRM, dialect: sa.Dialect) -> _Statements:
    st = state(crm)
    key = ("cache-statements", id(crm.db.metadata), dialect.name)
    found = st.cache.get(key)
    if found is None:
        found = (float("inf"), _Statements(crm, dialect))
        st.cache[key] = found
    return found[1]  # type: ignore[no-any-return]


def generation(crm: CRM, cur: Any, dialect: sa.Dialect) -> Generation:
    """The workspace's current :class:`Generation` (one query; new and empty when something changed)."""
    stmts = statements(crm, dialect)
    ws = crm.workspace
    token = tuple(sorted((str(k), repr(v)) for k, v in stmts.token.rows(cur, {"ws": ws})))
    st = state(crm)
    key = ("generation", ws)
    hit = st.cache.get(key)
    if hit is not None and hit[1].token == token:
        return hit[1]  # type: ignore[no-any-return]
    gen = Generation(token)
    with st.lock:
        st.cache[key] = (float("inf"), gen)
    return gen


def products(
    crm: CRM, cur: Any, dialect: sa.Dialect, gen: Generation, skus: Iterable[str]
) -> dict[str, tuple[str, str | None, bool]]:
    """``sku -> (title, category, available)`` for the products of ``skus`` that are in the catalogue."""
    stmts = statements(crm, dialect)
    ws = crm.workspace
    if gen.products is None:
        (n,) = stmts.count.rows(cur, {"ws": ws})[0]
        if int(n) <= CATALOGUE_MAX:
            loaded = {
                str(s): (str(title), category, bool(available))
                for s, title, category, available in stmts.catalogue.rows(cur, {"ws": ws})
            }
            with gen.lock:
                gen.products = loaded
    if gen.products is not None:
        cat = gen.products
        return {s: cat[s] for s in skus if s in cat}
    want = sorted(set(skus))
    if not want:
        return {}
    rows = stmts.in_keys("products", len(want)).rows(cur, {"ws": ws, **{f"k{i}": s for i, s in enumerate(want)}})
    return {str(s): (str(title), category, bool(available)) for s, title, category, available in rows}


def lists(
    crm: CRM, cur: Any, dialect: sa.Dialect, gen: Generation, keys: Iterable[str]
) -> dict[str, tuple[tuple[str, float], ...]]:
    """The stored lists of ``keys`` (decoded once per generation; a missing list is empty)."""
    cached = gen.lists
    want = [k for k in keys if k not in cached]
    if want:
        stmts = statements(crm, dialect)
        params = {"ws": crm.workspace, **{f"k{i}": k for i, k in enumerate(want)}}
        found: dict[str, tuple[tuple[str, float], ...]] = {k: () for k in want}
        for key, items in stmts.in_keys("recs", len(want)).rows(cur, params):
            found[str(key)] = _entries(items)
        with gen.lock:
            if len(cached) > LISTS_MAX:
                cached.clear()
            cached.update(found)
    return {k: cached.get(k, ()) for k in keys}


_LIST = msgspec.json.Decoder(tuple[tuple[str, float], ...])


def _entries(items: Any) -> tuple[tuple[str, float], ...]:
    """A stored list as ``((sku, score), ...)``: decoded straight into tuples by msgspec when it is
    the text of ``[[sku, score], ...]`` (what refreshes write); any other shape item by item."""
    if isinstance(items, str | bytes):
        try:
            return _LIST.decode(items)
        except msgspec.ValidationError:
            pass  # another shape (an int sku, a third element…): item by item below
        except msgspec.DecodeError:
            return ()
    value = json_value(items)
    if not isinstance(value, list):
        return ()
    return tuple((str(e[0]), float(e[1])) for e in value if isinstance(e, list | tuple) and len(e) >= 2)


def bump_catalogue(crm: CRM, conn: sa.Connection) -> None:
    """Give the catalogue a new generation (inside the caller's write transaction)."""
    t = crm.db.tables[RECS]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(t).values(
        workspace_id=crm.workspace,
        key=CATALOGUE_KEY,
        items={"generation": uuid.uuid4().hex},
        refreshed_at=crm.now(),
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["workspace_id", "key"],
            set_={"items": stmt.excluded["items"], "refreshed_at": stmt.excluded.refreshed_at},
        )
    )
