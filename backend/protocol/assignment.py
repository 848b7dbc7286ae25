"""What a node's agent is told to run: the attempts of jobs placed on it. The list is the
whole truth each time the agent asks, so a run the list no longer names is one to stop (the
job ended, was cancelled, or its attempt was lost), and a restarted agent or gateway needs
no other state to agree on what runs where."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DRIVER = "driver"  # runs the job's driver (its runner) and reports for the attempt
MEMBER = "member"  # lends its share to a job whose driver runs on another node


@dataclass(frozen=True)
class RunAssignment:
    job_id: int
    attempt: int
    role: str  # DRIVER | MEMBER
    # The driver's only: the job as the node receives it (``run_config_to_wire``) and the
    # credential scoped to this job and attempt.
    config: dict[str, Any] | None = None
    run_token: str | None = field(default=None, repr=False)

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
    )
