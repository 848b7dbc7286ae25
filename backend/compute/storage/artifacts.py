"""A finished job's model, packed for download by its owner."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from auth.models import User
from compute.jobs.service import get_job_for
from compute.models import Job
from core.errors import ConflictError, NotFoundError


def artifact_dir(session: Session, viewer: User, job_id: int, *, storage_root: Path) -> Path:
    """The job's model directory: the owner's only (the weights are theirs), and only from
    inside the storage root, whatever path a runner reported."""
    job: Job = get_job_for(session, viewer, job_id)
    if job.owner_id != viewer.id:
        raise NotFoundError(f"job {job_id} not found")
    if not job.artifact_path:
        raise ConflictError(
            f"job {job_id} has no model to download yet (it is {job.status})",
            code="no_artifact",
        )
    directory = Path(job.artifact_path).resolve()
    if not directory.is_relative_to(storage_root.resolve()) or not directory.is_dir():
        raise NotFoundError(f"the model of job {job_id} is no longer stored")
    return directory


def pack_directory(directory: Path, name: str) -> Path:
    """A .tar.gz of the directory in a temporary file (the caller deletes it)."""
    descriptor, path = tempfile.mkstemp(prefix="distlm-", suffix=".tar.gz")
    os.close(descriptor)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(directory, arcname=name)
    return Path(path)
