"""What the save-time guard of a campaign definition costs (``ecrm_campaigns.text`` and
``ecrm_campaigns.model.check_document``), each as a ratio to a baseline measured in the same run.

* **YAML text**: ``ecrm_campaigns.text.load`` (libyaml's events scanned for anchors, aliases and
  depth, then libyaml's safe loader) against the baseline ``yaml.safe_load`` of the same text
  (what the text form used before: PyYAML's pure-Python safe loader, with no guard), for a
  flat journey of ``--steps`` steps;
* **plain form**: ``Campaign.from_dict`` (which now starts with ``check_document``) against the
  same parse without it, and ``check_document``'s share of it (stored definitions are read through
  ``from_dict`` too: by the engine once per tick and campaign version).

    python benchmarks/campaign_definitions.py                 # 2,000 steps (MAX_STEPS), 5 repeats
    python benchmarks/campaign_definitions.py --steps 200 --repeat 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# benchmarks/email.py would shadow the standard library's ``email`` package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]


def _text(steps: int) -> str:
    lines = ["key: bench\nname: Bench\ntrigger: {type: api}\nsteps:\n"]
    for i in range(steps - 1):
        kind = ("wait, duration: 1d", "send, channel: email, template: t, context: {n: 1, s: x}")[i % 2]
        lines.append(f"  - {{id: s{i}, type: {kind}, next: s{i + 1}}}\n")
    lines.append(f"  - {{id: s{steps - 1}, type: exit}}\n")
    return "".join(lines)


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    import yaml
    from ecrm_campaigns import model
    from ecrm_campaigns.text import load

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=model.MAX_STEPS, help="steps in the journey (default MAX_STEPS)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each (the median is printed)")
    args = p.parse_args(argv)

    text = _text(args.steps)
    data = load(text).to_dict()
    print(f"{args.steps} steps, {len(text):,} characters of YAML; load average {os.getloadavg()[0]:.2f}")

    base = _best(lambda: yaml.safe_load(text), args.repeat)
    guarded = _best(lambda: load(text), args.repeat)
    print(f"YAML   baseline yaml.safe_load (no guard)   {base * 1000:9.1f} ms")
    print(f"       text.load (guard + model)            {guarded * 1000:9.1f} ms   x{guarded / base:.2f}")

    check = model.check_document
    with_check = _best(lambda: model.Campaign.from_dict(data), args.repeat)
    model.check_document = lambda data: None  # type: ignore[assignment]
    try:
        without = _best(lambda: model.Campaign.from_dict(data), args.repeat)
    finally:
        model.check_document = check
    alone = _best(lambda: check(data), args.repeat)
    print(f"dict   baseline from_dict without the check {without * 1000:9.1f} ms")
    print(f"       from_dict with check_document        {with_check * 1000:9.1f} ms   x{with_check / without:.2f}")
    print(
        f"       check_document alone                 {alone * 1000:9.1f} ms   ({alone / with_check:.0%} of from_dict)"
    )


if __name__ == "__main__":
    main()
