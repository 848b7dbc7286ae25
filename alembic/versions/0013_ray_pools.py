"""nodes.ray_pool, offered_cpus, offered_gpus, lost_run_at: what a node's agent says it
runs on, and when a run of it was last lost

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 16:30:00.000000

An operator may lend machines that already form a Ray cluster of their own (the agent's
--ray-address): a multi-node job runs there with no cluster of its own, so the gateway places
one only on nodes of the same pool, and never mixes a pool's nodes with others. An agent also
says what its machine offers, so that a node registered with more than that is flagged (the
gateway has no Ray of its own to read it from). A node whose part of an attempt was lost
takes no new work until its agent has asked for its runs since: a dead machine whose last
word is still fresh gets no job re-placed on it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("ray_pool", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("offered_cpus", sa.Float(), nullable=True))
        batch.add_column(sa.Column("offered_gpus", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lost_run_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("lost_run_at")
        batch.drop_column("offered_gpus")
        batch.drop_column("offered_cpus")
        batch.drop_column("ray_pool")
