"""One contract, every registered strategy (the way Flower runs one state test suite against
each backend): a run starts on two nodes, emits metrics in its own unit, credits each node
for its work, checkpoints, resumes after its checkpoint, stops when asked, frees its nodes
when its runner is stopped, and treats a lost worker as data or a retryable failure, never
a final one. Runs go through the real runner actor on a two-node Ray cluster."""

from __future__ import annotations

import itertools
import os
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    Event,
    MetricEvent,
    RunState,
    StatusEvent,
    UsageEvent,
)
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, WorkerPlan
from ray_module.runner.client import cancel_runner, fetch_events, launch_runner, stop_runner
from ray_module.strategies.registry import STRATEGIES, get_strategy
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@dataclass(frozen=True)
class Case:
    """A tiny job of one strategy: ``knobs`` plus the length key set to a short or long run."""

    model: ModelRequest
    data: DataRequest
    knobs: dict
    length_key: str
    worker_class: str  # the Ray actor class of its workers (the one killed on node 2)
    workers: tuple[WorkerPlan, ...] | None = None  # None: one worker on each node


CASES = {
    "data_parallel": Case(
        ModelRequest("simple_transformer", "tiny-gpt2"),
        DataRequest("builtin", "stdlib-text", max_samples=60),
        {"batch_size": 4, "seq_len": 32, "checkpoint_interval": 1},
        "max_steps",
        "DataParallelRank",
    ),
    "fedavg": Case(
        ModelRequest("classifier", "mlp"),
        DataRequest("builtin", "digits", max_samples=400),
        {"clients": 2, "min_fit_clients": 1, "round_timeout_s": 30},
        "rounds",
        "ClientHost",
    ),
    "es": Case(
        ModelRequest("char_rnn", "rnn"),
        DataRequest("builtin", "stdlib-text", max_samples=300),
        {"population": 8, "seq_len": 32, "checkpoint_interval": 1, "step_timeout_s": 30},
        "steps",
        "ESWorker",
    ),
    "split": Case(
        ModelRequest("classifier", "mlp"),
        DataRequest("builtin", "digits", max_samples=400),
        {"batch_size": 32, "checkpoint_interval": 1, "augment": True},
        "max_steps",
        "BatchLoader",
        # The trainer on node 1, the data stage on node 2.
        (WorkerPlan(1, 0, 1.0, 0.5), WorkerPlan(2, 0, 1.0, 0.5, role="loader")),
    ),
}
TWO_NODES = (WorkerPlan(1, 0, 1.0, 0.5), WorkerPlan(2, 0, 1.0, 0.5))
STEP_DELAY = {"split": {"step_delay_s": 0.1}}  # knobs that slow a mode's steps on purpose
job_ids = itertools.count(9000)  # runner names are per job id and outlive a test


def test_every_registered_strategy_has_a_contract_case() -> None:
    assert set(CASES) == set(STRATEGIES)


def config(name: str, length: int, storage: Path, job_id: int | None = None) -> RunConfig:
    case = CASES[name]
    return RunConfig(
        job_id=job_id if job_id is not None else next(job_ids),
        request=JobRequest(
            strategy=name,
            model=case.model,
            data=case.data,
            knobs={**case.knobs, case.length_key: length},
        ),
        workers=case.workers or TWO_NODES,
        storage_path=str(storage),
    )


class Watched:
    """A launched run and the events it has emitted so far."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.seen: list[Event] = []
        launch_runner(run)

    def poll(self) -> list[Event]:
        fresh = fetch_events(self.run.job_id, len(self.seen))
        assert fresh is not None, "the runner died"
        self.seen.extend(recorded.event for recorded in fresh)
        return self.seen

    def ended(self) -> StatusEvent | None:
        ends = [e for e in self.poll() if isinstance(e, StatusEvent) and e.state.is_terminal()]
        return ends[-1] if ends else None

    def wait_until_ended(self, timeout_s: float = 300) -> StatusEvent:
        return wait_for(
            self.ended,
            timeout_s=timeout_s,
            what=lambda: f"the end of {self.run.strategy}: {self.seen[-3:]}",
        )


def run_to_the_end(run: RunConfig, timeout_s: float = 300) -> list[Event]:
    """Launch the runner actor and collect its events until it reports a final state."""
    watched = Watched(run)
    try:
        watched.wait_until_ended(timeout_s)
    finally:
        stop_runner(run.job_id)
    return watched.seen


def steps(seen: list[Event]) -> list[int]:
    return [e.step for e in seen if isinstance(e, MetricEvent) and e.step > 0]


def final_status(seen: list[Event]) -> StatusEvent:
    return [e for e in seen if isinstance(e, StatusEvent)][-1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_trains_credits_each_node_checkpoints_and_resumes_after_it(
    name: str, ray_cluster, tmp_path: Path
) -> None:
    strategy = get_strategy(name)
    first = config(name, 2, tmp_path)
    seen = run_to_the_end(first)
    assert final_status(seen).state is RunState.SUCCEEDED, final_status(seen)
    assert steps(seen)[-1] == 2 and sorted(set(steps(seen))) == [1, 2]
    assert any(isinstance(e, CheckpointEvent) and e.step == 2 for e in seen)
    assert any(isinstance(e, ArtifactEvent) and Path(e.path).is_dir() for e in seen)
    credited = {e.node_id for e in seen if isinstance(e, UsageEvent) and e.cpu_core_seconds > 0}
    assert credited == {1, 2}  # both nodes did work and each is credited for it
    job_dir = Path(first.job_dir)
    assert strategy.checkpointed_step(job_dir) == 2

    longer = run_to_the_end(config(name, 4, tmp_path, job_id=first.job_id))
    assert final_status(longer).state is RunState.SUCCEEDED, final_status(longer)
    assert sorted(set(steps(longer))) == [3, 4]  # 1-2 came from the checkpoint
    assert strategy.checkpointed_step(job_dir) == 4


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_stops_when_asked_and_its_runner_frees_the_nodes(
    name: str, ray_cluster, tmp_path: Path
) -> None:
    import ray

    run = config(name, 10_000, tmp_path)
    watched = Watched(run)
    wait_for(lambda: steps(watched.poll()), timeout_s=240, what=f"{name}'s first step")
    cancel_runner(run.job_id)
    assert watched.wait_until_ended(timeout_s=120).state is RunState.CANCELLED
    seen = watched.seen
    assert steps(seen)[-1] < 10_000
    stop_runner(run.job_id)
    wait_for(
        lambda: ray.available_resources().get("CPU", 0) >= 4,
        timeout_s=60,
        what="both nodes' CPUs to be free again",
    )


def worker_pids_on(node_hex: str, class_name: str) -> list[int]:
    import ray
    from ray.util.state import list_actors

    # This test session's cluster, by address: without one the state API asks whichever
    # cluster /tmp/ray/ray_current_cluster names (a gateway test's Ray head, perhaps gone).
    address = ray.get_runtime_context().gcs_address
    return [
        actor.pid
        for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        if actor.class_name.endswith(class_name) and actor.node_id == node_hex and actor.pid
    ]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_lost_worker_is_data_or_a_retryable_failure_never_a_final_one(
    name: str, ray_cluster, tmp_path: Path
) -> None:
    _, nodes = ray_cluster
    case = CASES[name]
    run = config(name, 30, tmp_path)
    # Split's 30 tiny steps could end between two looks for its loaders (a look asks Ray's
    # state API, seconds on a busy machine): a slower trainer keeps them alive a while.
    knobs = {**run.request.knobs, **STEP_DELAY.get(name, {})}
    run = replace(run, request=replace(run.request, knobs=knobs))
    watched = Watched(run)

    def workers_on_node_2() -> list[int]:
        started = any(isinstance(e, MetricEvent) for e in watched.poll())
        return worker_pids_on(nodes[2].node_id, case.worker_class) if started else []

    pids = wait_for(workers_on_node_2, timeout_s=240, what=f"{name}'s workers on node 2")
    os.kill(pids[0], signal.SIGKILL)  # the worker process dies, as with its machine
    try:
        status = watched.wait_until_ended(timeout_s=240)
    finally:
        stop_runner(run.job_id)
    seen = watched.seen
    if status.state is RunState.SUCCEEDED:  # the mode went on without the lost worker
        assert steps(seen)[-1] == 30
    else:
        assert status.state is RunState.FAILED and status.retryable, status


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_that_cannot_be_read_fails_the_run_at_once_without_retry(
    name: str, ray_cluster, tmp_path: Path
) -> None:
    """The worker's DataError crosses Ray (an actor call)
    typed, so the job fails with the reason instead of burning attempts."""
    missing = DataRequest("local", "mine", path="no/such/file.csv", data_root=str(tmp_path))
    run = config(name, 2, tmp_path)
    run = replace(run, request=replace(run.request, data=missing))
    status = final_status(run_to_the_end(run))
    assert status.state is RunState.FAILED and not status.retryable, status
    assert status.reason.startswith("DataError: ") and "does not exist" in status.reason
