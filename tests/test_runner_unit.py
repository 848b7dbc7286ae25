"""The JobRunner as a plain class, and the small pure pieces of the run path (no Ray)."""

from __future__ import annotations

import time

from compute.dispatcher import add_usage, usage_reports
from compute.models import Job
from ray_module import events
from ray_module.data_handler import DataError
from ray_module.strategies.data_parallel import total_steps_for
from ray_module.training import JobRunner, RunConfig, describe, is_retryable


def config(strategy: str = "split") -> RunConfig:
    return RunConfig(
        job_id=7,
        strategy=strategy,
        model={},
        data={},
        training={},
        workers=(),
        storage_path="/tmp/distlm-unit",
    )


def wait_state(runner: JobRunner, states: set[str]) -> str:
    deadline = time.monotonic() + 10
    while runner.state() not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return runner.state()


def test_events_are_numbered_and_read_from_a_cursor() -> None:
    runner = JobRunner(config())
    runner.emit(events.metric(1, {"loss": 2.0}))
    runner.emit(events.usage(3, gpu_seconds=0, cpu_core_seconds=10, memory_gb_seconds=5))
    assert [e["seq"] for e in runner.events(0)] == [1, 2]
    assert [e["type"] for e in runner.events(1)] == ["usage"]
    assert runner.events(2) == []


def test_an_unavailable_strategy_fails_the_run_without_retry() -> None:
    runner = JobRunner(config("split"))
    runner.start()
    assert wait_state(runner, {"failed"}) == "failed"
    status = [e for e in runner.events(0) if e["type"] == "status"]
    assert [s["state"] for s in status] == ["running", "failed"]
    assert status[-1]["retryable"] is False
    assert "not available" in status[-1]["reason"]


def test_retryable_failures_are_lost_workers_not_bad_input() -> None:
    assert is_retryable(RuntimeError("The actor died unexpectedly before finishing this task"))
    assert is_retryable(RuntimeError("connection reset"))
    assert not is_retryable(DataError("unknown dataset"))
    wrapped = RuntimeError("Training failed: ModelError('could not load gpt2')")
    assert not is_retryable(wrapped)


def test_describe_gives_one_line_from_the_root_cause() -> None:
    try:
        try:
            raise ValueError("bad column 'txt'\nmore lines")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert describe(exc) == "ValueError: bad column 'txt'"


def test_max_steps_alone_sets_the_length_and_epochs_bound_it() -> None:
    assert total_steps_for({"epochs": None, "max_steps": 500}, 50) == 500
    assert total_steps_for({"epochs": 2, "max_steps": 500}, 50) == 100
    assert total_steps_for({"epochs": 2, "max_steps": 30}, 50) == 30
    assert total_steps_for({"epochs": None, "max_steps": None}, 50) == 50


def test_usage_accumulates_per_node() -> None:
    job = Job(usage=None)
    for node in (1, 2, 1):
        add_usage(job, events.usage(node, gpu_seconds=1, cpu_core_seconds=2, memory_gb_seconds=3))
    assert job.usage == {
        "1": {"gpu_seconds": 2.0, "cpu_core_seconds": 4.0, "memory_gb_seconds": 6.0},
        "2": {"gpu_seconds": 1.0, "cpu_core_seconds": 2.0, "memory_gb_seconds": 3.0},
    }
    assert sorted(r.node_id for r in usage_reports(job)) == [1, 2]


def test_an_attempt_that_never_starts_training_is_stalled() -> None:
    import datetime as dt

    from compute.dispatcher import attempt_stalled

    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    job = Job(event_cursor=1, updated_at=started)
    assert not attempt_stalled(job, now=started + dt.timedelta(seconds=599), timeout_s=600)
    assert attempt_stalled(job, now=started + dt.timedelta(seconds=601), timeout_s=600)
    job.event_cursor = 5  # training events arrived: not stalled, however long it runs
    assert not attempt_stalled(job, now=started + dt.timedelta(hours=5), timeout_s=600)


def test_progress_names_the_strategys_unit_and_total() -> None:
    from compute.dispatcher import progress

    def job(strategy: str, training: dict) -> Job:
        return Job(strategy=strategy, spec={"training_config": training})

    assert progress(job("fedavg", {"rounds": 12}), 4) == "round 4 of 12"
    assert progress(job("fedavg", {}), 1) == "round 1 of 10"
    assert progress(job("es", {"steps": 60}), 30) == "step 30 of 60"
    assert progress(job("data_parallel", {"max_steps": 20}), 3) == "step 3 of 20"
    assert progress(job("data_parallel", {}), 3) == "step 3"
