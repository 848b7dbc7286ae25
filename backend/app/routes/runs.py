"""/runs: where a job's driver, running on one of the job's nodes, reports to the gateway
with its run credential (scoped to the job and attempt), not a user's token: its events, and
its checkpoints, final model and results (there is no shared filesystem)."""

from __future__ import annotations

import enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from app.deps import BearerToken, DbSession, JobId, SettingsDep
from app.errors import error_responses
from auth.run_tokens import RunClaims, decode_run_token
from compute.audits.snapshots import keep_for_audit
from compute.dispatch.run_inbox import MAX_EVENTS_PER_POST, accept_run_events
from compute.storage.run_uploads import (
    checkpoint_archive,
    commit_directory,
    receive_directory,
    source_model_archive,
    upload_place,
)
from core.db import session_scope, utcnow
from core.errors import AuthenticationError, InvalidInputError
from protocol.wire import WireError, recorded_from_wire

router = APIRouter(prefix="/runs", tags=["runs"])


def get_run_claims(token: BearerToken, settings: SettingsDep) -> RunClaims:
    if not token:
        raise AuthenticationError("a run credential is required")
    return decode_run_token(token, secret_key=settings.secret_key)


RunCaller = Annotated[RunClaims, Depends(get_run_claims)]


class UploadKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"
    MODEL = "model"
    RESULTS = "results"


class RunEventsIn(BaseModel):
    attempt: int = Field(ge=1, le=2**31 - 1)
    events: list[dict[str, Any]] = Field(max_length=MAX_EVENTS_PER_POST)


class RunEventsOut(BaseModel):
    accepted: int  # newly stored; a resent event counts once
    cancel_requested: bool  # stop the run: the gateway settles what was saved


@router.post(
    "/{job_id}/events",
    response_model=RunEventsOut,
    responses=error_responses(401, 403, 409, 422),
)
def post_run_events(
    job_id: JobId, body: RunEventsIn, caller: RunCaller, session: DbSession
) -> RunEventsOut:
    """A driver's events (status, metrics, usage, checkpoints, logs; the protocol's wire
    form), numbered by the driver. Refused (403) with a credential for another job or
    attempt, and (409) once the attempt has ended; a usage claim beyond the node's slot for
    the attempt's wall time is refused (422) and logged. The answer says whether the job's
    owner asked to cancel it."""
    try:
        events = [recorded_from_wire(item) for item in body.events]
    except WireError as error:
        raise InvalidInputError(f"bad event: {error}") from None
    answer = accept_run_events(session, caller, job_id, body.attempt, events, now=utcnow())
    return RunEventsOut(accepted=answer.accepted, cancel_requested=answer.cancel_requested)


class UploadOut(BaseModel):
    kind: str  # checkpoint | model | results
    size: int  # bytes of the archive received
    sha256: str


@router.put(
    "/{job_id}/{kind}",
    response_model=UploadOut,
    responses=error_responses(401, 403, 409, 413, 422),
)
async def put_upload(
    job_id: JobId,
    kind: UploadKind,
    request: Request,
    caller: RunCaller,
    settings: SettingsDep,
    attempt: Annotated[int, Query(ge=1, le=2**31 - 1)],
    x_content_sha256: Annotated[str, Header(description="sha256 (hex) of the body")],
) -> UploadOut:
    """A driver's checkpoint, final model or results directory, as a tar (plain or gzip)
    streamed in the body, at most `DISTLM_MAX_UPLOAD_MB`. Accepted only from the current
    attempt's driver and when the body hashes to `X-Content-SHA256`; it then replaces what
    was accepted before, whole. A wrong hash, an oversize body (413), an archive member that
    is not a plain file or directory inside it, another job's or a stale attempt's credential:
    refused, with nothing changed."""
    storage, factory = settings.storage_path, request.app.state.read_session_factory
    place = await run_in_threadpool(
        _with_session, factory, upload_place, caller, job_id, attempt, kind.value, storage
    )
    max_bytes = settings.max_upload_mb * 1024 * 1024
    upload = await run_in_threadpool(
        receive_directory, place, expected_sha256=x_content_sha256, max_bytes=max_bytes
    )
    with upload:
        async for chunk in request.stream():
            await run_in_threadpool(upload.write, chunk)  # blocks while unpacking catches up
        # The attempt may have ended while its bytes arrived.
        await run_in_threadpool(
            _with_session, factory, upload_place, caller, job_id, attempt, kind.value, storage
        )
        stored = await run_in_threadpool(commit_directory, place, upload)
    if kind.value == "checkpoint" and settings.audit_trainers:
        # Before the driver hears back and can save the next one (compute.audits).
        factory = request.app.state.session_factory
        await run_in_threadpool(
            _with_session, factory, keep_for_audit, job_id, storage, settings.secret_key
        )
    return UploadOut(kind=kind.value, size=stored.size, sha256=stored.sha256)


TAR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-tar": {}}, "description": "a tar"},
    **error_responses(401, 403, 404, 409),
}


@router.get("/{job_id}/checkpoint", response_class=FileResponse, responses=TAR_RESPONSES)
async def get_checkpoint(
    job_id: JobId,
    request: Request,
    caller: RunCaller,
    settings: SettingsDep,
    attempt: Annotated[int, Query(ge=1, le=2**31 - 1)],
) -> FileResponse:
    """The job's last accepted checkpoint (a tar; its sha256 in `X-Content-SHA256`), for the
    current attempt's driver to resume from, on whichever node saved it."""
    return await tar_response(request, checkpoint_archive, caller, job_id, attempt, settings)


@router.get("/{job_id}/source-model", response_class=FileResponse, responses=TAR_RESPONSES)
async def get_source_model(
    job_id: JobId,
    request: Request,
    caller: RunCaller,
    settings: SettingsDep,
    attempt: Annotated[int, Query(ge=1, le=2**31 - 1)],
) -> FileResponse:
    """The trained model a job starts from (its `model_name` is `job:<id>`), as a tar (its
    sha256 in `X-Content-SHA256`), for the current attempt's driver: nodes share no disk."""
    return await tar_response(request, source_model_archive, caller, job_id, attempt, settings)


async def tar_response(
    request: Request,
    archive: Any,
    caller: RunClaims,
    job_id: int,
    attempt: int,
    settings: Any,
) -> FileResponse:
    """``archive``'s tar (checked in a short read transaction of its own), sent and then
    deleted, with its sha256 in `X-Content-SHA256`."""
    path, digest = await run_in_threadpool(
        _with_session,
        request.app.state.read_session_factory,
        archive,
        caller,
        job_id,
        attempt,
        settings.storage_path,
    )
    return FileResponse(
        path,
        media_type="application/x-tar",
        headers={"X-Content-SHA256": digest},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


def _with_session(factory: Any, call: Any, *args: Any) -> Any:
    """A short read transaction of its own: no transaction stays open while bytes flow."""
    with session_scope(factory) as session:
        return call(session, *args)
