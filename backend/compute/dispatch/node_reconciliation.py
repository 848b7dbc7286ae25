"""Node reconciliation, the dispatcher's second policy beside ``decide``: what the agents
say about their machines (their Ray alive or not, what it really offers) changes in each
node's row. Pure: the dispatcher reads the rows and the agents' view, asks this, and writes
only what it returns."""

from __future__ import annotations

import datetime as dt

from compute.models import Node
from protocol.nodes import LiveNode, resource_shortfall


def node_changes(
    node: Node, seen: LiveNode | None, now: dt.datetime, fresh_enough: dt.timedelta
) -> dict[str, object]:
    """What the runners' view of a node changes in its row (nothing, mostly)."""
    if seen is None:
        return {"ray_alive": False} if node.ray_alive else {}
    wanted: dict[str, object] = {"ray_node_id": seen.ray_node_id, "ray_alive": seen.alive}
    if seen.alive:
        last = node.last_heartbeat_at
        if last is None or now - last >= fresh_enough:
            wanted["last_heartbeat_at"] = now  # an agent asking for its runs is a heartbeat
        shortfall = resource_shortfall(seen, cpu_cores=node.cpu_cores, gpu=node.gpu)
        wanted["flag_reason"] = f"its machine offers {shortfall}" if shortfall else ""
    return {name: value for name, value in wanted.items() if getattr(node, name) != value}
