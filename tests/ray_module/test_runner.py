"""The JobRunner as a plain class, typed run errors, and the small pure pieces of the run
path (no Ray cluster)."""

from __future__ import annotations

import pickle

import pytest

from compute.models import Job
from protocol.events import MetricEvent, RunState, StatusEvent, UsageEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig, job_request_to_wire
from protocol.strategies.data_parallel import DataParallelSettings
from ray_module.errors import (
    DataError,
    LostWorkersError,
    ModelError,
    SettingsError,
    describe,
    is_retryable,
)
from ray_module.runner.job_runner import JobRunner
from tests.polling import wait_for


def config(strategy: str = "split") -> RunConfig:
    return RunConfig(
        job_id=7,
        request=JobRequest(
            strategy, ModelRequest("classifier", "mlp"), DataRequest("builtin", "digits")
        ),
        workers=(),
        storage_path="/tmp/distlm-unit",
    )


def test_events_are_numbered_and_read_from_a_cursor() -> None:
    runner = JobRunner(config())
    runner.emit(MetricEvent(1, {"loss": 2.0}))
    runner.emit(UsageEvent(3, cpu_core_seconds=10, memory_gb_seconds=5))
    assert [e.seq for e in runner.events(0)] == [1, 2]
    assert [type(e.event) for e in runner.events(1)] == [UsageEvent]
    assert runner.events(2) == []


def test_an_unknown_strategy_fails_the_run_without_retry() -> None:
    runner = JobRunner(config("pipe"))
    runner.start()
    wait_for(lambda: runner.state() is RunState.FAILED, timeout_s=10, what="the run to fail")
    status = [e.event for e in runner.events(0) if isinstance(e.event, StatusEvent)]
    assert [s.state for s in status] == [RunState.RUNNING, RunState.FAILED]
    assert status[-1].retryable is False
    assert "unknown strategy 'pipe'" in status[-1].reason


def test_run_errors_survive_pickling_as_their_own_class() -> None:
    for error in (DataError("no such column"), LostWorkersError("2 of 4 hosts died")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert is_retryable(copy) == is_retryable(error)


def test_retryable_is_decided_by_type_through_ray_wrappers() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    assert is_retryable(LostWorkersError("only 1 of 2 clients are alive"))
    assert is_retryable(ActorDiedError())
    assert is_retryable(RuntimeError("connection reset"))  # unknown: worth another attempt
    assert not is_retryable(DataError("unknown dataset"))
    assert not is_retryable(SettingsError("batch_size must be ..."))
    # A worker's error reaches the runner wrapped by Ray, typed as well as wrapped.
    task_error = RayTaskError("fit", "Traceback ...", ModelError("no gpt2")).as_instanceof_cause()
    assert not is_retryable(task_error)
    assert describe(task_error) == "ModelError: no gpt2"
    lost = RayTaskError("train", "Traceback ...", ActorDiedError()).as_instanceof_cause()
    assert is_retryable(lost)  # a rank whose peer's node died
    # Text that merely mentions an error class no longer decides anything.
    assert is_retryable(RuntimeError("Training failed: ModelError('could not load gpt2')"))


def test_describe_gives_one_line_from_the_root_cause() -> None:
    try:
        try:
            raise ValueError("bad column 'txt'\nmore lines")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert describe(exc) == "ValueError: bad column 'txt'"


@pytest.mark.parametrize(
    ("epochs", "max_steps", "steps"),
    [(None, 500, 500), (2, 500, 100), (2, 30, 30), (None, None, 50)],
)
def test_max_steps_alone_sets_the_length_and_epochs_bound_it(epochs, max_steps, steps) -> None:
    settings = DataParallelSettings(epochs=epochs, max_steps=max_steps)
    assert settings.total_steps(batches_per_epoch=50) == steps


def test_progress_names_the_strategys_unit_and_total() -> None:
    from compute.dispatch.dispatcher import progress

    def job(strategy: str, training: dict) -> Job:
        request = JobRequest(
            strategy, ModelRequest("classifier", "mlp"), DataRequest("builtin", "digits"), training
        )
        return Job(strategy=strategy, request=job_request_to_wire(request))

    assert progress(job("fedavg", {"rounds": 12}), 4) == "round 4 of 12"
    assert progress(job("fedavg", {}), 1) == "round 1 of 10"
    assert progress(job("es", {"steps": 60}), 30) == "step 30 of 60"
    assert progress(job("data_parallel", {"max_steps": 20}), 3) == "step 3 of 20"
    assert progress(job("data_parallel", {}), 3) == "step 3"
