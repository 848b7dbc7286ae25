"""One scheduling round at internet scale, simulated: the placement policy alone (no database,
no Ray) on a busy pool of N nodes with M queued jobs, against the straightforward policy it
replaced (``scheduler_baseline.py``), in the same process; the two must make the same plan.

    .venv/bin/python benchmarks/scheduler.py             # the grid
    .venv/bin/python benchmarks/scheduler.py 1000 10000  # one point

The pool: a tenth of the nodes have GPUs, some take single-node jobs only, some belong to a
trusted pool; most capacity is already taken by running jobs (free = 0-2 cores a node). The
queue: mostly small CPU jobs, some multi-worker ones, some GPU ones, a few split jobs with
loader parts, and a few that no node could ever hold.
"""

from __future__ import annotations

import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import report
from benchmarks.scheduler_baseline import baseline_plan

from compute.dispatch.placement import NodeCapacity, PendingJob, plan
from protocol.placement import ExtraShare

GRID_NODES = (10, 100, 1000, 10000)
GRID_JOBS = (10, 100, 1000, 10000)
BASELINE_LIMIT = 3_000_000  # nodes x jobs beyond which the baseline runs once, not 3 times
BASELINE_SKIP = 20_000_000  # ... and beyond which it is not run (minutes a point)


def pool(count: int, rng: random.Random) -> tuple[list[NodeCapacity], list[NodeCapacity]]:
    """(capacity, free) of ``count`` nodes."""
    capacity, free = [], []
    for node_id in range(1, count + 1):
        gpu = rng.choice((1, 2, 4)) if rng.random() < 0.1 else 0
        cores = float(rng.choice((2, 4, 8, 16)))
        memory = cores * 4
        shares = rng.random() > 0.05
        trusted = f"pool-{rng.randrange(3)}" if rng.random() < 0.1 else None
        node = NodeCapacity(node_id, gpu, cores, memory, shares, trusted)
        capacity.append(node)
        busy = rng.random() < 0.8  # most of the pool is running something
        free.append(
            NodeCapacity(
                node_id,
                0 if busy else gpu,
                float(rng.choice((0, 1, 2))) if busy else cores,
                8.0 if busy else memory,
                shares,
                trusted,
            )
        )
    return capacity, free


def queue(count: int, rng: random.Random) -> list[PendingJob]:
    jobs = []
    for job_id in range(1, count + 1):
        kind = rng.random()
        if kind < 0.6:
            job = PendingJob(job_id, 0, float(rng.choice((1, 2))), 2.0)
        elif kind < 0.8:
            workers = rng.choice((2, 4))
            job = PendingJob(job_id, 0, 2.0 * workers, 4.0 * workers, workers)
        elif kind < 0.9:
            job = PendingJob(job_id, rng.choice((1, 2)), 4.0, 16.0)
        elif kind < 0.98:
            loaders = (ExtraShare("loader", 0, 1.0, 2.0, rng.choice((1, 2))),)
            job = PendingJob(job_id, 0, 2.0, 4.0, 1, loaders)
        else:
            job = PendingJob(job_id, 0, 64.0, 256.0)  # no node is that big
        jobs.append(job)
    return jobs


def timed(function, *args, repeat: int = 3) -> tuple[float, object]:
    """Best of ``repeat`` wall times, and the result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def point(nodes: int, jobs: int) -> tuple[float | None, float]:
    """(baseline seconds or None where too slow to run, plan seconds)."""
    rng = random.Random(nodes * 100_003 + jobs)
    capacity, free = pool(nodes, rng)
    pending = queue(jobs, rng)
    after, got = timed(plan, pending, free, capacity)
    if nodes * jobs > BASELINE_SKIP:
        return None, after
    repeat = 1 if nodes * jobs > BASELINE_LIMIT else 3
    before, expected = timed(baseline_plan, pending, free, capacity, repeat=repeat)
    assert got == expected, f"plans differ at {nodes} nodes x {jobs} jobs"
    return before, after


def running_parts(nodes: int) -> tuple[float, float, float]:
    """The rest of a round's pure work on a busy pool: each running job's charged nodes
    (from its own nodes; the old rule took every node of other owners: timed as the
    baseline), then a decision for each with no new events. Milliseconds: (baseline charged
    nodes, charged nodes, decisions)."""
    import datetime as dt

    from compute.billing.service import charged_nodes
    from compute.billing.usage import JobUsage
    from compute.dispatch.policy import DispatchLimits, RunningJob, decide
    from compute.models import Job
    from ledger.pricing import Rates

    owners = {node: node % 50 for node in range(1, nodes + 1)}
    jobs = [
        Job(
            id=node,
            owner_id=1000 + node,
            usage={str(node): {"cpu_core_seconds": 60.0}},
            placement=[{"node_id": node}],
        )
        for node in range(1, nodes + 1, 2)  # a job on every other node
    ]
    start = time.perf_counter()
    for job in jobs:  # the old rule, for comparison
        frozenset(n for n, owner in owners.items() if owner != job.owner_id)
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    charged = {job.id: charged_nodes(owners, job) for job in jobs}
    ours = time.perf_counter() - start
    now = dt.datetime.now(dt.UTC)
    running = [
        RunningJob(
            job.id,
            1,
            5,
            now,
            now,
            3600,
            False,
            10**9,
            JobUsage.from_column(job.usage),
            (),
            charged[job.id],
        )
        for job in jobs
    ]
    rates = Rates(Decimal(1), Decimal("0.1"), Decimal("0.01"), Decimal(5))
    start = time.perf_counter()
    for job in running:
        decide(job, [], now=now, limits=DispatchLimits(3, 120), rates=rates)
    decisions = time.perf_counter() - start
    return baseline * 1000, ours * 1000, decisions * 1000


def main() -> None:
    points = (
        [(int(sys.argv[1]), int(sys.argv[2]))]
        if len(sys.argv) == 3
        else [(n, j) for n in GRID_NODES for j in GRID_JOBS]
    )
    print(f"{'nodes':>6} {'jobs':>6} {'baseline ms':>12} {'plan ms':>9} {'speed-up':>9}")
    for nodes, jobs in points:
        before, after = point(nodes, jobs)
        baseline = f"{before * 1000:>12.1f}" if before is not None else f"{'(not run)':>12}"
        ratio = f"{before / after:>8.1f}x" if before is not None else f"{'':>9}"
        print(f"{nodes:>6} {jobs:>6} {baseline} {after * 1000:>9.1f} {ratio}")
        if (nodes, jobs) == (1000, 10000):
            report("scheduler", "a round's plan, 1,000 nodes x 10,000 jobs", after * 1000,
                   unit="ms", aim="<= 100")  # fmt: skip
    largest = max(nodes for nodes, _ in points)
    old_charged, charged, decisions = running_parts(largest)
    print(
        f"\n{largest} nodes, a running job on every other one: charged nodes "
        f"{old_charged:.1f} ms before, {charged:.1f} ms now; decisions with no new events "
        f"{decisions:.1f} ms"
    )


if __name__ == "__main__":
    main()
