"""What a node's agent is told to run: the attempts of jobs placed on it. The list is the
whole truth each time the agent asks, so a run the list no longer names is one to stop (the
job ended, was cancelled, or its attempt was lost), and a restarted agent or gateway needs
no other state to agree on what runs where."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DRIVER = "driver"  # runs the job's driver (its runner) and reports for the attempt
MEMBER = "member"  # lends its share to a job whose driver runs on another node


@dataclass(frozen=True)
class ClusterOrder:
    """A multi-node attempt's own Ray cluster: the driver node starts its head with this
    token and reports its address; every other node of the job joins it once known."""

    token: str = field(repr=False)
    address: str  # the head's host:port, empty until the driver node reports it
    nodes: tuple[int, ...]  # every node of the job


@dataclass(frozen=True)
class Share:
    """What the node gives the job: the sum of its slots on the node."""

    cpu_cores: float
    gpu: int
    memory_gb: float


@dataclass(frozen=True)
class RunAssignment:
    job_id: int
    attempt: int
    role: str  # DRIVER | MEMBER
    # The driver's only: the job as the node receives it (``run_config_to_wire``) and the
    # credential scoped to this job and attempt.
    config: dict[str, Any] | None = None
    run_token: str | None = field(default=None, repr=False)
    share: Share | None = None
    cluster: ClusterOrder | None = None  # None: a single-node job, on the node's warm Ray
    # The driver's only: the gateway has heard from this attempt's driver already, so a
    # node without that driver lost it (its agent restarted): report it, never start anew.
    started: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.job_id, self.attempt)


def assignment_to_wire(assignment: RunAssignment) -> dict[str, Any]:
    return {
        "job_id": assignment.job_id,
        "attempt": assignment.attempt,
        "role": assignment.role,
        "config": assignment.config,
        "run_token": assignment.run_token,
        "share": asdict(assignment.share) if assignment.share else None,
        "cluster": asdict(assignment.cluster) if assignment.cluster else None,
        "started": assignment.started,
    }


def assignment_from_wire(data: dict[str, Any]) -> RunAssignment:
    role = str(data["role"])
    if role not in (DRIVER, MEMBER):
        raise ValueError(f"unknown role {role!r}")
    return RunAssignment(
        job_id=int(data["job_id"]),
        attempt=int(data["attempt"]),
        role=role,
        config=data.get("config"),
        run_token=data.get("run_token"),
        share=Share(**data["share"]) if data.get("share") else None,
        cluster=ClusterOrder(
            token=str(data["cluster"]["token"]),
            address=str(data["cluster"]["address"] or ""),
            nodes=tuple(int(n) for n in data["cluster"]["nodes"]),
        )
        if data.get("cluster")
        else None,
        started=bool(data.get("started")),
    )
