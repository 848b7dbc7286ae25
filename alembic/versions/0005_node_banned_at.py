"""when a node was banned

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:00:00.000000

``nodes.banned_at`` tells the dispatcher which bans came after the running Ray cluster
started: those nodes may still hold its token, so the cluster is restarted with a new one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("banned_at")
