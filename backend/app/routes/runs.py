"""/runs: where a job's driver, running on one of the job's nodes, reports to the gateway
with its run credential (scoped to the job and attempt), not a user's token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.deps import BearerToken, DbSession, JobId, SettingsDep
from app.errors import error_responses
from auth.run_tokens import RunClaims, decode_run_token
from compute.run_inbox import MAX_EVENTS_PER_POST, accept_run_events
from core.db import utcnow
from core.errors import AuthenticationError, InvalidInputError
from protocol.wire import WireError, recorded_from_wire

router = APIRouter(prefix="/runs", tags=["runs"])


def get_run_claims(token: BearerToken, settings: SettingsDep) -> RunClaims:
    if not token:
        raise AuthenticationError("a run credential is required")
    return decode_run_token(token, secret_key=settings.secret_key)


RunCaller = Annotated[RunClaims, Depends(get_run_claims)]


class RunEventsIn(BaseModel):
    attempt: int = Field(ge=1, le=2**31 - 1)
    events: list[dict[str, Any]] = Field(max_length=MAX_EVENTS_PER_POST)


class RunEventsOut(BaseModel):
    accepted: int  # newly stored; a resent event counts once
    cancel_requested: bool  # stop the run: the gateway settles what was saved


@router.post(
    "/{job_id}/events",
    response_model=RunEventsOut,
    responses=error_responses(403, 409, 422),
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
