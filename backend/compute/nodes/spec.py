"""What node owners send: a machine's resources and its heartbeat samples."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_NODE_GPUS = 64
MAX_NODE_CPU_CORES = 4096
MAX_NODE_MEMORY_GB = 65_536


class NodeResources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu: int = Field(0, ge=0, le=MAX_NODE_GPUS)
    cpu_cores: float = Field(gt=0, le=MAX_NODE_CPU_CORES)
    memory: float = Field(gt=0, le=MAX_NODE_MEMORY_GB, description="GB")


class NodeRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    hostname: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    resources: NodeResources


class HeartbeatSample(BaseModel):
    """One reading from the node; every figure is optional (a bare heartbeat is fine)."""

    model_config = ConfigDict(extra="forbid")

    cpu_percent: float | None = Field(None, ge=0, le=100)
    memory_used_gb: float | None = Field(None, ge=0, le=MAX_NODE_MEMORY_GB)
    memory_percent: float | None = Field(None, ge=0, le=100)
    gpu_utilization: float | None = Field(None, ge=0, le=100)
    gpu_memory_used_gb: float | None = Field(None, ge=0, le=MAX_NODE_MEMORY_GB)
