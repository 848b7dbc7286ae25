"""Bodies of /metrics: node heartbeats and earnings, training series."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.schemas.nodes import NodeOut


class HeartbeatSampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    received_at: dt.datetime
    cpu_percent: float | None
    memory_used_gb: float | None
    memory_percent: float | None
    gpu_utilization: float | None
    gpu_memory_used_gb: float | None


class ResourceSecondsOut(BaseModel):
    gpu_seconds: float
    cpu_core_seconds: float
    memory_gb_seconds: float


class NodeMetricsOut(BaseModel):
    node: NodeOut
    samples: list[HeartbeatSampleOut]
    jobs_run: int
    resource_seconds_served: ResourceSecondsOut
    tokens_earned: float


class TrainingPoint(BaseModel):
    step: int
    recorded_at: dt.datetime
    values: dict[str, Any]


class TrainingMetricsOut(BaseModel):
    job_id: int
    status: str
    series: list[TrainingPoint]
