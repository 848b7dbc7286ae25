"""The stored job as its runner receives it: typed, with the data root and storage added."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from compute.jobs.service import source_model_path
from compute.jobs.strategy import strategy_knobs
from compute.models import Job
from protocol.run import DataRequest, ModelRequest, RunConfig, WorkerPlan


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
    spec = job.spec
    model = spec["model_config"]
    name = model["model_name"]
    return RunConfig(
        job_id=job.id,
        strategy=job.strategy,
        model=ModelRequest(
            model_type=model["type"],
            model_name=source_model_path(session, name) if resolve_sources else name,
            pretrained=model.get("pretrained"),
            overrides=model.get("overrides") or {},
        ),
        data=DataRequest(**spec["data_config"], data_root=str(data_root)),
        training=strategy_knobs(job),
        workers=tuple(WorkerPlan(**slot) for slot in job.placement or []),
        storage_path=str(storage_path),
        attempt=job.attempts,
        task=spec.get("task") or "train",
        inference=spec.get("inference_config") or {},
    )
