"""Which of a job's nodes have credit waiting for an audit (settlement leaves it pending)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.models import TrainerAudit

OPEN = ("snapshot", "running")


def audited_nodes(session: Session, job_id: int) -> frozenset[int]:
    return frozenset(
        session.scalars(
            select(TrainerAudit.node_id).where(
                TrainerAudit.job_id == job_id, TrainerAudit.status.in_(OPEN)
            )
        )
    )
