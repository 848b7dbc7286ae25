"""From the database to the pure scheduler and back: eligible nodes, their free capacity,
and queued jobs as the scheduler sees them."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from auth.models import Role, User
from compute.billing.verified_credit import invalid_in_job
from compute.dispatch.placement import (
    WHY_EXCLUDED,
    NodeCapacity,
    PendingJob,
    Plan,
    plan,
    subtract,
)
from compute.jobs.state import ACTIVE, JobStatus
from compute.jobs.strategy import extra_shares, job_request, worker_processes
from compute.models import Job, Node
from compute.nodes.service import NodeApproval
from compute.nodes.trust import on_probation_after
from protocol.run import WorkerPlan


def eligible_nodes(session: Session) -> list[Node]:
    """The only nodes new work goes to: approved, unflagged, not drained or retired, their
    Ray worker alive, their agent not gone, their owner's account enabled and still a node
    owner's (or an admin's)."""
    return list(session.scalars(_eligible(select(Node))))


def _eligible(query: Select) -> Select:
    """``query`` over nodes, narrowed to the eligible ones, in id order."""
    return (
        query.join(User, User.id == Node.owner_id)
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


def slots_of(job: Job) -> list[WorkerPlan]:
    return [WorkerPlan(**slot) for slot in (job.placement or [])]


def left_out(session: Session, job: Job) -> tuple[frozenset[int], str]:
    """The nodes a job may not run on, and why: an audit, the audited node (and its owner's
    other machines where others can hold it); a retried job, the nodes whose work in it
    failed validation; a recompute, the node whose result it computes again (and its owner's
    other machines where others can hold it)."""
    invalid = frozenset(invalid_in_job(session, job.id)) if job.attempts else frozenset()
    excluded = job_request(job).audit.get("excluded")
    if excluded:
        return frozenset(excluded) | invalid, "the audited node or its owner's"
    invalid_before = (job.spec or {}).get("recompute_of", {}).get("excluded")
    if invalid_before:
        because = "the node whose result was invalid, or its owner's"
        return frozenset(invalid_before) | invalid, because
    return invalid, WHY_EXCLUDED


def pending_job(job: Job, excluded: frozenset[int] = frozenset(), because: str = "") -> PendingJob:
    return PendingJob(
        job_id=job.id,
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        workers=worker_processes(job),
        extra=extra_shares(job),
        excluded=excluded,
        excluded_because=because or WHY_EXCLUDED,
    )


# Built once: a submit reads it, and building the statement cost more than running it.
ELIGIBLE_CAPACITY = _eligible(
    select(
        Node.id,
        Node.gpu,
        Node.cpu_cores,
        Node.memory_gb,
        Node.single_node_only,
        Node.ray_pool,
        Node.valid_streak,
    )
)


def eligible_capacity(session: Session) -> list[NodeCapacity]:
    """Eligible nodes' totals (read as plain rows: a submit asks for them, and loading
    whole nodes into the session cost more than the query)."""
    rows = session.execute(ELIGIBLE_CAPACITY)
    return [
        NodeCapacity(
            node_id,
            gpu,
            cpu_cores,
            memory_gb,
            shares_clusters=not single_node_only,
            pool=ray_pool,
            on_probation=on_probation_after(valid_streak),
        )
        for node_id, gpu, cpu_cores, memory_gb, single_node_only, ray_pool, valid_streak in rows
    ]


def capacity_and_free(session: Session) -> tuple[list[NodeCapacity], list[NodeCapacity]]:
    """Eligible nodes' totals, and what is left of them after the placed jobs' slots."""
    capacity = eligible_capacity(session)
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
            self.pending[job.id] = pending_job(job, *left_out(session, job))
        self.pending = {job_id: self.pending[job_id] for job_id in queued}
        return plan([self.pending[job_id] for job_id in queued], free, capacity)
