"""Helpers for ledger tests: run a queued job to a terminal state with usage."""

from __future__ import annotations

from sqlalchemy.orm import Session

from compute.billing.service import rates_from
from compute.billing.usage import JobUsage
from compute.jobs.service import finish_job, transition_job
from compute.jobs.state import JobStatus
from compute.models import Job
from core.settings import Settings
from ledger.settlement import SettlementResult
from protocol.events import UsageEvent


def usage(node_id: int, gpu_s: float = 0, cpu_s: float = 0, mem_s: float = 0) -> UsageEvent:
    """A runner's usage event for one node (resource-seconds)."""
    return UsageEvent(node_id, gpu_s, cpu_s, mem_s)


def run_to_end(
    session: Session,
    settings: Settings,
    job_id: int,
    usages: list[UsageEvent],
    status: JobStatus = JobStatus.SUCCEEDED,
) -> SettlementResult:
    """What the dispatcher will do: schedule, run, add up the usage, finish and settle (then
    commit)."""
    job = session.get(Job, job_id, with_for_update=True)
    assert job is not None
    if job.status == JobStatus.QUEUED:
        transition_job(session, job, JobStatus.SCHEDULED, "placed")
    if job.status == JobStatus.SCHEDULED:
        transition_job(session, job, JobStatus.RUNNING, "running")
    used = JobUsage().plus(usages)
    result = finish_job(session, job, status, status.value, usage=used, rates=rates_from(settings))
    session.commit()
    return result
