"""From the database to the pure scheduler and back: eligible nodes, their free capacity,
and queued jobs as the scheduler sees them."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from auth.models import Role, User
from compute.dispatch.placement import (
    ExtraShare,
    NodeCapacity,
    PendingJob,
    Plan,
    WorkerSlot,
    plan,
    subtract,
)
from compute.jobs.state import JobStatus
from compute.models import Job, Node
from compute.nodes.service import NodeApproval
from protocol.errors import SettingsError
from protocol.strategies.registry import get_rules
from protocol.strategies.rules import StrategyRules, SubmittedJob

ACTIVE = (JobStatus.SCHEDULED.value, JobStatus.RUNNING.value)


def eligible_nodes(session: Session) -> list[Node]:
    """The only nodes new work goes to: approved, unflagged, not drained or retired, their
    Ray worker alive, their agent not gone, their owner's account enabled and still a node
    owner's (or an admin's)."""
    return list(
        session.scalars(
            select(Node)
            .join(User, User.id == Node.owner_id)
            .where(
                Node.approval == NodeApproval.APPROVED.value,
                Node.flag_reason == "",
                Node.ray_alive.is_(True),
                Node.drained_at.is_(None),
                Node.deregistered_at.is_(None),
                or_(Node.left_at.is_(None), Node.last_heartbeat_at > Node.left_at),
                User.is_active.is_(True),
                User.role.in_((Role.NODE_OWNER.value, Role.ADMIN.value)),
            )
            .order_by(Node.id)
        )
    )


def slots_of(job: Job) -> list[WorkerSlot]:
    return [WorkerSlot(**slot) for slot in (job.placement or [])]


def pending_job(job: Job) -> PendingJob:
    return PendingJob(
        job_id=job.id,
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        workers=worker_processes(job),
        extra=extra_shares(job),
    )


def submitted_job(job: Job) -> SubmittedJob:
    """A stored job as its strategy sees it at submit."""
    spec = job.spec or {}
    model = spec.get("model_config") or {}
    data = spec.get("data_config") or {}
    return SubmittedJob(
        model_type=str(model.get("type", "")),
        model_name=str(model.get("model_name", "")),
        data_source=str(data.get("data_source", "")),
        dataset_name=str(data.get("dataset_name", "")),
        data_path=data.get("path"),
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        num_workers=(spec.get("training_config") or {}).get("num_workers"),
        task=str(spec.get("task") or "train"),
        data_split=data.get("split"),
    )


def strategy_knobs(job: Job) -> dict:
    """The strategy's own knobs of a stored job (as submitted)."""
    training = (job.spec or {}).get("training_config") or {}
    return {k: v for k, v in training.items() if k not in ("strategy", "num_workers")}


def worker_processes(job: Job) -> int:
    """How many worker actors the job's strategy gives its requirements."""
    found = _strategy_and_settings(job)
    if found is None:  # stored under older rules: its run fails with the reason
        return 1
    strategy, settings = found
    return strategy.worker_count(submitted_job(job), settings)


def extra_shares(job: Job) -> tuple[ExtraShare, ...]:
    """The job's parts beside its requirements' workers (split's loaders)."""
    found = _strategy_and_settings(job)
    if found is None:
        return ()
    strategy, settings = found
    return strategy.extra_shares(submitted_job(job), settings)


def _strategy_and_settings(job: Job) -> tuple[StrategyRules, object] | None:
    try:
        strategy = get_rules(job.strategy)
    except SettingsError:
        return None
    try:
        settings = strategy.parse_settings(strategy_knobs(job))
    except SettingsError:  # a spec stored under older rules still gets placed
        settings = strategy.parse_settings({})
    return strategy, settings


def capacity_and_free(session: Session) -> tuple[list[NodeCapacity], list[NodeCapacity]]:
    """Eligible nodes' totals, and what is left of them after the placed jobs' slots."""
    nodes = eligible_nodes(session)
    capacity = [
        NodeCapacity(
            n.id,
            n.gpu,
            n.cpu_cores,
            n.memory_gb,
            shares_clusters=not n.single_node_only,
            pool=n.ray_pool,
        )
        for n in nodes
    ]
    used = [
        slot
        for job in session.scalars(select(Job).where(Job.status.in_(ACTIVE)))
        for slot in slots_of(job)
    ]
    return capacity, subtract(capacity, used)


def jobs_by_id(session: Session, ids: Collection[int]) -> list[Job]:
    """The jobs with these ids, in id order, read in chunks (IN lists stay short)."""
    found: list[Job] = []
    ordered = sorted(ids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        found.extend(session.scalars(select(Job).where(Job.id.in_(chunk)).order_by(Job.id)))
    return found


class QueueView:
    """The queue as the scheduler sees it, kept across rounds: a queued job's requirements
    and worker count never change, so each is read once, not every time the queue is
    planned (thousands of queued jobs would otherwise be reloaded whenever one arrives)."""

    def __init__(self) -> None:
        self.pending: dict[int, PendingJob] = {}

    def plan(self, session: Session) -> Plan:
        capacity, free = capacity_and_free(session)
        queued = session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED.value, Job.cancel_requested_at.is_(None))
            .order_by(Job.id)
        ).all()
        missing = [job_id for job_id in queued if job_id not in self.pending]
        for job in jobs_by_id(session, missing):
            self.pending[job.id] = pending_job(job)
        self.pending = {job_id: self.pending[job_id] for job_id in queued}
        return plan([self.pending[job_id] for job_id in queued], free, capacity)
