"""How far the platform trusts a node's work, BOINC-style: adaptive replication from a
node's run of valid results.

A new node has every sampled result checked (``check_rate`` 1.0). After a run of valid
results the rate decays down to a floor (``protocol.trust``), so a long-trusted node costs
about that share of extra compute. One invalid result resets
the streak (the node is checked at every checkpoint again); ``SUSPEND_AFTER`` invalid results
in a row send it back to an admin's approval, with the reason. ``reliability`` is the
share of its checked results that held, smoothed so a node with few results sits near the
middle: (valid + 1) / (valid + invalid + 2).
"""

from __future__ import annotations

from compute.models import Node
from protocol.trust import check_rate_for

SUSPEND_AFTER = 3


def check_rate(node: Node) -> float:
    """The share of this node's results that the runner replays elsewhere."""
    return check_rate_for(node.valid_streak or 0)


def reliability(node: Node) -> float:
    valid, invalid = node.results_valid or 0, node.results_invalid or 0
    return (valid + 1) / (valid + invalid + 2)


def on_probation(node: Node) -> bool:
    """Not yet trusted: every sampled result of it is checked."""
    return on_probation_after(node.valid_streak)


def on_probation_after(valid_streak: int | None) -> bool:
    """``on_probation`` of a node with this run of valid results."""
    return check_rate_for(valid_streak or 0) >= 1.0


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
