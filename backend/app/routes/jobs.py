"""The job queue: submit, list, read, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.deps import CurrentUser, DbSession, JobId, Offset, RatesDep, SettingsDep
from app.errors import error_responses
from app.responses import model_response
from app.schemas.common import Page
from app.schemas.jobs import JOB_SPEC_EXAMPLES, JobOut, job_out, with_audits, with_money
from app.schemas.storage import StorageFreedOut
from compute.audits.held import audits_of
from compute.billing.job_money import jobs_money, new_job_money
from compute.jobs.results import (
    MEDIA_TYPES,
    ResultFormat,
    results_file,
    results_preview,
    results_summary,
)
from compute.jobs.service import SubmitLimits, cancel_job, get_job_for, list_jobs, submit_job
from compute.jobs.spec import JobSpec
from compute.jobs.state import JobStatus
from compute.models import Job
from compute.storage.artifacts import artifact_dir, pack_directory
from compute.storage.service import delete_job_storage
from ledger.pricing import Rates

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "/submit",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": JobOut, "description": "A replay of an earlier submit (same key, body)"},
        # 404/409: `model_name: job:<id>` names no job of yours, or one with no saved model.
        **error_responses(402, 404, 409, 429),
    },
)
def submit(
    spec: Annotated[JobSpec, Body(openapi_examples=JOB_SPEC_EXAMPLES)],
    user: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    rates: RatesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Response:
    """Queue a training job and hold its maximum cost in escrow (402 if your balance cannot
    cover it). Retrying with the same `Idempotency-Key` and body returns the same job (200);
    the same key with another body is refused (422)."""
    job, created = submit_job(
        session,
        user,
        spec,
        idempotency_key=idempotency_key,
        default_max_runtime_s=settings.default_max_runtime_s,
        rates=rates,
        limits=SubmitLimits(settings.max_waiting_jobs_per_user, settings.submits_per_minute),
        accept_unplaceable=settings.queue_unplaceable_jobs,
    )
    if created:
        # Committed here, at once: the hold locks the user's wallet row until the commit, so
        # every other submit of this user waits for it; committed at the request's end, it
        # also waited for this answer to be built and for a hop to the thread pool.
        session.commit()
        # Its money is its hold, and it has no audits yet: nothing to read.
        out = with_money(job_out(job), new_job_money(job, rates))
        return model_response(out, status_code=status.HTTP_201_CREATED)
    return model_response(
        job_detail(session, job, rates),
        status_code=status.HTTP_200_OK,
        headers={"Idempotent-Replayed": "true"},
    )


@router.get("", response_model=Page[JobOut])
def list_(
    viewer: CurrentUser,
    session: DbSession,
    rates: RatesDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Page[JobOut]:
    """Your jobs, newest first (admins see every job), each with its money."""
    jobs, total = list_jobs(session, viewer, status=status_filter, limit=limit, offset=offset)
    money = jobs_money(session, jobs, rates)
    audits = audits_of(session, [job.id for job in jobs])
    items = [with_audits(with_money(job_out(job), money[job.id]), audits[job.id]) for job in jobs]
    return Page[JobOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def get(job_id: JobId, viewer: CurrentUser, session: DbSession, rates: RatesDep) -> JobOut:
    """The job, with its money: the hold, the cost so far and, once it has ended, what was
    charged, refunded, kept as the fee and earned by each node (in tokens)."""
    return job_detail(session, get_job_for(session, viewer, job_id), rates)


def job_detail(session: Session, job: Job, rates: Rates) -> JobOut:
    """A job with its money and its audits."""
    out = with_money(job_out(job), jobs_money(session, [job], rates)[job.id])
    return with_audits(out, audits_of(session, [job.id])[job.id])


@router.get(
    "/{job_id}/artifacts",
    response_class=FileResponse,
    # 409: the job has not saved a model (yet).
    responses={200: {"content": {"application/gzip": {}}}, **error_responses(409)},
)
def artifacts(
    job_id: JobId, viewer: CurrentUser, session: DbSession, settings: SettingsDep
) -> FileResponse:
    """The trained model (`save_pretrained` files) as a .tar.gz; its owner only."""
    directory = artifact_dir(session, viewer, job_id, storage_root=settings.storage_path)
    archive = pack_directory(directory, f"job-{job_id}-model")
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"job-{job_id}-model.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.delete(
    "/{job_id}/artifacts",
    response_model=StorageFreedOut,
    responses=error_responses(409),  # the job has not finished
)
def delete_artifacts(
    job_id: JobId, viewer: CurrentUser, session: DbSession, settings: SettingsDep
) -> StorageFreedOut:
    """Delete a finished job's stored model, results and checkpoints (its owner or an
    admin). The job's record, metrics and ledger entries stay."""
    job, freed = delete_job_storage(session, viewer, job_id, storage_root=settings.storage_path)
    return StorageFreedOut(job_id=job.id, freed_bytes=freed)


@router.get(
    "/{job_id}/results",
    response_class=FileResponse,
    # 409: a training job, or one that has not succeeded (yet).
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}},
            "description": "An infer job's predictions, or a validate job's scores (JSON)",
        },
        **error_responses(409),
    },
)
def results(
    job_id: JobId,
    viewer: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    fmt: Annotated[ResultFormat | None, Query(alias="format")] = None,
) -> FileResponse:
    """An `infer` job's predictions (`format=jsonl`, the default, or `parquet`), streamed
    from disk, or a `validate` job's scores (`json`); the job's owner or an admin."""
    path, served = results_file(session, viewer, job_id, fmt, storage_root=settings.storage_path)
    return FileResponse(
        path, media_type=MEDIA_TYPES[served], filename=f"job-{job_id}-results.{served.value}"
    )


@router.get("/{job_id}/results/summary", responses=error_responses(409))
def results_summary_(
    job_id: JobId, viewer: CurrentUser, session: DbSession, settings: SettingsDep
) -> dict[str, Any]:
    """An infer job's `total_samples`, `kept`, `filtered_out`, the estimated and real sizes;
    a validate job's scores."""
    return results_summary(session, viewer, job_id, storage_root=settings.storage_path)


@router.get("/{job_id}/results/preview", responses=error_responses(409))
def results_preview_(
    job_id: JobId,
    viewer: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """An infer job's first `limit` predictions (at most 100), as the JSON Lines hold them."""
    rows = results_preview(session, viewer, job_id, limit, storage_root=settings.storage_path)
    return {"job_id": job_id, "rows": rows}


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(409))
def cancel(job_id: JobId, viewer: CurrentUser, session: DbSession, rates: RatesDep) -> JobOut:
    """Cancel a job. A queued job is cancelled at once and fully refunded; a running one is
    stopped within a dispatcher round and charged only for what it used. Cancelling a
    finished job, or cancelling twice, is 409."""
    return job_detail(session, cancel_job(session, viewer, job_id, rates=rates), rates)
