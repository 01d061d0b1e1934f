"""Segment queries: cancelling them, reading their plan, showing their SQL,
and turning a statement the database refuses into a rule error.

Split from :mod:`.segments` (re-exported there).
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from ..errors import EcrmError

__all__ = ["Cancelled", "CancelToken", "describe", "explain", "refused_as_rule_error", "render"]

#: The longest error message stored on a segment.
MAX_ERROR = 2000


def describe(exc: BaseException) -> str:
    """A one-paragraph account of why a rule failed, for people (no SQL, no parameters)."""
    if isinstance(exc, sa.exc.DBAPIError):
        text = f"the database refused the rule's statement: {str(exc.orig).strip() or type(exc.orig).__name__}"
    elif isinstance(exc, sa.exc.StatementError):
        text = f"the rule's statement failed: {str(exc.orig).strip() or type(exc.orig).__name__}"
    else:
        text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


_SQLITE_LIMITS = re.compile(r"too (large|many|deep|big|complex)|stack overflow|maximum depth|out of memory", re.I)


def is_refusal(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database refused the statement itself (a limit of the
    engine, a statement it cannot plan or run) rather than failed for a
    reason of its own (locked, disconnected, cancelled)."""
    if exc.connection_invalidated:
        return False
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(code, str):
        # 54: program limit exceeded (stack depth, statement too complex);
        # 42: syntax error or access rule violation; 22: data exception
        return code[:2] in ("54", "42", "22")
    return bool(_SQLITE_LIMITS.search(str(exc.orig)))


@contextmanager
def refused_as_rule_error() -> Iterator[None]:
    """A statement the database refuses inside the block becomes a
    :class:`~ecrm_core.rules.RuleError` on ``rule`` (a 422 through the API).

    The rule limits (:mod:`ecrm_core.rules.limits`) keep valid rules within
    what SQLite and PostgreSQL accept; this is the last line of defence, and
    it leaves the transaction of the block to be rolled back (nothing stored).
    """
    from ..rules import RuleError

    try:
        yield
    except sa.exc.DBAPIError as exc:
        if not is_refusal(exc):
            raise  # the database is down, locked, …: not the rule's fault
        raise RuleError(
            "rule",
            None,
            describe(exc),
            "simplify the rule (fewer conditions, `field in (…)` instead of many `or`s), "
            "or split it into segments and refer to them with segment(...)",
        ) from None


class Cancelled(EcrmError):
    """A long query was cancelled (by :meth:`CancelToken.cancel` or its timeout)."""


class CancelToken:
    """Cancels a running segment query from another thread, or after ``timeout`` seconds.

    ::

        token = CancelToken(timeout=5)
        threading.Timer(1, token.cancel).start()
        crm.segments.preview(rule, cancel=token)   # raises Cancelled
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._cancelled.set()
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            callbacks = list(self._on_cancel)
        for cb in callbacks:
            cb()

    @contextmanager
    def watching(self, conn: sa.Connection) -> Iterator[None]:
        """Interrupt queries on ``conn`` when cancelled, for the duration of the block."""
        raw = conn.connection.dbapi_connection
        timer: threading.Timer | None = None
        if conn.dialect.name == "sqlite":
            raw.set_progress_handler(lambda: 1 if self.cancelled else 0, 20_000)  # type: ignore[union-attr]
        else:
            cancel = getattr(raw, "cancel", None)
            if cancel is not None:
                with self._lock:
                    self._on_cancel.append(cancel)
                if self.deadline is not None:
                    timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self.cancel)
                    timer.daemon = True
                    timer.start()
        try:
            if self.cancelled:
                raise Cancelled("cancelled before it started")
            yield
        except sa.exc.DBAPIError as exc:
            if self.cancelled:
                raise Cancelled("the query was cancelled; nothing was changed") from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if conn.dialect.name == "sqlite":
                raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
            else:
                with self._lock:
                    self._on_cancel.clear()


def render(stmt: sa.Select[Any], dialect: sa.Dialect) -> str:
    try:
        return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except Exception:  # some types cannot be inlined: show the parameters instead
        compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        return f"{compiled}\n-- parameters: {compiled.params!r}"


def explain(
    conn: sa.Connection, stmt: sa.Select[Any], tables: Mapping[str, sa.Table]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The query plan, and a warning for each base table read in full."""
    names = {t.name: short for short, t in tables.items()}
    warnings: builtins.list[str] = []
    plan: builtins.list[str] = []
    if conn.dialect.name == "sqlite":
        for r in conn.execute(_Explain(stmt)):
            detail = str(r[3])
            plan.append(detail)
            words = detail.split()
            # SCAN t, or SEARCH t USING INDEX … (workspace_id=?): every row of the workspace
            whole = (words[:1] == ["SCAN"] and "COVERING INDEX" not in detail) or (
                words[:1] == ["SEARCH"] and detail.endswith("(workspace_id=?)")
            )
            if len(words) >= 2 and whole and words[1] in names:
                what = names[words[1]]
                warnings.append(
                    f"reads every row of {what}: "
                    + (
                        "conditions on attributes and text fields have no index"
                        if what == "customers"
                        else "no index serves this condition; add a kind or a window to the event condition"
                    )
                )
    elif conn.dialect.name == "postgresql":
        import json

        doc: Any = conn.execute(_Explain(stmt)).scalar()
        root = doc if isinstance(doc, list) else json.loads(doc)
        stack = [root[0]["Plan"]]
        while stack:
            node = stack.pop()
            plan.append(f"{node.get('Node Type')} {node.get('Relation Name', '')}".strip())
            if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in names:
                warnings.append(f"reads every row of {names[node['Relation Name']]} (sequential scan)")
            stack.extend(node.get("Plans", []))
    return tuple(plan), tuple(dict.fromkeys(warnings))


class _Explain(Executable, ClauseElement):
    """``EXPLAIN`` of a statement, compiled with it (so its parameters are bound as usual)."""

    inherit_cache = False

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN (FORMAT JSON) "
    return prefix + str(compiler.process(element.statement, **kw))
