"""Submit → first training step latency, and the platform's overhead on a whole job against
a bare Ray Train TorchTrainer run of the same ranks' loop (``torch_trainer_baseline.py``), and
against calling our ``run_data_parallel`` directly, as ratios.

Both runs use the same training loop (tiny-gpt2 on stdlib-text, the same steps, batch size and
workers) on one local Ray started by this script. The platform's run goes as in production:
the gateway served on a port (no Ray in it), this machine lent as node 1 by an agent whose
Ray is that local Ray (a trusted pool, ``tests/agent_pool.py``), the job's driver a process
of its own.

    PYTHONPATH=backend .venv/bin/python benchmarks/jobs.py [--steps 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.agent_pool

import ray
from benchmarks.results import report
from benchmarks.torch_trainer_baseline import run_ours, run_with_torch_trainer, timed
from tests.agent_pool import PoolNode
from tests.conftest import free_port
from tests.live_gateway import LiveGateway

from app.main import create_app
from core.settings import Settings
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan


def job_body(steps: int, workers: int) -> dict:
    return {
        "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
        "data_config": {
            "data_source": "builtin",
            "dataset_name": "stdlib-text",
            "max_samples": 400,
        },
        "training_config": {
            "max_steps": steps,
            "batch_size": 8,
            "seq_len": 64,
            "num_workers": workers,
        },
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
        "max_runtime_s": 1800,
    }


def through_the_platform(tmp: Path, steps: int, workers: int, pool: str) -> dict[str, float]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp}/bench.db",
        storage_path=tmp / "storage",
        admin_password="bench-admin-password",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        dispatch_interval_s=0.2,
    )
    client = LiveGateway(lambda: create_app(settings), free_port()).start()
    node = None
    try:
        token = client.post(
            "/auth/token", data={"username": "admin", "password": "bench-admin-password"}
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        lent = client.post(
            "/nodes/register",
            headers=headers,
            json={"hostname": "this-machine", "resources": {"gpu": 0, "cpu_cores": 2, "memory": 2}},
        ).json()
        node = PoolNode(
            str(client.base_url), lent["id"], lent["credential"], tmp / "node", pool, "",
            {"cpu_cores": 2, "gpu": 0},
        ).start()  # fmt: skip
        while client.get(f"/nodes/{lent['id']}", headers=headers).json()["status"] != "online":
            time.sleep(0.1)
        started = time.perf_counter()
        job = client.post("/jobs/submit", headers=headers, json=job_body(steps, workers)).json()
        while (state := client.get(f"/jobs/{job['id']}", headers=headers).json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(0.1)
        wall = time.perf_counter() - started
    finally:
        if node is not None:
            node.stop()
        client.stop()
    assert state["status"] == "succeeded", state["status_reason"]

    def at(name: str) -> dt.datetime:
        return dt.datetime.fromisoformat(state[name].replace("Z", "+00:00"))

    return {
        "wall_s": wall,
        "submit_to_first_step_s": (at("first_step_at") - at("created_at")).total_seconds(),
        "submit_to_running_s": (at("started_at") - at("created_at")).total_seconds(),
    }


def direct_config(tmp: Path, steps: int, workers: int, node_id: int, name: str) -> RunConfig:
    body = job_body(steps, workers)
    return RunConfig(
        job_id=next(direct_job_ids),
        request=JobRequest(
            strategy="data_parallel",
            model=ModelRequest("simple_transformer", "tiny-gpt2"),
            data=DataRequest("builtin", "stdlib-text", max_samples=400),
            knobs={k: v for k, v in body["training_config"].items() if k != "num_workers"},
        ),
        workers=tuple(WorkerPlan(node_id, 0, 1 / workers, 1 / workers) for _ in range(workers)),
        storage_path=str(tmp / name),
    )


direct_job_ids = itertools.count(999_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        node_id = 1  # the platform registers this machine as node 1 of a fresh database
        # A trusted pool without a token, as the test session's cluster: the agent's drivers
        # join it as they join an owner's `ray start` pool (DistLM's own local Ray has a token
        # that only its own drivers get).
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(
            address="local",
            num_cpus=2,
            resources={f"distlm_node_{node_id}": 1000},
            labels={"distlm-node-id": str(node_id)},
        )
        pool = ray.get_runtime_context().gcs_address
        sizes = (args.steps, args.workers)
        platform = through_the_platform(tmp, args.steps, args.workers, pool)
        bare = timed(run_with_torch_trainer, direct_config(tmp, *sizes, node_id, "bare"))
        ours = timed(run_ours, direct_config(tmp, *sizes, node_id, "ours"))
        ray.shutdown()
    print(f"job: tiny-gpt2, stdlib-text, {args.steps} steps, {args.workers} workers, 2 CPUs")
    print(f"submit -> running (placed, runner started): {platform['submit_to_running_s']:.2f} s")
    print(f"submit -> first training step:             {platform['submit_to_first_step_s']:.2f} s")
    print(f"whole job through DistLM (submit -> succeeded): {platform['wall_s']:.2f} s")
    print(f"same loop, bare TorchTrainer run:               {bare[1]:.2f} s")
    print(f"same work, run_data_parallel called directly:   {ours[1]:.2f} s")
    print(f"overhead ratio DistLM / bare TorchTrainer: {platform['wall_s'] / bare[1]:.2f}x")
    print(f"overhead ratio DistLM / run_data_parallel: {platform['wall_s'] / ours[1]:.2f}x")
    report("jobs", "submit -> first step", platform["submit_to_first_step_s"], unit="s",
           aim="<= 8")  # fmt: skip
    report("jobs", "whole job", platform["wall_s"], unit="s", baseline=bare[1],
           baseline_name="bare TorchTrainer", aim="<= 1.10")  # fmt: skip


if __name__ == "__main__":
    main()
