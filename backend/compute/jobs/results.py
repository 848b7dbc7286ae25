"""A validate or infer job's results, as stored by its worker under the job's directory:
served to the job's owner or an admin only, and only from inside the storage root."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from auth.models import User
from compute.jobs.service import get_job_for
from compute.jobs.state import JobStatus
from compute.jobs.strategy import job_request
from core.errors import ConflictError, InvalidInputError, NotFoundError
from protocol import results as stored


class ResultFormat(enum.StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    JSON = "json"


MEDIA_TYPES = {
    ResultFormat.JSONL: "application/x-ndjson",
    ResultFormat.PARQUET: "application/vnd.apache.parquet",
    ResultFormat.JSON: "application/json",
}


def results_file(
    session: Session, viewer: User, job_id: int, fmt: ResultFormat | None, *, storage_root: Path
) -> tuple[Path, ResultFormat]:
    """The file of the job's results in ``fmt`` (an infer job's predictions as JSON Lines or
    Parquet; a validate job's scores as JSON), and the format served."""
    task, directory = _results_dir(session, viewer, job_id, storage_root)
    if task == "validate":
        if fmt not in (None, ResultFormat.JSON):
            raise InvalidInputError("a validate job's result is JSON: use format=json")
        return _existing(directory / stored.VALIDATION_FILE, job_id), ResultFormat.JSON
    fmt = fmt or ResultFormat.JSONL
    if fmt is ResultFormat.JSON:
        raise InvalidInputError("an infer job's predictions are jsonl or parquet")
    name = stored.JSONL_FILE if fmt is ResultFormat.JSONL else stored.PARQUET_FILE
    return _existing(directory / name, job_id), fmt


def results_summary(
    session: Session, viewer: User, job_id: int, *, storage_root: Path
) -> dict[str, Any]:
    task, directory = _results_dir(session, viewer, job_id, storage_root)
    name = stored.VALIDATION_FILE if task == "validate" else stored.SUMMARY_FILE
    return json.loads(_existing(directory / name, job_id).read_text())


def results_preview(
    session: Session, viewer: User, job_id: int, limit: int, *, storage_root: Path
) -> list[dict[str, Any]]:
    """An infer job's first ``limit`` predictions, for a look before downloading them all
    (read line by line: the file may be large)."""
    task, directory = _results_dir(session, viewer, job_id, storage_root)
    if task != "infer":
        raise ConflictError(
            f"job {job_id} is a validate job: its scores are GET /jobs/{job_id}/results/summary",
            code="no_predictions",
        )
    rows = []
    with _existing(directory / stored.JSONL_FILE, job_id).open(encoding="utf-8") as lines:
        for line in lines:
            if len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def _results_dir(
    session: Session, viewer: User, job_id: int, storage_root: Path
) -> tuple[str, Path]:
    """The job's task and its results directory, once it has results."""
    job = get_job_for(session, viewer, job_id)
    task = job_request(job).task
    if task == "train":
        raise ConflictError(
            f"job {job_id} is a training job: its output is its model (GET /jobs/{job_id}/"
            "artifacts); results belong to validate and infer jobs",
            code="no_results",
        )
    if job.status != JobStatus.SUCCEEDED.value:
        raise ConflictError(
            f"job {job_id} has no results yet (it is {job.status})", code="no_results"
        )
    root = storage_root.resolve()
    directory = (root / "jobs" / str(job.id) / stored.RESULTS_DIR).resolve()
    if not directory.is_relative_to(root):
        raise NotFoundError(f"the results of job {job_id} are no longer stored")
    return task, directory


def _existing(path: Path, job_id: int) -> Path:
    """The file, if it is one inside its results directory (a link out is refused)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(path.parent.resolve()) or not resolved.is_file():
        raise NotFoundError(f"the results of job {job_id} are no longer stored")
    return resolved
