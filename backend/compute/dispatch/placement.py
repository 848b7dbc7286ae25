"""The control plane's pure placement policy: ``plan(pending, free, capacity) -> Plan``. No
Ray, no database.

FIFO with backfill: jobs are considered oldest first; a job that does not fit now is skipped
and smaller jobs behind it may start (backfill). A job is gang-scheduled: all of its workers
are placed at once or none is. A job that no eligible node could ever hold, even empty, waits
with a reason that says what is missing.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace

from protocol.placement import ExtraShare
from protocol.run import WorkerPlan

EPSILON = 1e-9


@dataclass(frozen=True)
class NodeCapacity:
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    # False: its owner takes only single-node jobs (it never shares a Ray cluster with
    # another machine), so it is never part of a multi-node placement.
    shares_clusters: bool = True
    # The trusted Ray pool its agent is a member of (None: a Ray cluster per job). A
    # multi-node job's nodes are all of one pool, or all of none.
    pool: str | None = None
    # New, or its work recently failed validation (compute.nodes.trust): placed after the
    # trusted nodes, so a job's first worker (its driver, and the validators' first choice)
    # lands on a trusted node where one has room.
    on_probation: bool = False


WHY_EXCLUDED = "whose work in this job failed validation"


@dataclass(frozen=True)
class PendingJob:
    """A queued job's total requirements, how many workers share them, and its extra parts."""

    job_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    workers: int = 1
    extra: tuple[ExtraShare, ...] = ()
    # Nodes whose work in this job failed validation: its next attempt runs without them;
    # or, for an audit, the node it audits.
    excluded: frozenset[int] = frozenset()
    excluded_because: str = WHY_EXCLUDED


@dataclass(frozen=True)
class Placement:
    job_id: int
    slots: tuple[WorkerPlan, ...]  # each worker's and extra part's, as its run config has them


@dataclass(frozen=True)
class Waiting:
    job_id: int
    reason: str


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    waiting: tuple[Waiting, ...]


def worker_count(job: PendingJob) -> int:
    """Workers share the requirements equally; GPUs are whole, one or more per worker."""
    workers = max(1, job.workers)
    if job.gpu:
        workers = min(workers, job.gpu)
        while job.gpu % workers:
            workers -= 1
    return workers


def worker_share(job: PendingJob) -> tuple[int, float, float]:
    workers = worker_count(job)
    return job.gpu // workers, job.cpu_cores / workers, job.memory_gb / workers


def _fits(node: NodeCapacity, gpu: int, cpu: float, memory: float) -> bool:
    return (
        node.gpu >= gpu and node.cpu_cores + EPSILON >= cpu and node.memory_gb + EPSILON >= memory
    )


def _node_order(node: NodeCapacity, needs_gpu: bool) -> tuple[int, bool, int]:
    # CPU-only work goes to CPU-only nodes first, keeping GPU nodes free for GPU jobs; then
    # trusted nodes before those on probation.
    return (0 if needs_gpu or node.gpu == 0 else 1, node.on_probation, node.node_id)


def fit_job(job: PendingJob, nodes: Sequence[NodeCapacity]) -> tuple[WorkerPlan, ...] | None:
    """The job's slots on the nodes that may share a cluster: those with a cluster per job,
    then each pool's; else all on one node that takes only single-node jobs; None when it
    fits no way."""
    return RoundCapacity(nodes).fit(job)


class RoundCapacity:
    """The nodes' free capacity through one planning round, arranged once: the groups that
    may share a cluster and each group's node order. Capacity only shrinks within a round,
    so for each worker shape a cursor skips, for good, the nodes that could not hold it."""

    def __init__(self, nodes: Sequence[NodeCapacity]) -> None:
        self.remaining = {n.node_id: n for n in nodes}
        sharing = [n for n in nodes if n.shares_clusters]
        pools = sorted({n.pool for n in sharing if n.pool is not None})
        groups = [[n for n in sharing if n.pool is None]]
        groups += [[n for n in sharing if n.pool == pool] for pool in pools]
        # A group tried as a whole; then each single-node-only node on its own.
        self.groups = [group for group in groups if group]
        self.groups += [[n] for n in nodes if not n.shares_clusters]
        self.group_of = {n.node_id: g for g, group in enumerate(self.groups) for n in group}
        self.orders: dict[tuple[int, bool], list[int]] = {}
        self.cursors: dict[tuple, int] = {}
        self.no_room: set[tuple] = set()  # (group, job shape): it found no room there
        self.gpu_free_from: dict[int, int] = {}  # where a CPU order's GPU nodes begin

    def order(self, group: int, needs_gpu: bool) -> list[int]:
        """The group's node ids, CPU-only work on nodes with no free GPU first (GPU nodes
        stay free for GPU jobs), then by id. Kept until a node's last free GPU is taken."""
        key = (group, needs_gpu)
        if key not in self.orders:
            nodes = [self.remaining[n.node_id] for n in self.groups[group]]
            nodes.sort(key=lambda n: _node_order(n, needs_gpu))
            self.orders[key] = [n.node_id for n in nodes]
            self.gpu_free_from[group] = sum(1 for n in nodes if n.gpu == 0)
        return self.orders[key]

    def took_last_gpu(self, node_id: int) -> None:
        """The node now orders among the CPU-only ones for CPU work: moved there, and the
        cursors of the group's CPU shapes kept pointing past nodes that cannot fit."""
        group = self.group_of[node_id]
        order = self.orders.get((group, False))
        if order is None:
            return
        old = order.index(node_id)
        order.pop(old)
        new = bisect.bisect_left(
            order,
            (self.remaining[node_id].on_probation, node_id),
            0,
            self.gpu_free_from[group],
            key=lambda n: (self.remaining[n].on_probation, n),
        )
        order.insert(new, node_id)
        self.gpu_free_from[group] += 1
        for key, at in self.cursors.items():
            if key[0] != group or key[1][0]:
                continue
            at -= old < at
            if new < at:
                at = new if _fits(self.remaining[node_id], *key[1]) else at + 1
            self.cursors[key] = at

    def fit(self, job: PendingJob) -> tuple[WorkerPlan, ...] | None:
        shape = job_shape(job)
        for group in range(len(self.groups)):
            if (group, shape) in self.no_room:
                continue  # it found none there before, and there is only less now
            if (slots := self.fit_on(job, group)) is not None:
                return slots
            self.no_room.add((group, shape))
        return None

    def fit_on(self, job: PendingJob, group: int) -> tuple[WorkerPlan, ...] | None:
        """First-fit every worker of the job into the group's nodes (packing workers
        together), then its extra parts, on other nodes than the workers' where there is
        room."""
        gpu, cpu, memory = worker_share(job)
        shapes = [WorkerPlan(0, gpu, cpu, memory)] * worker_count(job) + [
            WorkerPlan(0, part.gpu, part.cpu_cores, part.memory_gb, part.role)
            for part in job.extra
            for _ in range(max(1, part.count))
        ]
        trial: dict[int, NodeCapacity] = {}  # this job's parts so far, not yet committed
        slots: list[WorkerPlan] = []
        for shape in shapes:
            taken = {slot.node_id for slot in slots}
            chosen = self.first_fit(shape, group, trial, taken, job.excluded)
            if chosen is None:
                return None
            trial[chosen.node_id] = replace(
                chosen,
                gpu=chosen.gpu - shape.gpu,
                cpu_cores=chosen.cpu_cores - shape.cpu_cores,
                memory_gb=chosen.memory_gb - shape.memory_gb,
            )
            slots.append(replace(shape, node_id=chosen.node_id))
        return tuple(slots)

    def first_fit(
        self,
        shape: WorkerPlan,
        group: int,
        trial: dict[int, NodeCapacity],
        taken: set[int],
        excluded: frozenset[int] = frozenset(),
    ) -> NodeCapacity | None:
        """The first node of the group with room for ``shape``, this job's parts so far
        (``trial``, on the ``taken`` nodes) counted, and none of the ``excluded``."""
        order = self.order(group, shape.gpu > 0)
        need = (shape.gpu, shape.cpu_cores, shape.memory_gb)
        key = (group, need)
        start = self.cursors.get(key, 0)
        while start < len(order) and not _fits(self.remaining[order[start]], *need):
            start += 1  # committed capacity only shrinks: that node is out for this shape
        self.cursors[key] = start
        if shape.role == "worker":
            return next(
                (
                    node
                    for node_id in order[start:]
                    if node_id not in excluded
                    and _fits(node := trial.get(node_id) or self.remaining[node_id], *need)
                ),
                None,
            )
        # An extra part goes where none of the job's parts is yet, while there is room:
        # the data stage on nodes of its own leaves the trainer's cores to the trainer, and
        # spreads the loaders over as many machines as are free. Only the job's own nodes
        # differ from what the order was made with (a worker may have taken a last GPU).
        elsewhere = (
            self.remaining[node_id]
            for node_id in order[start:]
            if node_id not in taken
            and node_id not in excluded
            and _fits(self.remaining[node_id], *need)
        )
        if (chosen := next(elsewhere, None)) is not None:
            return chosen
        beside = sorted((trial[n] for n in taken), key=lambda n: _node_order(n, shape.gpu > 0))
        return next((n for n in beside if _fits(n, *need)), None)

    def commit(self, slots: Sequence[WorkerPlan]) -> None:
        for slot in slots:
            node = self.remaining[slot.node_id]
            self.remaining[slot.node_id] = replace(
                node,
                gpu=node.gpu - slot.gpu,
                cpu_cores=node.cpu_cores - slot.cpu_cores,
                memory_gb=node.memory_gb - slot.memory_gb,
            )
            if node.gpu and node.gpu == slot.gpu:  # its last free GPU: it now orders as CPU-only
                self.took_last_gpu(slot.node_id)


def waiting_reason(job: PendingJob, capacity: Sequence[NodeCapacity]) -> str:
    """Why the job waits: nothing could ever hold it, or the capacity is busy."""
    if fit_job(job, capacity) is not None:
        return "waiting for resources: the nodes that can run it are busy"
    if job.excluded and fit_job(replace(job, excluded=frozenset()), capacity) is not None:
        left_out = ", ".join(map(str, sorted(job.excluded)))
        return f"waiting for a node other than node(s) {left_out}, {job.excluded_because}"
    gpu, cpu, memory = worker_share(job)
    if not capacity:
        return "waiting for an online, approved node"
    # The reason describes the whole job and what the largest node offers, not one share.
    workers = worker_count(job)
    each = f" ({workers} workers of {{}} each)" if workers > 1 else ""
    if gpu and not any(n.gpu >= gpu for n in capacity):
        largest = max(n.gpu for n in capacity)
        return (
            f"waiting for a node with {_count(gpu, 'GPU')}: the job needs "
            f"{_count(job.gpu, 'GPU')}{each.format(gpu)}; the largest node has {largest}"
        )
    if not any(n.cpu_cores + EPSILON >= cpu for n in capacity):
        largest_cpu = max(n.cpu_cores for n in capacity)
        return (
            f"waiting for a node with {cpu:g} CPU cores: the job needs {job.cpu_cores:g}"
            f"{each.format(f'{cpu:g}')}; the largest node has {largest_cpu:g}"
        )
    if not any(n.memory_gb + EPSILON >= memory for n in capacity):
        largest_memory = max(n.memory_gb for n in capacity)
        return (
            f"waiting for a node with {memory:g} GB of memory: the job needs "
            f"{job.memory_gb:g} GB{each.format(f'{memory:g} GB')}; the largest node has "
            f"{largest_memory:g} GB"
        )
    for part in job.extra:
        if not any(_fits(n, part.gpu, part.cpu_cores, part.memory_gb) for n in capacity):
            return (
                f"waiting for a node for its {part.role}s: each needs {part.cpu_cores:g} CPU "
                f"cores and {part.memory_gb:g} GB, which no online node offers"
            )
    parts = "".join(f" plus {p.count} {p.role}(s)" for p in job.extra)
    return (
        f"waiting for more nodes: {workers} workers of {gpu} GPU, {cpu:g} cores and "
        f"{memory:g} GB each{parts} do not fit the online nodes"
    )


def _count(amount: int, unit: str) -> str:
    return f"{amount} {unit}{'s' if amount != 1 else ''}"


def job_shape(job: PendingJob) -> tuple:
    """What placement looks at: two jobs of one shape fit, or wait, alike."""
    return (job.gpu, job.cpu_cores, job.memory_gb, job.workers, job.extra, job.excluded)


def plan(
    pending: Sequence[PendingJob],
    free: Sequence[NodeCapacity],
    capacity: Sequence[NodeCapacity] | None = None,
) -> Plan:
    """Place what fits now, oldest job first; say why the others wait.

    ``free`` is what eligible nodes have left now; ``capacity`` their totals (to tell "busy"
    from "impossible"); it defaults to ``free``.

    Free capacity only shrinks within a round, so a shape that found no room once finds none
    later in the round: the rest of a long queue of that shape waits without being fitted
    again, and each shape's reason is worked out once.
    """
    round_capacity = RoundCapacity(free)
    placements: list[Placement] = []
    waiting: list[Waiting] = []
    no_room: set[tuple] = set()
    reasons: dict[tuple, str] = {}
    for job in pending:
        shape = job_shape(job)
        slots = None if shape in no_room else round_capacity.fit(job)
        if slots is None:
            no_room.add(shape)
            if shape not in reasons:
                reasons[shape] = waiting_reason(job, capacity or free)
            waiting.append(Waiting(job.job_id, reasons[shape]))
            continue
        round_capacity.commit(slots)
        placements.append(Placement(job.job_id, slots))
    return Plan(tuple(placements), tuple(waiting))


def subtract(capacity: Sequence[NodeCapacity], used: Sequence[WorkerPlan]) -> list[NodeCapacity]:
    """Free capacity: node totals less the slots of jobs already placed."""
    free = {n.node_id: n for n in capacity}
    for slot in used:
        node = free.get(slot.node_id)
        if node is not None:
            free[slot.node_id] = replace(
                node,
                gpu=node.gpu - slot.gpu,
                cpu_cores=node.cpu_cores - slot.cpu_cores,
                memory_gb=node.memory_gb - slot.memory_gb,
            )
    return list(free.values())
