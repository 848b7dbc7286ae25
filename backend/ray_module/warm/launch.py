"""Starting and stopping a node's warm workers from outside its Ray (the node's agent, a
benchmark), and starting the keeper from inside (``start_keeper``, run by
``python -m ray_module.warm``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

from protocol.nodes import node_resource
from ray_module.contract import NAMESPACE
from ray_module.head import code_environment
from ray_module.warm.pool import WarmPoolKeeper, keeper_name

log = logging.getLogger("distlm.warm")

START_TIMEOUT_S = 120.0
MAX_DEFAULT_SIZE = 4  # each warm worker holds torch in memory (~250 MB)


def default_size(num_cpus: int) -> int:
    """One warm worker per core, at most ``MAX_DEFAULT_SIZE``."""
    return max(0, min(num_cpus, MAX_DEFAULT_SIZE))


def start_keeper(size: int, node_id: int) -> Any:
    """The node's keeper (made once: a second call finds the first), in the connected Ray."""
    import ray

    keeper = (
        ray.remote(WarmPoolKeeper)
        .options(
            name=keeper_name(node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            # On its workers' machine: they watch its pid, as it watches their takers'.
            resources={node_resource(node_id): 0.001},
            max_restarts=0,
        )
        .remote(size, node_id)
    )
    ray.get(keeper.state.remote(), timeout=START_TIMEOUT_S)
    return keeper


def launch_pool(
    ray_address: str, ray_token: str, node_id: int, size: int, node_address: str = ""
) -> None:
    """Start the keeper of ``size`` warm workers on node ``node_id`` of the Ray at
    ``ray_address`` (the node's own, or a trusted pool it is a member of, reached from
    ``node_address``), from a process of its own, in the background (the workers import
    torch for seconds)."""
    if size > 0:
        order = {"node_id": node_id, "size": size, "node_address": node_address}
        threading.Thread(
            target=run_warm_command, args=(ray_address, ray_token, order), daemon=True
        ).start()


def run_warm_command(ray_address: str, ray_token: str, order: dict[str, Any]) -> bool:
    """``python -m ray_module.warm`` with ``order`` (start a keeper, or wait until its
    workers are ready and idle); whether it succeeded."""
    env = code_environment()  # no DistLM secret, nor another Ray's settings
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ray_module.warm"],
            input=json.dumps({**order, "ray_address": ray_address, "ray_token": ray_token}),
            text=True,
            capture_output=True,
            env=env,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("the node's warm workers did not answer in %.0f s", START_TIMEOUT_S)
        return False
    if done.returncode != 0:
        log.warning("the node's warm workers did not start: %s", done.stderr[-2000:])
        return False
    log.info("the node's warm workers: done in %.1f s", time.monotonic() - started)
    return True


def wait_until_warm(keeper: Any, timeout_s: float = START_TIMEOUT_S) -> dict[str, int]:
    """Wait until every worker of ``keeper`` is ready and none is taken; its state."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        state = ray.get(keeper.state.remote(), timeout=timeout_s)
        if state["ready"] == state["size"] and state["taken"] == 0:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm workers are not ready: {state}")
        time.sleep(0.1)
