"""The records a run emits, typed end to end: a worker builds them, the runner buffers them
(numbered), the dispatcher stores them. Frozen dataclasses of plain values, so they pickle
across Ray as they are and a JSON column can hold their fields."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class RunState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class StatusEvent:
    state: RunState
    reason: str = ""
    retryable: bool = False  # for FAILED: resume from the last checkpoint on live nodes


@dataclass(frozen=True)
class MetricEvent:
    """Values at one step (a round, an ES step, an optimiser step); step 0 describes the run."""

    step: int
    values: dict[str, Any]


@dataclass(frozen=True)
class UsageEvent:
    """Completed work on one node: what the worker held there, times wall time.

    ``step`` is the step (round, ES step, optimiser step) the work went into. The gateway
    charges and credits it only once a checkpoint at that step or later is saved (or the run
    succeeds), so work that a lost attempt did after its last checkpoint is never paid."""

    node_id: int
    gpu_seconds: float = 0.0
    cpu_core_seconds: float = 0.0
    memory_gb_seconds: float = 0.0
    stage: str = ""  # the part of the job that did it, where a job has several ("loader")
    step: int = 0

    RESOURCE_FIELDS: ClassVar[tuple[str, ...]] = (
        "gpu_seconds",
        "cpu_core_seconds",
        "memory_gb_seconds",
    )

    @classmethod
    def for_slot(
        cls,
        node_id: int,
        *,
        gpu: float,
        cpu_cores: float,
        memory_gb: float,
        seconds: float,
        stage: str = "",
        step: int = 0,
    ) -> UsageEvent:
        return cls(node_id, gpu * seconds, cpu_cores * seconds, memory_gb * seconds, stage, step)

    def figures(self) -> dict[str, float]:
        return {
            "gpu_seconds": self.gpu_seconds,
            "cpu_core_seconds": self.cpu_core_seconds,
            "memory_gb_seconds": self.memory_gb_seconds,
        }


@dataclass(frozen=True)
class CheckpointEvent:
    step: int
    path: str


@dataclass(frozen=True)
class ArtifactEvent:
    """The final model directory."""

    path: str


@dataclass(frozen=True)
class LogEvent:
    """A line of the job's log: what the runner or a worker says, warnings, a failure's
    cause in words a user can act on."""

    message: str
    level: str = "info"  # debug | info | warning | error
    source: str = "runner"  # runner | worker | loader | ...


@dataclass(frozen=True)
class VerdictEvent:
    """A node's sampled work at ``step``, replayed on another owner's node: whether it held.

    ``checked`` counts the evaluations replayed; ``validator_node_id`` is the node that
    replayed them; ``detail`` says what differed. The gateway releases the node's pending
    credit for the job on a valid verdict and voids it on an invalid one."""

    node_id: int
    step: int
    valid: bool
    checked: int = 0
    validator_node_id: int = 0
    detail: str = ""


Event = (
    StatusEvent
    | MetricEvent
    | UsageEvent
    | CheckpointEvent
    | ArtifactEvent
    | LogEvent
    | VerdictEvent
)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the runner buffered it: ``seq`` 1, 2, ... lets a poller resume after the
    last one it stored; ``at`` is unix seconds."""

    seq: int
    at: float
    event: Event
