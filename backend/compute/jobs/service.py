"""The persistent job queue: submit (idempotent), read with ownership, cancel, transitions."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth.models import Role, User
from compute.billing.service import estimate_cost, settle
from compute.billing.usage import JobUsage
from compute.dispatch.placement import plan
from compute.dispatch.scheduling import eligible_capacity, pending_job
from compute.jobs.events import record_status
from compute.jobs.spec import JobSpec, source_job_id
from compute.jobs.state import InvalidTransitionError, JobStatus, check_transition
from compute.models import Job
from compute.visibility import owned_or_missing, page, visible_to
from core.db import utcnow
from core.errors import (
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
)
from core.rows import insert_new
from ledger.flows import place_hold
from ledger.pricing import Rates, tokens_to_micro
from ledger.settlement import SettlementResult
from protocol.run import job_request_to_wire

MAX_IDEMPOTENCY_KEY_LENGTH = 255
WAITING_FOR_DISPATCHER = "queued: waiting for the dispatcher to place it on a node"


@dataclass(frozen=True)
class SubmitLimits:
    """What one user may have waiting, and how fast they may submit (0: no limit). Counted
    in the database, so every gateway process enforces the same limit."""

    max_waiting_jobs: int = 0
    submits_per_minute: int = 0


RATE_WINDOW = dt.timedelta(seconds=60)
WAITING = (JobStatus.QUEUED.value, JobStatus.SCHEDULED.value)


def check_submit_limits(session: Session, owner: User, limits: SubmitLimits) -> None:
    """429 with Retry-After before anything is stored or held."""
    if limits.max_waiting_jobs:
        waiting = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner.id, Job.status.in_(WAITING))
        )
        if waiting >= limits.max_waiting_jobs:
            raise RateLimitedError(
                f"you have {waiting} jobs waiting, the most one user may have queued "
                f"({limits.max_waiting_jobs}); wait for some to start or cancel some",
                retry_after_s=30,
            )
    if limits.submits_per_minute:
        since = utcnow() - RATE_WINDOW
        recent = list(
            session.scalars(
                select(Job.created_at)
                .where(Job.owner_id == owner.id, Job.created_at > since)
                .order_by(Job.created_at)
            )
        )
        if len(recent) >= limits.submits_per_minute:
            oldest = recent[-limits.submits_per_minute]
            wait_s = max(1, math.ceil((oldest + RATE_WINDOW - utcnow()).total_seconds()))
            raise RateLimitedError(
                f"at most {limits.submits_per_minute} submits a minute; try again in {wait_s} s",
                retry_after_s=wait_s,
            )


def _job_for_key(session: Session, owner: User, key: str, request_hash: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a new job"
        )
    return job


def submit_job(
    session: Session,
    owner: User,
    spec: JobSpec,
    *,
    idempotency_key: str | None,
    default_max_runtime_s: int,
    rates: Rates,
    limits: SubmitLimits = SubmitLimits(),
    accept_unplaceable: bool = True,
) -> tuple[Job, bool]:
    """Store a new queued job and hold its maximum cost in escrow, in one database
    transaction; return (job, created). A replayed key returns the first job and holds
    nothing more. Not enough tokens: InsufficientFundsError, and nothing is stored."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidInputError(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    check_model_source(session, owner, spec)
    minimum = rates.min_job_charge
    if spec.max_tokens is not None and spec.max_tokens < minimum:
        # A job pays at least the minimum charge: a cap below it would be a promise broken.
        raise InvalidInputError(
            f"max_tokens ({spec.max_tokens}) is below the minimum charge of a job ({minimum})"
        )
    request_hash = spec.request_hash()
    if idempotency_key is not None:
        existing = _job_for_key(session, owner, idempotency_key, request_hash)
        if existing is not None:
            return existing, False  # a replay is not a new submit: no limit applies
    check_submit_limits(session, owner, limits)

    now = utcnow()
    job = Job(
        owner_id=owner.id,
        name=spec.display_name(),
        status=JobStatus.QUEUED.value,
        status_reason=WAITING_FOR_DISPATCHER,
        model_type=spec.model.type.value,
        strategy=spec.strategy,
        gpu=spec.requirements.gpu,
        cpu_cores=spec.requirements.cpu_cores,
        memory_gb=spec.requirements.memory,
        max_runtime_s=spec.max_runtime_s or default_max_runtime_s,
        max_tokens_micro=tokens_to_micro(spec.max_tokens) if spec.max_tokens else None,
        spec=spec.normalised(),
        request=job_request_to_wire(spec.request()),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    )
    unplaceable = why_no_node_can_hold(session, job)
    if unplaceable is not None:
        if not accept_unplaceable:
            raise InvalidInputError(f"no registered node can hold this job ({unplaceable})")
        job.status_reason = f"queued, but no registered node can hold it yet ({unplaceable})"
    estimate = estimate_cost(
        spec.requirements,
        runtime_s=job.max_runtime_s,
        cap=job.max_tokens_micro,
        rates=rates,
        extra=spec.extra_shares(),
    )
    if idempotency_key is None:  # nothing can collide: no savepoint round trips
        insert_new(session, job)
        place_hold(session, user_id=owner.id, job_id=job.id, amount=estimate.total)
        return job, True
    try:
        with session.begin_nested():
            insert_new(session, job)
            place_hold(session, user_id=owner.id, job_id=job.id, amount=estimate.total)
    except IntegrityError:
        # A concurrent request with the same key committed first: answer with its job.
        existing = _job_for_key(session, owner, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing, False
    return job, True


def why_no_node_can_hold(session: Session, job: Job) -> str | None:
    """Why no eligible node could hold the job even if all were idle, or None if one could
    (or none is online yet: nodes come and go, and the Quickstart submits before any joins)."""
    capacity = eligible_capacity(session)  # all idle: what is placed now does not matter
    if not capacity:
        return None
    decision = plan([pending_job(job)], capacity, capacity)
    return decision.waiting[0].reason if decision.waiting else None


def list_jobs(
    session: Session, viewer: User, *, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = visible_to(Job, viewer)
    if status is not None:
        query = query.where(Job.status == status.value)
    return page(session, query, order_by=Job.id.desc(), limit=limit, offset=offset)


def check_model_source(session: Session, owner: User, spec: JobSpec) -> None:
    """``model_name: job:<id>`` continues from the model of one of the owner's own jobs,
    of the same model type, once that job has saved one."""
    source_id = source_job_id(spec.model.model_name)
    if source_id is None:
        return
    source = session.get(Job, source_id)
    if source is None or source.owner_id != owner.id:
        raise NotFoundError(f"job {source_id} not found")
    if source.model_type != spec.model.type.value:
        raise InvalidInputError(
            f"job {source_id} trained a {source.model_type} model, not {spec.model.type.value}"
        )
    if not source.artifact_path:
        raise ConflictError(
            f"job {source_id} has no saved model to continue from yet (it is {source.status})",
            code="no_artifact",
        )


def source_model_path(session: Session, model_name: str) -> str:
    """What the runner loads for ``model_name``: a ``job:<id>`` becomes that job's saved
    model directory (checked at submit); anything else is passed on as is."""
    source_id = source_job_id(model_name)
    if source_id is None:
        return model_name
    source = session.get(Job, source_id)
    return source.artifact_path if source is not None and source.artifact_path else model_name


def get_job_for(session: Session, viewer: User, job_id: int, *, lock: bool = False) -> Job:
    """The job if the viewer owns it or is an admin; otherwise 'not found' (no leak).

    ``lock`` takes the row lock (PostgreSQL) so concurrent state changes serialise.
    """
    job = owned_or_missing(session.get(Job, job_id, with_for_update=lock), viewer)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


def transition_job(session: Session, job: Job, target: JobStatus, reason: str) -> Job:
    """Move a job along the state machine; illegal moves raise InvalidTransitionError.

    Terminal states are reached only through ``finish_job``, which also settles the ledger.
    """
    if target.is_terminal():
        raise ValueError("use finish_job to end a job: it settles the ledger")
    return _move(session, job, target, reason)


def _move(session: Session, job: Job, target: JobStatus, reason: str) -> Job:
    check_transition(JobStatus(job.status), target)
    now = utcnow()
    job.status = target.value
    job.status_reason = reason
    job.updated_at = now
    if target is JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if target.is_terminal():
        job.finished_at = now
    session.flush()
    record_status(session, job)
    return job


def finish_job(
    session: Session,
    job: Job,
    target: JobStatus,
    reason: str,
    *,
    usage: JobUsage,
    rates: Rates,
    placed_on: Iterable[int] = (),
) -> SettlementResult:
    """Move the job to a terminal state and settle its escrow with the metered usage (the
    nodes it was placed on pay at least the minimum charge; see ``settle``)."""
    if not target.is_terminal():
        raise ValueError(f"{target.value} is not a terminal state")
    _move(session, job, target, reason)
    return settle(session, job, usage, rates, placed_on=placed_on)


def cancel_job(session: Session, viewer: User, job_id: int, *, rates: Rates) -> Job:
    """Cancel a job. A queued job ends at once with its whole hold refunded; a placed or
    running one is stopped by the dispatcher, which settles what it used."""
    job = get_job_for(session, viewer, job_id, lock=True)
    status = JobStatus(job.status)
    who = "an admin" if viewer.role == Role.ADMIN and job.owner_id != viewer.id else "its owner"
    if status is JobStatus.QUEUED:
        finish_job(
            session, job, JobStatus.CANCELLED, f"cancelled by {who}", usage=JobUsage(), rates=rates
        )
        return job
    check_transition(status, JobStatus.CANCELLED)  # 409 for finished jobs
    if job.cancel_requested_at is not None:
        raise InvalidTransitionError("cancellation was already requested for this job")
    job.cancel_requested_at = utcnow()
    job.status_reason = f"cancellation requested by {who}; stopping its workers"
    job.updated_at = job.cancel_requested_at
    session.flush()
    return job
