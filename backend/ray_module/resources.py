"""Ray's view of the machines: which DistLM nodes are alive and what they really offer."""

from __future__ import annotations

from dataclasses import dataclass

NODE_RESOURCE_PREFIX = "distlm_node_"
NODE_LABEL = "distlm-node-id"


@dataclass(frozen=True)
class LiveNode:
    """One Ray node that carries a DistLM node's custom resource."""

    node_id: int
    ray_node_id: str
    alive: bool
    cpus: float
    gpus: float


def node_resource(node_id: int) -> str:
    return f"{NODE_RESOURCE_PREFIX}{node_id}"


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


def resource_shortfall(live: LiveNode, *, cpu_cores: float, gpu: int) -> str:
    """Empty when the Ray node offers what was registered; else what it lacks."""
    problems = []
    if live.cpus + 1e-9 < int(cpu_cores):
        problems.append(f"{live.cpus:g} CPUs where {int(cpu_cores)} were registered")
    if live.gpus + 1e-9 < gpu:
        problems.append(f"{live.gpus:g} GPUs where {gpu} were registered")
    return "; ".join(problems)
