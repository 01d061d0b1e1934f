"""Turning stored lists into one ranked list for a person: shared by decisions and the offline evaluation.

:func:`list_keys` names the lists a person's history needs (read by key, in
one query); :func:`blend` scores candidates from them.  Pure functions: no
database, no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .strategies import Candidate

__all__ = ["SEEDS", "WEIGHTS", "blend", "list_keys"]

#: how many recent items seed the item-to-item and content lists
SEEDS = 5
#: weights of each source in the blended ("auto") recommendation
WEIGHTS = {"cooccurrence": 1.0, "content": 0.6, "recent": 0.4, "popular": 0.15}
_REASON = {
    "cooccurrence": "bought together with {}",
    "content": "similar to {}",
    "recent": "recently viewed",
    "popular": "popular",
}


def list_keys(
    recommender: str, bought: Sequence[str], viewed: Sequence[str], page_sku: str | None = None
) -> dict[str, list[str]]:
    """The stored lists each source needs, by source (``popular`` always)."""
    sources: dict[str, list[str]] = {"popular": ["popular"]}
    first = [page_sku] if page_sku else []
    if recommender in ("auto", "cooccurrence"):
        sources["cooccurrence"] = [f"i2i:{s}" for s in dict.fromkeys([*first, *bought[:SEEDS]])]
    if recommender in ("auto", "content"):
        sources["content"] = [f"content:{s}" for s in dict.fromkeys([*first, *viewed[:SEEDS], *bought[:2]])]
    return sources


def _add(
    scores: dict[str, float], reasons: dict[str, list[str]], entries: Sequence[Any], w: float, reason: str
) -> None:
    """Add ``w * score`` of each ``(sku, score)`` entry; a sku's reasons each once, in order met."""
    for entry in entries:
        sku, score = entry[0], entry[1]
        if type(sku) is not str:
            sku = str(sku)
        value = w * float(score)
        if sku in scores:
            scores[sku] += value
            got = reasons[sku]
            if reason not in got:
                got.append(reason)
        else:
            scores[sku] = value
            reasons[sku] = [reason]


def blend(
    recommender: str,
    sources: Mapping[str, Sequence[str]],
    lists: Mapping[str, Sequence[Any]],
    viewed: Sequence[str],
    k: int,
    exclude: set[str],
    *,
    limit: int | None = None,
) -> list[Candidate]:
    """Candidates scored from ``lists`` (``{key: [[sku, score], ...]}``), best first, without ``exclude``.

    ``auto`` adds the weighted sources (:data:`WEIGHTS`); a single
    recommender uses its own list and fills with ``popular``; ``control``
    uses ``popular`` only.
    """
    # plain dicts while scoring (a decision adds ~200 list entries); Candidate objects for the best only
    scores: dict[str, float] = {}
    reasons: dict[str, list[str]] = {}

    if recommender == "control" or recommender == "popular":
        use: tuple[str, ...] = ("popular",)
    elif recommender == "auto":
        use = ("cooccurrence", "content", "recent", "popular")
    else:
        use = (recommender, "popular")
    cap = k + len(exclude) + 2  # enough of each (best-first) list to fill k after the exclusions
    for source in use:
        w = WEIGHTS[source] if recommender in ("auto", "popular", "control") or source != "popular" else 0.01
        if source == "recent":
            entries: Sequence[Any] = [(s, 1 - i / (2 * max(k, 1))) for i, s in enumerate(viewed[:k])]
            _add(scores, reasons, entries, w, _REASON["recent"])
            continue
        for key in sources.get(source, ()):
            found = lists.get(key)
            if not found:
                continue
            reason = _REASON[source].format(key.split(":", 1)[1] if ":" in key else "")
            _add(scores, reasons, found[:cap], w, reason)
    # best first; equal scores keep the order they were first met (sorted is stable)
    ranked = sorted((s for s in scores if s not in exclude), key=scores.__getitem__, reverse=True)
    if limit is not None:
        ranked = ranked[:limit]
    return [Candidate(sku=s, score=scores[s], reasons=reasons[s]) for s in ranked]
