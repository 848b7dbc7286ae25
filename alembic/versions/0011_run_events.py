"""run events: what a job's driver sends over HTTP

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 15:00:00.000000

A job's driver runs on one of its nodes and reports its events to the gateway with a
credential scoped to the job and attempt (``POST /runs/{job_id}/events``). They are kept per
attempt in the driver's order; a repeated sequence number is stored once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_run_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
        sa.UniqueConstraint("job_id", "attempt", "seq", name="uq_run_events_job_attempt_seq"),
    )
    op.create_index("ix_run_events_job_attempt_kind", "run_events", ["job_id", "attempt", "kind"])


def downgrade() -> None:
    op.drop_index("ix_run_events_job_attempt_kind", table_name="run_events")
    op.drop_table("run_events")
