"""ledger_accounts.shard: the platform's fee account in shards

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 23:40:00.000000

Every release posts the platform's fee; with one fee account, concurrent settlements queue on
its row. Fees now go to one of several fee accounts (by node), summed wherever the fee total
is read. The existing fee account is shard 0.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SINGLETONS = "kind IN ('platform_fee', 'issuance')"


def upgrade() -> None:
    op.add_column(
        "ledger_accounts", sa.Column("shard", sa.Integer(), nullable=False, server_default="0")
    )
    op.drop_index("uq_ledger_accounts_singleton", "ledger_accounts")
    op.create_index(
        "uq_ledger_accounts_singleton",
        "ledger_accounts",
        ["kind", "shard"],
        unique=True,
        sqlite_where=sa.text(SINGLETONS),
        postgresql_where=sa.text(SINGLETONS),
    )


def downgrade() -> None:
    op.drop_index("uq_ledger_accounts_singleton", "ledger_accounts")
    op.create_index(
        "uq_ledger_accounts_singleton",
        "ledger_accounts",
        ["kind"],
        unique=True,
        sqlite_where=sa.text(SINGLETONS),
        postgresql_where=sa.text(SINGLETONS),
    )
    with op.batch_alter_table("ledger_accounts") as batch:
        batch.drop_column("shard")
