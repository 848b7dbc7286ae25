"""Pending credit (issue 21, part 1): each checkpoint moves the price of the work it saved
from the job's escrow into the node's pending credit, which the owner sees apart from what
is theirs; settlement releases it to the owner less the platform's fee; a ban voids it back
to the payer. The dispatcher against the scripted Ray of test_metering, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from compute.billing.service import rates_from
from core.settings import Settings
from ledger.pricing import ResourceSeconds, platform_fee, price_usage, tokens
from protocol.events import VerdictEvent
from tests.conftest import Account, clear_tables, make_settings
from tests.polling import wait_for
from tests.scripted_ray import ES_JOB, WORK_S, ScriptedRay

CHECKPOINTED = 10  # the scripted runner checkpoints at step 10, then runs on quietly


@pytest.fixture
def scripted_ray() -> ScriptedRay:
    ray = ScriptedRay([1, 2])
    ray.idle_after = 12  # two steps past its checkpoint, then still running, silent
    return ray


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, dispatch_interval_s=0.05)


@pytest.fixture
def app(settings: Settings, scripted_ray: ScriptedRay) -> Iterator[object]:
    clear_tables(settings.database_url)
    yield create_app(settings, dispatch=True, run_migrations=False, runners=scripted_ray)
    clear_tables(settings.database_url)


def balance(client: TestClient, account: Account) -> dict:
    return client.get("/tokens/balance/me", headers=account.headers).json()


def price_of(steps: int, settings: Settings) -> int:
    """One node's work for ``steps`` steps, priced as a checkpoint prices it."""
    work = ResourceSeconds(cpu_core_seconds=steps * WORK_S)
    return price_usage(work, rates_from(settings)).total


def running_with_a_checkpoint(client: TestClient, owner: Account, user: Account) -> int:
    """Submit the ES job and wait until its step-10 checkpoint is the owner's pending credit
    (or, where a verdict on it came at once, released or voided)."""
    response = client.post("/jobs/submit", headers=user.headers, json=ES_JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    wait_for(
        lambda: client.get(f"/jobs/{job_id}", headers=user.headers).json()["usage"],
        timeout_s=30,
        what=lambda: client.get(f"/jobs/{job_id}", headers=user.headers).json(),
    )
    return job_id


def finished(client: TestClient, user: Account, job_id: int) -> dict:
    return wait_for(
        lambda: (
            (job := client.get(f"/jobs/{job_id}", headers=user.headers).json())["status"]
            in ("succeeded", "failed", "cancelled")
            and job
        ),
        timeout_s=30,
        what=lambda: client.get(f"/jobs/{job_id}", headers=user.headers).json(),
    )


def ledger_ok(client: TestClient, admin: Account) -> dict:
    totals = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert totals["invariant_ok"], totals["problems"]
    assert totals["issued"] == pytest.approx(
        totals["in_wallets"] + totals["in_escrow"] + totals["pending"] + totals["fees"]
    )
    return totals


def test_a_checkpoints_work_is_pending_for_its_owner_until_the_job_settles(
    client: TestClient, settings: Settings, lent_pair: tuple, admin: Account
) -> None:
    owner, user = lent_pair
    before = balance(client, user)
    job_id = running_with_a_checkpoint(client, owner, user)

    # Mid-job: both nodes' saved work (steps 1-10) waits as the owner's pending credit; it is
    # not theirs yet, and it has left the payer's hold.
    saved = price_of(CHECKPOINTED, settings)
    mid = balance(client, owner)
    assert mid["pending"] == tokens(2 * saved) and mid["earned"] == 0
    job = client.get(f"/jobs/{job_id}", headers=user.headers).json()
    assert job["pending_credit"] == tokens(2 * saved) and job["charged"] is None
    assert balance(client, user)["held"] == pytest.approx(job["hold"] - tokens(2 * saved))
    history = client.get("/tokens/history/me", headers=owner.headers).json()["items"]
    pending = [line for line in history if line["account"] == "pending"]
    assert sorted((line["node_id"], line["amount"]) for line in pending) == [
        (1, tokens(saved)),
        (2, tokens(saved)),
    ]
    assert all("checkpoint at step 10" in line["memo"] for line in pending)
    assert ledger_ok(client, admin)["pending"] == tokens(2 * saved)

    # Cancelled: what it ran is charged (steps 11-12 too) and released, less the fee.
    assert client.post(f"/jobs/{job_id}/cancel", headers=user.headers).status_code == 200
    done = finished(client, user, job_id)
    assert done["status"] == "cancelled"
    ran = price_of(12, settings)
    fee = platform_fee(ran, rates_from(settings))
    after = balance(client, owner)
    assert after["pending"] == 0
    assert after["earned"] == pytest.approx(tokens(2 * (ran - fee)))
    assert done["charged"] == pytest.approx(tokens(2 * ran))
    assert done["pending_credit"] == 0 and done["voided"] == 0
    assert done["platform_fee"] == pytest.approx(tokens(2 * fee))
    assert balance(client, user)["available"] == pytest.approx(
        before["available"] - tokens(2 * ran)
    )
    kinds = {line["kind"] for line in client.get(
        "/tokens/history/me", headers=owner.headers).json()["items"]}  # fmt: skip
    assert {"pending", "release", "node_credit"} <= kinds
    assert ledger_ok(client, admin)["pending"] == 0


def test_banning_a_node_voids_its_pending_credit_back_to_the_payer(
    client: TestClient, settings: Settings, lent_pair: tuple, admin: Account
) -> None:
    owner, user = lent_pair
    before = balance(client, user)
    job_id = running_with_a_checkpoint(client, owner, user)
    saved = price_of(CHECKPOINTED, settings)

    assert client.post("/nodes/1/ban", headers=admin.headers).status_code == 200
    # Node 1's pending credit goes back to the payer at once; node 2's still waits.
    assert balance(client, owner)["pending"] == tokens(saved)
    voids = [
        line
        for line in client.get("/tokens/history/me", headers=user.headers).json()["items"]
        if line["kind"] == "void"
    ]
    assert [(line["node_id"], line["amount"]) for line in voids] == [(1, tokens(saved))]
    assert "banned by an admin" in voids[0]["memo"]
    owner_voids = [
        line
        for line in client.get("/tokens/history/me", headers=owner.headers).json()["items"]
        if line["kind"] == "void"
    ]
    assert [(line["node_id"], line["amount"]) for line in owner_voids] == [(1, -tokens(saved))]
    nodes = {n: client.get(f"/nodes/{n}", headers=owner.headers).json() for n in (1, 2)}
    assert (nodes[1]["tokens_pending"], nodes[1]["tokens_voided"]) == (0, tokens(saved))
    assert (nodes[2]["tokens_pending"], nodes[2]["tokens_voided"]) == (tokens(saved), 0)

    # Cancelled: what it ran is charged, and node 1's part (its saved work and the steps
    # since) is voided as the job settles; node 2's is released.
    assert client.post(f"/jobs/{job_id}/cancel", headers=user.headers).status_code == 200
    done = finished(client, user, job_id)
    ran = price_of(12, settings)
    fee = platform_fee(ran, rates_from(settings))
    assert done["charged"] == pytest.approx(tokens(ran))
    assert done["voided"] == pytest.approx(tokens(ran))
    assert [part["node_id"] for part in done["earnings"]] == [2]
    owner_after = balance(client, owner)
    assert owner_after["pending"] == 0
    assert owner_after["earned"] == pytest.approx(tokens(ran - fee))
    user_after = balance(client, user)
    assert user_after["spent"] == pytest.approx(tokens(ran))  # voided is not spent
    assert user_after["available"] == pytest.approx(before["available"] - tokens(ran))
    assert ledger_ok(client, admin)["pending"] == 0


# -- verified credit: the runner's verdicts on replayed work --------------------------------


def verdict(node_id: int, step: int, valid: bool) -> VerdictEvent:
    detail = "" if valid else "largest gap 0.7 in loss over 4 replayed evaluations"
    return VerdictEvent(
        node_id, step, valid, checked=4, validator_node_id=3 - node_id, detail=detail
    )


def node_trust(client: TestClient, owner: Account, node_id: int) -> dict:
    return client.get(f"/nodes/{node_id}", headers=owner.headers).json()


def test_a_valid_verdict_releases_a_nodes_credit_and_an_invalid_one_voids_it_for_the_job(
    client: TestClient,
    settings: Settings,
    lent_pair: tuple,
    admin: Account,
    scripted_ray: ScriptedRay,
) -> None:
    owner, user = lent_pair
    before = balance(client, user)
    scripted_ray.verdicts = {10: [verdict(1, 10, True), verdict(2, 10, False)]}
    job_id = running_with_a_checkpoint(client, owner, user)
    saved = price_of(CHECKPOINTED, settings)
    fee = platform_fee(saved, rates_from(settings))

    # Node 1's checked work is the owner's at once (less the fee); node 2's goes back to the
    # payer, with the reason on both sides.
    wait_for(lambda: node_trust(client, owner, 2)["tokens_voided"] > 0, timeout_s=30, what="void")
    one, two = node_trust(client, owner, 1), node_trust(client, owner, 2)
    assert (one["tokens_pending"], one["tokens_earned"]) == (0, pytest.approx(tokens(saved - fee)))
    assert (two["tokens_pending"], two["tokens_voided"]) == (0, tokens(saved))
    assert (one["trust"]["results_valid"], one["trust"]["reliability"]) == (1, 0.6667)
    assert (two["trust"]["results_invalid"], two["trust"]["reliability"]) == (1, 0.3333)
    assert two["trust"]["on_probation"] and two["approval"] == "approved"  # once is not enough
    voids = [
        line
        for line in client.get("/tokens/history/me", headers=owner.headers).json()["items"]
        if line["kind"] == "void"
    ]
    assert [(line["node_id"], line["amount"]) for line in voids] == [(2, -tokens(saved))]
    assert "failed validation" in voids[0]["memo"] and "largest gap" in voids[0]["memo"]
    logs = client.get(f"/jobs/{job_id}/logs", headers=user.headers).json()["items"]
    assert any(
        line["message"].startswith("node 2: its work at step 10 failed validation") for line in logs
    )
    # Settled: node 2's later work (steps 11-12) is refused too; node 1's is released.
    assert client.post(f"/jobs/{job_id}/cancel", headers=user.headers).status_code == 200
    done = finished(client, user, job_id)
    ran = price_of(12, settings)
    assert [part["node_id"] for part in done["earnings"]] == [1]
    assert done["voided"] == pytest.approx(tokens(ran))
    assert balance(client, user)["available"] == pytest.approx(before["available"] - tokens(ran))
    rest = ran - saved  # released at settlement, its fee taken on its own
    assert balance(client, owner)["earned"] == pytest.approx(
        tokens(saved - fee + rest - platform_fee(rest, rates_from(settings)))
    )
    assert ledger_ok(client, admin)["pending"] == 0
    metrics = client.get("/metrics", headers=admin.headers).text
    assert 'distlm_node_reliability{node="2"} 0.333' in metrics
    assert 'distlm_node_results_total{node="2",verdict="invalid"} 1.0' in metrics


def test_three_invalid_results_in_a_row_suspend_a_node_until_an_admin_approves_it_again(
    client: TestClient, lent_pair: tuple, admin: Account, scripted_ray: ScriptedRay
) -> None:
    owner, user = lent_pair
    scripted_ray.verdicts = {
        step: [verdict(1, step, True), verdict(2, step, False)] for step in range(1, 7)
    }
    scripted_ray.verdicts[7] = [VerdictEvent(5, 7, False, detail="a node of another job")]
    job_id = running_with_a_checkpoint(client, owner, user)
    wait_for(
        lambda: node_trust(client, owner, 2)["approval"] == "pending", timeout_s=30, what="suspend"
    )
    two = node_trust(client, owner, 2)
    assert "3 invalid results in a row" in two["trust"]["suspended_reason"]
    assert f"job {job_id}" in two["trust"]["suspended_reason"]
    # Node 1 became trusted after 5 valid results: fewer of its results are checked.
    one = node_trust(client, owner, 1)["trust"]
    assert one["results_valid"] >= 6 and not one["on_probation"] and one["check_rate"] < 1
    # A verdict on a node the job is not placed on changes nothing, and is logged.
    logs = client.get(f"/jobs/{job_id}/logs", headers=user.headers).json()
    assert any("not placed on, was ignored" in line["message"] for line in logs["items"])
    # The admin approves it again: on probation, checked at every checkpoint.
    assert client.post("/nodes/2/approve", headers=admin.headers).status_code == 200
    two = node_trust(client, owner, 2)["trust"]
    assert two["suspended_reason"] == "" and two["on_probation"] and two["results_invalid"] >= 3


SPLIT_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "training_config": {"strategy": "split", "max_steps": 20, "checkpoint_interval": 10,
                        "loader": {"cpu_cores": 1, "memory": 1}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    "max_runtime_s": 3600,
}  # fmt: skip


def test_a_split_jobs_own_verdict_on_its_driving_node_is_ignored(
    client: TestClient, lent_pair: tuple, scripted_ray: ScriptedRay
) -> None:
    """Split's trainer drives its job: a verdict the job sends on that node is the node
    judging itself (it could release its own held credit, and raise its own trust); only an
    audit on another node may judge it."""
    owner, user = lent_pair
    scripted_ray.verdicts = {step: [verdict(1, step, True), verdict(2, step, True)]
                             for step in range(1, 4)}  # fmt: skip
    job = client.post("/jobs/submit", headers=user.headers, json=SPLIT_JOB).json()
    placed = wait_for(
        lambda: client.get(f"/jobs/{job['id']}", headers=user.headers).json()["placement"],
        timeout_s=30,
        what="a placement",
    )
    trainer = next(slot["node_id"] for slot in placed if slot["role"] != "loader")
    wait_for(
        lambda: any(
            "which drives this job" in line["message"]
            for line in client.get(f"/jobs/{job['id']}/logs", headers=user.headers).json()["items"]
        ),
        timeout_s=30,
        what="the verdict on the driving node to be ignored",
    )
    assert node_trust(client, owner, trainer)["trust"]["results_valid"] == 0
