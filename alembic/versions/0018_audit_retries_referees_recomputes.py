"""trainer_audits: retried audits, referees on a disagreement, recomputes of invalid results

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 23:10:00.000000

An audit job that fails is tried once more on another node; an audit that disagrees with the
audited node is refereed on a third owner's node; an invalid result is computed again by a
recompute job (compute.audits). Existing audits: no tries recorded, nothing to referee.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    sa.Column("tries", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("passed_over", sa.JSON(), nullable=True),
    sa.Column("first_auditor", sa.Integer(), nullable=True),
    sa.Column("first_audit_job_id", sa.Integer(), nullable=True),
    sa.Column("first_detail", sa.Text(), nullable=False, server_default=""),
    sa.Column("recompute_job_id", sa.Integer(), nullable=True),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("trainer_audits", column)


def downgrade() -> None:
    with op.batch_alter_table("trainer_audits") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
