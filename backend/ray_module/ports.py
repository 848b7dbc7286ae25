"""A port of its own for every component of a Ray start (GCS, dashboard, dashboard agent,
client server, metrics, runtime-env agent, object and node managers, workers), so that
several Rays on one machine (a node's warm one, one per multi-node job, a gateway's) never
collide with each other nor with Ray's fixed defaults, which a random GCS port once hit."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

# Ray's own defaults: another Ray started without explicit ports takes these.
RAY_DEFAULT_PORTS = frozenset(
    {6379, 8265, 10001, 8076, 8077, 52365, 52366, 44217, 44227, 62365, 8080}
)
WORKER_PORTS = 100  # one per worker process a job's actors and tasks may start at once
PORT_RANGE = (20_000, 60_000)  # below the kernel's usual ephemeral range (32768+ shared)


@dataclass(frozen=True)
class RayPorts:
    gcs: int
    dashboard: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    client_server: int
    metrics_export: int
    runtime_env_agent: int
    object_manager: int
    node_manager: int
    min_worker: int
    max_worker: int

    def start_args(self, *, head: bool) -> list[str]:
        """`ray start` flags for these ports (a worker node has no GCS, dashboard or client
        server of its own)."""
        args = [
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--metrics-export-port={self.metrics_export}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--object-manager-port={self.object_manager}",
            f"--node-manager-port={self.node_manager}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.max_worker}",
        ]
        if head:
            args = [
                f"--port={self.gcs}",
                f"--dashboard-port={self.dashboard}",
                f"--ray-client-server-port={self.client_server}",
                *args,
            ]
        return args


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def allocate_ray_ports(host: str = "", *, rng: random.Random | None = None) -> RayPorts:
    """Free ports for one Ray start: a block for its workers, single ports for the rest,
    all distinct and none of Ray's defaults. Free when looked at: a Ray starting at the same
    moment may still take one, and `ray start` then fails and is retried by its caller."""
    rng = rng or random.SystemRandom()
    low, high = PORT_RANGE
    for _ in range(200):
        base = rng.randrange(low, high - WORKER_PORTS - 20)
        block = range(base, base + WORKER_PORTS + 9)
        if any(p in RAY_DEFAULT_PORTS for p in block):
            continue
        if all(port_free(host, p) for p in block):
            singles = list(block[:9])
            return RayPorts(*singles, min_worker=block[9], max_worker=block[9] + WORKER_PORTS - 1)
    raise OSError("no block of free ports for Ray on this machine")
