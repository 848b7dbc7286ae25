"""trainer_audits: a split trainer's checkpoint kept aside and trained again on another node

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 20:10:00.000000

A trainer that is also its job's driver reports its own losses; the gateway audits a sample
of them (compute.audits). Nothing to backfill: earlier jobs were settled without audits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trainer_audits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("from_step", sa.Integer(), nullable=False),
        sa.Column("until_step", sa.Integer(), nullable=True),
        sa.Column("metric_cursor", sa.Integer(), nullable=False),
        sa.Column(
            "audit_job_id",
            sa.Integer(),
            sa.ForeignKey("jobs.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("snapshot", sa.String(64), nullable=False),
        sa.Column("latest", sa.String(64), nullable=False),
        sa.Column("latest_step", sa.Integer(), nullable=False),
        sa.Column("latest_cursor", sa.Integer(), nullable=False),
        sa.Column("drawn", sa.Integer(), nullable=False),
        sa.Column("seen_step", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_trainer_audits_job", "trainer_audits", ["job_id", "attempt"], unique=True)
    op.create_index("ix_trainer_audits_audit_job", "trainer_audits", ["audit_job_id"])


def downgrade() -> None:
    op.drop_index("ix_trainer_audits_audit_job", "trainer_audits")
    op.drop_index("ix_trainer_audits_job", "trainer_audits")
    op.drop_table("trainer_audits")
