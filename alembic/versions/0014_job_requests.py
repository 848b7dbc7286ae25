"""jobs.request: the spec as checked at submit, in the one typed form every reader takes

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 21:30:00.000000

A job spec was read back from ``jobs.spec`` by each part that needed it (the strategy's
rules, the scheduler, billing, the run config), each with its own tolerance for what was
missing. Now it is checked once at submit into ``protocol.run.JobRequest`` and stored as
``jobs.request`` (its JSON form); ``jobs.spec`` stays as submitted, for the API. Existing
jobs get theirs from ``spec`` and their requirement columns, read as those parts read them.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# DataRequest's optional fields (data_source and dataset_name are required).
OPTIONAL_DATA_FIELDS = (
    "dataset_config",
    "path",
    "split",
    "text_column",
    "target_column",
    "max_samples",
    "validation_split",
)
COMMON_TRAINING_KEYS = ("strategy", "num_workers")  # training_config keys that are no knobs


def request_of(
    spec: dict[str, Any], strategy: str, gpu: int, cpu_cores: float, memory_gb: float
) -> dict[str, Any]:
    """A stored job's request, as ``job_request_to_wire`` writes one (frozen here: later
    changes to the app's types must not change what this migration wrote)."""
    model = spec.get("model_config") or {}
    data = spec.get("data_config") or {}
    training = spec.get("training_config") or {}
    return {
        "strategy": strategy,
        "model": {
            "model_type": str(model.get("type", "")),
            "model_name": str(model.get("model_name", "")),
            "pretrained": model.get("pretrained"),
            "overrides": model.get("overrides") or {},
        },
        "data": {
            "data_source": str(data.get("data_source", "")),
            "dataset_name": str(data.get("dataset_name", "")),
            **{name: data.get(name) for name in OPTIONAL_DATA_FIELDS},
            "data_root": None,
        },
        "knobs": {k: v for k, v in training.items() if k not in COMMON_TRAINING_KEYS},
        "task": spec.get("task") or "train",
        "inference": spec.get("inference_config") or {},
        "requirements": {"gpu": gpu, "cpu_cores": cpu_cores, "memory_gb": memory_gb},
        "num_workers": training.get("num_workers"),
    }


def _fill_requests() -> None:
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer()),
        sa.column("spec", sa.JSON()),
        sa.column("strategy", sa.String()),
        sa.column("gpu", sa.Integer()),
        sa.column("cpu_cores", sa.Float()),
        sa.column("memory_gb", sa.Float()),
        sa.column("request", sa.JSON()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            jobs.c.id, jobs.c.spec, jobs.c.strategy, jobs.c.gpu, jobs.c.cpu_cores, jobs.c.memory_gb
        ).order_by(jobs.c.id)
    )
    for job_id, spec, strategy, gpu, cpu_cores, memory_gb in rows.all():
        request = request_of(spec or {}, strategy, gpu, cpu_cores, memory_gb)
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(request=request))


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request", sa.JSON(), nullable=True))
    _fill_requests()
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("request", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("request")
