"""Migration 0014 gives every existing job its ``request``, read from the spec it stored: the
value parses, and is what a submit stores now (older specs, without a task or knobs, get
the defaults the gateway read them with)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, create_engine, insert, select

from compute.jobs.spec import JobSpec
from core.migrations import alembic_config, upgrade_to_head
from protocol.run import (
    DataRequest,
    JobRequest,
    ModelRequest,
    ResourceRequest,
    job_request_from_wire,
)
from tests.conftest import drop_everything, pg_database, postgres_url

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

SPLIT_INFER = JobSpec.model_validate(
    {
        "model_config": {
            "type": "classifier",
            "model_name": "mlp",
            "overrides": {"hidden_size": 8},
        },
        "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 90},
        "training_config": {"strategy": "split", "num_workers": 1, "loader": {"nodes": 2}},
        "requirements": {"cpu_cores": 2.0, "memory": 1.5},
        "task": "infer",
        "inference_config": {"top_k": 3},
    }
)

# A spec as an early gateway stored it: no task, no inference_config, no knobs.
OLD_SPEC = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"strategy": "es"},
}


def job_row(job_id: int, spec: dict[str, Any], strategy: str, cpu: float, memory: float) -> dict:
    return {
        "id": job_id,
        "owner_id": 1,
        "name": f"job {job_id}",
        "status": "queued",
        "status_reason": "",
        "model_type": spec["model_config"]["type"],
        "strategy": strategy,
        "gpu": 0,
        "cpu_cores": cpu,
        "memory_gb": memory,
        "max_runtime_s": 60,
        "spec": spec,
        "request_hash": "x" * 64,
        "created_at": NOW,
        "updated_at": NOW,
    }


def backfill(url: str) -> dict[int, JobRequest]:
    command.upgrade(alembic_config(url), "0013")
    engine = create_engine(url)
    metadata = MetaData()
    users = Table("users", metadata, autoload_with=engine)
    jobs = Table("jobs", metadata, autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(
            insert(users).values(
                id=1,
                username="owner",
                username_key="owner",
                password_hash="x",
                role="user",
                is_active=True,
                created_at=NOW,
            )
        )
        connection.execute(
            insert(jobs),
            [
                job_row(1, SPLIT_INFER.normalised(), "split", 2.0, 1.5),
                job_row(2, OLD_SPEC, "es", 4.0, 2.0),
            ],
        )
    engine.dispose()
    upgrade_to_head(url)
    engine = create_engine(url)
    jobs = Table("jobs", MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = connection.execute(select(jobs.c.id, jobs.c.request)).all()
    engine.dispose()
    return {job_id: job_request_from_wire(request) for job_id, request in rows}


def check(requests: dict[int, JobRequest]) -> None:
    assert requests[1] == SPLIT_INFER.request()
    assert requests[2] == JobRequest(
        strategy="es",
        model=ModelRequest("char_rnn", "rnn"),
        data=DataRequest("builtin", "stdlib-text"),
        requirements=ResourceRequest(gpu=0, cpu_cores=4.0, memory_gb=2.0),
    )


def test_0014_backfills_each_jobs_request_from_its_spec_on_sqlite(tmp_path: Path) -> None:
    check(backfill(f"sqlite:///{tmp_path / 'backfill.db'}"))


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set")
def test_0014_backfills_each_jobs_request_from_its_spec_on_postgresql() -> None:
    url = pg_database(postgres_url() or "", "distlm_job_request_backfill_test")
    drop_everything(url)
    try:
        check(backfill(url))
    finally:
        drop_everything(url)
