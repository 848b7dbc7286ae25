"""The platform at a glance, in the spirit of seed 001's ``/api/status``: running jobs and
how far they are, active nodes, GPU and CPU node counts, queue length. Public fields only
(no owners, names, specs or reasons): any logged-in user may read it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compute.dispatch.scheduling import eligible_nodes
from compute.jobs.state import JobStatus
from compute.jobs.strategy import job_settings
from compute.models import Job, JobMetric
from protocol.errors import SettingsError


@dataclass(frozen=True)
class RunningJobStatus:
    job_id: int
    strategy: str
    step: int
    total_steps: int | None
    progress: str


@dataclass(frozen=True)
class PlatformStatus:
    running_jobs: list[RunningJobStatus]
    queued_jobs: int
    active_nodes: int
    gpu_nodes: int
    cpu_nodes: int
    gpus: int
    cpu_cores: float


def platform_status(session: Session) -> PlatformStatus:
    running = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING.value).order_by(Job.id)
    ).all()
    steps = dict(
        session.execute(
            select(JobMetric.job_id, func.max(JobMetric.step))
            .where(JobMetric.job_id.in_([job.id for job in running]))
            .group_by(JobMetric.job_id)
        ).all()
    )
    queued = session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED.value))
    nodes = eligible_nodes(session)
    return PlatformStatus(
        running_jobs=[_progress(session, job, int(steps.get(job.id) or 0)) for job in running],
        queued_jobs=int(queued or 0),
        active_nodes=len(nodes),
        gpu_nodes=sum(1 for n in nodes if n.gpu > 0),
        cpu_nodes=sum(1 for n in nodes if n.gpu == 0),
        gpus=sum(n.gpu for n in nodes),
        cpu_cores=sum(n.cpu_cores for n in nodes),
    )


def _progress(session: Session, job: Job, step: int) -> RunningJobStatus:
    total: int | None = None
    described = session.scalar(
        select(JobMetric.values).where(JobMetric.job_id == job.id, JobMetric.step == 0).limit(1)
    )
    if isinstance(described, dict) and isinstance(described.get("total_steps"), int):
        total = described["total_steps"]
    try:
        strategy, settings = job_settings(job)
        total = total or strategy.total_steps(settings)
        progress = strategy.progress(settings, step)
    except SettingsError:
        progress = f"step {step}"
    if total and " of " not in progress:
        progress += f" of {total}"
    return RunningJobStatus(job.id, job.strategy, step, total, progress)
