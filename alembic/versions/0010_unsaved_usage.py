"""usage not yet saved by a checkpoint

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00.000000

A running attempt's usage is held in ``jobs.unsaved_usage`` until a checkpoint covering its
step is saved (``jobs.saved_step``, the attempt's last one); only then does it move into
``jobs.usage``, the figures that settlement charges and credits. A lost attempt's unsaved
usage is dropped, so work redone by the next attempt is paid once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unsaved_usage", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("saved_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("saved_step")
        batch_op.drop_column("unsaved_usage")
