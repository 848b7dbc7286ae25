"""The run inbox: events a job's driver sends over HTTP, checked and kept per attempt.

A driver's events are accepted only with a run credential for that job and attempt, only
while the job is running that attempt (a late driver of a lost attempt is refused), and a
usage claim only for a node of the placement and never more than that node's slot for the
attempt's wall time so far (refused whole, and logged for the operator). A repeated sequence
number is stored once, so a driver may resend after a timeout.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.run_tokens import RunClaims
from compute.jobs.state import JobStatus
from compute.models import Job, RunEvent
from core.errors import ConflictError, InvalidInputError, PermissionDeniedError
from protocol.events import RecordedEvent, UsageEvent
from protocol.wire import KIND_OF, recorded_from_wire, recorded_to_wire

log = logging.getLogger(__name__)

MAX_EVENTS_PER_POST = 500
# A slot's claim may run ahead of the gateway's clock by this much (clocks and buffering).
CLAIM_SLACK = 1.05
CLAIM_SLACK_S = 5.0
RESOURCES = {
    "gpu_seconds": "gpu",
    "cpu_core_seconds": "cpu_cores",
    "memory_gb_seconds": "memory_gb",
}


@dataclass(frozen=True)
class InboxAnswer:
    accepted: int  # events newly stored (a resent one counts once)
    cancel_requested: bool  # the driver should stop the run


def accept_run_events(
    session: Session,
    claims: RunClaims,
    job_id: int,
    attempt: int,
    events: Sequence[RecordedEvent],
    *,
    now: dt.datetime,
) -> InboxAnswer:
    if len(events) > MAX_EVENTS_PER_POST:
        raise InvalidInputError(f"at most {MAX_EVENTS_PER_POST} events per request")
    job = running_attempt(session, claims, job_id, attempt)
    seqs = [recorded.seq for recorded in events]
    if len(set(seqs)) != len(seqs):
        raise InvalidInputError("an event's sequence number appears twice in one request")
    stored = set(
        session.scalars(
            select(RunEvent.seq).where(
                RunEvent.job_id == job_id, RunEvent.attempt == attempt, RunEvent.seq.in_(seqs)
            )
        )
    )
    fresh = [recorded for recorded in events if recorded.seq not in stored]
    check_usage_claims(
        session, job, [r.event for r in fresh if isinstance(r.event, UsageEvent)], now
    )
    for recorded in fresh:
        session.add(
            RunEvent(
                job_id=job_id,
                attempt=attempt,
                seq=recorded.seq,
                kind=KIND_OF[type(recorded.event)],
                payload=recorded_to_wire(recorded),
                received_at=now,
            )
        )
    session.flush()
    return InboxAnswer(len(fresh), job.cancel_requested_at is not None)


def running_attempt(session: Session, claims: RunClaims, job_id: int, attempt: int) -> Job:
    """The job, when ``claims`` are for it and this attempt, and it is running that attempt:
    a driver may act only for its own job, and only while its attempt is the current one."""
    if claims.job_id != job_id:
        raise PermissionDeniedError("this run credential is for another job")
    if claims.attempt != attempt:
        raise PermissionDeniedError(f"this run credential is for attempt {claims.attempt}")
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING.value or job.attempts != attempt:
        raise ConflictError(f"attempt {attempt} of job {job_id} is not running; refused")
    return job


def check_usage_claims(
    session: Session, job: Job, claims: Sequence[UsageEvent], now: dt.datetime
) -> None:
    """Each node's usage this attempt, with these claims, fits its slot times wall time."""
    if not claims:
        return
    slots: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(RESOURCES, 0.0))
    for slot in job.placement or []:
        for figure, resource in RESOURCES.items():
            slots[int(slot["node_id"])][figure] += float(slot.get(resource, 0.0))
    for claim in claims:
        if claim.node_id not in slots:
            refuse(job, f"usage claimed for node {claim.node_id}, which is not in the placement")
    elapsed = max(0.0, (now - job.updated_at).total_seconds())  # since the attempt started
    claimed = usage_so_far(session, job)
    for claim in claims:
        for figure, value in claim.figures().items():
            claimed[claim.node_id][figure] += value
    for node, figures in claimed.items():
        for figure, value in figures.items():
            allowed = slots[node][figure] * elapsed * CLAIM_SLACK + CLAIM_SLACK_S
            if value > allowed:
                refuse(
                    job,
                    f"node {node} claims {value:.1f} {figure} in {elapsed:.0f} s, more than "
                    f"its slot allows ({allowed:.1f})",
                )


def usage_so_far(session: Session, job: Job) -> dict[int, dict[str, float]]:
    """The usage the attempt's driver has claimed so far, by node."""
    totals: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(RESOURCES, 0.0))
    payloads = session.scalars(
        select(RunEvent.payload).where(
            RunEvent.job_id == job.id, RunEvent.attempt == job.attempts, RunEvent.kind == "usage"
        )
    )
    for payload in payloads:
        usage = recorded_from_wire(payload).event
        for figure, value in usage.figures().items():
            totals[usage.node_id][figure] += value
    return totals


def refuse(job: Job, why: str) -> None:
    log.warning("job %s attempt %s: usage claim refused: %s", job.id, job.attempts, why)
    raise InvalidInputError(f"usage claim refused: {why}")


def run_events_after(
    session: Session, job_id: int, attempt: int, after: int, limit: int = 1000
) -> list[RecordedEvent]:
    """The attempt's events after sequence number ``after``, in the driver's order."""
    payloads = session.scalars(
        select(RunEvent.payload)
        .where(RunEvent.job_id == job_id, RunEvent.attempt == attempt, RunEvent.seq > after)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return [recorded_from_wire(payload) for payload in payloads]
