"""Jobs run on Ray, end to end, on a multi-node cluster on this machine."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from auth.models import Role
from tests.conftest import clear_tables, make_settings, register_node

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY_JOB = {
    "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 300},
    "training_config": {"max_steps": 20, "batch_size": 8, "seq_len": 64, "num_workers": 2},
    "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},
    "max_runtime_s": 900,
}


CPU_NODE = {"gpu": 0, "cpu_cores": 2, "memory": 4}  # what each Ray test node offers


def wait_for(condition: Callable[[], object], timeout_s: float = 240, what: object = "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


@pytest.fixture
def ray_settings(ray_cluster, database_url: str, tmp_path):
    if not database_url.startswith("sqlite"):
        pytest.skip("Ray tests run once, on SQLite")
    cluster, _ = ray_cluster
    return make_settings(
        database_url,
        ray_address=cluster.address,
        storage_path=tmp_path / "storage",
        dispatch_interval_s=0.3,
    )


@pytest.fixture
def ray_client(ray_settings) -> Iterator[TestClient]:
    clear_tables(ray_settings.database_url)
    app = create_app(ray_settings, manage_ray=True, run_migrations=False)
    with TestClient(app) as client:
        yield client
    clear_tables(ray_settings.database_url)


def job_state(client: TestClient, headers: dict, job_id: int) -> dict:
    return client.get(f"/jobs/{job_id}", headers=headers).json()


def finished(client: TestClient, headers: dict, job_id: int) -> dict | None:
    job = job_state(client, headers, job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def test_tiny_gpt2_trains_on_the_planned_nodes_and_everyone_is_paid(
    ray_client: TestClient, make_account
) -> None:
    client = ray_client
    owner = make_account("olivia", Role.NODE_OWNER)
    user = make_account("alice")
    other = make_account("bob")
    nodes = [register_node(client, owner.headers, f"machine-{i}", CPU_NODE)["id"] for i in (1, 2)]
    assert nodes == [1, 2]
    wait_for(
        lambda: all(
            client.get(f"/nodes/{n}", headers=owner.headers).json()["status"] == "online"
            for n in nodes
        ),
        what="nodes online via Ray",
    )

    job = client.post("/jobs/submit", headers=user.headers, json=TINY_JOB).json()
    done = wait_for(
        lambda: finished(client, user.headers, job["id"]),
        what=lambda: job_state(client, user.headers, job["id"]),
    )
    assert done["status"] == "succeeded", done["status_reason"]
    # 2 workers of 2 cores: one per machine, and each machine reported the work it did.
    assert sorted(done["usage"]) == ["1", "2"]

    series = client.get(f"/metrics/training/{job['id']}", headers=user.headers).json()["series"]
    losses = [p["values"]["loss"] for p in series if "loss" in p["values"]]
    assert len(losses) == 20 and losses[-1] < losses[0]
    assert any("validation_loss" in p["values"] for p in series)

    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] > 0 and balance["held"] == 0
    assert balance["available"] == pytest.approx(100 - balance["spent"])
    earned = client.get("/tokens/balance/me", headers=owner.headers).json()["earned"]
    assert 0 < earned < balance["spent"]  # the platform kept its fee
    node_metrics = client.get("/metrics/node/1", headers=owner.headers).json()
    assert node_metrics["jobs_run"] == 1 and node_metrics["tokens_earned"] > 0

    archive = client.get(f"/jobs/{job['id']}/artifacts", headers=user.headers)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as packed:
        names = packed.getnames()
    assert f"job-{job['id']}-model/model.safetensors" in names
    assert client.get(f"/jobs/{job['id']}/artifacts", headers=other.headers).status_code == 404
    system = client.get(
        "/metrics/system",
        headers=make_account("root-admin", __import__("auth.models").models.Role.ADMIN).headers,
    ).json()
    assert system["ledger"]["invariant_ok"], system["ledger"]["problems"]
