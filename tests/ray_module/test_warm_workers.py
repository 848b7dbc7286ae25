"""A node's warm workers (``ray_module.warm``): a job's actors start on processes that
imported torch before it asked, with the same results as on fresh ones; each serves one
job only, dies with the process that took it, and the node's pool fills again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.events import MetricEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
from ray_module.runner.job_runner import JobRunner
from ray_module.strategies.fedavg.run import run_fedavg
from ray_module.warm.launch import start_keeper, wait_until_warm
from ray_module.warm.pool import WarmWorker, pid_alive, process_start
from tests.polling import wait_for

pytestmark = [pytest.mark.ray]

NODE = 1  # a machine of the session's cluster
SIZE = 2


@pytest.fixture
def keeper(ray_cluster) -> Iterator[Any]:
    """Node 1's keeper of two warm workers, all ready; stopped with its workers after."""
    import ray

    keeper = start_keeper(SIZE, NODE)
    wait_until_warm(keeper)
    yield keeper
    ray.get(keeper.stop.remote())
    ray.kill(keeper)


def fedavg_rounds(tmp_path: Path) -> list[dict]:
    """A small federated job on two hosts of node 1, run from this process; its rounds."""
    config = RunConfig(
        job_id=71,
        request=JobRequest(
            strategy="fedavg",
            model=ModelRequest("classifier", "mlp"),
            data=DataRequest("builtin", "digits", validation_split=0.2),
            knobs={"clients": 4, "rounds": 3, "local_epochs": 1, "seed": 3},
        ),
        workers=(WorkerPlan(NODE, 0, 0.5, 0.5), WorkerPlan(NODE, 0, 0.5, 0.5)),
        storage_path=str(tmp_path),
    )
    runner = JobRunner(config)
    run_fedavg(config, runner)
    rounds = [r.event for r in runner.events() if isinstance(r.event, MetricEvent)][1:]
    timings = ("round_seconds", "node_seconds")
    return [{k: v for k, v in m.values.items() if k not in timings} for m in rounds]


def test_a_job_on_warm_workers_trains_as_on_fresh_ones(ray_cluster, tmp_path, request) -> None:
    fresh = fedavg_rounds(tmp_path / "fresh")  # no keeper yet: fresh Ray actors
    keeper = request.getfixturevalue("keeper")
    import ray

    warm = fedavg_rounds(tmp_path / "warm")
    # Both hosts were warm workers, taken by this process (still alive: still theirs).
    assert ray.get(keeper.state.remote()) == {"size": 2, "idle": 0, "ready": 0, "taken": 2}
    assert [r["validation_accuracy"] for r in warm] == [r["validation_accuracy"] for r in fresh]
    assert warm == fresh


def test_a_warm_worker_serves_one_taker_and_dies_with_it(keeper) -> None:
    import ray

    taker = subprocess.Popen(["sleep", "60"])
    try:
        taken = ray.get(keeper.take.remote(SIZE, NODE, taker.pid))
        assert len(taken) == SIZE
        pids = ray.get([worker.ready.remote() for worker in taken])
        assert len(set(pids)) == SIZE
        # None is handed out twice, nor to another node's job.
        assert ray.get(keeper.take.remote(1, NODE, taker.pid)) == []
        assert ray.get(keeper.state.remote())["taken"] == SIZE
        ray.get(taken[0].become.remote(WarmWorker, 1, (), {}))
        with pytest.raises(ray.exceptions.RayTaskError, match="already serves a job"):
            ray.get(taken[0].become.remote(WarmWorker, 1, (), {}))
        assert ray.get(taken[0].call.remote("ready")) == pids[0]
        # A constructor that raises ends the worker, as it ends a fresh actor: its calls
        # then fail as a lost actor's do (retryable), not as its own error.
        taken[1].become.remote(int, 1, ("not a number",), {})
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(taken[1].call.remote("bit_length"), timeout=15)
    finally:
        taker.kill()
        taker.wait()
    # Its taker gone, every worker it took is killed, and fresh ones take their places.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout_s=15)
    for worker in taken:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.ready.remote(), timeout=15)
    state = wait_until_warm(keeper, timeout_s=60)
    assert state == {"size": 2, "idle": 2, "ready": 2, "taken": 0}
    again = ray.get(keeper.take.remote(SIZE, NODE, os.getpid(), process_start(os.getpid())))
    assert len(again) == SIZE
    assert set(ray.get([w.ready.remote() for w in again])).isdisjoint(pids)
    for worker in again:
        ray.kill(worker)


def test_a_keeper_serves_only_its_own_node_and_takers_on_its_own_machine(keeper) -> None:
    import ray

    assert ray.get(keeper.take.remote(1, NODE + 1, 1)) == []
    # A taker on another machine of a trusted pool: its pid is not a process here, or is
    # another process (started at another time); its workers could not watch its end.
    me = os.getpid()
    assert ray.get(keeper.take.remote(1, NODE, me, process_start(me) + 1)) == []
    assert ray.get(keeper.take.remote(1, NODE, 2**22 + 1)) == []  # above Linux's pid_max
    assert ray.get(keeper.state.remote())["idle"] == SIZE
    (taken,) = ray.get(keeper.take.remote(1, NODE, me, process_start(me)))
    assert ray.get(keeper.state.remote())["taken"] == 1
    ray.kill(taken)


def test_when_its_keeper_dies_an_idle_worker_ends_and_a_taken_one_ends_with_its_taker(
    ray_cluster,
) -> None:
    import ray

    keeper = start_keeper(SIZE, NODE)
    wait_until_warm(keeper)
    taker = subprocess.Popen(["sleep", "60"])
    try:
        taken = ray.get(keeper.take.remote(1, NODE, taker.pid))
        (taken_pid,) = ray.get([worker.ready.remote() for worker in taken])
        ray.get([w.become.remote(WarmWorker, 1, (), {}, taker.pid) for w in taken])
        idle_pids = warm_worker_pids(started_by=parent_of(taken_pid)) - {taken_pid}
        assert len(idle_pids) == SIZE - 1
        ray.kill(keeper)  # no keeper is left to watch the taker, nor to hand out the idle one
        wait_for(lambda: not keeper_answers(keeper), timeout_s=30, what="the keeper to die")
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in idle_pids),
                 timeout_s=15, what="the idle worker to end")  # fmt: skip
        assert Path(f"/proc/{taken_pid}").exists()  # its taker still runs
    finally:
        taker.kill()  # not reaped yet: a zombie, which has gone all the same
        ray.kill(keeper)
    wait_for(lambda: not Path(f"/proc/{taken_pid}").exists(), timeout_s=15)
    taker.wait()
    for worker in taken:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.ready.remote(), timeout=15)


def warm_worker_pids(started_by: int) -> set[int]:
    """The pids of the warm worker processes (idle or taken) that process ``started_by``
    started: this cluster's Ray, not another test process's."""
    return {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and "WarmWorker" in read_quietly(entry / "cmdline")
        and parent_of(int(entry.name)) == started_by
    }


def parent_of(pid: int) -> int | None:
    fields = read_quietly(Path(f"/proc/{pid}/stat")).rpartition(")")[2].split()
    return int(fields[1]) if fields else None


def read_quietly(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_watched_process_is_named_by_its_pid_and_start_time() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start(child.pid)
        assert started is not None and pid_alive(child.pid, started)
        # What a later process given the same pid would look like: another start time.
        assert not pid_alive(child.pid, started + 1)
    finally:
        child.kill()
    # A zombie until reaped: gone all the same.
    wait_for(lambda: not pid_alive(child.pid, started), timeout_s=10, what="the child to end")
    assert process_start(child.pid) == started  # not reaped yet
    child.wait()
    assert not pid_alive(child.pid) and process_start(child.pid) is None


def keeper_answers(keeper: Any) -> bool:
    import ray

    try:
        ray.get(keeper.state.remote(), timeout=5)
    except ray.exceptions.RayError:
        return False
    return True
