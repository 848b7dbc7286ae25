"""nodes: verified-credit counts and reliability (results_valid, results_invalid, their
streaks) and why a node was suspended

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 08:20:00.000000

Every node starts new: its work is checked at every checkpoint until it has a run of valid
results (compute.nodes.trust). Existing nodes start there too: nothing to backfill.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("results_valid", "results_invalid", "valid_streak", "invalid_streak")


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("suspended_reason", sa.Text(), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("suspended_reason")
        for name in reversed(COUNTS):
            batch.drop_column(name)
