"""What jobs keep on disk (their model, results and checkpoints under the storage root), how
much of it a user has, deleting it, and the retention that deletes it for them."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.models import User
from compute.jobs.service import get_job_for
from compute.jobs.state import JobStatus
from compute.models import Job
from core.db import utcnow
from core.errors import ConflictError

log = logging.getLogger(__name__)

TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())


def job_directory(storage_root: Path, job_id: int) -> Path:
    return storage_root / "jobs" / str(job_id)


def directory_bytes(directory: Path) -> int:
    """Bytes of the files under ``directory`` (links are not followed)."""
    total = 0
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            total += directory_bytes(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


@dataclass(frozen=True)
class StorageUse:
    total_bytes: int
    jobs: list[tuple[int, int]]  # (job id, bytes), largest first


def storage_used(session: Session, user: User, *, storage_root: Path) -> StorageUse:
    job_ids = session.scalars(
        select(Job.id).where(Job.owner_id == user.id, Job.storage_deleted_at.is_(None))
    ).all()
    sizes = [(job_id, directory_bytes(job_directory(storage_root, job_id))) for job_id in job_ids]
    kept = sorted((s for s in sizes if s[1] > 0), key=lambda s: (-s[1], s[0]))
    return StorageUse(sum(size for _, size in kept), kept)


def delete_job_storage(
    session: Session, viewer: User, job_id: int, *, storage_root: Path
) -> tuple[Job, int]:
    """Delete a finished job's model, results and checkpoints; its record, metrics and ledger
    entries stay. The bytes freed."""
    job = get_job_for(session, viewer, job_id, lock=True)
    if job.status not in TERMINAL:
        raise ConflictError(
            f"job {job_id} is {job.status}: its files can be deleted once it has finished",
            code="job_not_finished",
        )
    return job, _delete(job, storage_root)


def _delete(job: Job, storage_root: Path) -> int:
    directory = job_directory(storage_root, job.id)
    freed = directory_bytes(directory)
    shutil.rmtree(directory, ignore_errors=True)
    job.artifact_path = None
    job.storage_deleted_at = utcnow()
    return freed


def expire_storage(
    session: Session, *, storage_root: Path, retention_days: int, now: dt.datetime | None = None
) -> list[int]:
    """Delete the files of jobs that finished more than ``retention_days`` ago (0: none);
    the ids of the jobs whose files went."""
    if retention_days <= 0:
        return []
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    jobs = session.scalars(
        select(Job)
        .where(
            Job.status.in_(TERMINAL),
            Job.finished_at < cutoff,
            Job.storage_deleted_at.is_(None),
        )
        .order_by(Job.id)
        .limit(100)
    ).all()
    for job in jobs:
        _delete(job, storage_root)
        log.info("deleted the files of job %s (finished over %s days ago)", job.id, retention_days)
    session.flush()
    return [job.id for job in jobs]
