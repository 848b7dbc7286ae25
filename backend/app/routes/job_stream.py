"""A job as it happens: GET /jobs/{id}/events (Server-Sent Events) and GET /jobs/{id}/logs.

An open stream holds a slot (``app.stream_slots``: a few per user, a bounded number in all),
reads on the streams' own threads, holds no database connection between reads, and checks
every ``RECHECK_S`` that its viewer may still see the job (an account disabled, a password
changed or a job no longer theirs ends it)."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from app.deps import CurrentUser, DbSession, JobId
from app.errors import error_responses
from auth.models import User
from compute.jobs.events import Cursor, StreamItem, events_after, job_logs
from compute.jobs.service import get_job_for
from compute.jobs.state import JobStatus
from compute.models import Job
from core.db import one_snapshot, session_scope
from core.errors import NotFoundError

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_S = 0.5
KEEP_ALIVE_S = 15.0
RECHECK_S = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    # 429: the caller's (or the gateway's) open streams are at their limit.
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(429)},
)
def events(
    job_id: JobId,
    viewer: CurrentUser,
    session: DbSession,
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> StreamingResponse:
    """The job's events as Server-Sent Events, oldest first: `status`, `metric`, `usage` and
    `log`, each with an `id`; a final `end` once the job has finished. Reconnect with
    `Last-Event-ID` (the last id you saw) to go on with no gap and no duplicate. Owner or
    admin. From a terminal: `curl -N -H "Authorization: Bearer $TOKEN" .../events`."""
    get_job_for(session, viewer, job_id)  # 404 for another user's job, before streaming
    cursor = Cursor.parse(last_event_id)
    factory = request.app.state.read_session_factory
    release = request.app.state.stream_slots.take(viewer.id)  # 429 when none is free
    read = partial(read_events, factory, job_id)
    return StreamingResponse(
        _stream(request, read, cursor, _viewer(viewer), release),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@router.get(
    "/{job_id}/logs",
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(429)},
)
def logs(
    job_id: JobId,
    viewer: CurrentUser,
    session: DbSession,
    request: Request,
    follow: bool = False,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Any:
    """The job's log lines (runner, workers, dispatcher: starts, retries, resumes, warnings,
    and why it failed), oldest first; at most 2000 are kept per job (`dropped` counts the
    older ones). `follow=true` streams new lines as Server-Sent Events until the job ends."""
    job = get_job_for(session, viewer, job_id)
    if not follow:
        lines = job_logs(session, job, after=after, limit=limit)
        return {
            "job_id": job.id,
            "dropped": job.logs_dropped,
            "items": [{"id": line.id, "at": line.at.isoformat(), **line.payload} for line in lines],
        }
    factory = request.app.state.read_session_factory

    def read(cursor: Cursor) -> tuple[list[StreamItem], bool]:
        items, finished = read_events(factory, job_id, cursor)
        return [item for item in items if item.kind == "log"] + [
            StreamItem(item.cursor, "skip", item.at, {}) for item in items[-1:]
        ], finished

    release = request.app.state.stream_slots.take(viewer.id)  # 429 when none is free
    return StreamingResponse(
        _stream(request, read, Cursor(after, 2**62), _viewer(viewer), release),
        media_type="text/event-stream", headers=SSE_HEADERS,
    )  # fmt: skip


def read_events(factory: Any, job_id: int, cursor: Cursor) -> tuple[list[StreamItem], bool]:
    with session_scope(factory) as session:
        # Events and metric points from one moment: a reader that saw a commit's metric
        # point but not its events would send them in another order than a later replay.
        one_snapshot(session)
        job = session.get(Job, job_id)
        finished = job is None or JobStatus(job.status).is_terminal()
        return events_after(session, job_id, cursor), finished


@dataclass(frozen=True)
class Viewer:
    """Who opened the stream, as they were then."""

    user_id: int
    token_version: int


def _viewer(user: User) -> Viewer:
    return Viewer(user.id, user.token_version)


def _may_still_see(factory: Any, viewer: Viewer, job_id: int) -> bool:
    with session_scope(factory) as session:
        user = session.get(User, viewer.user_id)
        if user is None or not user.is_active or user.token_version != viewer.token_version:
            return False
        try:
            get_job_for(session, user, job_id)
        except NotFoundError:
            return False
        return True


def _stream(
    request: Request,
    read: Callable[[Cursor], tuple[list[StreamItem], bool]],
    cursor: Cursor,
    viewer: Viewer,
    release: Callable[[], None],
) -> AsyncIterator[str]:
    """The stream's chunks; its slot is given back when it ends, or when it is dropped
    unstarted (a client gone before the first byte)."""

    async def chunks() -> AsyncIterator[str]:
        try:
            async for chunk in _chunks(request, read, cursor, viewer):
                yield chunk
        finally:
            release()

    stream = chunks()
    weakref.finalize(stream, release)
    return stream


async def _chunks(
    request: Request,
    read: Callable[[Cursor], tuple[list[StreamItem], bool]],
    cursor: Cursor,
    viewer: Viewer,
) -> AsyncIterator[str]:
    quiet_since = checked_at = time.monotonic()
    limiter = request.app.state.stream_slots.reads
    factory = request.app.state.read_session_factory
    job_id = int(request.path_params["job_id"])
    while True:
        if await request.is_disconnected():
            return
        if time.monotonic() - checked_at > RECHECK_S:
            checked_at = time.monotonic()
            if not await to_thread.run_sync(
                _may_still_see, factory, viewer, job_id, limiter=limiter
            ):
                return
        items, finished = await to_thread.run_sync(read, cursor, limiter=limiter)
        for item in items:
            cursor = item.cursor
            if item.kind == "skip":  # moves the cursor past what a filtered stream left out
                continue
            data = json.dumps({"at": item.at.isoformat(), **item.data}, separators=(",", ":"))
            yield f"id: {item.cursor}\nevent: {item.kind}\ndata: {data}\n\n"
        if items:
            quiet_since = time.monotonic()
            continue  # there may be more right away
        if finished:
            yield f"id: {cursor}\nevent: end\ndata: {{}}\n\n"
            return
        if time.monotonic() - quiet_since > KEEP_ALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"  # proxies close silent connections
        await asyncio.sleep(POLL_S)
