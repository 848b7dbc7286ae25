"""What a job's worker processes print, warn and log reaches the job's runner as log lines
attributed to the worker and its node, bounded per process (issue 23, item 4)."""

from __future__ import annotations

import threading
import time

import pytest

from protocol.events import LogEvent, RunState, StatusEvent
from protocol.run import DataRequest, JobRequest, ModelRequest, RunConfig
from ray_module.contract import NAMESPACE, runner_name
from ray_module.runner.job_runner import JobRunner
from ray_module.worker_logs import FINAL_LINES_S, MAX_LINES, _Sink, _Tee
from tests.polling import wait_for


class Collected:
    def __init__(self) -> None:
        self.lines: list[LogEvent] = []

    def __call__(self, lines: list[LogEvent]) -> None:
        self.lines.extend(lines)


class Quiet:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_lines_are_split_at_newlines_cut_and_bounded_with_a_count_of_the_rest() -> None:
    sent = Collected()
    sink = _Sink(1, "es worker 0 on node 3", send=sent)
    tee = _Tee(Quiet(), sink, "info")  # type: ignore[arg-type]
    tee.write("half a ")
    tee.write("line\nand another\n\n")
    tee.write("x" * 5000 + "\n")
    for number in range(MAX_LINES + 50):
        tee.write(f"line {number}\n")
    sink.flush()
    texts = [line.message for line in sent.lines]
    assert texts[:2] == ["half a line", "and another"]  # empty lines are not kept
    assert len(texts[2]) == 2001 and texts[2].endswith("…")
    assert len(sent.lines) == MAX_LINES + 1
    assert texts[-1] == f"53 more lines of output were not kept (at most {MAX_LINES} per worker)"
    assert {line.source for line in sent.lines} == {"es worker 0 on node 3"}
    assert {line.level for line in sent.lines[:-1]} == {"info"}


def unit_config() -> RunConfig:
    return RunConfig(
        job_id=4243,
        request=JobRequest(
            "es", ModelRequest("char_rnn", "rnn"), DataRequest("builtin", "stdlib-text")
        ),
        workers=(),
        storage_path="/tmp/distlm-unit",
    )


def test_a_runs_last_worker_lines_come_before_its_final_status() -> None:
    """The gateway reads an attempt's events up to its final status: lines a worker printed
    just before the run ended, still on their way, must land ahead of it."""
    runner = JobRunner(unit_config())
    runner.emit_many([LogEvent("epoch 3 done", source="trainer on node 1")])
    last = threading.Timer(
        FINAL_LINES_S / 3,
        lambda: runner.emit_many([LogEvent("saved the model", source="trainer on node 1")]),
    )
    last.start()
    runner._finish(StatusEvent(RunState.SUCCEEDED, "training finished"))
    last.join()
    events = [recorded.event for recorded in runner.events(0)]
    assert [getattr(e, "message", None) for e in events[:2]] == ["epoch 3 done", "saved the model"]
    assert isinstance(events[-1], StatusEvent) and len(events) == 3

    quiet = JobRunner(unit_config())  # no worker output: its end is not held up
    started = time.monotonic()
    quiet._finish(StatusEvent(RunState.SUCCEEDED, "training finished"))
    assert time.monotonic() - started < FINAL_LINES_S / 2


@pytest.mark.ray
def test_a_worker_actors_prints_warnings_and_log_records_reach_the_runner(ray_cluster) -> None:
    import ray

    config = unit_config()
    job_id = config.job_id
    runner = (
        ray.remote(JobRunner)
        .options(name=runner_name(job_id), namespace=NAMESPACE, num_cpus=0, max_concurrency=4)
        .remote(config)
    )

    @ray.remote(num_cpus=0)
    class Chatty:
        def __init__(self) -> None:
            from ray_module.worker_logs import capture_worker_output

            capture_worker_output(job_id, "es worker 1 on node 2")

        def talk(self) -> None:
            import logging
            import sys
            import warnings

            print("step 1: loss 2.5")
            print("a problem on stderr", file=sys.stderr)
            warnings.warn("this library is old", UserWarning, stacklevel=1)
            logging.getLogger("transformers.modeling").warning("weights were not used")
            logging.getLogger("ray.train").warning("Ray says so")  # Ray's handler: stderr

    chatty = Chatty.remote()
    ray.get(chatty.talk.remote())
    try:

        def lines() -> list[LogEvent]:
            events = ray.get(runner.events.remote(0))
            return [e.event for e in events if isinstance(e.event, LogEvent)]

        wait_for(lambda: len(lines()) >= 4, timeout_s=30, what=lambda: lines())
        time.sleep(1.5)  # anything else would have arrived by now
        seen = {(line.message.splitlines()[0], line.level) for line in lines()}
        assert ("step 1: loss 2.5", "info") in seen
        assert ("a problem on stderr", "warning") in seen
        assert ("weights were not used", "warning") in seen
        assert any("this library is old" in message for message, _ in seen)
        # Once each: a record that a library's own handler also writes to stderr is kept
        # from the stream, not a second time from the record.
        messages = [line.message for line in lines()]
        assert messages.count("Ray says so") == 1
        assert messages.count("weights were not used") == 1
        assert {line.source for line in lines()} == {"es worker 1 on node 2"}
    finally:
        ray.kill(chatty)
        ray.kill(runner)
