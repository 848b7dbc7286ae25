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

FINAL = ("succeeded", "failed", "cancelled")

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


def halve_the_loss_reported_at(database_url: str, job_id: int, step: int) -> None:
    """What a trainer that skipped work reports: a loss it did not compute, stored as it
    sent it."""
    engine = make_engine(database_url)
    with session_scope(make_session_factory(engine)) as session:
        for metric in session.scalars(
            select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step == step)
        ):
            metric.values = {**metric.values, "loss": metric.values["loss"] * 0.5}
    engine.dispose()


def failed_validation(client, headers: dict, job_id: int) -> list[str]:
    logs = client.get(f"/jobs/{job_id}/logs?limit=500", headers=headers).json()["items"]
    return [line["message"] for line in logs if "failed validation" in line["message"]]


def ended(client, headers: dict, job_ids: set[int]) -> dict:
    """The first of these jobs to end."""
    return wait_for(
        lambda: next(
            (j for n in sorted(job_ids)
             if (j := job_state(client, headers, n))["status"] in FINAL),
            None,
        ),
        timeout_s=300,
        what=lambda: [job_state(client, headers, n) for n in job_ids],
    )  # fmt: skip


def garble_kept_checkpoints(storage_path, job_id: int) -> None:
    """What a trainer that saved a checkpoint no one can load leaves: its files overwritten
    in place (the audit's hard links to them see it too)."""
    for arrays in (storage_path / "jobs" / str(job_id) / "audits").glob("[0-9a-f]*/*.safetensors"):
        with arrays.open("r+b") as garbled:
            garbled.write(b"\xff" * 16)


def make_up_rows(storage_path, job_id: int) -> None:
    """What a predictor that made up its rows stores: every label moved to the next class."""
    rows = storage_path / "jobs" / str(job_id) / "results" / JSONL_FILE
    made_up = [json.loads(line) for line in rows.read_text().splitlines()]
    for row in made_up:
        row["label"] = str((int(row["label"]) + 1) % 10)
    rows.write_text("".join(json.dumps(row) + "\n" for row in made_up))


def cancel_recompute(client, headers: dict, audit: dict) -> None:
    """The recompute queued for an invalid result, there and cancelled (the first one's run
    is followed through; the rest would only slow the test)."""
    assert audit["recompute_job_id"], audit
    response = client.post(f"/jobs/{audit['recompute_job_id']}/cancel", headers=headers)
    assert response.status_code == 200, response.text


def test_trainers_and_predictors_are_audited_on_the_other_node_paid_when_honest_not_otherwise(
    ray_client, two_nodes, user_headers, ray_settings
) -> None:
    """Two training jobs at once, an honest one and one whose reported losses are not its
    training; then, one after the other (each node new again first, so that it is audited
    for sure), one whose kept checkpoint cannot be loaded, a validate job of the honest
    one's model, and an infer job of it whose stored rows were made up."""
    owner, _ = two_nodes
    honest, cheat = (
        ray_client.post("/jobs/submit", headers=user_headers, json=AUDITED_JOB).json()
        for _ in range(2)
    )
    waiting, as_ended = {honest["id"], cheat["id"]}, {}
    while waiting:  # each tampered with as soon as it ends (its audit takes seconds to start)
        job = ended(ray_client, user_headers, waiting)
        waiting.discard(job["id"])
        as_ended[job["id"]] = job
        assert job["status"] == "succeeded", job["status_reason"]
        if job["id"] == cheat["id"]:
            halve_the_loss_reported_at(ray_settings.database_url, cheat["id"], 12)
    done = as_ended[honest["id"]]
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
        {"node_id": trainer, "status": "valid", "detail": "", "audit_job_id": audit["id"],
         "recompute_job_id": None}
    ]  # fmt: skip
    # The liar: its losses after the kept checkpoint are not what training from it gives.
    liar = audited_node(ray_client, user_headers, cheat["id"])
    assert audit_of(ray_client, user_headers, cheat["id"])["status"] == "succeeded"
    caught = credit_settled(ray_client, user_headers, cheat["id"])
    assert caught["voided"] > 0
    assert liar not in [part["node_id"] for part in caught["earnings"]]
    said = failed_validation(ray_client, user_headers, cheat["id"])
    assert said and said[0].startswith(f"node {liar}:") and "step 12" in said[0], said
    (shown,) = caught["audits"]
    assert shown["status"] == "invalid" and "its loss at step 12" in shown["detail"], shown
    trust = ray_client.get(f"/nodes/{liar}", headers=owner.headers).json()["trust"]
    assert trust["results_invalid"] >= 1
    # Its model cannot be trusted: what the job cost is given back, and it is trained again
    # for the user away from the liar (with no third owner, the auditor's finding stood).
    assert caught["compensated"] > 0  # the loader's part (the trainer's was voided)
    assert caught["charged"] - caught["compensated"] == pytest.approx(0)
    redo = wait_until_finished(ray_client, user_headers, shown["recompute_job_id"], timeout_s=300)
    assert redo["status"] == "succeeded", redo["status_reason"]
    assert redo["spec"]["recompute_of"]["job_id"] == cheat["id"]
    assert redo["usage"] and str(liar) not in redo["usage"], redo["usage"]
    # A trainer whose kept checkpoint cannot be loaded (its node as new again: audited for
    # sure): the audit could not start from it, the trainer's doing.
    as_new_nodes(ray_settings.database_url)
    unusable = submit_and_wait(ray_client, user_headers, AUDITED_JOB, timeout_s=300)
    assert unusable["status"] == "succeeded", unusable["status_reason"]
    garble_kept_checkpoints(ray_settings.storage_path, unusable["id"])
    saver = audited_node(ray_client, user_headers, unusable["id"])
    assert audit_of(ray_client, user_headers, unusable["id"])["status"] == "failed"
    refused = credit_settled(ray_client, user_headers, unusable["id"])
    assert refused["voided"] > 0
    assert saver not in [part["node_id"] for part in refused["earnings"]]
    (shown,) = refused["audits"]
    assert shown["status"] == "invalid" and "cannot be loaded" in shown["detail"], shown
    cancel_recompute(ray_client, user_headers, shown)

    # The model validated and used for inference: each predictor (the job's driver too) is
    # audited as well, its scores or a sample of its rows done again on the other node.
    validate, infer = validate_and_infer(done["id"])
    for body, made_up in ((validate, False), (infer, True)):
        as_new_nodes(ray_settings.database_url)
        check = ray_client.post("/jobs/submit", headers=user_headers, json=body).json()
        job = wait_until_finished(ray_client, user_headers, check["id"], timeout_s=300)
        assert job["status"] == "succeeded", job["status_reason"]
        if made_up:
            make_up_rows(ray_settings.storage_path, check["id"])
        predictor = audited_node(ray_client, user_headers, check["id"])
        redone = audit_of(ray_client, user_headers, check["id"])
        assert redone["status"] == "succeeded", redone["status_reason"]
        assert str(predictor) not in redone["usage"], redone["usage"]
        settled = credit_settled(ray_client, user_headers, check["id"])
        if not made_up:
            assert predictor in [part["node_id"] for part in settled["earnings"]], settled
            assert settled["voided"] == 0
            continue
        assert settled["voided"] > 0
        assert predictor not in [part["node_id"] for part in settled["earnings"]]
        said = failed_validation(ray_client, user_headers, check["id"])
        assert said and "infer results differ" in said[0] and "label" in said[0], said
        cancel_recompute(ray_client, user_headers, settled["audits"][0])
    # 1797 rows in batches of 32: 4 of the 57 batches predicted again.
    assert redone["spec"]["audit_of"]["task"] == "infer" and "4 drawn batches" in redone["name"]
