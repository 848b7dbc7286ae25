"""`make run`'s own node: the launcher lends its machine through a local agent whose Ray is
its own (the gateway runs none), and that agent keeps its Ray up: killed, it is started
again and jobs run on it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.agent.gateway_process import Gateway, running_gateway
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 100},
    "training_config": {"steps": 4, "population": 8, "checkpoint_interval": 2},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.25},
}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path) as running:
        yield running


def ray_heads(gateway: Gateway) -> list[psutil.Process]:
    """The live `ray start --head` processes below the launcher (the local agent's), each
    the leader of its process group (what it starts shares its group)."""
    heads = []
    for process in psutil.Process(gateway.process.pid).children(recursive=True):
        try:
            command = process.cmdline()
            leader = os.getpgid(process.pid) == process.pid
            if process.status() != psutil.STATUS_ZOMBIE and "--head" in command and leader:
                heads.append(process)
        except (psutil.Error, ProcessLookupError):  # gone meanwhile
            continue
    return heads


def run_job(gateway: Gateway) -> dict:
    job = gateway.as_admin("POST", "/jobs/submit", json=ES_JOB)
    return wait_for(
        lambda: (
            (j := gateway.as_admin("GET", f"/jobs/{job['id']}"))["status"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout_s=180,
        what=lambda: gateway.as_admin("GET", f"/jobs/{job['id']}"),
    )


def test_the_local_agents_ray_is_started_again_when_it_dies_and_runs_jobs(
    gateway: Gateway, tmp_path: Path
) -> None:
    (node,) = gateway.as_admin("GET", "/nodes")["items"]
    assert node["owner_id"] == gateway.as_admin("GET", "/auth/me")["id"]  # the admin's node
    wait_for(
        lambda: gateway.as_admin("GET", f"/nodes/{node['id']}")["status"] == "online",
        timeout_s=120,
        what="the local node online",
    )
    assert gateway.as_admin("GET", "/health")["ray"] == "nodes"  # the gateway runs no Ray
    assert run_job(gateway)["status"] == "succeeded"

    (head,) = wait_for(lambda: ray_heads(gateway), timeout_s=30, what="the node's Ray")
    os.killpg(head.pid, signal.SIGKILL)  # the whole Ray of the node, at once
    log = tmp_path / "local-node" / "agent.log"
    wait_for(
        lambda: "this node's Ray stopped; starting it again" in log.read_text(),
        timeout_s=60,
        what=lambda: log.read_text()[-2000:],
    )
    (again,) = wait_for(lambda: ray_heads(gateway), timeout_s=60, what="its Ray again")
    assert again.pid != head.pid
    done = run_job(gateway)
    assert done["status"] == "succeeded", done["status_reason"]
