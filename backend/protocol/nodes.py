"""How a DistLM node appears inside a Ray cluster, as both sides name it: a custom resource
``distlm_node_<id>`` and a label, what the control plane knows of a live node, and what a
node's Ray is started with (``JoinInfo``: the gateway's answer to its agent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NODE_RESOURCE_PREFIX = "distlm_node_"
NODE_LABEL = "distlm-node-id"
DEFAULT_HEARTBEAT_S = 10.0


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


@dataclass(frozen=True)
class JoinInfo:
    """What the node's Ray offers (the gateway's answer), and, for a Ray that joins a
    cluster (a pool's member, a multi-node job's), where that cluster is and its token."""

    node_id: int
    num_cpus: int
    num_gpus: int
    memory_gb: float
    resources: dict[str, float]
    labels: dict[str, str]
    heartbeat_interval_s: float
    ray_address: str = ""
    ray_auth_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JoinInfo:
        return cls(
            node_id=int(body["node_id"]),
            num_cpus=int(body["num_cpus"]),
            num_gpus=int(body["num_gpus"]),
            memory_gb=float(body["memory_gb"]),
            resources={str(k): float(v) for k, v in body.get("resources", {}).items()},
            labels={str(k): str(v) for k, v in body.get("labels", {}).items()},
            heartbeat_interval_s=float(body.get("heartbeat_interval_s") or DEFAULT_HEARTBEAT_S),
        )
