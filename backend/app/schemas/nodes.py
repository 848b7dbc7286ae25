"""Bodies of /nodes: nodes as their owners and admins see them, joining and heartbeats."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.schemas.common import ResourcesOut
from compute.models import Node
from compute.nodes import trust
from compute.nodes.facts import node_earnings, node_pending, node_voided, owner_names
from compute.nodes.service import node_status
from compute.nodes.spec import NodeResources
from core.db import utcnow
from core.settings import Settings
from ledger.pricing import tokens


class TrustOut(BaseModel):
    """How its work fared when sampled and replayed elsewhere."""

    results_valid: int = Field(0, description="checked results that held")
    results_invalid: int = Field(0, description="checked results that did not")
    valid_streak: int = 0
    reliability: float = Field(
        0.5, description="(valid + 1) / (valid + invalid + 2): 0.5 for a new node"
    )
    check_rate: float = Field(
        1.0, description="the share of its results replayed: 1 while new, down to 0.05"
    )
    on_probation: bool = Field(True, description="new or recently invalid: every result checked")
    suspended_reason: str = Field(
        "", description="why it was sent back to an admin's approval (invalid results)"
    )


def trust_out(node: Node) -> TrustOut:
    return TrustOut(
        results_valid=node.results_valid or 0,
        results_invalid=node.results_invalid or 0,
        valid_streak=node.valid_streak or 0,
        reliability=round(trust.reliability(node), 4),
        check_rate=round(trust.check_rate(node), 4),
        on_probation=trust.on_probation(node),
        suspended_reason=node.suspended_reason or "",
    )


class NodeOut(BaseModel):
    id: int
    owner_id: int
    hostname: str
    resources: ResourcesOut
    status: str
    approval: str
    created_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    ray_alive: bool | None = Field(
        description="ready to run: its agent asks for its runs (None until it first does)"
    )
    flag_reason: str = Field(description="why the node is not scheduled, if it is flagged")
    drained: bool = Field(description="gets no new work; what runs there finishes")
    deregistered_at: dt.datetime | None = None
    single_node_only: bool = Field(
        False, description="its agent takes only single-node jobs (never shares a Ray cluster)"
    )
    owner_username: str = Field("", description="the node owner's username")
    tokens_earned: float = Field(0.0, description="what its owner has earned with it, after fees")
    tokens_pending: float = Field(
        0.0, description="earned for saved work, not yet released to its owner (before fees)"
    )
    tokens_voided: float = Field(
        0.0, description="its credit voided back to the payers: work refused (a ban)"
    )
    trust: TrustOut = Field(
        default_factory=TrustOut,
        description="its work as replayed on other owners' nodes (verified credit)",
    )


class NodeUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resources: NodeResources


class JoinOut(BaseModel):
    """What the node's Ray offers: start it with these, then ask POST /nodes/{id}/runs."""

    node_id: int
    num_cpus: int
    num_gpus: int
    memory_gb: float
    resources: dict[str, float] = Field(description="the node's custom Ray resource")
    labels: dict[str, str]
    heartbeat_interval_s: int


class RunAssignmentOut(BaseModel):
    job_id: int
    attempt: int
    role: str = Field(description="'driver': run the job's driver; 'member': lend your share")
    config: dict[str, Any] | None = Field(
        None, description="the job as the node receives it (the driver's only)"
    )
    run_token: str | None = Field(
        None, description="the credential for /runs, scoped to this job and attempt"
    )
    share: ShareOut | None = None
    cluster: ClusterOut | None = Field(
        None, description="a multi-node job's own Ray cluster (none: the node's warm Ray)"
    )
    started: bool = Field(
        False,
        description="the driver's: its attempt was heard from (a lost driver is not restarted)",
    )


class ShareOut(BaseModel):
    cpu_cores: float
    gpu: int
    memory_gb: float


class ClusterOut(BaseModel):
    token: str = Field(description="the Ray token of this attempt's cluster")
    address: str = Field(description="its head's host:port; empty until its driver node tells")
    nodes: list[int]


class ClusterReportIn(BaseModel):
    job_id: int = Field(ge=1, le=2**31 - 1)
    attempt: int = Field(ge=1, le=2**31 - 1)
    address: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


class LostRunIn(BaseModel):
    job_id: int = Field(ge=1, le=2**31 - 1)
    attempt: int = Field(ge=1, le=2**31 - 1)
    why: str = Field(max_length=500)


class OffersIn(BaseModel):
    cpu_cores: float = Field(ge=0, le=1_000_000)
    gpu: int = Field(ge=0, le=100_000)


class RunsIn(BaseModel):
    clusters: list[ClusterReportIn] = Field(
        default_factory=list,
        max_length=100,
        description="heads this node started for the multi-node attempts it drives",
    )
    single_node_only: bool = Field(
        False, description="take only single-node jobs: never share a Ray cluster"
    )
    lost: list[LostRunIn] = Field(
        default_factory=list,
        max_length=100,
        description="attempts this node drives whose driver is gone without a word",
    )
    offers: OffersIn | None = Field(
        None, description="what this machine offers; less than registered flags the node"
    )
    ray_pool: str | None = Field(
        None,
        max_length=200,
        description="the trusted Ray pool (an operator's own cluster) this node is a member "
        "of: its multi-node jobs run there, with nodes of the same pool only",
    )


class RunsOut(BaseModel):
    runs: list[RunAssignmentOut] = Field(
        description="every attempt this node takes part in now; stop any run not listed"
    )
    poll_in_s: float


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
    resources: ResourcesOut = Field(
        description="what the node offers now; when its owner changed it, the agent restarts "
        "its Ray worker with these figures"
    )


def node_out(
    node: Node,
    *,
    now: dt.datetime,
    timeout_s: int,
    credential: str | None = None,
    owner_username: str = "",
    earned_micro: int = 0,
    pending_micro: int = 0,
    voided_micro: int = 0,
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
        drained=node.drained_at is not None,
        deregistered_at=node.deregistered_at,
        single_node_only=bool(node.single_node_only),
        owner_username=owner_username,
        tokens_earned=tokens(earned_micro),
        tokens_pending=tokens(pending_micro),
        tokens_voided=tokens(voided_micro),
        trust=trust_out(node),
    )
    if credential is not None:
        return NodeRegisteredOut(credential=credential, **fields)
    return NodeOut(**fields)


class CredentialOut(BaseModel):
    node_id: int
    credential: str = Field(description="the node's new secret; shown once")
    how_to_use: str


def nodes_out(
    session: Session, nodes: Sequence[Node], settings: Settings, credential: str | None = None
) -> list[NodeOut]:
    """Nodes as the API shows them, with their owners' names and earnings."""
    now = utcnow()
    names = owner_names(session, [node.owner_id for node in nodes])
    ids = [node.id for node in nodes]
    earned = node_earnings(session, ids)
    pending, voided = node_pending(session, ids), node_voided(session, ids)
    return [
        node_out(
            node,
            now=now,
            timeout_s=settings.node_timeout,
            credential=credential,
            owner_username=names.get(node.owner_id, ""),
            earned_micro=earned.get(node.id, 0),
            pending_micro=pending.get(node.id, 0),
            voided_micro=voided.get(node.id, 0),
        )
        for node in nodes
    ]
