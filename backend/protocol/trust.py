"""How often a node's work is replayed elsewhere, from its run of valid results: shared by
the gateway (which keeps the counts) and the runner (which samples, and lowers a node's rate
as its results hold within a job). BOINC's adaptive replication: check everything from a new
node; after ``TRUSTED_AFTER`` valid results in a row, check ``TRUSTED_AFTER / streak`` of
them, never under ``RATE_FLOOR``."""

from __future__ import annotations

TRUSTED_AFTER = 5
RATE_FLOOR = 0.05


def check_rate_for(valid_streak: int) -> float:
    if valid_streak < TRUSTED_AFTER:
        return 1.0
    return max(RATE_FLOOR, TRUSTED_AFTER / valid_streak)
