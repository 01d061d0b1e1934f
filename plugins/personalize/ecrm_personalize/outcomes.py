"""Outcomes reported against decision ids: idempotent, set-based, safe under concurrent workers.

:func:`record` takes a batch of :class:`~ecrm_personalize.model.Outcome`:

1. each decision id is verified (signature, workspace); a forged, unknown
   or other-workspace id is ``rejected`` and changes nothing;
2. the outcomes go on the customer's timeline as interactions
   (``personalize_impression``, ``personalize_click``,
   ``personalize_conversion``) with an idempotency key per
   (decision, event, item), so analytics and segments see them;
3. one ``INSERT … ON CONFLICT DO NOTHING RETURNING`` stores them; what it
   returns is what is new (a replay is a ``duplicate``), and only that
   moves the bandits: one ``UPDATE arms SET trials = trials + :n`` (or
   ``wins``) per (placement, segment, alternative) — atomic increments, so
   any number of API processes and workers can report at once and no count
   is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import tokens
from .model import Outcome, OutcomeResult
from .schema import ARMS, OUTCOMES

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["KIND_OF", "record"]

KIND_OF = {
    "impression": "personalize_impression",
    "click": "personalize_click",
    "conversion": "personalize_conversion",
}
MAX_BATCH = 1000


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], index: list[str]) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table).values(rows).on_conflict_do_nothing(index_elements=index)


def record(crm: CRM, outcomes: Iterable[Outcome | dict[str, Any]]) -> list[OutcomeResult]:
    items = [o if isinstance(o, Outcome) else Outcome(**o) for o in outcomes]
    if len(items) > MAX_BATCH:
        from ecrm_core.errors import ValidationError

        raise ValidationError("outcomes", len(items), f"more than {MAX_BATCH} in one call", "send smaller batches")
    now = crm.now()
    results: list[OutcomeResult | None] = [None] * len(items)
    rows: list[dict[str, Any]] = []
    where: list[int] = []
    timeline: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for i, o in enumerate(items):
        tok = tokens.read_decision(crm, o.decision)
        if tok is None:
            results[i] = OutcomeResult(
                decision=o.decision[:80], event=o.event, item=o.item, status="rejected", reason="unknown decision id"
            )
            continue
        key = (tok.uid, o.event, o.item)
        if key in seen:
            results[i] = OutcomeResult(decision=o.decision, event=o.event, item=o.item, status="duplicate")
            continue
        seen.add(key)
        arm = None
        if tok.alternatives:
            arm = o.item if o.item in tok.alternatives else (tok.alternatives[0] if o.event != "impression" else None)
        rows.append(
            {
                "workspace_id": crm.workspace,
                "decision": tok.uid,
                "event": o.event,
                "item": o.item,
                "placement": tok.placement,
                "grp": tok.group,
                "segment": tok.segment,
                "arm": arm,
                "customer_id": tok.customer_id,
                "visitor": tok.visitor,
                "value": o.value,
                "at": now,
                "_alts": tok.alternatives,
            }
        )
        where.append(i)
        if tok.customer_id is not None:
            props: dict[str, Any] = {"decision": tok.uid, "placement": tok.placement, "group": tok.group}
            if o.item:
                props["item"] = o.item
            row: dict[str, Any] = {
                "kind": KIND_OF[o.event],
                "customer_id": tok.customer_id,
                "properties": props,
                "idempotency_key": f"personalize:{tok.uid}:{o.event}:{o.item}"[:200],
                "occurred_at": now,
            }
            timeline.append(row)
    if timeline:
        # first the timeline (idempotent by key): a crash before the outcome row is
        # written is repaired by the retry, which finds the interaction already there
        crm.interactions.track_many(timeline, on_error="skip")
    if rows:
        t = crm.db.tables[OUTCOMES]
        a = crm.db.tables[ARMS]
        alts = [r.pop("_alts") for r in rows]
        new: set[tuple[str, str, str]] = set()
        with crm.db.write() as conn:
            for start in range(0, len(rows), 200):
                chunk = rows[start : start + 200]
                stmt = _insert(conn, t, chunk, ["workspace_id", "decision", "event", "item"]).returning(
                    t.c.decision, t.c.event, t.c.item
                )
                new |= {(r.decision, r.event, r.item) for r in conn.execute(stmt)}
            trials: Counter[tuple[str, str, str]] = Counter()
            wins: Counter[tuple[str, str, str]] = Counter()
            for r, shown in zip(rows, alts, strict=True):
                if (r["decision"], r["event"], r["item"]) not in new or r["grp"] != "personalized" or not shown:
                    continue
                if r["event"] == "impression":
                    for arm in shown:
                        trials[(r["placement"], r["segment"], arm)] += 1
                elif r["arm"] is not None and _is_reward(crm, r["placement"], r["event"]):
                    wins[(r["placement"], r["segment"], r["arm"])] += 1
            touched = set(trials) | set(wins)
            if touched:
                conn.execute(
                    _insert(
                        conn,
                        a,
                        [
                            {
                                "workspace_id": crm.workspace,
                                "placement": p,
                                "segment": s,
                                "arm": arm,
                                "trials": 0,
                                "wins": 0,
                            }
                            for p, s, arm in sorted(touched)
                        ],
                        ["workspace_id", "placement", "segment", "arm"],
                    )
                )
                for (p, s, arm), n in sorted(trials.items()):
                    _bump(conn, a, crm.workspace, p, s, arm, trials=n)
                for (p, s, arm), n in sorted(wins.items()):
                    _bump(conn, a, crm.workspace, p, s, arm, wins=n)
        for r, i in zip(rows, where, strict=True):
            status = "recorded" if (r["decision"], r["event"], r["item"]) in new else "duplicate"
            o = items[i]
            results[i] = OutcomeResult(decision=o.decision, event=o.event, item=o.item, status=status)
    return [r for r in results if r is not None]


def _bump(
    conn: sa.Connection, a: sa.Table, ws: str, p: str, s: str, arm: str, *, trials: int = 0, wins: int = 0
) -> None:
    values: dict[str, Any] = {}
    if trials:
        values["trials"] = a.c.trials + trials
    if wins:
        # a win without an impression reported still counts as a trial: wins <= trials always
        values["wins"] = a.c.wins + wins
        values["trials"] = sa.case((a.c.trials < a.c.wins + wins, a.c.wins + wins), else_=a.c.trials)
    conn.execute(
        sa.update(a).where(a.c.workspace_id == ws, a.c.placement == p, a.c.segment == s, a.c.arm == arm).values(values)
    )


def _is_reward(crm: CRM, placement: str, event: str) -> bool:
    from .engine import load_placement

    try:
        pl = load_placement(crm, placement)
    except Exception:
        pl = None
    reward = pl.reward if pl is not None else "click"
    return event == reward
