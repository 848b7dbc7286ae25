"""Which of a job's nodes have credit waiting for an audit (settlement leaves it pending),
and jobs' audits as their user sees them."""

from __future__ import annotations

from collections.abc import Sequence

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


def audits_of(session: Session, job_ids: Sequence[int]) -> dict[int, list[TrainerAudit]]:
    """Each job's audits, oldest first (one query for a page of jobs)."""
    found: dict[int, list[TrainerAudit]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        rows = session.scalars(
            select(TrainerAudit)
            .where(TrainerAudit.job_id.in_(list(job_ids)))
            .order_by(TrainerAudit.id)
        )
        for audit in rows:
            found[audit.job_id].append(audit)
    return found
