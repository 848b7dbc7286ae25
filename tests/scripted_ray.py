"""Ray as the dispatcher sees it, scripted: each attempt's runner plays a list of events.
For the dispatcher's money tests (metering, pending credit), on SQLite and PostgreSQL."""

from __future__ import annotations

from protocol.events import (
    CheckpointEvent,
    Event,
    MetricEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
    UsageEvent,
)
from protocol.nodes import LiveNode
from protocol.run import RunConfig

CPU_BOX = {"gpu": 0, "cpu_cores": 8, "memory": 32}  # what the stand-in's Ray nodes offer
WORK_S = 10.0  # CPU-core-seconds each worker reports per step


class ScriptedRay:
    """Ray as the dispatcher sees it: each attempt's runner plays its script of events
    (per step: usage of each worker, a metric, a checkpoint every ``every`` steps), then is
    lost (``None``) or succeeds, as the test says."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = {n: LiveNode(n, f"ray-{n}", True, cpus=8, gpus=0) for n in nodes}
        self.scripts: dict[int, list[Event]] = {}
        self.ends: dict[int, str] = {}  # attempt -> "lost" | "succeeded"
        self.attempt: dict[int, int] = {}
        # Set: attempt 1 reports this many steps, then keeps running and says nothing more.
        self.idle_after: int | None = None
        # Verdicts the runner reports after a step's events (and its checkpoint), by step.
        self.verdicts: dict[int, list[Event]] = {}
        self.configs: list[RunConfig] = []  # every attempt's config, as launched

    def live_nodes(self) -> dict[int, LiveNode]:
        return dict(self.nodes)

    def launch_runner(self, config: RunConfig) -> None:
        self.attempt[config.job_id] = config.attempt
        self.configs.append(config)
        workers = [plan.node_id for plan in config.workers]
        first = 1 if config.attempt == 1 else 11  # the second resumes from checkpoint 10
        last = 13 if config.attempt == 1 else 20
        if self.idle_after is not None:
            last = self.idle_after
        script: list[Event] = [StatusEvent(RunState.RUNNING, "started")]
        for step in range(first, last + 1):
            script += [UsageEvent(n, cpu_core_seconds=WORK_S, step=step) for n in workers]
            script.append(MetricEvent(step, {"loss": 1.0 / step}))
            if step % 10 == 0:
                script.append(CheckpointEvent(step, "checkpoint"))
            script += self.verdicts.get(step, [])
        if config.attempt == 2:
            script.append(StatusEvent(RunState.SUCCEEDED, "done"))
        self.scripts[config.attempt] = script

    def fetch_events(self, job_id: int, after: int) -> list[RecordedEvent] | None:
        script = self.scripts[self.attempt[job_id]]
        if after >= len(script):
            if self.idle_after is not None:
                return []  # still running, quietly
            return None  # attempt 1's runner is lost once it has said everything
        return [RecordedEvent(seq, 0.0, e) for seq, e in enumerate(script, 1) if seq > after]

    def stop_runner(self, job_id: int) -> None:
        pass

    def why_lost(self, job_id: int) -> str:
        return "its runner was lost"


ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"steps": 20, "checkpoint_interval": 10, "num_workers": 2},
    "requirements": {"gpu": 0, "cpu_cores": 12, "memory": 2},  # a worker of 6 per 8-core node
    "max_runtime_s": 3600,
}
