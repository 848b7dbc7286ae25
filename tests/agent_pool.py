"""In-process tests of jobs on Ray, the way they run in production: the gateway served on a
real port (its process never touches Ray) and, for each registered node, what its agent does
in a trusted pool (``distlm-node --ray-address``): heartbeats, and a RunFollower that starts
each attempt's driver as a process of its own on the pool.

The pool is the test session's Ray cluster, whose worker nodes stand for the owners'
machines (node i carries ``distlm_node_<i>``). ``lose`` is a machine dying: its Ray node
goes, its agent falls silent and its drivers die with it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from agent.errors import GatewayError, GatewayUnreachableError
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.machine import sample_metrics
from agent.runs import RayPool, RunFollower

HEARTBEAT_S = 1.0  # the test gateway's node_heartbeat_interval (lost after 5 s of silence)
SESSION_MACHINES = (1, 2)  # the session cluster's nodes that every test starts with


MACHINE_CPUS = 2


def add_ray_node(
    cluster: Any, node_id: int, *, num_cpus: int = MACHINE_CPUS, num_gpus: int = 0
) -> Any:
    """A machine of the pool: a Ray node carrying the resource of DistLM node ``node_id``."""
    return cluster.add_node(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources={f"distlm_node_{node_id}": 1000},
        labels={"distlm-node-id": str(node_id)},
        object_store_memory=80 * 1024 * 1024,
    )


def two_machine_cluster(dashboard_port: int, **init: Any) -> tuple[Any, dict[int, Any]]:
    """A head with no CPUs (work lands only where a DistLM node's resource is) and machines 1
    and 2, with this process connected: the cluster and its machines' Ray nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 80 * 1024 * 1024,
            # A port of its own: when another Ray on the machine (a launcher's) holds Ray's
            # default 8265, the head starts without a dashboard and Ray's state API fails.
            "dashboard_port": dashboard_port,
            "include_log_monitor": False,  # as a DistLM head's (ray_module.head)
        },
    )
    nodes = {machine: add_ray_node(cluster, machine) for machine in SESSION_MACHINES}
    ray.init(address=cluster.address, namespace="distlm", **init)
    cluster.wait_for_nodes()
    return cluster, nodes


class PoolNode:
    """One node's agent in the pool: heartbeats and its runs, until stopped or lost."""

    def __init__(
        self,
        base_url: str,
        node_id: int,
        credential: str,
        work_dir: Path,
        pool_address: str,
        data_root: str,
        offers: dict[str, float],
    ) -> None:
        self.client = GatewayClient(base_url)
        self.identity = NodeIdentity(node_id, f"pool-node-{node_id}", credential)
        self.up = True  # its member of the pool (a Ray node of the session's cluster)
        self.follower = RunFollower(
            self.client,
            self.identity,
            ray_address=pool_address,
            work_dir=work_dir,
            data_root=data_root,
            pool=RayPool(ready=lambda: self.up),
            offers=offers,
        )
        self.stopping = threading.Event()
        self.beats = threading.Thread(target=self.beat, name=f"beats-{node_id}", daemon=True)

    def start(self) -> PoolNode:
        self.beats.start()
        self.follower.start()
        return self

    def beat(self) -> None:
        while not self.stopping.is_set():
            # A banned or removed node, a gateway going down: beat on, as an agent retries.
            with contextlib.suppress(GatewayError, GatewayUnreachableError):
                self.client.heartbeat(self.identity, sample_metrics(0))
            self.stopping.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self.stopping.set()
        self.follower.stop()  # its drivers die with it
        self.beats.join(timeout=10)
        self.client.close()


class AgentPool:
    """The nodes' agents of one test, on the session's Ray cluster."""

    def __init__(
        self, base_url: str, cluster: Any, ray_nodes: dict, root: Path, data_root: str
    ) -> None:
        self.base_url, self.cluster, self.ray_nodes, self.root = base_url, cluster, ray_nodes, root
        self.data_root = data_root  # the pool's machines share the gateway's, here
        self.nodes: dict[int, PoolNode] = {}
        self.gpus: dict[int, int] = {}  # of the machines a test added

    def start(self, node_id: int, credential: str) -> PoolNode:
        node = PoolNode(
            self.base_url,
            node_id,
            credential,
            self.root / f"node-{node_id}",
            self.cluster.address,
            self.data_root,
            {"cpu_cores": MACHINE_CPUS, "gpu": self.gpus.get(node_id, 0)},
        )
        self.nodes[node_id] = node.start()
        return node

    def add_machine(self, node_id: int, *, num_gpus: int = 0) -> None:
        """Another machine for the node the test registers next as ``node_id``."""
        self.ray_nodes[node_id] = add_ray_node(self.cluster, node_id, num_gpus=num_gpus)
        self.gpus[node_id] = num_gpus

    def lose(self, node_id: int) -> None:
        """The machine behind the node dies: its Ray node, its agent and its drivers."""
        node = self.nodes.pop(node_id, None)
        if node is not None:
            node.up = False
            node.stop()
        ray_node = self.ray_nodes.pop(node_id, None)
        if ray_node is not None:
            self.cluster.remove_node(ray_node)

    def stop(self) -> None:
        """Every agent stops; the session's machines are as the test found them (1 and 2)."""
        for node in list(self.nodes.values()):
            node.stop()
        self.nodes.clear()
        for node_id in [n for n in self.ray_nodes if n not in SESSION_MACHINES]:
            self.cluster.remove_node(self.ray_nodes.pop(node_id))
        for node_id in SESSION_MACHINES:
            if node_id not in self.ray_nodes:
                self.ray_nodes[node_id] = add_ray_node(self.cluster, node_id)
