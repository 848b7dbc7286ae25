"""From the database to the pure scheduler and back: eligible nodes, their free capacity,
and queued jobs as the scheduler sees them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.job_state import JobStatus
from compute.models import Job, Node
from compute.nodes import NodeApproval
from ray_module.federated.settings import FedAvgSettings
from ray_module.scheduler import NodeCapacity, PendingJob, Plan, WorkerSlot, plan, subtract

ACTIVE = (JobStatus.SCHEDULED.value, JobStatus.RUNNING.value)


def eligible_nodes(session: Session) -> list[Node]:
    """Approved, unflagged nodes whose Ray worker is alive: the only ones work goes to."""
    return list(
        session.scalars(
            select(Node)
            .where(
                Node.approval == NodeApproval.APPROVED.value,
                Node.flag_reason == "",
                Node.ray_alive.is_(True),
            )
            .order_by(Node.id)
        )
    )


def slots_of(job: Job) -> list[WorkerSlot]:
    return [WorkerSlot(**slot) for slot in (job.placement or [])]


def pending_job(job: Job) -> PendingJob:
    training = job.spec.get("training_config") or {}
    return PendingJob(
        job_id=job.id,
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        workers=worker_processes(job, training),
    )


def worker_processes(job: Job, training: dict) -> int:
    """How many worker actors a job asks for: ``num_workers`` when set. Otherwise a federated
    job gets one client host per whole core (or GPU) of its requirements, at most one per
    client (fractional-core actors would only contend for the same cores, and each actor
    process costs a torch import; extra clients are dealt to the hosts), and an ES job one
    evaluator per whole core (or GPU)."""
    if training.get("num_workers"):
        return int(training["num_workers"])
    slots = job.gpu if job.gpu else max(1, int(job.cpu_cores))
    if job.strategy == "fedavg":
        clients = int(training.get("clients") or FedAvgSettings.clients)
        return max(1, min(clients, slots))
    if job.strategy == "es":  # ES scales with evaluators: one per core (or GPU)
        return slots
    return 1


def capacity_and_free(session: Session) -> tuple[list[NodeCapacity], list[NodeCapacity]]:
    """Eligible nodes' totals, and what is left of them after the placed jobs' slots."""
    nodes = eligible_nodes(session)
    capacity = [NodeCapacity(n.id, n.gpu, n.cpu_cores, n.memory_gb) for n in nodes]
    used = [
        slot
        for job in session.scalars(select(Job).where(Job.status.in_(ACTIVE)))
        for slot in slots_of(job)
    ]
    return capacity, subtract(capacity, used)


def plan_queue(session: Session) -> tuple[Plan, dict[int, Job]]:
    capacity, free = capacity_and_free(session)
    queued = list(
        session.scalars(
            select(Job)
            .where(Job.status == JobStatus.QUEUED.value, Job.cancel_requested_at.is_(None))
            .order_by(Job.id)
        )
    )
    decisions = plan([pending_job(j) for j in queued], free, capacity)
    return decisions, {j.id: j for j in queued}
