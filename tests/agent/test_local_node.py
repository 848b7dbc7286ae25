"""`make run`'s own node: the launcher lends its machine through a local agent whose Ray is
its own (the gateway runs none), and that agent keeps its Ray up: killed, it is started
again and jobs run on it."""

from __future__ import annotations

import os
import signal
import tempfile
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
def ray_files() -> Iterator[Path]:
    """Where the operator wants Ray's files (RAY_TMPDIR): short, for Ray's socket paths."""
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
def gateway(tmp_path: Path, ray_files: Path) -> Iterator[Gateway]:
    # A machine where some other program's local `ray.init()` once left its token: with
    # RAY_AUTH_MODE unset, `ray start` would take it up and no driver could connect.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-another-ray-left-behind-0123456789")
    with running_gateway(tmp_path, HOME=str(home), RAY_TMPDIR=str(ray_files)) as running:
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
    gateway: Gateway, tmp_path: Path, ray_files: Path
) -> None:
    (node,) = gateway.as_admin("GET", "/nodes")["items"]
    assert node["owner_id"] == gateway.as_admin("GET", "/auth/me")["id"]  # the admin's node
    wait_for(
        lambda: gateway.as_admin("GET", f"/nodes/{node['id']}")["status"] == "online",
        timeout_s=120,
        what="the local node online",
    )
    assert gateway.as_admin("GET", "/health")["ray"] == "nodes"  # the gateway runs no Ray
    done = run_job(gateway)
    assert done["status"] == "succeeded", done["status_reason"]
    # The node's Ray keeps its files where the operator asked (RAY_TMPDIR), not in /tmp/ray.
    assert list(ray_files.glob("ray/session_*")), sorted(p.name for p in ray_files.iterdir())

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


def environments_below(process: psutil.Process) -> dict[int, dict[str, str]]:
    """The environment of ``process`` and of everything it started, by pid."""
    found = {}
    for each in [process, *process.children(recursive=True)]:
        try:
            found[each.pid] = each.environ()
        except (psutil.Error, ProcessLookupError):  # gone meanwhile
            continue
    return found


def test_the_local_nodes_jobs_read_its_data_and_see_none_of_the_gateways_settings(
    tmp_path: Path,
) -> None:
    """This machine's datasets are the gateway's data root, and a job on it runs with none
    of the gateway's settings: no process below the local agent (its Ray, the job's driver
    and workers) has a DISTLM_* variable, though the launcher's environment is full of them."""
    data_root = tmp_path / "data"
    (data_root / "mine").mkdir(parents=True)
    rows = [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(120)]
    (data_root / "mine" / "rows.csv").write_text("x,y,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "gateway").mkdir()
    with running_gateway(tmp_path / "gateway", DISTLM_DATA_ROOT=str(data_root)) as gateway:
        check_a_local_data_job(gateway)


def check_a_local_data_job(gateway: Gateway) -> None:
    (node,) = gateway.as_admin("GET", "/nodes")["items"]
    wait_for(
        lambda: gateway.as_admin("GET", f"/nodes/{node['id']}")["status"] == "online",
        timeout_s=120,
        what="the local node online",
    )
    launcher = psutil.Process(gateway.process.pid)
    assert any(k.startswith("DISTLM_") for k in launcher.environ())
    (agent,) = [p for p in launcher.children() if "agent" in p.cmdline()]
    body = {
        "model_config": {"type": "classifier", "model_name": "mlp"},
        "data_config": {"data_source": "local", "dataset_name": "mine", "path": "mine/rows.csv"},
        "training_config": {"strategy": "fedavg", "rounds": 40, "clients": 1, "local_epochs": 2},
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.25},
    }
    job = gateway.as_admin("POST", "/jobs/submit", json=body)
    seen: dict[int, dict[str, str]] = {}

    def finished() -> dict | None:
        seen.update(environments_below(agent))
        state = gateway.as_admin("GET", f"/jobs/{job['id']}")
        return state if state["status"] in ("succeeded", "failed", "cancelled") else None

    done = wait_for(finished, timeout_s=180, every_s=0.5, what="the local-data job to end")
    assert done["status"] == "succeeded", done["status_reason"]
    assert len(seen) > 5  # the agent, its Ray's processes, the driver, the job's workers
    leaked = {pid: sorted(k for k in env if k.startswith("DISTLM_")) for pid, env in seen.items()}
    assert not {pid: keys for pid, keys in leaked.items() if keys}, leaked
