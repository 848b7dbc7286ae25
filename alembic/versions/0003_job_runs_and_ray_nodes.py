"""job runs and ray nodes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 12:43:53.701905
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("placement", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("usage", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("event_cursor", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("first_step_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("artifact_path", sa.Text(), nullable=True))

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ray_node_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ray_alive", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("flag_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("flag_reason")
        batch_op.drop_column("ray_alive")
        batch_op.drop_column("ray_node_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("artifact_path")
        batch_op.drop_column("first_step_at")
        batch_op.drop_column("event_cursor")
        batch_op.drop_column("attempts")
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("usage")
        batch_op.drop_column("placement")
