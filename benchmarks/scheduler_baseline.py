"""The placement policy as it was before it was made fast (2026-12-06), frozen as the baseline
of ``scheduler.py``: for every job it fits again from scratch, and for every worker it sorts
every node again. Same rules, same plans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from compute.dispatch.placement import (
    NodeCapacity,
    PendingJob,
    Placement,
    Plan,
    Waiting,
    _fits,
    _node_order,
    waiting_reason,
    worker_count,
    worker_share,
)
from protocol.run import WorkerPlan


def fit_job(job: PendingJob, nodes: Sequence[NodeCapacity]) -> tuple[WorkerPlan, ...] | None:
    sharing = [n for n in nodes if n.shares_clusters]
    pools = sorted({n.pool for n in sharing if n.pool is not None})
    groups = [[n for n in sharing if n.pool is None]]
    groups += [[n for n in sharing if n.pool == pool] for pool in pools]
    for group in groups:
        if group and (slots := fit_on(job, group)) is not None:
            return slots
    for node in nodes:
        if not node.shares_clusters and (alone := fit_on(job, [node])) is not None:
            return alone
    return None


def fit_on(job: PendingJob, nodes: Sequence[NodeCapacity]) -> tuple[WorkerPlan, ...] | None:
    gpu, cpu, memory = worker_share(job)
    shapes = [WorkerPlan(0, gpu, cpu, memory)] * worker_count(job) + [
        WorkerPlan(0, part.gpu, part.cpu_cores, part.memory_gb, part.role)
        for part in job.extra
        for _ in range(max(1, part.count))
    ]
    free = {n.node_id: n for n in nodes}
    slots: list[WorkerPlan] = []
    for shape in shapes:
        taken = {slot.node_id for slot in slots}

        def order(node: NodeCapacity, shape: WorkerPlan = shape, taken: set[int] = taken) -> tuple:
            beside = shape.role != "worker" and node.node_id in taken
            return (beside, *_node_order(node, shape.gpu > 0))

        candidates = sorted(free.values(), key=order)
        chosen = next(
            (n for n in candidates if _fits(n, shape.gpu, shape.cpu_cores, shape.memory_gb)),
            None,
        )
        if chosen is None:
            return None
        free[chosen.node_id] = replace(
            chosen,
            gpu=chosen.gpu - shape.gpu,
            cpu_cores=chosen.cpu_cores - shape.cpu_cores,
            memory_gb=chosen.memory_gb - shape.memory_gb,
        )
        slots.append(replace(shape, node_id=chosen.node_id))
    return tuple(slots)


def baseline_plan(
    pending: Sequence[PendingJob],
    free: Sequence[NodeCapacity],
    capacity: Sequence[NodeCapacity] | None = None,
) -> Plan:
    remaining = {n.node_id: n for n in free}
    placements: list[Placement] = []
    waiting: list[Waiting] = []
    for job in pending:
        slots = fit_job(job, list(remaining.values()))
        if slots is None:
            # As before: the job is fitted again on the whole capacity for its reason.
            busy = fit_job(job, capacity or free) is not None
            reason = (
                "waiting for resources: the nodes that can run it are busy"
                if busy
                else waiting_reason(job, capacity or free)
            )
            waiting.append(Waiting(job.job_id, reason))
            continue
        for slot in slots:
            node = remaining[slot.node_id]
            remaining[slot.node_id] = replace(
                node,
                gpu=node.gpu - slot.gpu,
                cpu_cores=node.cpu_cores - slot.cpu_cores,
                memory_gb=node.memory_gb - slot.memory_gb,
            )
        placements.append(Placement(job.job_id, slots))
    return Plan(tuple(placements), tuple(waiting))
