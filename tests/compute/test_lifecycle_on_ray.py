"""Node and job lifecycle on the session's Ray cluster: a drained node gets no new work while
another does, a busy node cannot be retired, a finished job's files can be deleted."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from tests.app.test_prometheus import scrape, value
from tests.conftest import job_state, wait_until_finished
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 300},
    "training_config": {"strategy": "split", "epochs": 2, "step_delay_s": 0.1,
                        "loader": {"cpu_cores": 0.5, "memory": 0.5}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}  # fmt: skip


def test_a_drained_node_gets_no_new_job_and_a_finished_jobs_files_can_be_deleted(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client, (owner, nodes) = ray_client, two_nodes
    user = make_account("alice")
    drained = client.post(f"/nodes/{nodes[0]}/drain", headers=owner.headers)
    assert drained.status_code == 200 and drained.json()["drained"] is True

    admin = make_account("root", Role.ADMIN)
    before = scrape(client, admin.headers)
    job = client.post("/jobs/submit", headers=user.headers, json=SMALL_JOB).json()
    running = wait_for(
        lambda: (j := job_state(client, user.headers, job["id"]))["status"] == "running" and j,
        what=lambda: job_state(client, user.headers, job["id"]),
    )
    assert {slot["node_id"] for slot in running["placement"]} == {nodes[1]}
    busy = client.delete(f"/nodes/{nodes[1]}", headers=owner.headers)
    assert busy.status_code == 409 and busy.json()["error"] == "node_busy"
    done = wait_until_finished(client, user.headers, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert set(done["usage"]) == {str(nodes[1])}  # nothing ran on the drained node

    # Prometheus saw it: one more succeeded job, the charge and the owner's credit.
    after = scrape(client, admin.headers)
    assert value(after, "distlm_jobs", status="succeeded") == 1 + value(
        before, "distlm_jobs", status="succeeded"
    )
    spent = client.get("/tokens/balance/me", headers=user.headers).json()["spent"]
    earned = client.get("/tokens/balance/me", headers=owner.headers).json()["earned"]
    charged = value(after, "distlm_tokens_charged_total") - value(
        before, "distlm_tokens_charged_total"
    )
    assert charged == pytest.approx(spent)
    credited = value(after, "distlm_tokens_credited_total") - value(
        before, "distlm_tokens_credited_total"
    )
    assert credited == pytest.approx(earned) and 0 < earned < spent
    assert value(after, "distlm_ledger_invariant_ok") == 1

    used = client.get("/users/me/storage", headers=user.headers).json()
    assert [j["job_id"] for j in used["jobs"]] == [job["id"]] and used["total_bytes"] > 0
    history = client.get("/tokens/history/me", headers=user.headers).json()
    other = make_account("bob")
    assert client.delete(f"/jobs/{job['id']}/artifacts", headers=other.headers).status_code == 404
    deleted = client.delete(f"/jobs/{job['id']}/artifacts", headers=user.headers)
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] == used["total_bytes"]
    assert client.get("/users/me/storage", headers=user.headers).json()["total_bytes"] == 0
    gone = client.get(f"/jobs/{job['id']}/artifacts", headers=user.headers)
    assert gone.status_code == 409
    kept = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    assert kept["status"] == "succeeded" and not kept["has_artifact"]
    assert client.get("/tokens/history/me", headers=user.headers).json() == history
    undrained = client.post(f"/nodes/{nodes[0]}/undrain", headers=owner.headers).json()
    assert undrained["drained"] is False
