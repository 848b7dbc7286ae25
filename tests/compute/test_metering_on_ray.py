"""Paid once, on Ray, through the API (issue 26): an ES and a FedAvg job lose the node they
run on between two checkpoints, resume on the other node from the last checkpoint and finish.
The work the lost attempt did after its checkpoint is neither charged nor credited; every
step is paid by exactly one attempt; the ledger balances. (Split and data_parallel make the
same check in their own lost-node tests.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from tests.agent_pool import AgentPool
from tests.conftest import job_state, wait_until_finished
from tests.live_gateway import LiveGateway
from tests.metering_checks import assert_each_step_paid_once, work_dropped
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 200},
    "training_config": {"steps": 60, "population": 32, "checkpoint_interval": 20},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},  # one worker on one node
    "max_runtime_s": 900,
}

FEDAVG_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "validation_split": 0.2},
    "training_config": {
        "strategy": "fedavg",
        "rounds": 24,
        "clients": 2,
        "num_workers": 1,  # both clients on one node: losing it loses the attempt
        # Rounds slow enough to be seen one by one (a driver relays twice a second).
        "local_epochs": 40,
        "checkpoint_interval": 8,
    },
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    "max_runtime_s": 900,
}


@pytest.mark.parametrize("body", [ES_JOB, FEDAVG_JOB], ids=["es", "fedavg"])
def test_a_node_lost_between_checkpoints_is_paid_only_for_saved_work_and_the_job_once(
    ray_client: LiveGateway, agent_pool: AgentPool, two_nodes, make_account, body: dict
) -> None:
    client = ray_client
    user = make_account("alice")
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    every = body["training_config"]["checkpoint_interval"]
    # A checkpoint has saved some work and the attempt is early in the next interval.
    wait_for(
        lambda: (
            last_step(client, user.headers, job["id"]) % every in range(1, every // 2)
            and last_step(client, user.headers, job["id"]) > every
        ),
        every_s=0.05,
        what=lambda: job_state(client, user.headers, job["id"]),
    )
    running = job_state(client, user.headers, job["id"])
    (lost_node,) = {p["node_id"] for p in running["placement"]}
    agent_pool.lose(lost_node)  # the machine it runs on dies
    done = wait_until_finished(client, user.headers, job["id"], timeout_s=600)
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 2
    saved_step = assert_each_step_paid_once(client, user.headers, done)
    # The lost attempt did work past that checkpoint, and the log says it is not paid.
    series = client.get(f"/metrics/training/{job['id']}", headers=user.headers).json()
    redone = [p["step"] for p in series["series"] if p["step"] > saved_step]
    assert len(redone) > len(set(redone))  # some steps ran in both attempts
    assert len(work_dropped(client, user.headers, job["id"])) == 1

    admin = make_account("root", Role.ADMIN)
    ledger = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert ledger["invariant_ok"], ledger["problems"]
    assert ledger["in_escrow"] == 0


def last_step(client: TestClient, headers: dict, job_id: int) -> int:
    series = client.get(f"/metrics/training/{job_id}", headers=headers).json()["series"]
    return max((p["step"] for p in series), default=0)


@pytest.mark.database
def test_a_job_is_stopped_at_its_budget_and_charged_exactly_it(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    body = {
        **FEDAVG_JOB,
        "training_config": {
            **FEDAVG_JOB["training_config"],
            "rounds": 2000,
            "num_workers": 2,
            "local_epochs": 4,  # quick rounds: checkpoints well within the budget
        },
        "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 1},  # 4 core-seconds a second
        "max_tokens": 0.01,  # 36 CPU-core-seconds at 1 token a core-hour: ~9 s of work
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    assert job["hold"] == pytest.approx(0.01)
    done = wait_until_finished(client, user.headers, job["id"], timeout_s=600)
    assert done["status"] == "failed"
    assert done["status_reason"] == (
        "stopped: its budget of 0.01 tokens is used up (max_tokens or the hold); "
        "it is charged that budget"
    )
    series = client.get(f"/metrics/training/{job['id']}", headers=user.headers).json()["series"]
    assert 1 < last_step(client, user.headers, job["id"]) < 2000  # it trained, then stopped
    assert len(series) > 2

    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["spent"] == 0.01  # the cap, the work since the last checkpoint included
    assert balance["held"] == 0 and balance["available"] == pytest.approx(100 - balance["spent"])
    assert done["cost_so_far"] == pytest.approx(balance["spent"])
    earned = client.get("/tokens/balance/me", headers=two_nodes[0].headers).json()["earned"]
    assert 0 < earned < balance["spent"]  # the platform kept its fee
    admin = make_account("root", Role.ADMIN)
    ledger = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert ledger["invariant_ok"], ledger["problems"]
    assert ledger["in_escrow"] == 0
