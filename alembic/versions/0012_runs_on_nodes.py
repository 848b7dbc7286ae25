"""nodes.runs_polled_at, jobs.cluster_address: jobs on the nodes' own Ray

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 18:20:00.000000

Where jobs run on the nodes' own Ray (DISTLM_RUN_JOBS_ON=agents) the gateway has no Ray node
table to read: a node whose agent asks for its runs is ready to run them, and one that has
not asked for NODE_TIMEOUT is not; an agent may say it takes only single-node jobs. A
multi-node job's attempt gets a Ray cluster of its own, whose head its driver node's agent
starts and reports; the other nodes of the job join it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("runs_polled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("single_node_only", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cluster_address", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("single_node_only")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cluster_address")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("runs_polled_at")
