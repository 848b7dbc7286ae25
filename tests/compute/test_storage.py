"""The artifact retention: finished jobs' files go after DISTLM_ARTIFACT_RETENTION_DAYS."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from compute.models import Job
from compute.storage.service import expire_storage, job_directory
from core.settings import Settings
from tests.conftest import Account, submit_job


def test_retention_deletes_the_files_of_jobs_that_ended_long_enough_ago(
    client: TestClient, user: Account, db: Session, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"storage_path": tmp_path})
    client.app.state.settings = settings  # type: ignore[attr-defined]  # this test's storage
    old, recent, queued = (submit_job(client, user.headers)["id"] for _ in range(3))
    for job_id in (old, recent):
        assert client.post(f"/jobs/{job_id}/cancel", headers=user.headers).status_code == 200
    for job_id in (old, recent, queued):
        directory = job_directory(settings.storage_path, job_id) / "checkpoint"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "state.json").write_text("{}")
    db.expire_all()
    now = db.get(Job, recent).finished_at + dt.timedelta(days=3)
    db.get(Job, old).finished_at = now - dt.timedelta(days=10)
    db.commit()

    assert expire_storage(db, storage_root=settings.storage_path, retention_days=0, now=now) == []
    assert expire_storage(db, storage_root=settings.storage_path, retention_days=7, now=now) == [
        old
    ]
    db.commit()
    assert not job_directory(settings.storage_path, old).exists()
    assert job_directory(settings.storage_path, recent).exists()  # ended 3 days ago
    assert job_directory(settings.storage_path, queued).exists()  # not finished
    assert db.get(Job, old).storage_deleted_at is not None
    used = client.get("/users/me/storage", headers=user.headers).json()
    assert sorted(j["job_id"] for j in used["jobs"]) == [recent, queued]
