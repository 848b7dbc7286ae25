"""Strategy split through the API on the session's multi-node Ray cluster: the data stage on
one owner's CPU node, the trainer on another owner's GPU node; validate and infer jobs on
the trained model; a slow trainer; a loader node that dies mid-epoch."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from ray_module.data.examples import digits
from ray_module.strategies.split.samples import split_ids
from ray_module.strategies.split.worker import ids_digest
from tests.agent_pool import AgentPool
from tests.conftest import job_state, start_node, submit_and_wait, wait_until_finished
from tests.live_gateway import LiveGateway
from tests.metering_checks import assert_each_step_paid_once
from tests.polling import wait_for
from tests.ray_state import list_actors

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DIGITS = 1797  # rows of the built-in digits dataset

SPLIT_DIGITS = {
    "name": "digits, split",
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "training_config": {
        "strategy": "split",
        "epochs": 12,
        "batch_size": 32,
        "augment": True,
        "loader": {"cpu_cores": 1, "memory": 1},
    },
    "requirements": {"gpu": 1, "cpu_cores": 1, "memory": 1},
    "max_runtime_s": 900,
}


def run_job(client: TestClient, headers: dict, body: dict) -> dict:
    done = submit_and_wait(client, headers, body, timeout_s=600)
    assert done["status"] == "succeeded", done["status_reason"]
    return done


def series(client: TestClient, headers: dict, job_id: int) -> list[dict]:
    body = client.get(f"/metrics/training/{job_id}?limit=5000", headers=headers).json()
    return body["series"]


def last_value(points: list[dict], key: str) -> object:
    return [p["values"][key] for p in points if key in p["values"]][-1]


def actors_of(job_id: int, before: set[str] = frozenset()) -> list:
    """Ray's own records of the job's actors (alive or dead), less those in ``before`` (job
    ids start again in every test, the session's Ray keeps earlier tests' actors)."""
    prefix = f"distlm-job-{job_id}-"
    return [a for a in list_actors() if a.name.startswith(prefix) and a.actor_id not in before]


def actor_ids() -> set[str]:
    return {a.actor_id for a in list_actors()}


def threshold_leaving_out(top_probabilities: list[float], at_least: int) -> float:
    """A confidence threshold under which at least ``at_least`` of these rows fall, midway
    between two rows' top probabilities (so their rounding cannot move a row across it)."""
    ranked = sorted(top_probabilities)
    for i in range(at_least, len(ranked)):
        if ranked[i] - ranked[i - 1] > 1e-4:
            return (ranked[i - 1] + ranked[i]) / 2
    raise AssertionError(f"no gap between the rows' top probabilities above row {at_least}")


def test_split_trains_on_two_owners_nodes_then_validates_and_infers_with_its_model(
    ray_client: LiveGateway, agent_pool: AgentPool, make_account
) -> None:
    client = ray_client
    cpu_owner = make_account("carla", Role.NODE_OWNER)
    gpu_owner = make_account("gustav", Role.NODE_OWNER)
    user, other = make_account("alice"), make_account("bob")
    ops = make_account("ops", Role.ADMIN)
    for number in (1, 2):
        start_node(client, agent_pool, cpu_owner.headers, f"cpu-{number}")
    agent_pool.add_machine(3, num_gpus=1)
    try:
        gpu_box = {"gpu": 1, "cpu_cores": 2, "memory": 4}
        assert start_node(client, agent_pool, gpu_owner.headers, "gpu-box", gpu_box) == 3
        wait_for(
            lambda: all(
                client.get(f"/nodes/{n}", headers=ops.headers)
                .json()["status"] == "online"
                for n in (1, 2, 3)
            ),
            what="nodes online",
        )  # fmt: skip

        estimate = client.post("/tokens/estimate", headers=user.headers, json=SPLIT_DIGITS)
        trainer_only = client.post(
            "/tokens/estimate",
            headers=user.headers,
            json={"requirements": SPLIT_DIGITS["requirements"], "max_runtime_s": 900},
        )
        assert estimate.json()["total"] > trainer_only.json()["total"]  # the loaders are priced

        earlier = actor_ids()
        trained = run_job(client, user.headers, SPLIT_DIGITS)
        job_id = trained["id"]
        roles = {(p["role"], p["node_id"]) for p in trained["placement"] or []} or None
        points = series(client, user.headers, job_id)
        accuracy = last_value(points, "validation_accuracy")
        assert accuracy >= 0.90, accuracy

        # Where Ray says the parts ran: the loader on the CPU node, the trainer on the GPU one.
        ran = {a.name.split("-")[4]: a.node_id for a in actors_of(job_id, earlier)}
        assert ran["loader"] == agent_pool.ray_nodes[1].node_id, (ran, roles)
        assert ran["train"] == agent_pool.ray_nodes[3].node_id
        # Each owner was paid for its own stage.
        stages = trained["usage_by_stage"]
        assert stages["loader"]["cpu_core_seconds"] > 0 and stages["trainer"]["gpu_seconds"] > 0
        assert set(trained["usage"]["1"]["stages"]) == {"loader"}
        assert set(trained["usage"]["3"]["stages"]) == {"trainer"}
        for owner in (cpu_owner, gpu_owner):
            assert client.get("/tokens/balance/me", headers=owner.headers).json()["earned"] > 0
        assert 0 < trained["cost_so_far"] <= trained["hold"]
        flow = [p["values"] for p in points if "data_wait_fraction" in p["values"]]
        assert flow and all(0 <= f["data_wait_fraction"] <= 1 for f in flow)
        assert all(f["batches_in_flight"] <= 8 for f in flow)

        # validate on the trained model's held-out split: the accuracy it ended training with.
        validate = {
            "model_config": {"type": "classifier", "model_name": f"job:{job_id}"},
            "data_config": {
                "data_source": "builtin",
                "dataset_name": "digits",
                "split": "validation",
            },
            "task": "validate",
            "training_config": {"loader": {"cpu_cores": 1, "memory": 1}},
            "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
        }  # fmt: skip
        validated = run_job(client, user.headers, validate)
        scores = client.get(f"/jobs/{validated['id']}/results", headers=user.headers).json()
        assert scores["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert scores["samples"] == len(split_ids(DIGITS, 0.1, 0)[1])
        assert len(scores["confusion_matrix"]) == 10
        assert sum(map(sum, scores["confusion_matrix"])) == scores["samples"]
        assert set(scores["per_class"]["3"]) == {"precision", "recall", "support"}
        validated_points = series(client, user.headers, validated["id"])
        assert last_value(validated_points, "accuracy") == scores["accuracy"]

        # infer: first every row's full probabilities, to know what a threshold leaves out.
        infer = {
            **validate,
            "data_config": {"data_source": "builtin", "dataset_name": "digits"},
            "task": "infer",
        }
        full = run_job(
            client,
            user.headers,
            {**infer, "inference_config": {"top_k": 1, "return_full_probabilities": True}},
        )
        full_rows = client.get(f"/jobs/{full['id']}/results", headers=user.headers).text
        vectors = {
            row["id"]: row["probabilities"] for row in map(json.loads, full_rows.splitlines())
        }
        assert len(vectors) == DIGITS
        assert all(
            len(v) == 10 and math.isclose(sum(v), 1.0, abs_tol=1e-4) for v in vectors.values()
        )

        # Top 3 labels, and a threshold that must leave out the least confident tenth of the
        # rows: exactly those are counted out, every other row is kept.
        threshold = threshold_leaving_out([max(v) for v in vectors.values()], DIGITS // 10)
        kept_ids = {i for i, v in vectors.items() if max(v) >= threshold}
        inferred = run_job(
            client,
            user.headers,
            {**infer, "inference_config": {"top_k": 3, "confidence_threshold": threshold}},
        )
        summary = client.get(f"/jobs/{inferred['id']}/results/summary", headers=user.headers)
        summary = summary.json()
        assert summary["total_samples"] == DIGITS
        assert summary["filtered_out"] == DIGITS - len(kept_ids) >= DIGITS // 10
        assert summary["kept"] == len(kept_ids)
        lines = client.get(f"/jobs/{inferred['id']}/results", headers=user.headers)
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) for line in lines.text.splitlines()]
        assert {r["id"] for r in rows} == kept_ids and len(rows) == len(kept_ids)
        assert all("probabilities" not in r for r in rows)
        for row in rows:
            top = [entry["probability"] for entry in row["top_k"]]
            # k of them, most probable first, the row's label first of all
            assert len(top) == 3 and top == sorted(top, reverse=True), row
            assert (row["top_k"][0]["label"], top[0]) == (row["label"], row["probability"]), row
            assert row["probability"] >= threshold
            assert top == pytest.approx(sorted(vectors[row["id"]], reverse=True)[:3], abs=2e-6)
        infer_points = series(client, user.headers, inferred["id"])
        estimated = next(p["values"] for p in infer_points if p["step"] == 0)
        assert estimated["estimated_memory_mb"] == pytest.approx(
            summary["result_memory_mb"], rel=0.25
        )
        assert (
            estimated["estimated_memory_mb_predictions_only"]
            < estimated["estimated_memory_mb_top_k"]
            < estimated["estimated_memory_mb_full_probabilities"]
        )
        parquet = client.get(f"/jobs/{inferred['id']}/results?format=parquet", headers=user.headers)
        assert pq.read_table(io.BytesIO(parquet.content)).num_rows == summary["kept"]
        preview = client.get(
            f"/jobs/{inferred['id']}/results/preview?limit=5", headers=user.headers
        ).json()["rows"]
        assert preview == rows[:5]  # the first predictions, as the file holds them
        for path in ("results", "results/summary", "results/preview"):
            assert (
                client.get(f"/jobs/{inferred['id']}/{path}", headers=other.headers).status_code
                == 404
            )
        assert client.get(f"/jobs/{job_id}/results", headers=user.headers).status_code == 409

        # Features alone (a .npy under the data root): labelled with the model's own classes.
        data_root = Path(client.app.state.settings.data_root)
        data_root.mkdir(parents=True, exist_ok=True)
        np.save(data_root / "unlabelled.npy", digits().features[:50])
        unlabelled = run_job(
            client,
            user.headers,
            {**infer, "data_config": {"data_source": "local", "dataset_name": "mine",
                                      "path": "unlabelled.npy"}, "inference_config": {}},
        )  # fmt: skip
        text = client.get(f"/jobs/{unlabelled['id']}/results", headers=user.headers).text
        rows = [json.loads(line) for line in text.splitlines()]
        assert [r["id"] for r in rows] == list(range(50))
        truth = digits().labels
        assert sum(r["label"] == str(truth[r["id"]]) for r in rows) >= 40
    finally:
        agent_pool.lose(3)


def test_a_slow_trainer_bounds_batches_in_flight_and_sees_each_sample_once(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    body = {
        **SPLIT_DIGITS,
        "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 400},
        "training_config": {
            "strategy": "split",
            "epochs": 2,
            "batch_size": 32,
            "max_in_flight_batches": 3,
            "prefetch_batches": 1,
            "step_delay_s": 0.05,
            "loader": {"cpu_cores": 1, "memory": 1},
        },
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    }
    done = run_job(client, user.headers, body)
    points = series(client, user.headers, done["id"])
    flow = [p["values"] for p in points if "batches_in_flight" in p["values"]]
    # The bound was reached, and never passed: three batches asked and not yet consumed.
    in_flight = [f["batches_in_flight"] for f in flow]
    assert in_flight and max(in_flight) == 3, in_flight
    batch_mb = 32 * (64 * 4 + 8 + 8) / 2**20  # features, label and id of 32 samples
    assert max(f["in_flight_mb"] for f in flow) == pytest.approx(3 * batch_mb, rel=0.01)
    # A slow trainer is the limit, and the status reason said so while it ran.
    assert flow[-1]["data_wait_fraction"] < 0.5
    train_ids = split_ids(400, 0.1, 0)[0]
    epochs = [p["values"] for p in points if "epoch_samples" in p["values"]]
    assert len(epochs) == 2
    for epoch in epochs:
        assert epoch["epoch_samples"] == epoch["epoch_unique_samples"] == len(train_ids)
        assert epoch["epoch_ids_sha256"] == ids_digest(train_ids)


def test_validate_reports_perplexity_for_a_causal_lm(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    body = {
        "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
        "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 60},
        "task": "validate",
        "training_config": {"seq_len": 32},
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    }  # fmt: skip
    done = run_job(client, user.headers, body)
    assert done["strategy"] == "split"  # the one strategy that validates
    scores = client.get(f"/jobs/{done['id']}/results", headers=user.headers).json()
    assert scores["samples"] == 60 and scores["tokens"] > 60
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert 1 < scores["perplexity"] < 1e6


def test_a_loader_node_dying_mid_epoch_resumes_from_the_checkpoint_and_completes(
    ray_client: LiveGateway, agent_pool: AgentPool, two_nodes, make_account
) -> None:
    client, (owner, _) = ray_client, two_nodes
    user = make_account("alice")
    agent_pool.add_machine(3)
    start_node(client, agent_pool, owner.headers, "spare")
    body = {
        **SPLIT_DIGITS,
        "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 640},
        "training_config": {
            "strategy": "split",
            "epochs": 2,
            "batch_size": 16,
            "checkpoint_interval": 5,
            "step_delay_s": 0.05,
            "loader": {"cpu_cores": 1, "memory": 1},
        },
        # The trainer fills node 1, so the loader goes to node 2.
        "requirements": {"gpu": 0, "cpu_cores": 2, "memory": 1},
    }
    job = client.post("/jobs/submit", headers=user.headers, json=body).json()
    running = wait_for(
        lambda: (
            (j := job_state(client, user.headers, job["id"]))["usage"] and "2" in j["usage"] and j
        ),
        what="the loader on node 2 to be credited for a checkpoint's batches",
    )
    assert {(p["role"], p["node_id"]) for p in running["placement"]} == {
        ("worker", 1),
        ("loader", 2),
    }
    agent_pool.lose(2)  # the loader's machine dies mid-epoch
    done = wait_until_finished(client, user.headers, job["id"], timeout_s=600)
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 2
    points = series(client, user.headers, job["id"])
    steps = [p["step"] for p in points if "loss" in p["values"]]
    per_epoch = math.ceil(len(split_ids(640, 0.1, 0)[0]) / 16)
    assert set(steps) == set(range(1, 2 * per_epoch + 1))
    assert steps.count(1) == 1  # the second attempt resumed, it did not start over
    assert "3" in done["usage"]  # the spare node took over the data stage
    assert_each_step_paid_once(client, user.headers, done)


def test_text_models_validate_with_exact_match_and_generate_in_infer_jobs(
    ray_client: TestClient, two_nodes, make_account
) -> None:
    client = ray_client
    user = make_account("alice")
    small = {"gpu": 0, "cpu_cores": 1, "memory": 1}
    validated = run_job(
        client,
        user.headers,
        {
            "model_config": {"type": "text_to_text", "model_name": "tiny-t5"},
            "data_config": {"data_source": "builtin", "dataset_name": "synthetic-t2t",
                            "max_samples": 24},
            "task": "validate",
            "inference_config": {"batch_size": 8, "max_new_tokens": 8},
            "requirements": small,
        },
    )  # fmt: skip
    scores = client.get(f"/jobs/{validated['id']}/results", headers=user.headers).json()
    assert scores["samples"] == 24 and 0 <= scores["exact_match"] <= 1
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))

    inferred = run_job(
        client,
        user.headers,
        {
            "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
            "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text",
                            "max_samples": 6},
            "task": "infer",
            "inference_config": {"max_new_tokens": 5, "num_beams": 2},
            "training_config": {"seq_len": 16},
            "requirements": small,
        },
    )  # fmt: skip
    lines = client.get(f"/jobs/{inferred['id']}/results", headers=user.headers).text
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["id"] for r in rows] == list(range(6))
    assert all(r["input"] and isinstance(r["output"], str) for r in rows)
