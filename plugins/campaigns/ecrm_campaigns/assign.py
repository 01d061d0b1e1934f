"""Deterministic arms: a stable hash of (campaign key, customer id).

The same customer lands in the same arm on every run, in every process and
on every machine (SHA-256, not Python's salted ``hash``).  The holdout and
the variant split use two independent hashes, so changing the holdout %
does not reshuffle the variants of the customers who stay in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .model import Variant

__all__ = ["HOLDOUT", "MAIN", "arm", "bucket", "split"]

HOLDOUT = "holdout"
MAIN = "main"


def bucket(campaign_key: str, customer_id: int, salt: str = "") -> float:
    """A number in [0, 100) fixed by (campaign key, customer id, salt)."""
    digest = hashlib.sha256(f"{campaign_key}\x1f{salt}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def arm(campaign_key: str, customer_id: int, holdout: float, variants: Sequence[Variant]) -> str:
    """``"holdout"``, a variant name, or ``"main"`` when the campaign has no variants."""
    if holdout and bucket(campaign_key, customer_id, "holdout") < holdout:
        return HOLDOUT
    if not variants:
        return MAIN
    b = bucket(campaign_key, customer_id, "variant")
    edge = 0.0
    for v in variants:
        edge += v.percent
        if b < edge:
            return v.name
    return variants[-1].name


def split(campaign_key: str, step: str, customer_id: int, percents: Sequence[float]) -> int | None:
    """The index of the split case a customer takes at branch ``step`` (``None``: none, the rest
    goes to ``otherwise``): a hash of its own per step, independent of the holdout and variants."""
    b = bucket(campaign_key, customer_id, f"split:{step}")
    edge = 0.0
    for i, p in enumerate(percents):
        edge += p
        if b < edge:
            return i
    return None
