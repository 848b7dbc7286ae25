"""Start a local Ray (the embedded default) or join an existing cluster."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # empty: start a local Ray owned by this process
    num_cpus: int = 0  # 0: all cores of this machine (local Ray only)
    object_store_mb: int = 256
    namespace: str = "distlm"


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    started_locally: bool
    resources: dict[str, float]


def connect(config: ClusterConfig) -> ClusterInfo:
    import ray

    if ray.is_initialized():
        return ClusterInfo(
            address=ray.get_runtime_context().gcs_address,
            started_locally=False,
            resources=dict(ray.cluster_resources()),
        )
    if config.address:
        ray.init(address=config.address, namespace=config.namespace, logging_level=logging.WARNING)
        started_locally = False
    else:
        ray.init(
            num_cpus=config.num_cpus or os.cpu_count() or 1,
            object_store_memory=config.object_store_mb * 1024 * 1024,
            namespace=config.namespace,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        started_locally = True
    info = ClusterInfo(
        address=ray.get_runtime_context().gcs_address,
        started_locally=started_locally,
        resources=dict(ray.cluster_resources()),
    )
    log.info(
        "ray %s at %s: %s", "started" if started_locally else "joined", info.address, info.resources
    )
    return info


def disconnect() -> None:
    """Leave the cluster; a local Ray started by ``connect`` shuts down with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def is_connected() -> bool:
    import ray

    return ray.is_initialized()
