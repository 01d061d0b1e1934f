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

The bandit is credited **at most once per decision and event**, whatever
the items reported: the first impression adds one trial to each alternative
shown, the first reward one win to the alternative it names (one of those
shown; an item that is not one of them moves nothing when several were
shown).  The credited row keeps the arm in ``personalize_outcomes.arm``;
the other rows are stored as data with ``arm`` empty.  On PostgreSQL a
transaction-level advisory lock per decision makes concurrent reports of
one decision take turns (SQLite's write lock does it there), so replays
with made-up items, in one request or many, cannot inflate a bandit.

The decision's customer is resolved when the outcome is stored, inside the
write transaction (their row locked against a concurrent delete on
PostgreSQL): a customer merged since the decision gets the survivor's id; an
outcome of a customer deleted since is ``rejected`` (``customer deleted``),
and the other outcomes of the batch are stored.
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
        rows.append(
            {
                "workspace_id": crm.workspace,
                "decision": tok.uid,
                "event": o.event,
                "item": o.item,
                "placement": tok.placement,
                "grp": tok.group,
                "segment": tok.segment,
                "arm": None,
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
        now_known = crm.customers.survivors(r["customer_id"] for r in timeline)
        timeline = [
            {**r, "customer_id": now_known[r["customer_id"]]} for r in timeline if r["customer_id"] in now_known
        ]
        crm.interactions.track_many(timeline, on_error="skip")
    if rows:
        t = crm.db.tables[OUTCOMES]
        a = crm.db.tables[ARMS]
        alts = [r.pop("_alts") for r in rows]
        new: set[tuple[str, str, str]] = set()
        gone: set[int] = set()  # indexes into rows: the customer was deleted since the decision
        with crm.db.write() as conn:
            if conn.dialect.name == "postgresql":
                for uid in sorted({r["decision"] for r in rows}):  # concurrent reports of a decision take turns
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("personalize:" + uid))))
            known = crm.customers.survivors(
                (r["customer_id"] for r in rows if r["customer_id"] is not None), conn=conn, lock=True
            )
            for n, r in enumerate(rows):
                if r["customer_id"] is not None:
                    if r["customer_id"] in known:
                        r["customer_id"] = known[r["customer_id"]]
                    else:
                        gone.add(n)
            # The rows that will move a bandit carry their arm when inserted (the lock
            # above keeps the decision's earlier rows as they are meanwhile).
            credits = _credits(crm, conn, t, rows, alts, gone)
            for n, arm in credits.items():
                rows[n]["arm"] = arm
            stored = [r for n, r in enumerate(rows) if n not in gone]
            for start in range(0, len(stored), 200):
                chunk = stored[start : start + 200]
                stmt = _insert(conn, t, chunk, ["workspace_id", "decision", "event", "item"]).returning(
                    t.c.decision, t.c.event, t.c.item
                )
                new |= {(r.decision, r.event, r.item) for r in conn.execute(stmt)}
            trials: Counter[tuple[str, str, str]] = Counter()
            wins: Counter[tuple[str, str, str]] = Counter()
            for n, arm in credits.items():
                r = rows[n]
                if (r["decision"], r["event"], r["item"]) not in new:
                    continue
                if r["event"] == "impression":
                    for shown in alts[n]:
                        trials[(r["placement"], r["segment"], shown)] += 1
                else:
                    wins[(r["placement"], r["segment"], arm)] += 1
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
        for n, (r, i) in enumerate(zip(rows, where, strict=True)):
            o = items[i]
            if n in gone:
                results[i] = OutcomeResult(
                    decision=o.decision, event=o.event, item=o.item, status="rejected", reason="customer deleted"
                )
                continue
            status = "recorded" if (r["decision"], r["event"], r["item"]) in new else "duplicate"
            results[i] = OutcomeResult(decision=o.decision, event=o.event, item=o.item, status=status)
    return [r for r in results if r is not None]


def _credits(
    crm: CRM,
    conn: sa.Connection,
    t: sa.Table,
    rows: list[dict[str, Any]],
    alts: list[tuple[str, ...]],
    gone: set[int],
) -> dict[int, str]:
    """The rows that move a bandit, ``{row index: arm}``: per (decision, event)
    at most one, and none where an earlier row of that decision and event was
    credited (``arm`` set; a row that turns out to be a replay is not new and
    moves nothing).  Impressions credit the alternatives shown (the arm
    kept is the first); rewards the alternative named (the only one shown, if
    one was)."""
    wanted: dict[tuple[str, str], tuple[int, str]] = {}
    for n, r in enumerate(rows):
        shown = alts[n]
        if n in gone or not shown or r["grp"] != "personalized":
            continue
        if (r["decision"], r["event"]) in wanted:
            continue
        if r["event"] == "impression":
            wanted[(r["decision"], r["event"])] = (n, shown[0])
        elif _is_reward(crm, r["placement"], r["event"]):
            if r["item"] in shown:
                wanted[(r["decision"], r["event"])] = (n, r["item"])
            elif len(shown) == 1:  # the one alternative shown (an item inside it was clicked)
                wanted[(r["decision"], r["event"])] = (n, shown[0])
    if not wanted:
        return {}
    uids = sorted({d for d, _e in wanted})
    done: set[tuple[str, str]] = set()
    for start in range(0, len(uids), 500):
        done |= {
            (d, e)
            for d, e in conn.execute(
                sa.select(t.c.decision, t.c.event)
                .where(
                    t.c.workspace_id == crm.workspace, t.c.decision.in_(uids[start : start + 500]), t.c.arm.is_not(None)
                )
                .distinct()
            )
        }
    return {n: arm for key, (n, arm) in wanted.items() if key not in done}


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
