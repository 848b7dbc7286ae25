"""The stored job as its runner receives it: its request, with the data root, its workers and
storage added."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sqlalchemy.orm import Session

from compute.jobs.service import source_model_path
from compute.jobs.strategy import job_request
from compute.models import Job, Node
from protocol.run import RunConfig, WorkerPlan


def run_config(
    job: Job,
    session: Session,
    *,
    data_root: Path,
    storage_path: Path,
    resolve_sources: bool = True,
) -> RunConfig:
    """``resolve_sources``: a ``job:<id>`` model becomes that job's directory in the storage
    (a runner that shares it); else it stays as named and the driver downloads it."""
    request = job_request(job)
    model = request.model
    if resolve_sources:
        model = replace(model, model_name=source_model_path(session, model.model_name))
    return RunConfig(
        job_id=job.id,
        request=replace(request, model=model, data=replace(request.data, data_root=str(data_root))),
        workers=tuple(with_trust(session, WorkerPlan(**slot)) for slot in job.placement or []),
        storage_path=str(storage_path),
        attempt=job.attempts,
    )


def with_trust(session: Session, plan: WorkerPlan) -> WorkerPlan:
    """The slot with its node's owner and run of valid results, for the runner's verified
    credit."""
    node = session.get(Node, plan.node_id)
    if node is None:
        return plan
    return replace(plan, owner_id=node.owner_id, valid_streak=node.valid_streak or 0)
