"""Helpers for ledger tests: run a queued job to a terminal state with usage."""

from __future__ import annotations

from sqlalchemy.orm import Session

from compute.billing.service import UsageReport, rates_from
from compute.jobs.service import finish_job, transition_job
from compute.jobs.state import JobStatus
from compute.models import Job
from core.settings import Settings
from ledger.pricing import ResourceSeconds
from ledger.settlement import SettlementResult


def usage(node_id: int, gpu_s: float = 0, cpu_s: float = 0, mem_s: float = 0) -> UsageReport:
    return UsageReport(node_id, ResourceSeconds(gpu_s, cpu_s, mem_s))


def run_to_end(
    session: Session,
    settings: Settings,
    job_id: int,
    reports: list[UsageReport],
    status: JobStatus = JobStatus.SUCCEEDED,
) -> SettlementResult:
    """What the dispatcher will do: schedule, run, finish and settle (then commit)."""
    job = session.get(Job, job_id, with_for_update=True)
    assert job is not None
    if job.status == JobStatus.QUEUED:
        transition_job(session, job, JobStatus.SCHEDULED, "placed")
    if job.status == JobStatus.SCHEDULED:
        transition_job(session, job, JobStatus.RUNNING, "running")
    result = finish_job(
        session, job, status, status.value, usage=reports, rates=rates_from(settings)
    )
    session.commit()
    return result
