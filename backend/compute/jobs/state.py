"""The job state machine: queued → scheduled → running → succeeded | failed | cancelled."""

from __future__ import annotations

import enum

from core.errors import ConflictError


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Placed jobs: they hold their nodes' slots.
ACTIVE = (JobStatus.SCHEDULED.value, JobStatus.RUNNING.value)

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.SCHEDULED, JobStatus.FAILED, JobStatus.CANCELLED}),
    # scheduled → queued: the placement fell through (a node left) and the job waits again.
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    # running → queued: a node or worker was lost and the job waits to resume elsewhere.
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransitionError(ConflictError):
    code = "invalid_job_state"


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        if current.is_terminal():
            raise InvalidTransitionError(f"job is already {current.value}")
        raise InvalidTransitionError(f"a {current.value} job cannot become {target.value}")
