"""Request and response bodies of the HTTP API (domain inputs live with their services)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from auth.models import Role
from auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from compute.job_spec import MICRO
from compute.models import Job, Node
from compute.nodes import node_status

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class AccessToken(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class RegisterUserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    role: Role = Role.USER


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool
    created_at: dt.datetime


class ResourcesOut(BaseModel):
    gpu: int
    cpu_cores: float
    memory: float


class NodeOut(BaseModel):
    id: int
    owner_id: int
    hostname: str
    resources: ResourcesOut
    status: str
    approval: str
    created_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    ray_alive: bool | None = Field(description="Ray's view: None until the node first joins")
    flag_reason: str = Field(description="why the node is not scheduled, if it is flagged")


class JoinOut(BaseModel):
    node_id: int
    ray_address: str
    num_cpus: int
    num_gpus: int
    memory_gb: float
    resources: dict[str, float]
    labels: dict[str, str]
    heartbeat_interval_s: int
    ray_auth_token: str = Field(
        description="Ray's cluster token for `ray start` (empty when Ray auth is off)"
    )


class NodeRegisteredOut(NodeOut):
    credential: str = Field(
        description="Secret for heartbeats ('Authorization: Bearer <credential>'). Shown once."
    )


class HeartbeatOut(BaseModel):
    node_id: int
    status: str
    approval: str
    received_at: dt.datetime
    next_heartbeat_in_s: int


class JobOut(BaseModel):
    id: int
    owner_id: int
    name: str
    status: str
    status_reason: str
    model_type: str
    strategy: str
    requirements: ResourcesOut
    max_runtime_s: int
    max_tokens: float | None
    spec: dict[str, Any]
    placement: list[dict[str, Any]] | None
    attempts: int
    usage: dict[str, Any] | None
    has_artifact: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    first_step_at: dt.datetime | None
    finished_at: dt.datetime | None


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


def micro_to_tokens(amount: int | None) -> float | None:
    return None if amount is None else amount / MICRO


TokenAmount = Annotated[
    Decimal,
    Field(gt=0, le=1_000_000_000, decimal_places=6, description="tokens, up to 6 decimals"),
]


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=2**31 - 1)
    amount: TokenAmount
    memo: str = Field("", max_length=500)


class BalanceOut(BaseModel):
    user_id: int
    available: float
    held: float
    earned: float
    spent: float


class HistoryEntryOut(BaseModel):
    entry_id: int
    transaction_id: int
    created_at: dt.datetime
    transaction_kind: str
    kind: str
    account: str
    amount: float
    job_id: int | None
    node_id: int | None
    memo: str


class CostBreakdownOut(BaseModel):
    gpu: float
    cpu: float
    memory: float


class EstimateOut(BaseModel):
    total: float
    breakdown: CostBreakdownOut
    max_runtime_s: int
    capped_by_max_tokens: bool


def node_out(
    node: Node, *, now: dt.datetime, timeout_s: int, credential: str | None = None
) -> NodeOut:
    fields = dict(
        id=node.id,
        owner_id=node.owner_id,
        hostname=node.hostname,
        resources=ResourcesOut(gpu=node.gpu, cpu_cores=node.cpu_cores, memory=node.memory_gb),
        status=node_status(node, now=now, timeout_s=timeout_s).value,
        approval=node.approval,
        created_at=node.created_at,
        last_heartbeat_at=node.last_heartbeat_at,
        ray_alive=node.ray_alive,
        flag_reason=node.flag_reason or "",
    )
    if credential is not None:
        return NodeRegisteredOut(credential=credential, **fields)
    return NodeOut(**fields)


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        owner_id=job.owner_id,
        name=job.name,
        status=job.status,
        status_reason=job.status_reason,
        model_type=job.model_type,
        strategy=job.strategy,
        requirements=ResourcesOut(gpu=job.gpu, cpu_cores=job.cpu_cores, memory=job.memory_gb),
        max_runtime_s=job.max_runtime_s,
        max_tokens=micro_to_tokens(job.max_tokens_micro),
        spec=job.spec,
        placement=job.placement,
        attempts=job.attempts,
        usage=job.usage,
        has_artifact=bool(job.artifact_path),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        first_step_at=job.first_step_at,
        finished_at=job.finished_at,
    )
