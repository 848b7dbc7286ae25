"""What an ES worker (and the runner's referee) is built from."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.run import DataRequest, ModelRequest
from protocol.strategies.es import ESSettings


@dataclass(frozen=True)
class WorkerConfig:
    job_id: int
    rank: int
    node_id: int
    gpu: int
    cpu_cores: float
    memory_gb: float
    model: ModelRequest
    data: DataRequest
    settings: ESSettings
