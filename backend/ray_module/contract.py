"""The run contract: what the gateway hands a runner (``RunConfig``), how work is shared
(``WorkerPlan``), and what a strategy may call while it runs (``RunContext``).

Plain frozen data and a protocol: importing this module imports no Ray, torch or database,
so the gateway, the runner and every worker agree on one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from protocol.events import Event
from ray_module.data.request import DataRequest
from ray_module.models.sources import ModelRequest

NAMESPACE = "distlm"  # the Ray namespace of every runner actor


def runner_name(job_id: int) -> str:
    """The detached runner actor's name: how a restarted gateway and workers find it."""
    return f"distlm-job-{job_id}"


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the job, pinned to one node."""

    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    role: str = "worker"  # "worker", or the role of a strategy's extra part ("loader")


@dataclass(frozen=True)
class RunConfig:
    job_id: int
    strategy: str
    model: ModelRequest
    data: DataRequest
    training: dict  # the strategy's knobs as submitted (checked again by its parser)
    workers: tuple[WorkerPlan, ...]
    storage_path: str
    attempt: int = 1
    task: str = "train"  # train | validate | infer (strategies that list them in ``tasks``)
    inference: dict = field(default_factory=dict)  # inference_config of an infer task

    @property
    def job_dir(self) -> str:
        return f"{self.storage_path}/jobs/{self.job_id}"


class RunContext(Protocol):
    """What a strategy's run may do with its runner: report events and honour cancels."""

    def emit(self, event: Event) -> int: ...

    def check_cancelled(self) -> None:
        """Raise ``RunCancelledError`` when the job was asked to stop."""
