"""System, node and training metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import (
    MAX_INT,
    AdminUser,
    CurrentUser,
    DbSession,
    JobId,
    NodeId,
    NodeOwnerUser,
    SettingsDep,
)
from app.schemas.metrics import (
    HeartbeatSampleOut,
    NodeMetricsOut,
    ResourceSecondsOut,
    TrainingMetricsOut,
    TrainingPoint,
)
from app.schemas.nodes import nodes_out
from compute.jobs.service import get_job_for
from compute.nodes.service import get_node_for
from core.db import utcnow
from ledger.pricing import tokens
from monitoring.metrics import node_activity, node_samples, system_metrics, training_series

router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("/system")
def system(_admin: AdminUser, session: DbSession, settings: SettingsDep) -> dict[str, Any]:
    """Users by role, nodes by status, jobs by status, resources of online nodes."""
    return system_metrics(session, now=utcnow(), node_timeout_s=settings.node_timeout)


@router.get("/node/{node_id}", response_model=NodeMetricsOut)
def node(
    node_id: NodeId,
    viewer: NodeOwnerUser,
    session: DbSession,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> NodeMetricsOut:
    """Recent heartbeat samples of one of your nodes (newest first), the jobs it ran, the
    resource-seconds it served and the tokens it earned."""
    target = get_node_for(session, viewer, node_id)
    samples = node_samples(session, target, limit=limit)
    activity = node_activity(session, target)
    return NodeMetricsOut(
        node=nodes_out(session, [target], settings)[0],
        samples=[HeartbeatSampleOut.model_validate(s) for s in samples],
        jobs_run=activity.jobs_run,
        resource_seconds_served=ResourceSecondsOut(
            gpu_seconds=activity.gpu_seconds,
            cpu_core_seconds=activity.cpu_core_seconds,
            memory_gb_seconds=activity.memory_gb_seconds,
        ),
        tokens_earned=tokens(activity.tokens_earned),
    )


@router.get("/training/{job_id}", response_model=TrainingMetricsOut)
def training(
    job_id: JobId,
    viewer: CurrentUser,
    session: DbSession,
    after_step: Annotated[int | None, Query(ge=-1, le=MAX_INT)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> TrainingMetricsOut:
    """The job's training series (step, loss, ...), oldest first; poll with `after_step`."""
    job = get_job_for(session, viewer, job_id)
    points = training_series(session, job, after_step=after_step, limit=limit)
    return TrainingMetricsOut(
        job_id=job.id,
        status=job.status,
        series=[
            TrainingPoint(step=p.step, recorded_at=p.recorded_at, values=p.values) for p in points
        ],
    )
