"""Benchmark of a campaign from its trigger to every message handed to the channel.

Run by hand (not a test)::

    python benchmarks/campaigns.py                                   # 1,000,000 customers, 200,000 enter
    python benchmarks/campaigns.py --customers 100000 --entering 20000   # quick

Setup (before the clock): a SQLite CRM with ``--customers`` customers
(inserted with sqlite3, consent granted to the capturing channel), a static
segment ``spring``, and a live campaign triggered when customers enter it,
with one e-mail-like send step to the test kit's capturing channel (a
subject and a body with the customer's name), 10 % holdout.

Timed, from the trigger:

* **trigger + enroll**: ``crm.segments.add("spring", ids)`` commits the
  membership and fires ``ecrm_segment_entered`` once with the whole set;
  the plugin enrolls it set-based (audience check, re-entry check, one
  INSERT per chunk of 2,000);
* **steps**: ``campaigns.steps`` ticks (claim 5,000 under a lease, ONE
  ``send_many`` per group with a dedupe key per customer, one UPDATE to
  advance) until none is due — messages are in the outbox;
* **dispatch**: ``messages.deliver`` ticks until the outbox is empty —
  every message handed to the channel (``channel.sent``).

Also timed, before the real run: ``campaigns(crm).simulate("spring", days=30,
customer_ids=<the entering set>)`` — the same campaign over 30 days on a
fake clock, read-only (the pipeline's ``screen`` instead of ``send_many``);
the goal is **<= the time of one real run** (trigger -> channel).

Baseline, same run: inserting the same number of outbox rows (the same
columns, a JSON content, a dedupe key) into a copy of the outbox table with
plain ``sqlite3`` ``executemany`` in one transaction.  The issue's goal is
**trigger -> all messages handed to the channel <= 3x the raw insert**;
trigger -> outbox is shown beside it, and the whole path in CPU time of this process
(on a shared machine other jobs stretch the wall clock; SQLite works
in-process, so its CPU time counts).  Also printed: the campaign's state rows per customer entered.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path and its email.py would
# shadow the standard library's ``email`` package: drop it before any import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

GOAL = 3.0


def build(db: Path, customers: int) -> None:
    from ecrm_campaigns import plugin

    from ecrm_core import CRM
    from ecrm_core.testing import CapturingChannel

    crm = CRM(
        f"sqlite:///{db}", load_entrypoints=False, plugins=[plugin, CapturingChannel().plugin()], live_segments=False
    )
    crm.upgrade()
    crm.close()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    consent = json.dumps({"capture": {"status": "granted", "at": now, "source": None}})
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    rows = ((f"c{i}@example.com", f"Customer {i}", consent, now, now) for i in range(customers))
    with conn:
        conn.executemany(
            "INSERT INTO ecrm_customers (workspace_id, email, name, attributes, consent, lifecycle_stage, "
            "created_at, updated_at) VALUES ('default', ?, ?, '{}', ?, 'prospect', ?, ?)",
            rows,
        )
    conn.close()


def raw_insert(db: Path, n: int) -> tuple[float, float]:
    """Seconds (wall clock, and this process's CPU) to insert ``n`` outbox rows with sqlite3
    into a copy of the messages table."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ecrm_messages'").fetchone()[0]
    conn.execute(ddl.replace("ecrm_messages", "raw_messages", 1))
    for (idx,) in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='ecrm_messages' AND sql IS NOT NULL"
    ).fetchall():
        conn.execute(
            idx.replace("ecrm_messages", "raw_messages")
            .replace("INDEX ix_", "INDEX raw_ix_")
            .replace("INDEX uq_", "INDEX raw_uq_")
        )
    cols = [r[1] for r in conn.execute("PRAGMA table_info(raw_messages)") if r[1] != "id"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    base = {
        "workspace_id": "default",
        "channel": "capture",
        "address": None,
        "purpose": "marketing",
        "template": None,
        "meta": '{"campaign": "spring", "step": "hello"}',
        "status": "queued",
        "reason": None,
        "attempts": 0,
        "max_attempts": 5,
        "next_attempt_at": now,
        "lease_until": None,
        "provider_id": None,
        "transactional": 0,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }

    def rows():
        for i in range(n):
            r = dict(
                base,
                uid=uuid.uuid4().hex,
                customer_id=i + 1,
                address=f"c{i}@example.com",
                dedupe_key=f"cmp1.1.hello.{i + 1}",
                content=json.dumps({"body": f"Hello Customer {i}", "subject": "Spring is here"}),
            )
            yield tuple(r.get(c) for c in cols)

    sql = f"INSERT INTO raw_messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    # the run's own writes are still in the WAL: checkpoint them first (not timed), so the baseline's
    # commit does not pay for copying the campaign run's pages into the database file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    start, cpu = time.perf_counter(), time.process_time()
    with conn:
        conn.executemany(sql, rows())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.execute("DROP TABLE raw_messages")
    conn.close()
    return seconds, cpu


def run(db: Path, entering: int) -> dict[str, float]:
    import sqlalchemy as sa
    from ecrm_campaigns import campaigns, plugin

    from ecrm_core import CRM
    from ecrm_core.testing import CapturingChannel
    from ecrm_core.worker import JobRunner

    chan = CapturingChannel()
    crm = CRM(f"sqlite:///{db}", load_entrypoints=False, plugins=[plugin, chan.plugin()], live_segments=False)
    crm.segments.create("spring", static=True)
    svc = campaigns(crm)
    svc.save(
        {
            "key": "spring",
            "name": "Spring",
            "holdout": 10,
            "trigger": {"type": "segment_entered", "segment": "spring"},
            "steps": [
                {
                    "id": "hello",
                    "type": "send",
                    "channel": "capture",
                    "template": {"subject": "Spring is here", "body": "Hello {{ customer.name }}"},
                }
            ],
        }
    )
    svc.start("spring")
    ids = list(range(1, entering + 1))
    runner = JobRunner(crm, jobs=["campaigns.steps", "messages.deliver"])
    out: dict[str, float] = {}

    from ecrm_campaigns import service

    spent = [0.0]
    enroll = service.Campaigns.enroll

    def timed(self, *a, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return enroll(self, *a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    # the simulation of the same campaign over 30 days, before the real run (it is read-only)
    ts = time.perf_counter()
    sim = svc.simulate("spring", days=30, customer_ids=ids)
    out["simulate"] = time.perf_counter() - ts
    out["sim_messages"] = float(sum(1 for m in sim.messages if m.decision == "queue"))

    service.Campaigns.enroll = timed  # type: ignore[method-assign]
    c0 = time.process_time()
    t0 = time.perf_counter()
    crm.segments.add("spring", ids)  # the trigger: ecrm_segment_entered with the whole set
    out["enroll"] = time.perf_counter() - t0
    out["enroll_plugin"] = spent[0]
    service.Campaigns.enroll = enroll  # type: ignore[method-assign]
    t1 = time.perf_counter()
    while runner.tick("campaigns.steps", "default", force=True).result.more:  # type: ignore[union-attr]
        pass
    out["steps"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    while True:
        res = crm.messages.dispatch(limit=2000, batch_size=500)
        if not res.attempted and not res.blocked:
            break
    out["dispatch"] = time.perf_counter() - t2
    out["cpu"] = time.process_time() - c0
    counts = svc.counts("spring")
    e = crm.db.tables["campaign_enrollments"]
    with crm.db.read() as conn:
        state_rows = conn.scalar(sa.select(sa.func.count()).select_from(e)) or 0
    out["messages"] = float(len(chan.sent))
    out["entered"] = float(counts["arm"].get("main", 0))
    out["held_out"] = float(counts["arm"].get("holdout", 0))
    out["state_rows"] = float(state_rows)
    crm.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--entering", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file")
    args = parser.parse_args()
    if not 0 < args.entering <= args.customers:
        parser.error("--entering must be between 1 and --customers")
    tmp = Path(tempfile.mkdtemp(prefix="ecrm-bench-campaigns-"))
    db = tmp / "campaigns.db"
    try:
        t = time.perf_counter()
        build(db, args.customers)
        print(f"setup: {args.customers:,} customers in {time.perf_counter() - t:.1f} s (not timed)")
        r = run(db, args.entering)
        sent = int(r["messages"])
        raw, raw_cpu = raw_insert(db, sent)
        to_outbox = r["enroll"] + r["steps"]
        print(f"trigger -> enrolled ({int(r['entered']):,} + {int(r['held_out']):,} held out): {r['enroll']:8.2f} s")
        print(
            f"  of which the plugin's set-based enrollment (the rest: the core's segment change): "
            f"{r['enroll_plugin']:.2f} s"
        )
        print(f"steps -> outbox ({sent:,} messages, campaigns.steps ticks):      {r['steps']:8.2f} s")
        print(f"outbox -> channel (messages.deliver):                            {r['dispatch']:8.2f} s")
        print(f"trigger -> all messages handed to the channel:                   {to_outbox + r['dispatch']:8.2f} s")
        print(f"raw sqlite3 insert of {sent:,} outbox rows (same run):             {raw:8.2f} s")
        ratio = to_outbox / raw if raw else float("inf")
        print(f"trigger -> outbox / raw insert: {ratio:.1f}x")
        total = (to_outbox + r["dispatch"]) / raw if raw else float("inf")
        print(
            f"trigger -> channel / raw insert: {total:.1f}x (the issue's figure; goal <= {GOAL:.0f}x: "
            f"{'met' if total <= GOAL else 'NOT met'})"
        )
        print(
            f"  the same in CPU time of this process (a shared machine's load moves wall-clock figures; "
            f"SQLite works in-process): trigger -> channel {r['cpu']:.2f} s, raw insert {raw_cpu:.2f} s: "
            f"{r['cpu'] / raw_cpu if raw_cpu else float('inf'):.1f}x"
        )
        real = to_outbox + r["dispatch"]
        print(
            f"simulation of the same campaign over 30 days ({int(r['sim_messages']):,} messages predicted): "
            f"{r['simulate']:.2f} s = {r['simulate'] / real:.2f}x one real run "
            f"(goal <= 1x: {'met' if r['simulate'] <= real else 'NOT met'})"
        )
        entered = r["entered"] + r["held_out"]
        print(
            f"campaign state rows: {int(r['state_rows']):,} = {r['state_rows'] / entered:.2f} per customer entered "
            "(one enrollment row per customer per campaign; no event log)"
        )
    finally:
        if args.keep:
            print(f"kept {db}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
