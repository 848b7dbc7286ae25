"""job events and logs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:00:00.000000

``job_events`` holds what happens to a job besides its metric points (which stay in
``job_metrics``): status changes, usage, log lines. Its id orders a job's stream and is what
``GET /jobs/{id}/events`` resumes from. Log lines are bounded per job: the oldest go first
and ``jobs.logs_dropped`` counts them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index("ix_job_events_job_kind_id", "job_events", ["job_id", "kind", "id"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("logs_dropped", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("logs_dropped")
    op.drop_index("ix_job_events_job_kind_id", table_name="job_events")
    op.drop_table("job_events")
