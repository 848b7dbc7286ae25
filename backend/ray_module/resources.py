"""Ray's view of the machines: which DistLM nodes are alive and what they really offer (the
names both sides use are the protocol's, ``protocol/nodes.py``)."""

from __future__ import annotations

from protocol.nodes import (
    NODE_LABEL,
    NODE_RESOURCE_PREFIX,
    LiveNode,
    node_resource,
    resource_shortfall,
)

__all__ = [
    "NODE_LABEL",
    "NODE_RESOURCE_PREFIX",
    "LiveNode",
    "live_nodes",
    "node_resource",
    "parse_ray_nodes",
    "resource_shortfall",
]


def parse_ray_nodes(ray_nodes: list[dict]) -> dict[int, LiveNode]:
    """Map DistLM node ids to Ray nodes (an alive entry wins over dead ones of the same id)."""
    found: dict[int, LiveNode] = {}
    for entry in ray_nodes:
        resources = entry.get("Resources") or {}
        for name in resources:
            if not name.startswith(NODE_RESOURCE_PREFIX):
                continue
            suffix = name.removeprefix(NODE_RESOURCE_PREFIX)
            if not suffix.isdigit():
                continue
            live = LiveNode(
                node_id=int(suffix),
                ray_node_id=str(entry.get("NodeID", "")),
                alive=bool(entry.get("Alive")),
                cpus=float(resources.get("CPU", 0)),
                gpus=float(resources.get("GPU", 0)),
            )
            previous = found.get(live.node_id)
            if previous is None or (live.alive and not previous.alive):
                found[live.node_id] = live
    return found


def live_nodes() -> dict[int, LiveNode]:
    """The DistLM nodes Ray knows about, from Ray's node table."""
    import ray

    return parse_ray_nodes(ray.nodes())
