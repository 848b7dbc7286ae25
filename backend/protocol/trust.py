"""How often a node's work is replayed elsewhere, from its run of valid results: shared by
the gateway (which keeps the counts) and the runner (which samples, and lowers a node's rate
as its results hold within a job). BOINC's adaptive replication: check everything from a new
node; after ``TRUSTED_AFTER`` valid results in a row, check ``TRUSTED_AFTER / streak`` of
them, never under ``RATE_FLOOR``."""

from __future__ import annotations

from collections.abc import Sequence

TRUSTED_AFTER = 5
RATE_FLOOR = 0.05


def check_rate_for(valid_streak: int) -> float:
    if valid_streak < TRUSTED_AFTER:
        return 1.0
    return max(RATE_FLOOR, TRUSTED_AFTER / valid_streak)


# A node on probation gets this much of a trusted node's share of a job's work (ES pairs per
# step, FedAvg clients): what a new node could spoil before its checks catch it stays small.
# Where all of a job's nodes are alike, they share alike.
PROBATION_SHARE = 0.25


def share_weight(check_rate: float) -> float:
    return PROBATION_SHARE if check_rate >= 1.0 else 1.0


def weighted_split(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` units dealt in proportion to ``weights``: one each first while they last (a
    node on probation must get work to be checked and leave probation), the rest by largest
    remainder, ties to the earlier. Equal weights deal as evenly as possible, the first ones
    taking the remainder."""
    count = len(weights)
    if count == 0:
        return []
    base = [1 if i < total else 0 for i in range(count)]
    rest = total - sum(base)
    if rest <= 0:
        return base
    scale = sum(weights)
    exact = [rest * w / scale for w in weights]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(count), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: rest - sum(shares)]:
        shares[i] += 1
    return [b + s for b, s in zip(base, shares, strict=True)]
