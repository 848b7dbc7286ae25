"""A driver's Ray: start a local one (benchmarks, the engine's tests) or join a cluster; and
what a node's Ray starts with (``ClusterConfig``)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

# Workers import our strategies by module name: put this package's parent on their path.
CODE_ROOT = str(Path(__file__).resolve().parent.parent)
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": CODE_ROOT}}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # empty: start a local Ray owned by this process
    num_cpus: int = 0  # 0: all cores of this machine (local Ray only)
    object_store_mb: int = 256
    namespace: str = "distlm"
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)  # custom, e.g. distlm_node_1
    labels: dict[str, str] = field(default_factory=dict)
    # Ray token authentication: the token this driver presents to the cluster at `address`
    # (a local head gets its token from ray_module.head).
    auth_token: str = field(default="", repr=False)
    # The address is the embedded default's head on this machine, whose workers already
    # have our code on their path: no job-level runtime_env (it costs each actor ~1 s).
    local_head: bool = False


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    started_locally: bool
    resources: dict[str, float]
    # False when Ray was already initialised in this process (tests, notebooks): then
    # whoever initialised it also shuts it down.
    owned: bool = True


def connect(config: ClusterConfig) -> ClusterInfo:
    import ray

    if ray.is_initialized():
        return ClusterInfo(
            address=ray.get_runtime_context().gcs_address,
            started_locally=False,
            resources=dict(ray.cluster_resources()),
            owned=False,
        )
    if config.address:
        if config.auth_token:
            use_auth_token(config.auth_token)
        ray.init(
            address=config.address,
            namespace=config.namespace,
            logging_level=logging.WARNING,
            runtime_env=None if config.local_head else RUNTIME_ENV,
        )
        started_locally = False
    else:
        # A local Ray's workers inherit this process's environment, so the code root goes on
        # PYTHONPATH here instead of in a runtime_env: a job-level runtime_env keeps Ray from
        # using its prestarted workers and costs every new actor about a second.
        inherit_code_root()
        # A token of its own: with none, a local `ray.init()` writes one to ~/.ray/auth_token,
        # which every later `ray start` on this machine would then take up unasked.
        use_auth_token(secrets.token_urlsafe(32))
        ray.init(
            # "local": always start a new Ray here, never join one another process left
            # running on this machine (ray.init would otherwise pick it up).
            address="local",
            num_cpus=config.num_cpus or os.cpu_count() or 1,
            num_gpus=config.num_gpus,
            resources=config.resources or None,
            labels=config.labels or None,
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


def inherit_code_root() -> None:
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if CODE_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([CODE_ROOT, *paths])


def use_auth_token(token: str) -> None:
    """Run the next local Ray (and this process's connection to it) with token
    authentication and this token. Ray reads both from the environment once and caches
    them, so the caches are refreshed: a restarted Ray can take a new token."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def disconnect() -> None:
    """Leave the cluster; a local Ray started by ``connect`` shuts down with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
