"""The persistent job queue: the seed body, defaults, validation, listing, cancel, idempotency."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from compute.models import Job
from tests.conftest import SEED_JOB, Account, submit_job


def test_seed_job_body_is_queued_with_defaults(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers)
    assert job["status"] == "queued"
    assert job["status_reason"]
    assert job["strategy"] == "data_parallel"
    assert job["requirements"] == {"gpu": 1, "cpu_cores": 4.0, "memory": 16.0}
    assert job["spec"]["model_config"]["model_name"] == "gpt2"
    assert job["max_runtime_s"] > 0
    fetched = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    assert fetched == job


def test_job_survives_a_new_app_instance(client: TestClient, user: Account, settings) -> None:
    """The queue is persistent: a restarted gateway still has the job."""
    from app.main import create_app

    job = submit_job(client, user.headers)
    with TestClient(create_app(settings, dispatch=False, run_migrations=False)) as restarted:
        assert restarted.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == (
            "queued"
        )


@pytest.mark.parametrize(
    ("model_type", "strategy", "dataset"),
    [
        ("text_to_text", "fedavg", "synthetic-t2t"),
        ("classifier", "fedavg", "digits"),
        ("char_rnn", "es", "stdlib-text"),
    ],
)
def test_default_strategy_follows_model_type(
    client: TestClient, user: Account, model_type: str, strategy: str, dataset: str
) -> None:
    job = submit_job(
        client,
        user.headers,
        model_config={"type": model_type, "model_name": "some-model"},
        data_config={"data_source": "builtin", "dataset_name": dataset},
    )
    assert job["strategy"] == strategy


ES_RNN = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
}
FEDAVG_DIGITS = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_config": {"type": "diffusion", "model_name": "x"}}, "model_config.type"),
        ({"model_config": {"type": "simple_transformer"}}, "model_config.model_name"),
        ({"training_config": {"strategy": "magic"}}, "training_config.strategy"),
        ({"training_config": {"strategy": "es"}}, "strategy 'es' cannot train"),
        ({"requirements": {"gpu": -1, "cpu_cores": 1, "memory": 1}}, "requirements.gpu"),
        ({"requirements": {"gpu": 0, "cpu_cores": 0, "memory": 1}}, "requirements.cpu_cores"),
        ({"requirements": {"gpu": 100000, "cpu_cores": 1, "memory": 1}}, "requirements.gpu"),
        ({"requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1e12}}, "requirements.memory"),
        ({"requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1, "tpu": 2}}, "tpu"),
        ({"data_config": {"data_source": "builtin", "dataset_name": "mnist"}}, "builtin dataset"),
        ({"data_config": {"data_source": "local", "dataset_name": "x"}}, "path"),
        (
            {"data_config": {"data_source": "local", "dataset_name": "x", "path": "../../etc"}},
            "data_config.path",
        ),
        ({"data_config": {"data_source": "ftp", "dataset_name": "x"}}, "data_source"),
        ({"max_runtime_s": 0}, "max_runtime_s"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"model_config": {"type": "classifier", "model_name": "tiny-gpt2"}}, "preset"),
        ({"colour": "blue"}, "colour"),
        (
            {"model_config": {"type": "simple_transformer", "model_name": "/srv/jobs/7/model"}},
            "relative to DISTLM_DATA_ROOT",
        ),
        (
            {"model_config": {"type": "classifier", "model_name": "./models/../../etc"}},
            "without '..'",
        ),
        *[
            ({**FEDAVG_DIGITS, "training_config": training}, message)
            for training, message in [
                ({"rounds": 0}, "rounds"),
                ({"clients": 2, "min_fit_clients": 5}, "exceeds clients"),
                ({"partition": "zipf"}, "partition"),
                ({"epochs": 3}, "local_epochs"),
                ({"partition": "node_local"}, "path containing {client}"),
                ({"clients": 2, "num_workers": 3}, "exceeds clients"),
            ]
        ],
        (
            {
                **FEDAVG_DIGITS,
                "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
            },
            "cannot train a classifier model (use digits)",
        ),
        *[
            ({**ES_RNN, "training_config": training}, message)
            for training, message in [
                ({"steps": 0}, "steps"),
                ({"sigma": -1}, "sigma"),
                ({"rounds": 5}, "use steps"),
            ]
        ],
        (
            {
                "model_config": {"type": "text_to_text", "model_name": "tiny-t5"},
                "data_config": {"data_source": "builtin", "dataset_name": "digits"},
            },
            "use synthetic-t2t",
        ),
    ],
)
def test_bad_specs_are_422_with_the_field_named_and_store_nothing(
    client: TestClient, user: Account, db: Session, change: dict, field: str
) -> None:
    response = client.post("/jobs/submit", headers=user.headers, json={**SEED_JOB, **change})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert field in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize("missing", ["model_config", "data_config"])
def test_missing_required_sections_are_422(client: TestClient, user: Account, missing: str) -> None:
    body = {k: v for k, v in SEED_JOB.items() if k != missing}
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422
    assert missing in response.json()["detail"]


def test_list_is_paginated_newest_first_and_filters_by_status(
    client: TestClient, user: Account
) -> None:
    ids = [submit_job(client, user.headers, name=f"job {i}")["id"] for i in range(5)]
    client.post(f"/jobs/{ids[1]}/cancel", headers=user.headers)
    page = client.get("/jobs?limit=2", headers=user.headers).json()
    assert page["total"] == 5
    assert [j["id"] for j in page["items"]] == [ids[4], ids[3]]
    queued = client.get("/jobs?status=queued", headers=user.headers).json()
    assert queued["total"] == 4
    cancelled = client.get("/jobs?status=cancelled", headers=user.headers).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[1]]
    assert client.get("/jobs?status=sleeping", headers=user.headers).status_code == 422


def test_cancel_twice_is_409(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers)
    first = client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    second = client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    assert second.status_code == 409
    assert second.json()["error"] == "invalid_job_state"


def test_idempotency_key_same_body_returns_the_same_job(
    client: TestClient, user: Account, db: Session
) -> None:
    headers = {**user.headers, "Idempotency-Key": "retry-me"}
    first = client.post("/jobs/submit", headers=headers, json=SEED_JOB)
    second = client.post("/jobs/submit", headers=headers, json=SEED_JOB)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    assert db.scalar(select(func.count()).select_from(Job)) == 1


def test_idempotency_key_with_another_body_is_422(client: TestClient, user: Account) -> None:
    headers = {**user.headers, "Idempotency-Key": "k-1"}
    client.post("/jobs/submit", headers=headers, json=SEED_JOB)
    other = client.post("/jobs/submit", headers=headers, json={**SEED_JOB, "name": "different"})
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"


def test_idempotency_keys_are_per_user(
    client: TestClient, user: Account, other_user: Account
) -> None:
    a = client.post("/jobs/submit", headers={**user.headers, "Idempotency-Key": "k"}, json=SEED_JOB)
    b = client.post(
        "/jobs/submit", headers={**other_user.headers, "Idempotency-Key": "k"}, json=SEED_JOB
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_training_metrics_are_an_empty_series_before_the_job_runs(
    client: TestClient, user: Account
) -> None:
    job = submit_job(client, user.headers)
    metrics = client.get(f"/metrics/training/{job['id']}", headers=user.headers).json()
    assert metrics == {"job_id": job["id"], "status": "queued", "series": []}


def test_a_job_continues_from_the_saved_model_of_one_of_its_owners_jobs(
    client: TestClient, user: Account, other_user: Account, db: Session
) -> None:
    first = submit_job(client, user.headers)
    continued = {**SEED_JOB, "model_config": {"type": "simple_transformer", "model_name": ""}}
    continued["model_config"]["model_name"] = f"job:{first['id']}"

    not_yet = client.post("/jobs/submit", headers=user.headers, json=continued)
    assert not_yet.status_code == 409 and not_yet.json()["error"] == "no_artifact"
    # Someone else's job, or one that does not exist, is not found (nothing leaks).
    assert client.post("/jobs/submit", headers=other_user.headers, json=continued).status_code == (
        404
    )
    missing = {**continued, "model_config": {**continued["model_config"], "model_name": "job:999"}}
    assert client.post("/jobs/submit", headers=user.headers, json=missing).status_code == 404
    other_type = {
        "model_config": {"type": "classifier", "model_name": f"job:{first['id']}"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    }
    wrong = client.post("/jobs/submit", headers=user.headers, json=other_type)
    assert wrong.status_code == 422 and "simple_transformer model" in wrong.json()["detail"]

    db.execute(update(Job).where(Job.id == first["id"]).values(artifact_path="/storage/m"))
    db.commit()
    accepted = client.post("/jobs/submit", headers=user.headers, json=continued)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["model_config"]["model_name"] == f"job:{first['id']}"


TINY_GPT2 = {
    "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
}
MLP_DIGITS = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({**TINY_GPT2, "training_config": {"strategy": "pipe"}}, "strategy", "unknown strategy"),
        (
            {**MLP_DIGITS, "training_config": {"strategy": "data_parallel"}},
            "strategy",
            "cannot train model type 'classifier'",
        ),
        ({**TINY_GPT2, "training_config": {"epochz": 2}}, "epochz", "unknown data_parallel"),
        ({**TINY_GPT2, "training_config": {"batch_size": 0}}, "batch_size", "from 1"),
        ({**MLP_DIGITS, "training_config": {"roundz": 2}}, "roundz", "unknown fedavg"),
        ({**ES_RNN, "training_config": {"stepz": 2}}, "stepz", "unknown es"),
    ],
)
def test_what_no_registered_strategy_can_run_is_refused_at_submit(
    client: TestClient, user: Account, db: Session, body: dict, field: str, words: str
) -> None:
    """422 naming the training_config field; nothing stored and no tokens held."""
    before = client.get("/tokens/balance/me", headers=user.headers).json()
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == f"training_config.{field}"
    assert words in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert client.get("/tokens/balance/me", headers=user.headers).json() == before


SPLIT_MLP = {**MLP_DIGITS, "training_config": {"strategy": "split"}}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {**SPLIT_MLP, "training_config": {"strategy": "split", "loader": {"cpu": 2}}},
            "training_config.loader",
            "unknown split loader setting 'cpu'",
        ),
        ({**MLP_DIGITS, "task": "infer"} | {"training_config": {"strategy": "fedavg"}}, "task",
         "strategy 'fedavg' cannot run task 'infer'"),
        ({**SPLIT_MLP, "inference_config": {"top_k": 3}}, "body",
         "inference_config is for jobs with task 'infer'"),
        ({**SPLIT_MLP, "task": "infer", "inference_config": {"top_k": 0}},
         "inference_config.top_k", "greater than or equal to 1"),
        ({**SPLIT_MLP, "data_config": {**MLP_DIGITS["data_config"], "split": "test"}},
         "data_config.split", "must be one of all, train, validation"),
        ({**SPLIT_MLP, "model_config": {"type": "text_to_text", "model_name": "tiny-t5"},
          "data_config": {"data_source": "builtin", "dataset_name": "synthetic-t2t"}},
         "training_config.strategy", "train text_to_text models with fedavg"),
    ],
)  # fmt: skip
def test_split_jobs_with_bad_tasks_or_knobs_are_refused_at_submit(
    client: TestClient, user: Account, db: Session, body: dict, field: str, words: str
) -> None:
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == field, response.json()
    assert words in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_a_split_job_holds_for_its_trainer_and_its_loaders(
    client: TestClient, user: Account
) -> None:
    def hold(loader: dict) -> float:
        body = {
            **SPLIT_MLP,
            "training_config": {"strategy": "split", "loader": loader},
            "requirements": {"gpu": 1, "cpu_cores": 1, "memory": 1},
            "max_runtime_s": 3600,
        }
        return client.post("/tokens/estimate", headers=user.headers, json=body).json()["total"]

    one, three = (
        hold({"cpu_cores": 1, "memory": 1}),
        hold({"cpu_cores": 1, "memory": 1, "nodes": 3}),
    )
    # An hour of 1 GPU + 1 core + 1 GB, plus an hour of each loader's core and GB.
    assert one == pytest.approx(10 + 1 + 0.1 + 1 + 0.1)
    assert three - one == pytest.approx(2 * (1 + 0.1))
    job = client.post(
        "/jobs/submit", headers=user.headers,
        json={**SPLIT_MLP, "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
              "max_runtime_s": 3600},
    )  # fmt: skip
    assert job.status_code == 201, job.text
    held = client.get("/tokens/balance/me", headers=user.headers).json()["held"]
    assert held == pytest.approx(1 + 0.1 + 1 + 1 * 0.1)  # trainer and the default loader


def test_a_flood_of_unknown_knobs_is_refused_not_stored(
    client: TestClient, user: Account, db: Session
) -> None:
    knobs = {f"knob_{i}": "x" * 100 for i in range(5000)}  # ~0.6 MB of made-up settings
    body = {**TINY_GPT2, "training_config": knobs}
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422
    assert "unknown data_parallel setting 'knob_0'" in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"data_config": {"data_source": "huggingface", "dataset_name": "/tmp/x/secret"}},
            "data_config",
            "not a Hugging Face hub id",
        ),
        (
            {"data_config": {"data_source": "huggingface", "dataset_name": "../x/secret"}},
            "data_config",
            "not a Hugging Face hub id",
        ),
        (
            {"model_config": {"type": "simple_transformer", "model_name": "var/jobs/26/model"}},
            "model_config.model_name",
            "not a preset, a Hugging Face hub id",
        ),
        (
            {"data_config": {"data_source": "local", "dataset_name": "d", "path": "a\x00.txt"}},
            "body",
            "control characters",
        ),
        ({"requirements": {"gpu": True}}, "requirements.gpu", "valid integer"),
        ({"requirements": {"gpu": "1"}}, "requirements.gpu", "valid integer"),
        ({"requirements": {"cpu_cores": "2"}}, "requirements.cpu_cores", "valid number"),
        ({"requirements": {"cpu_cores": 1e-9}}, "requirements.cpu_cores", "0.1"),
        ({"requirements": {"memory": 0.0001}}, "requirements.memory", "0.25"),
        (
            {
                "training_config": {"num_workers": 8, "max_steps": 5},
                "requirements": {"gpu": 0, "cpu_cores": 0.1, "memory": 0.5},
            },
            "training_config.num_workers",
            "num_workers (8) needs at least 2 GB of requirements.memory",
        ),
    ],
)
def test_names_outside_a_users_reach_and_loose_types_are_refused(
    client: TestClient, user: Account, db: Session, change: dict, field: str, words: str
) -> None:
    """Issue 11 (1, 2, 4, 11): a hub name is a hub id, a model is a preset, hub id, job:<id>
    or ./path under the data root; no control characters; numbers are numbers."""
    body = {**TINY_GPT2, **change}
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == field, response.json()
    assert words in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0


def limited_client(settings, **limits: int) -> TestClient:
    from app.main import create_app

    limited = settings.model_copy(update=limits)
    return TestClient(create_app(limited, dispatch=False, run_migrations=False))


def test_one_user_cannot_flood_the_queue(client: TestClient, settings, make_account) -> None:
    """Issue 11 (6): waiting jobs per user are capped (429, Retry-After); nothing stored or
    held beyond the cap; another user is not affected."""
    alice, bob = make_account("alice"), make_account("bob")
    with limited_client(settings, max_waiting_jobs_per_user=3) as limited:
        for _ in range(3):
            assert (
                limited.post("/jobs/submit", headers=alice.headers, json=TINY_GPT2).status_code
                == 201
            )
        held = limited.get("/tokens/balance/me", headers=alice.headers).json()
        refused = limited.post("/jobs/submit", headers=alice.headers, json=TINY_GPT2)
        assert refused.status_code == 429, refused.text
        assert (
            refused.json()["error"] == "rate_limited"
            and "3 jobs waiting" in refused.json()["detail"]
        )
        assert int(refused.headers["Retry-After"]) > 0
        assert limited.get("/tokens/balance/me", headers=alice.headers).json() == held
        assert limited.post("/jobs/submit", headers=bob.headers, json=TINY_GPT2).status_code == 201
        first = limited.get("/jobs", headers=alice.headers).json()["items"][0]["id"]
        limited.post(f"/jobs/{first}/cancel", headers=alice.headers)
        assert (
            limited.post("/jobs/submit", headers=alice.headers, json=TINY_GPT2).status_code == 201
        )


def test_submits_per_minute_are_capped(client: TestClient, settings, make_account) -> None:
    alice = make_account("alice")
    with limited_client(settings, submits_per_minute=4) as limited:
        codes = [
            limited.post("/jobs/submit", headers=alice.headers, json=TINY_GPT2).status_code
            for _ in range(6)
        ]
        assert codes == [201, 201, 201, 201, 429, 429]
        refused = limited.post("/jobs/submit", headers=alice.headers, json=TINY_GPT2)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "4 submits a minute" in refused.json()["detail"]


def test_a_job_no_registered_node_can_hold_says_so_at_submit(
    client: TestClient, settings, make_account, node_owner: Account, db: Session
) -> None:
    """Issue 11 (9): the reason is given at submit and describes the whole job; with
    DISTLM_QUEUE_UNPLACEABLE_JOBS=false such a job is refused and nothing is held."""
    from compute.models import Node
    from tests.conftest import register_node

    register_node(client, node_owner.headers, "small-box")  # 1 GPU, 8 cores
    db.execute(update(Node).values(ray_alive=True))  # its Ray worker joined
    db.commit()
    alice = make_account("alice")
    body = {**TINY_GPT2, "requirements": {"gpu": 64, "cpu_cores": 2, "memory": 2}, "max_tokens": 5}
    response = client.post("/jobs/submit", headers=alice.headers, json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["status_reason"] == (
        "queued, but no registered node can hold it yet (waiting for a node with 64 GPUs: "
        "the job needs 64 GPUs; the largest node has 1)"
    )
    with limited_client(settings, queue_unplaceable_jobs=False) as strict:
        before = strict.get("/tokens/balance/me", headers=alice.headers).json()
        refused = strict.post("/jobs/submit", headers=alice.headers, json=body)
        assert refused.status_code == 422
        assert "no registered node can hold this job" in refused.json()["detail"]
        assert strict.get("/tokens/balance/me", headers=alice.headers).json() == before


def test_a_job_shows_what_it_cost_so_far_against_its_hold(
    client: TestClient, user: Account
) -> None:
    job = client.post("/jobs/submit", headers=user.headers, json=SPLIT_MLP).json()
    seen = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    held = client.get("/tokens/balance/me", headers=user.headers).json()["held"]
    assert seen["cost_so_far"] == 0 and seen["hold"] == pytest.approx(held)
    listed = client.get("/jobs", headers=user.headers).json()["items"][0]
    assert listed["cost_so_far"] == 0 and listed["hold"] == seen["hold"]  # the list has it too
    assert seen["charged"] is None and seen["earnings"] == []  # nothing settled yet


def test_a_cap_below_the_minimum_charge_is_refused_and_holds_nothing(
    client: TestClient, user: Account, db: Session
) -> None:
    """The probe's job with max_tokens 0.000001 ran and paid 0.000001: the minimum charge
    (DISTLM_MIN_JOB_CHARGE, 0.01 here) was dropped to honour the cap."""
    body = {**TINY_GPT2, "max_tokens": 0.000001}
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert "below the minimum charge" in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert client.get("/tokens/balance/me", headers=user.headers).json()["held"] == 0
    at_minimum = client.post(
        "/jobs/submit", headers=user.headers, json={**TINY_GPT2, "max_tokens": 0.01}
    )
    assert at_minimum.status_code == 201, at_minimum.text


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"n_embd": 1_000_000_000}, "must be a whole number from 1 to 16384"),
        ({"hidden_size": 64}, "unknown model overrides"),
        ({"n_layer": True}, "must be a whole number"),
        ({"n_embd": 16_384, "n_layer": 96}, "needs about"),
    ],
)
def test_model_overrides_are_known_in_range_and_fit_the_memory(
    client: TestClient, user: Account, db: Session, overrides: dict, words: str
) -> None:
    """The probe's `hidden_size: 1e9` was accepted at submit (and priced); it is a 422 now,
    as is a model its requirements' memory could never train."""
    body = {**TINY_GPT2, "model_config": {**TINY_GPT2["model_config"], "overrides": overrides}}
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    fits = {"n_embd": 128, "n_head": 4, "n_layer": 4}
    body["model_config"]["overrides"] = fits
    assert client.post("/jobs/submit", headers=user.headers, json=body).status_code == 201


def test_a_jobs_usage_is_shown_as_stored_with_its_stages_and_unsaved_work(
    client: TestClient, user: Account, db: Session
) -> None:
    job_id = submit_job(client, user.headers)["id"]
    loader = {"gpu_seconds": 0.0, "cpu_core_seconds": 6.0, "memory_gb_seconds": 24.0}
    trainer = {"gpu_seconds": 2.0, "cpu_core_seconds": 4.0, "memory_gb_seconds": 16.0}
    stored = {  # as the dispatcher stores it: figures, then the stage breakdown
        "1": {**loader, "stages": {"loader": loader}},
        "2": {**trainer, "stages": {"trainer": trainer}},
        "3": {**loader, "stages": {"loader": loader}},
    }
    unsaved = {
        "4/2/trainer": {"gpu_seconds": 1.0, "cpu_core_seconds": 2.0, "memory_gb_seconds": 8.0},
        "5/2/trainer": {"gpu_seconds": 1.0, "cpu_core_seconds": 2.0, "memory_gb_seconds": 8.0},
    }
    db.execute(update(Job).where(Job.id == job_id).values(usage=stored, unsaved_usage=unsaved))
    db.commit()
    shown = client.get(f"/jobs/{job_id}", headers=user.headers).json()
    assert shown["usage"] == stored
    assert shown["usage_by_stage"] == {
        "loader": {"gpu_seconds": 0.0, "cpu_core_seconds": 12.0, "memory_gb_seconds": 48.0},
        "trainer": trainer,
    }
    assert shown["unsaved_usage"] == {
        "2": {
            "gpu_seconds": 2.0,
            "cpu_core_seconds": 4.0,
            "memory_gb_seconds": 16.0,
            "stages": {
                "trainer": {"gpu_seconds": 2.0, "cpu_core_seconds": 4.0, "memory_gb_seconds": 16.0}
            },
        }
    }


def test_a_job_without_usage_shows_none(client: TestClient, user: Account) -> None:
    shown = submit_job(client, user.headers)
    assert (shown["usage"], shown["unsaved_usage"], shown["usage_by_stage"]) == (None, {}, {})


def test_log_cursors_past_every_row_id_find_nothing(client: TestClient, user: Account) -> None:
    """`after` may be any cursor up to 2**62; the ids are 32-bit on PostgreSQL, where a
    larger one sent as is was a 500 (found by the OpenAPI fuzz test)."""
    job = client.post("/jobs/submit", headers=user.headers, json=SPLIT_MLP).json()
    assert client.post(f"/jobs/{job['id']}/cancel", headers=user.headers).status_code == 200
    for after in (2**31, 2**62):
        page = client.get(f"/jobs/{job['id']}/logs", headers=user.headers, params={"after": after})
        assert page.status_code == 200, page.text
        assert page.json()["items"] == []
        # Following an ended job's log sends what is left after the cursor, then ends.
        with client.stream(
            "GET",
            f"/jobs/{job['id']}/logs",
            headers=user.headers,
            params={"after": after, "follow": "true"},
        ) as followed:
            assert followed.status_code == 200
            sent = followed.read().decode()
            assert "event: end" in sent and "event: log" not in sent
