"""No shared filesystem: what a job's driver saves (its checkpoint, the final model, results)
it uploads to the gateway's storage, and a resume on another node downloads the last
accepted checkpoint from there.

An upload is accepted only from the current attempt's driver, is size-limited and
sha256-checked (``artifact_store``), and replaces what was accepted before whole: an accepted
checkpoint is never overwritten by a partial one. Uploads to one place are serialized with a
file lock, which holds across gateway processes.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from auth.run_tokens import RunClaims
from compute.dispatch.run_inbox import running_attempt
from compute.jobs.spec import source_job_id
from compute.jobs.strategy import job_request
from compute.models import Job
from compute.storage.artifact_store import StoredFile, accepted_directory, pack_directory
from compute.storage.directory_upload import DirectoryUpload
from core.errors import NotFoundError

UPLOAD_KINDS = ("checkpoint", "model", "results")
MAX_ARCHIVE_MEMBERS = 100_000


@dataclass(frozen=True)
class UploadPlace:
    job_id: int
    attempt: int
    kind: str
    job_dir: Path

    @property
    def destination(self) -> Path:
        return self.job_dir / self.kind


def job_dir(storage_root: Path, job_id: int) -> Path:
    return storage_root / "jobs" / str(job_id)


def upload_place(
    session: Session, claims: RunClaims, job_id: int, attempt: int, kind: str, storage_root: Path
) -> UploadPlace:
    """Where the current attempt's driver may put its ``kind`` (checked before a byte is read,
    and again before the upload is swapped in)."""
    running_attempt(session, claims, job_id, attempt)
    return UploadPlace(job_id, attempt, kind, job_dir(storage_root, job_id))


def receive_directory(
    place: UploadPlace, *, expected_sha256: str, max_bytes: int
) -> DirectoryUpload:
    """A fresh directory for the upload's tar to unpack into as it arrives (see
    ``directory_upload``); ``commit_directory`` swaps it in."""
    return DirectoryUpload(
        place.destination,
        expected_sha256=expected_sha256,
        max_bytes=max_bytes,
        max_members=MAX_ARCHIVE_MEMBERS,
    )


def commit_directory(place: UploadPlace, upload: DirectoryUpload) -> StoredFile:
    """Swap the received directory in, whole, one upload to a place at a time."""
    with locked(place.destination):
        return upload.commit()


def checkpoint_archive(
    session: Session, claims: RunClaims, job_id: int, attempt: int, storage_root: Path
) -> tuple[Path, str]:
    """The last accepted checkpoint as a tar in a temporary file (the caller deletes it) and
    its sha256, for the current attempt's driver to resume from, whichever node saved it."""
    running_attempt(session, claims, job_id, attempt)
    checkpoint = job_dir(storage_root, job_id) / "checkpoint"
    with locked(checkpoint):
        directory = accepted_directory(checkpoint)
        if directory is None:
            raise NotFoundError(f"job {job_id} has no checkpoint yet")
        descriptor, name = tempfile.mkstemp(prefix="distlm-checkpoint-", suffix=".tar")
        with os.fdopen(descriptor, "wb") as out:
            digest = pack_directory(directory, out)
    return Path(name), digest


def source_model_archive(
    session: Session, claims: RunClaims, job_id: int, attempt: int, storage_root: Path
) -> tuple[Path, str]:
    """The trained model the job starts from (``model_name: job:<id>``, checked at submit to
    be the job owner's), as a tar in a temporary file (the caller deletes it) and its sha256."""
    job = running_attempt(session, claims, job_id, attempt)
    source_id = source_job_id(job_request(job).model.model_name)
    source = session.get(Job, source_id) if source_id is not None else None
    if source is None or not source.artifact_path:
        raise NotFoundError(f"job {job_id} does not start from another job's model")
    root = storage_root.resolve()
    model = Path(source.artifact_path).resolve()
    if not model.is_relative_to(root) or not model.is_dir():
        raise NotFoundError(f"the model of job {source_id} is no longer stored")
    with locked(model):
        descriptor, name = tempfile.mkstemp(prefix="distlm-model-", suffix=".tar")
        with os.fdopen(descriptor, "wb") as out:
            digest = pack_directory(model, out)
    return Path(name), digest


@contextmanager
def locked(destination: Path) -> Iterator[None]:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination.parent / f".{destination.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
