"""Audits of split trainers, through the API on the session's Ray pool: a new trainer node's
checkpoint is kept aside, and once the job ends an audit job on the other node trains the
steps after it again. The trainer's credit stays pending until then: released when the
losses it reported are the audit's, voided back to the user when they are not."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from compute.models import JobMetric, Node
from core.db import make_engine, make_session_factory, session_scope
from protocol.results import JSONL_FILE
from tests.conftest import job_state, submit_and_wait, wait_until_finished
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AUDITED_JOB = {
    "name": "digits, split, audited",
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "training_config": {
        "strategy": "split",
        "max_steps": 16,
        "checkpoint_interval": 8,
        "batch_size": 32,
        "augment": True,  # seeded: the audit's loaders make the same batches
        "loader": {"cpu_cores": 1, "memory": 1},
        # Steps as slow as a real model's, next to the gateway's round: it keeps aside the
        # checkpoint at step 8 before the one at step 16 replaces it.
        "step_delay_s": 0.25,
    },
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    "max_runtime_s": 600,
}


@pytest.fixture
def ray_settings(ray_settings):
    """The suite's gateways audit no trainer (audits would queue jobs of their own beside
    every split test's); this one does."""
    return ray_settings.model_copy(update={"audit_trainers": True})


def audit_of(client, headers: dict, job_id: int) -> dict:
    """The audit job the gateway queued for ``job_id``, once it has ended."""
    audit = wait_for(
        lambda: next(
            (
                j
                for j in client.get("/jobs?limit=100", headers=headers).json()["items"]
                if j["name"].startswith(f"audit of job {job_id},")
            ),
            None,
        ),
        timeout_s=60,
        what=f"an audit of job {job_id}",
    )
    return wait_until_finished(client, headers, audit["id"], timeout_s=300)


def audited_node(client, headers: dict, job_id: int) -> int:
    """The node the gateway audits in ``job_id`` (its log says, once the audit is queued)."""

    def audited() -> list[str]:
        logs = client.get(f"/jobs/{job_id}/logs?limit=500", headers=headers).json()["items"]
        return [line["message"] for line in logs if "is audited by job" in line["message"]]

    lines = wait_for(audited, timeout_s=30, what=audited)
    assert len(lines) == 1, lines
    return int(lines[0].split()[1].removesuffix("'s"))


def credit_settled(client, headers: dict, job_id: int) -> dict:
    """The job once none of its credit waits for an audit any more."""
    return wait_for(
        lambda: (j := job_state(client, headers, job_id))["pending_credit"] == 0 and j,
        timeout_s=60,
        what=lambda: job_state(client, headers, job_id),
    )


def as_new_nodes(database_url: str) -> None:
    """The nodes' runs of valid results forgotten, as for new nodes, whose every result is
    checked (the loader checks of a training job give its loader node a run; a node with a
    run is checked only at a rate: a draw the test cannot wait on)."""
    engine = make_engine(database_url)
    with session_scope(make_session_factory(engine)) as session:
        for node in session.scalars(select(Node)):
            node.valid_streak = 0
    engine.dispose()


def validate_and_infer(source: int) -> tuple[dict, dict]:
    """A validate and an infer job of the digits classifier trained by job ``source``."""
    validate = {
        "model_config": {"type": "classifier", "model_name": f"job:{source}"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits",
                        "split": "validation"},
        "task": "validate",
        "training_config": {"loader": {"cpu_cores": 1, "memory": 1}},
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    }  # fmt: skip
    infer = {**validate, "task": "infer", "inference_config": {"top_k": 3, "batch_size": 32},
             "data_config": {"data_source": "builtin", "dataset_name": "digits"}}  # fmt: skip
    return validate, infer


def test_an_honest_trainer_is_audited_on_the_other_node_and_then_paid(
    ray_client, two_nodes, user_headers, ray_settings
) -> None:
    owner, _ = two_nodes
    done = submit_and_wait(ray_client, user_headers, AUDITED_JOB, timeout_s=300)
    assert done["status"] == "succeeded", done["status_reason"]
    trainer = audited_node(ray_client, user_headers, done["id"])
    # Settled, but the trainer's part waits for its audit: pending, not yet earned.
    assert trainer not in [part["node_id"] for part in done["earnings"]]
    assert done["pending_credit"] > 0
    assert [a["status"] for a in done["audits"]] == ["pending"], done["audits"]
    audit = audit_of(ray_client, user_headers, done["id"])
    assert audit["status"] == "succeeded", audit["status_reason"]
    assert audit["spec"]["audit_of"] == {"job_id": done["id"], "node_id": trainer,
                                         "task": "train", "steps": [9, 16]}  # fmt: skip
    assert audit["cost_so_far"] == 0  # the user pays nothing for the check
    # Trained again elsewhere: the other node, and the same losses.
    assert audit["usage"] and str(trainer) not in audit["usage"], audit["usage"]
    after = credit_settled(ray_client, user_headers, done["id"])
    assert trainer in [part["node_id"] for part in after["earnings"]]
    assert after["voided"] == 0
    assert after["audits"] == [
        {"node_id": trainer, "status": "valid", "detail": "", "audit_job_id": audit["id"]}
    ]
    trust = ray_client.get(f"/nodes/{trainer}", headers=owner.headers).json()["trust"]
    assert trust["results_valid"] >= 1 and trust["results_invalid"] == 0

    # Its model validated and used for inference: each predictor (the job's driver too) is
    # audited as well, its scores or a sample of its rows done again on the other node.
    as_new_nodes(ray_settings.database_url)
    checks = [
        ray_client.post("/jobs/submit", headers=user_headers, json=body).json()
        for body in validate_and_infer(done["id"])
    ]
    for check in checks:
        finished = wait_until_finished(ray_client, user_headers, check["id"], timeout_s=300)
        assert finished["status"] == "succeeded", finished["status_reason"]
        predictor = audited_node(ray_client, user_headers, check["id"])
        redone = audit_of(ray_client, user_headers, check["id"])
        assert redone["status"] == "succeeded", redone["status_reason"]
        assert str(predictor) not in redone["usage"], redone["usage"]
        paid = credit_settled(ray_client, user_headers, check["id"])
        assert predictor in [part["node_id"] for part in paid["earnings"]], paid
        assert paid["voided"] == 0
    infer_audit = redone["spec"]["audit_of"]
    assert infer_audit["task"] == "infer"
    # 1797 rows in batches of 32: 4 of the 57 batches predicted again.
    assert len(redone["spec"]["audit_of"]) == 3 and "batches" in redone["name"]


def test_a_trainer_whose_reported_losses_are_not_its_training_is_caught_and_unpaid(
    ray_client, two_nodes, user_headers, ray_settings
) -> None:
    owner, _ = two_nodes
    done = submit_and_wait(ray_client, user_headers, AUDITED_JOB, timeout_s=300)
    assert done["status"] == "succeeded", done["status_reason"]
    # What a trainer that skipped work reports: losses it did not compute (the ones
    # after its kept checkpoint, halved), stored as it sent them.
    engine = make_engine(ray_settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        for metric in session.scalars(
            select(JobMetric).where(JobMetric.job_id == done["id"], JobMetric.step == 12)
        ):
            metric.values = {**metric.values, "loss": metric.values["loss"] * 0.5}
    engine.dispose()
    trainer = audited_node(ray_client, user_headers, done["id"])
    audit = audit_of(ray_client, user_headers, done["id"])
    assert audit["status"] == "succeeded", audit["status_reason"]
    after = credit_settled(ray_client, user_headers, done["id"])
    assert after["voided"] > 0
    assert trainer not in [part["node_id"] for part in after["earnings"]]
    logs = ray_client.get(f"/jobs/{done['id']}/logs?limit=500", headers=user_headers).json()
    caught = [line["message"] for line in logs["items"] if "failed validation" in line["message"]]
    assert caught and caught[0].startswith(f"node {trainer}:") and "step 12" in caught[0]
    (shown,) = after["audits"]
    assert shown["status"] == "invalid" and "its loss at step 12" in shown["detail"], shown
    trust = ray_client.get(f"/nodes/{trainer}", headers=owner.headers).json()["trust"]
    assert trust["results_invalid"] == 1

    # A predictor that made up its rows: every row's label moved to the next class, as the
    # stored results show it (on probation after the catch: audited again).
    _, infer = validate_and_infer(done["id"])
    as_new_nodes(ray_settings.database_url)
    predicted = submit_and_wait(ray_client, user_headers, infer, timeout_s=300)
    assert predicted["status"] == "succeeded", predicted["status_reason"]
    rows = ray_settings.storage_path / "jobs" / str(predicted["id"]) / "results" / JSONL_FILE
    made_up = [json.loads(line) for line in rows.read_text().splitlines()]
    for row in made_up:
        row["label"] = str((int(row["label"]) + 1) % 10)
    rows.write_text("".join(json.dumps(row) + "\n" for row in made_up))
    predictor = audited_node(ray_client, user_headers, predicted["id"])
    assert audit_of(ray_client, user_headers, predicted["id"])["status"] == "succeeded"
    after = credit_settled(ray_client, user_headers, predicted["id"])
    assert after["voided"] > 0
    assert predictor not in [part["node_id"] for part in after["earnings"]]
    logs = ray_client.get(f"/jobs/{predicted['id']}/logs?limit=500", headers=user_headers).json()
    caught = [line["message"] for line in logs["items"] if "failed validation" in line["message"]]
    assert caught and "infer results differ" in caught[0] and "label" in caught[0], caught
