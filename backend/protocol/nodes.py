"""How a DistLM node appears inside a Ray cluster, as both sides name it: a custom resource
``distlm_node_<id>`` and a label, and what the control plane knows of a live node."""

from __future__ import annotations

from dataclasses import dataclass

NODE_RESOURCE_PREFIX = "distlm_node_"
NODE_LABEL = "distlm-node-id"


@dataclass(frozen=True)
class LiveNode:
    """One DistLM node as seen running (a Ray node carrying its resource, or its agent)."""

    node_id: int
    ray_node_id: str
    alive: bool
    cpus: float
    gpus: float


def node_resource(node_id: int) -> str:
    return f"{NODE_RESOURCE_PREFIX}{node_id}"


def resource_shortfall(live: LiveNode, *, cpu_cores: float, gpu: int) -> str:
    """Empty when the node offers what was registered; else what it lacks."""
    problems = []
    if live.cpus + 1e-9 < int(cpu_cores):
        problems.append(f"{live.cpus:g} CPUs where {int(cpu_cores)} were registered")
    if live.gpus + 1e-9 < gpu:
        problems.append(f"{live.gpus:g} GPUs where {gpu} were registered")
    return "; ".join(problems)
