"""The cost of trust for split's trainer: the audit job (``compute/audits``) that trains the
steps after a kept checkpoint again on another node, and the delay from that checkpoint to
the trainer's credit being released.

One split job (the digits MLP, augmented, batch 32) through the platform as in production:
the gateway served on a port, two nodes of another owner lent by agents on one local Ray
(a trusted pool), the job's and the audit's drivers processes of their own. A new trainer
node is audited once per attempt: the measured audit is that. A trusted one's checkpoints
are drawn at its check rate (5% at the floor), one audit per attempt at most: its share is
the measured audit's times the chance that one of the job's checkpoints is drawn.

    PYTHONPATH=backend .venv/bin/python benchmarks/verified_credit_audit.py [--epochs 4]

Prints the job's and the audit's node-seconds (what each node's slot held, times its wall
time, as billing meters it), the audit's share, and checkpoint -> release.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.agent_pool

import httpx
import ray
from benchmarks.results import report
from tests.agent_pool import PoolNode
from tests.conftest import free_port
from tests.live_gateway import LiveGateway

from app.main import create_app
from core.settings import Settings
from protocol.trust import RATE_FLOOR

PASSWORD = "bench-password-1"
FINAL = ("succeeded", "failed", "cancelled")


def job_body(epochs: int, checkpoint_every: int) -> dict:
    return {
        "name": "digits, split, audited",
        "model_config": {"type": "classifier", "model_name": "mlp"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits"},
        "training_config": {
            "strategy": "split",
            "epochs": epochs,
            "batch_size": 32,
            "augment": True,
            "checkpoint_interval": checkpoint_every,
            "loader": {"cpu_cores": 1, "memory": 1},
        },
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
        "max_runtime_s": 900,
    }


def login(client: httpx.Client, username: str, password: str) -> dict[str, str]:
    token = client.post("/auth/token", data={"username": username, "password": password})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def until(condition, timeout_s: float = 600):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("the platform did not get there in time")
        time.sleep(0.1)
    return value


def node_seconds(job: dict) -> float:
    """Core-seconds and GB-seconds of the job's metered work, as one figure: core-seconds
    (each slot's memory is proportional to its cores here)."""
    return sum(figures["cpu_core_seconds"] for figures in (job["usage"] or {}).values())


def run(tmp: Path, epochs: int, checkpoint_every: int) -> dict[str, float]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp}/bench.db",
        storage_path=tmp / "storage",
        admin_password="bench-admin-password",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        dispatch_interval_s=0.2,
        audit_trainers=True,
    )
    client = LiveGateway(lambda: create_app(settings), free_port()).start()
    agents: list[PoolNode] = []
    try:
        admin = login(client, "admin", "bench-admin-password")
        for name, role in (("bench-owner", "node_owner"), ("bench-user", "user")):
            answer = client.post(
                "/auth/register",
                headers=admin,
                json={"username": name, "password": PASSWORD, "role": role},
            )
            assert answer.status_code == 201, answer.text
        owner, user = login(client, "bench-owner", PASSWORD), login(client, "bench-user", PASSWORD)
        pool = ray.get_runtime_context().gcs_address
        for machine in (1, 2):
            lent = client.post(
                "/nodes/register",
                headers=owner,
                json={"hostname": f"m{machine}",
                      "resources": {"gpu": 0, "cpu_cores": 2, "memory": 2}},
            ).json()  # fmt: skip
            agent = PoolNode(
                str(client.base_url), lent["id"], lent["credential"], tmp / f"node{machine}",
                pool, "", {"cpu_cores": 2, "gpu": 0},
            )  # fmt: skip
            agents.append(agent.start())
        until(
            lambda: all(
                client.get(f"/nodes/{n}", headers=owner).json()["status"] == "online"
                for n in (1, 2)
            )
        )
        job = client.post("/jobs/submit", headers=user, json=job_body(epochs, checkpoint_every))
        job_id = job.json()["id"]
        done = until(lambda: (j := client.get(f"/jobs/{job_id}", headers=user).json())["status"]
                     in FINAL and j)  # fmt: skip
        assert done["status"] == "succeeded", done["status_reason"]
        audit = until(
            lambda: next(
                (j for j in client.get("/jobs?limit=50", headers=user).json()["items"]
                 if j["name"].startswith(f"audit of job {job_id},")),
                None,
            )
        )  # fmt: skip
        audit = until(lambda: (j := client.get(f"/jobs/{audit['id']}", headers=user).json())[
            "status"] in FINAL and j)  # fmt: skip
        released = until(
            lambda: (
                client.get(f"/jobs/{job_id}", headers=user).json()["pending_credit"] == 0
                and dt.datetime.now(dt.UTC)
            )
        )
        series = client.get(f"/metrics/training/{job_id}?limit=5000", headers=user).json()
    finally:
        for agent in agents:
            agent.stop()
        client.stop()
    first, last = audit["spec"]["audit_of"]["steps"]
    # The kept checkpoint is saved right after its step's metrics are reported.
    kept_at = next(_at(p["recorded_at"]) for p in series["series"] if p["step"] == first - 1)
    steps = max(p["step"] for p in series["series"])
    checkpoints = -(-steps // checkpoint_every)
    return {
        "job_s": node_seconds(done),
        "audit_s": node_seconds(audit),
        "audit_steps": last - first + 1,
        "steps": steps,
        "checkpoints": checkpoints,
        "job_wall_s": _seconds(done["started_at"], done["finished_at"]),
        "audit_wall_s": _seconds(audit["started_at"], audit["finished_at"]),
        "checkpoint_to_release_s": (released - kept_at).total_seconds(),
        "job_end_to_release_s": (released - _at(done["finished_at"])).total_seconds(),
        "valid": float(done["voided"] == 0),
    }


def _at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _seconds(start: str, end: str) -> float:
    return (_at(end) - _at(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    args = parser.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a trusted pool without a token
    ray.init(
        address="local",
        num_cpus=4,
        resources={"distlm_node_1": 1000, "distlm_node_2": 1000},
        include_dashboard=False,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            f = run(Path(tmp), args.epochs, args.checkpoint_every)
    finally:
        ray.shutdown()
    share = f["audit_s"] / f["job_s"]
    # A trusted trainer: each checkpoint drawn at the floor rate, one audit per attempt.
    drawn = 1 - (1 - RATE_FLOOR) ** f["checkpoints"]
    every = args.checkpoint_every
    print(f"digits MLP, split, {f['steps']:.0f} steps, a checkpoint every {every} "
          f"({f['checkpoints']:.0f}), 2 nodes of one local Ray")  # fmt: skip
    print(f"job: {f['job_s']:.2f} core-s metered, {f['job_wall_s']:.2f} s running")
    print(
        f"audit: {f['audit_steps']:.0f} steps trained again, {f['audit_s']:.2f} core-s, "
        f"{f['audit_wall_s']:.2f} s running, verdict {'valid' if f['valid'] else 'INVALID'}"
    )
    print(f"share of the job's compute, new trainer:     {share:.1%}")
    report("verified_credit_audit", "audit share of a trusted trainer's job",
           100 * share * drawn, unit="%", aim="<= 10")  # fmt: skip
    print(
        f"share of the job's compute, trusted trainer: {share * drawn:.1%} "
        f"(an audit in {drawn:.0%} of such jobs)"
    )
    print(
        f"kept checkpoint -> credit released: {f['checkpoint_to_release_s']:.1f} s "
        f"(job end -> released: {f['job_end_to_release_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
