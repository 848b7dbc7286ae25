"""What the dispatcher does with a running job, decided purely.

From a snapshot of the job (read in a short transaction), the runner's new events (fetched
from Ray with no transaction open) and the clock, ``decide`` says what to store and whether
the job goes on, ends or is re-planned. The executor in ``dispatcher.py`` carries the
decision out: it stops the runner if the job leaves RUNNING, then writes the outcome in one
short transaction guarded by the status, attempt and event cursor it read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from compute.billing.usage import JobUsage
from compute.jobs.state import JobStatus
from ledger.pricing import Rates, tokens
from protocol.events import RecordedEvent, RunState, StatusEvent, UsageEvent


@dataclass(frozen=True)
class RunningJob:
    """What a decision needs to know of a running job."""

    job_id: int
    attempt: int
    event_cursor: int
    updated_at: dt.datetime  # set when the attempt started running
    started_at: dt.datetime | None
    max_runtime_s: int
    cancel_requested: bool
    budget: int  # micro-tokens the job may cost (its hold); 0: no limit
    usage: JobUsage = field(default_factory=JobUsage)  # saved by checkpoints: what is paid
    unsaved: tuple[UsageEvent, ...] = ()  # the attempt's work that no checkpoint covers yet
    # Nodes of other owners: their usage is charged (running on your own node is free).
    charged_nodes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DispatchLimits:
    max_attempts: int
    start_timeout_s: int
    hidden_roots: tuple[str, ...] = ()  # server paths users never see in a reason


@dataclass(frozen=True)
class Decision:
    """Store ``events`` (in order); then the job goes on (``status`` None), is re-queued to
    resume from its checkpoint (QUEUED) or ends (a terminal status), with ``reason``."""

    events: tuple[RecordedEvent, ...] = ()
    status: JobStatus | None = None
    reason: str = ""
    # The attempt ended because a node or worker was lost, not by the job's own doing: its
    # work since the last checkpoint is neither charged nor credited.
    attempt_lost: bool = False

    @property
    def stops_runner(self) -> bool:
        return self.status is not None


def decide(
    job: RunningJob,
    fresh: Sequence[RecordedEvent] | None,
    *,
    now: dt.datetime,
    limits: DispatchLimits,
    rates: Rates,
    lost_because: str = "its runner was lost",
) -> Decision:
    if fresh is None:  # the runner is gone: died with its node, or never started
        if job.cancel_requested:
            return Decision(status=JobStatus.CANCELLED, reason="cancelled while running")
        return _lost(job, (), lost_because, limits)
    kept: list[RecordedEvent] = []
    for recorded in fresh:
        kept.append(recorded)
        event = recorded.event
        if not isinstance(event, StatusEvent):
            continue
        if event.state is RunState.SUCCEEDED:
            done = event.reason or "training finished"
            return Decision(tuple(kept), JobStatus.SUCCEEDED, f"succeeded: {done}")
        if event.state is RunState.CANCELLED:
            return Decision(tuple(kept), JobStatus.CANCELLED, "cancelled while running")
        if event.state is RunState.FAILED:
            reason = without_roots(event.reason, limits.hidden_roots)
            if event.retryable and not job.cancel_requested:
                return _lost(job, kept, reason, limits)
            return Decision(tuple(kept), JobStatus.FAILED, f"failed: {reason}")
    events = tuple(kept)
    cursor = max([job.event_cursor, *(r.seq for r in events)])
    if job.cancel_requested:
        return Decision(events, JobStatus.CANCELLED, "cancelled while running")
    # The budget counts unsaved work too: it stops a job before it can run past its hold.
    # Only new usage can use it up (the round that saw the rest checked it then).
    fresh_usage = [r.event for r in events if isinstance(r.event, UsageEvent)]
    if fresh_usage and job.budget > 0 and spent_so_far(job, fresh_usage, rates) >= job.budget:
        reason = (
            f"stopped: its budget of {tokens(job.budget)} tokens is used up "
            "(max_tokens or the hold); it is charged that budget"
        )
        return Decision(events, JobStatus.FAILED, reason)
    if job.started_at and now - job.started_at > dt.timedelta(seconds=job.max_runtime_s):
        reason = f"stopped: exceeded max_runtime_s ({job.max_runtime_s} s)"
        return Decision(events, JobStatus.FAILED, reason)
    # An attempt that has sent nothing but its start event for too long (it waits for the
    # resources of a node that died before Ray noticed) is given up and re-planned.
    timeout = dt.timedelta(seconds=limits.start_timeout_s)
    if cursor <= 1 and now - job.updated_at > timeout:
        why = f"it did not start training within {limits.start_timeout_s} s"
        return _lost(job, events, why, limits)
    return Decision(events)


def spent_so_far(job: RunningJob, fresh_usage: Sequence[UsageEvent], rates: Rates) -> int:
    """What the job's work on others' nodes costs so far, unsaved and new work included."""
    so_far = job.usage.plus(job.unsaved).plus(fresh_usage)
    return so_far.metered(job.charged_nodes, rates)


def _lost(
    job: RunningJob, events: Sequence[RecordedEvent], why: str, limits: DispatchLimits
) -> Decision:
    """A lost node or worker: resume from the last checkpoint on live nodes, a few times."""
    if job.attempt >= limits.max_attempts:
        reason = f"failed after {job.attempt} attempts: {why}"
        return Decision(tuple(events), JobStatus.FAILED, reason, attempt_lost=True)
    reason = f"attempt {job.attempt} lost ({why}); will resume from its last checkpoint"
    return Decision(tuple(events), JobStatus.QUEUED, reason, attempt_lost=True)


def without_roots(reason: str, roots: Sequence[str]) -> str:
    """Users see paths relative to the data root or the storage, never where this server
    keeps them (an absolute path also tells which machine and user run it)."""
    for root in roots:
        reason = reason.replace(f"{root}/", "").replace(root, ".")
    return reason
