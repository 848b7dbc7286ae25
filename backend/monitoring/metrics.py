"""System, node and training metrics built from what the database holds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import Role, User
from compute.billing.usage import JobUsage, figures_of
from compute.dispatch.scheduling import capacity_and_free
from compute.jobs.state import JobStatus
from compute.models import Job, JobMetric, Node, NodeHeartbeat
from compute.nodes.service import NodeApproval, NodeStatus, node_status
from ledger.invariants import ledger_report
from ledger.models import EntryKind, LedgerEntry
from ledger.pricing import ResourceSeconds, tokens


def system_metrics(session: Session, *, now: dt.datetime, node_timeout_s: int) -> dict[str, Any]:
    users_by_role = {role.value: 0 for role in Role}
    for role, count in session.execute(select(User.role, func.count()).group_by(User.role)):
        users_by_role[role] = count

    jobs_by_status = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        jobs_by_status[status] = count

    nodes_by_status = {status.value: 0 for status in NodeStatus}
    nodes_by_approval = {approval.value: 0 for approval in NodeApproval}
    online = {"nodes": 0, "gpu": 0, "cpu_cores": 0.0, "memory_gb": 0.0}
    for node in session.scalars(select(Node)):
        status = node_status(node, now=now, timeout_s=node_timeout_s)
        nodes_by_status[status.value] += 1
        nodes_by_approval[node.approval] += 1
        if status is NodeStatus.ONLINE and node.approval == NodeApproval.APPROVED:
            online["nodes"] += 1
            online["gpu"] += node.gpu
            online["cpu_cores"] += node.cpu_cores
            online["memory_gb"] += node.memory_gb

    terminal = {s.value for s in JobStatus if s.is_terminal()}
    terminal_job_ids = set(session.scalars(select(Job.id).where(Job.status.in_(terminal))))
    report = ledger_report(session, terminal_job_ids=terminal_job_ids)

    return {
        "ledger": {
            "issued": tokens(report.issued),
            "in_wallets": tokens(report.in_wallets),
            "in_escrow": tokens(report.in_escrow),
            "pending": tokens(report.pending),
            "fees": tokens(report.fees),
            "invariant_ok": report.invariant_ok,
            "problems": list(report.problems),
        },
        "users_by_role": users_by_role,
        "nodes_by_status": nodes_by_status,
        "nodes_by_approval": nodes_by_approval,
        "jobs_by_status": jobs_by_status,
        "online_resources": online,
        # What the scheduler can still place, per eligible node (approved, unflagged, in Ray).
        "free_resources": [
            {"node_id": n.node_id, "gpu": n.gpu, "cpu_cores": n.cpu_cores, "memory_gb": n.memory_gb}
            for n in capacity_and_free(session)[1]
        ],
        "generated_at": now.isoformat(),
    }


def node_samples(session: Session, node: Node, *, limit: int) -> list[NodeHeartbeat]:
    return list(
        session.scalars(
            select(NodeHeartbeat)
            .where(NodeHeartbeat.node_id == node.id)
            .order_by(NodeHeartbeat.received_at.desc(), NodeHeartbeat.id.desc())
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class NodeActivity:
    jobs_run: int
    gpu_seconds: float
    cpu_core_seconds: float
    memory_gb_seconds: float
    tokens_earned: int  # micro-tokens credited to the owner for this node's work


def node_activity(session: Session, node: Node) -> NodeActivity:
    """What a node has served: jobs with metered work on it, resource-seconds, earnings."""
    jobs_run = 0
    served = ResourceSeconds()
    for stored in session.scalars(select(Job.usage).where(Job.usage.is_not(None))):
        usage = JobUsage.from_column(stored)
        if node.id in usage.nodes:
            jobs_run += 1
            served += usage.of_node(node.id)
    earned = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.node_id == node.id, LedgerEntry.kind == EntryKind.NODE_CREDIT.value
        )
    )
    return NodeActivity(jobs_run=jobs_run, tokens_earned=int(earned or 0), **figures_of(served))


def training_series(
    session: Session, job: Job, *, after_step: int | None, limit: int
) -> list[JobMetric]:
    query = select(JobMetric).where(JobMetric.job_id == job.id)
    if after_step is not None:
        query = query.where(JobMetric.step > after_step)
    return list(session.scalars(query.order_by(JobMetric.step, JobMetric.id).limit(limit)))
