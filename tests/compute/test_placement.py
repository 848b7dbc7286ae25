"""The pure scheduling policy, without a cluster."""

from __future__ import annotations

from dataclasses import replace

from compute.dispatch.placement import (
    NodeCapacity,
    PendingJob,
    plan,
    subtract,
    worker_count,
)
from protocol.run import WorkerPlan

CPU_A = NodeCapacity(1, gpu=0, cpu_cores=4, memory_gb=16)
CPU_B = NodeCapacity(2, gpu=0, cpu_cores=4, memory_gb=16)
GPU_C = NodeCapacity(3, gpu=2, cpu_cores=8, memory_gb=64)


def test_fifo_places_what_fits_and_backfills_smaller_jobs() -> None:
    big = PendingJob(10, gpu=0, cpu_cores=6, memory_gb=4)
    small = PendingJob(11, gpu=0, cpu_cores=2, memory_gb=4)
    result = plan([big, small], [CPU_A])
    assert [p.job_id for p in result.placements] == [11]
    (waiting,) = result.waiting
    assert waiting.job_id == 10 and "6 CPU cores" in waiting.reason


def test_gpu_job_waits_with_a_clear_reason_when_only_cpu_nodes_are_online() -> None:
    job = PendingJob(1, gpu=1, cpu_cores=2, memory_gb=4)
    result = plan([job], [CPU_A, CPU_B])
    assert result.placements == ()
    assert result.waiting[0].reason == (
        "waiting for a node with 1 GPU: the job needs 1 GPU; the largest node has 0"
    )
    assert plan([job], [CPU_A, GPU_C]).placements[0].slots[0].node_id == 3


def test_cpu_jobs_prefer_cpu_nodes_and_keep_gpus_free() -> None:
    result = plan([PendingJob(1, gpu=0, cpu_cores=2, memory_gb=2)], [GPU_C, CPU_A])
    assert result.placements[0].slots[0].node_id == 1


def test_workers_share_requirements_and_spread_when_one_node_is_too_small() -> None:
    job = PendingJob(1, gpu=0, cpu_cores=6, memory_gb=8, workers=2)
    (placement,) = plan([job], [CPU_A, CPU_B]).placements
    assert placement.slots == (
        WorkerPlan(1, 0, 3.0, 4.0),
        WorkerPlan(2, 0, 3.0, 4.0),
    )


def test_gang_scheduling_places_all_workers_or_none() -> None:
    job = PendingJob(1, gpu=0, cpu_cores=12, memory_gb=8, workers=3)
    result = plan([job], [CPU_A, CPU_B])
    assert result.placements == ()
    assert "3 workers" in result.waiting[0].reason


def test_trusted_nodes_are_placed_before_nodes_on_probation_and_carry_the_driver() -> None:
    new_a = replace(CPU_A, on_probation=True)
    (alone,) = plan([PendingJob(1, gpu=0, cpu_cores=2, memory_gb=2)], [new_a, CPU_B]).placements
    assert alone.slots[0].node_id == 2
    pair = PendingJob(2, gpu=0, cpu_cores=8, memory_gb=8, workers=2)
    (both,) = plan([pair], [new_a, CPU_B]).placements
    assert [slot.node_id for slot in both.slots] == [2, 1]  # the first worker's node drives
    # A GPU node whose last GPU is taken orders among the CPU-only ones, trust first.
    new_gpu = replace(GPU_C, gpu=1, on_probation=False)
    jobs = [PendingJob(3, gpu=1, cpu_cores=1, memory_gb=1),
            PendingJob(4, gpu=0, cpu_cores=4, memory_gb=4, workers=2)]  # fmt: skip
    placed = {
        p.job_id: [s.node_id for s in p.slots] for p in plan(jobs, [new_a, new_gpu]).placements
    }
    assert placed == {3: [3], 4: [3, 3]}  # the trusted node first, though it was a GPU node


def test_busy_is_told_apart_from_impossible() -> None:
    running = [WorkerPlan(1, 0, 4, 4)]
    job = PendingJob(2, gpu=0, cpu_cores=2, memory_gb=2)
    result = plan([job], subtract([CPU_A], running), [CPU_A])
    assert result.waiting[0].reason.startswith("waiting for resources")


def test_fractional_cpu_shares_fit_many_workers_on_one_core() -> None:
    job = PendingJob(1, gpu=0, cpu_cores=1, memory_gb=1, workers=4)
    (placement,) = plan([job], [NodeCapacity(1, 0, 1, 2)]).placements
    assert [s.cpu_cores for s in placement.slots] == [0.25] * 4


def test_gpu_workers_get_whole_gpus() -> None:
    assert worker_count(PendingJob(1, gpu=2, cpu_cores=2, memory_gb=2, workers=4)) == 2
    assert worker_count(PendingJob(1, gpu=3, cpu_cores=2, memory_gb=2, workers=2)) == 1
    assert worker_count(PendingJob(1, gpu=0, cpu_cores=2, memory_gb=2, workers=4)) == 4


def test_nothing_online_says_so() -> None:
    result = plan([PendingJob(1, gpu=0, cpu_cores=1, memory_gb=1)], [])
    assert result.waiting[0].reason == "waiting for an online, approved node"


def test_placements_never_oversubscribe_a_node() -> None:
    jobs = [PendingJob(i, gpu=0, cpu_cores=1.5, memory_gb=5) for i in range(10)]
    result = plan(jobs, [CPU_A, CPU_B])
    for node in (CPU_A, CPU_B):
        slots = [s for p in result.placements for s in p.slots if s.node_id == node.node_id]
        assert sum(s.cpu_cores for s in slots) <= node.cpu_cores
        assert sum(s.memory_gb for s in slots) <= node.memory_gb
    assert len(result.placements) + len(result.waiting) == 10


def test_stored_jobs_get_their_strategys_worker_count() -> None:
    """The scheduler asks the job's strategy (through the registry) how many workers its
    requirements give; the counts themselves are tested in test_registry."""
    from compute.jobs.strategy import worker_processes
    from compute.models import Job
    from protocol.run import (
        DataRequest,
        JobRequest,
        ModelRequest,
        ResourceRequest,
        job_request_to_wire,
    )

    def job(strategy: str, cpu: float, training: dict) -> Job:
        request = JobRequest(
            strategy=strategy,
            model=ModelRequest("classifier", "mlp"),
            data=DataRequest("builtin", "digits"),
            knobs={k: v for k, v in training.items() if k != "num_workers"},
            requirements=ResourceRequest(gpu=0, cpu_cores=cpu, memory_gb=1.0),
            num_workers=training.get("num_workers"),
        )
        return Job(
            strategy=strategy,
            cpu_cores=cpu,
            gpu=0,
            memory_gb=1.0,
            request=job_request_to_wire(request),
        )

    assert worker_processes(job("fedavg", 8, {"clients": 3})) == 3
    assert worker_processes(job("fedavg", 2, {"clients": 4, "num_workers": 4})) == 4
    assert worker_processes(job("es", 4, {})) == 4
    # A spec stored under older rules is still placed (its run reports what is wrong).
    assert worker_processes(job("fedavg", 2, {"no_such_knob": 1})) == 2
    assert worker_processes(job("split", 2, {})) == 1


def test_an_impossible_job_says_what_the_whole_job_needs_and_the_largest_node_has() -> None:
    """Issue 11 (9): the reason names the job's total, not one client's share."""
    six = PendingJob(5, gpu=6, cpu_cores=2, memory_gb=8, workers=2)
    (waiting,) = plan([six], [CPU_A, GPU_C]).waiting
    assert waiting.reason == (
        "waiting for a node with 3 GPUs: the job needs 6 GPUs (2 workers of 3 each); "
        "the largest node has 2"
    )
    huge = PendingJob(6, gpu=0, cpu_cores=64, memory_gb=4)
    (waiting,) = plan([huge], [CPU_A, CPU_B]).waiting
    assert waiting.reason == (
        "waiting for a node with 64 CPU cores: the job needs 64; the largest node has 4"
    )


def test_a_single_node_only_node_takes_whole_jobs_and_never_part_of_one() -> None:
    alone = replace(CPU_B, shares_clusters=False)
    two_workers = PendingJob(1, gpu=0, cpu_cores=8, memory_gb=8, workers=2)  # 4 cores each
    # Needing two machines, it uses only nodes that share clusters: here there is one.
    result = plan([two_workers], [CPU_A, alone])
    assert result.placements == () and result.waiting[0].job_id == 1
    # A job that fits one node may go to the single-node-only one, whole.
    small = PendingJob(2, gpu=0, cpu_cores=4, memory_gb=4)
    busy_a = replace(CPU_A, cpu_cores=0)
    (placement,) = plan([small], [busy_a, alone]).placements
    assert {slot.node_id for slot in placement.slots} == {alone.node_id}
    # Nodes that share clusters are preferred even for a job one node could hold.
    (placement,) = plan([small], [CPU_A, alone]).placements
    assert {slot.node_id for slot in placement.slots} == {CPU_A.node_id}


def test_a_multi_node_job_runs_within_one_pool_or_among_nodes_of_none() -> None:
    in_pool = [replace(CPU_A, pool="10.0.0.1:6379"), replace(CPU_B, pool="10.0.0.1:6379")]
    other_pool = NodeCapacity(4, gpu=0, cpu_cores=4, memory_gb=16, pool="10.9.9.9:6379")
    no_pool = NodeCapacity(5, gpu=0, cpu_cores=4, memory_gb=16)
    two_workers = PendingJob(1, gpu=0, cpu_cores=8, memory_gb=8, workers=2)  # 4 cores each
    # One node of a pool and one of none (or of another pool) never form a job's cluster.
    for pair in ([in_pool[0], no_pool], [in_pool[0], other_pool]):
        result = plan([two_workers], pair)
        assert result.placements == () and result.waiting[0].job_id == 1, pair
    # Two nodes of the same pool do, as two of none would.
    (placement,) = plan([two_workers], [in_pool[0], no_pool, other_pool, in_pool[1]]).placements
    assert {slot.node_id for slot in placement.slots} == {CPU_A.node_id, CPU_B.node_id}
    # A job one node holds goes to any node.
    small = PendingJob(2, gpu=0, cpu_cores=4, memory_gb=4)
    (placement,) = plan([small], [other_pool]).placements
    assert {slot.node_id for slot in placement.slots} == {other_pool.node_id}


def test_the_fast_plan_is_the_plan_of_the_straightforward_policy() -> None:
    """Issue 25 (6): the round's plan skips shapes that found no room and scans nodes with a
    cursor; on random pools and queues (GPUs, trusted pools, single-node-only nodes, loader
    parts, jobs no node can hold) it places and explains exactly as the policy it replaced,
    which fitted every job from scratch (benchmarks/scheduler_baseline.py)."""
    import random

    from benchmarks.scheduler import pool, queue
    from benchmarks.scheduler_baseline import baseline_plan

    for seed in range(400):
        rng = random.Random(seed)
        capacity, free = pool(rng.randint(1, 30), rng)
        pending = queue(rng.randint(1, 60), rng)
        assert plan(pending, free, capacity) == baseline_plan(pending, free, capacity), seed


def test_a_retried_job_is_placed_without_the_nodes_whose_work_in_it_failed_validation() -> None:
    retried = PendingJob(1, gpu=0, cpu_cores=2, memory_gb=2, excluded=frozenset({1}))
    same_shape = PendingJob(2, gpu=0, cpu_cores=2, memory_gb=2)
    result = plan([retried, same_shape], [CPU_A, CPU_B])
    assert [(p.job_id, p.slots[0].node_id) for p in result.placements] == [(1, 2), (2, 1)]
    # Where only the excluded node has room, it waits; another job of its shape still fits.
    result = plan([retried, same_shape], [CPU_A])
    assert [p.job_id for p in result.placements] == [2]
    assert [(w.job_id, w.reason) for w in result.waiting] == [
        (1, "waiting for a node other than node(s) 1, whose work in this job failed validation")
    ]
    two_workers = PendingJob(3, 0, 4, 4, workers=2, excluded=frozenset({2}))
    (placement,) = plan([two_workers], [CPU_A, CPU_B]).placements
    assert {slot.node_id for slot in placement.slots} == {1}  # packed on the one left
