"""ledger_accounts.node_id and the 'pending' kind: a node owner's earnings wait there, per
(job, node), until the work is accepted (released to the owner) or not (voided to the payer)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 04:55:00.000000

Until now a settlement credited node owners straight from the job's escrow. Credit now moves
escrow → pending as each checkpoint saves work, and pending → wallet (less the platform's
fee) when released. Existing settled jobs keep their direct credits: nothing to backfill.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_BEFORE = "kind IN ('wallet', 'escrow', 'platform_fee', 'issuance')"
KINDS_AFTER = "kind IN ('wallet', 'escrow', 'pending', 'platform_fee', 'issuance')"
PENDING = "kind = 'pending'"
OPEN_PENDING = "kind = 'pending' AND balance > 0"


def upgrade() -> None:
    with op.batch_alter_table("ledger_accounts") as batch:
        batch.add_column(sa.Column("node_id", sa.Integer(), nullable=True))
        batch.drop_constraint(op.f("ck_ledger_accounts_kind_known"), type_="check")
        batch.create_check_constraint("kind_known", KINDS_AFTER)
    op.create_index(
        "uq_ledger_accounts_pending",
        "ledger_accounts",
        ["job_id", "node_id"],
        unique=True,
        sqlite_where=sa.text(PENDING),
        postgresql_where=sa.text(PENDING),
    )
    op.create_index(
        "ix_ledger_accounts_open_pending",
        "ledger_accounts",
        ["user_id"],
        sqlite_where=sa.text(OPEN_PENDING),
        postgresql_where=sa.text(OPEN_PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_accounts_open_pending", table_name="ledger_accounts")
    op.drop_index("uq_ledger_accounts_pending", table_name="ledger_accounts")
    with op.batch_alter_table("ledger_accounts") as batch:
        batch.drop_constraint(op.f("ck_ledger_accounts_kind_known"), type_="check")
        batch.create_check_constraint("kind_known", KINDS_BEFORE)
        batch.drop_column("node_id")
