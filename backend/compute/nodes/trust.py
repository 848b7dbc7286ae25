"""How far the platform trusts a node's work, BOINC-style: adaptive replication from a
node's run of valid results.

A new node has every sampled result checked (``check_rate`` 1.0). After ``TRUSTED_AFTER``
valid results in a row the rate decays as ``TRUSTED_AFTER / streak`` down to ``RATE_FLOOR``,
so a long-trusted node costs about that share of extra compute. One invalid result resets
the streak (the node is checked at every checkpoint again); ``SUSPEND_AFTER`` invalid results
in a row send it back to an admin's approval, with the reason. ``reliability`` is the
share of its checked results that held, smoothed so a node with few results sits near the
middle: (valid + 1) / (valid + invalid + 2).
"""

from __future__ import annotations

from compute.models import Node

TRUSTED_AFTER = 5
RATE_FLOOR = 0.05
SUSPEND_AFTER = 3


def check_rate(node: Node) -> float:
    """The share of this node's results that the runner replays elsewhere."""
    streak = node.valid_streak or 0
    if streak < TRUSTED_AFTER:
        return 1.0
    return max(RATE_FLOOR, TRUSTED_AFTER / streak)


def reliability(node: Node) -> float:
    valid, invalid = node.results_valid or 0, node.results_invalid or 0
    return (valid + 1) / (valid + invalid + 2)


def on_probation(node: Node) -> bool:
    """Not yet trusted: every sampled result of it is checked."""
    return check_rate(node) >= 1.0


def record_result(node: Node, *, valid: bool) -> bool:
    """Count one checked result; True when it suspends the node (invalid too many times in a
    row: an admin must approve it again)."""
    if valid:
        node.results_valid = (node.results_valid or 0) + 1
        node.valid_streak = (node.valid_streak or 0) + 1
        node.invalid_streak = 0
        return False
    node.results_invalid = (node.results_invalid or 0) + 1
    node.invalid_streak = (node.invalid_streak or 0) + 1
    node.valid_streak = 0
    return node.invalid_streak >= SUSPEND_AFTER
