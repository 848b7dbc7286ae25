"""token ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 12:29:48.796511
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind = 'issuance' OR balance >= 0", name=op.f("ck_ledger_accounts_no_overdraft")
        ),
        sa.CheckConstraint(
            "kind IN ('wallet', 'escrow', 'platform_fee', 'issuance')",
            name=op.f("ck_ledger_accounts_kind_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
    )
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_accounts_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "uq_ledger_accounts_escrow",
            ["job_id"],
            unique=True,
            sqlite_where=sa.text("kind = 'escrow'"),
            postgresql_where=sa.text("kind = 'escrow'"),
        )
        batch_op.create_index(
            "uq_ledger_accounts_singleton",
            ["kind"],
            unique=True,
            sqlite_where=sa.text("kind IN ('platform_fee', 'issuance')"),
            postgresql_where=sa.text("kind IN ('platform_fee', 'issuance')"),
        )
        batch_op.create_index(
            "uq_ledger_accounts_wallet",
            ["user_id"],
            unique=True,
            sqlite_where=sa.text("kind = 'wallet'"),
            postgresql_where=sa.text("kind = 'wallet'"),
        )

    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_transactions_idempotency_key")),
    )
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_transactions_job_id"), ["job_id"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_entries_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_entries_account_id_ledger_accounts"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_entries_transaction_id_ledger_transactions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entries_account_id_id", ["account_id", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_transaction_id"), ["transaction_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_transaction_id"))
        batch_op.drop_index("ix_ledger_entries_account_id_id")

    op.drop_table("ledger_entries")
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_transactions_job_id"))

    op.drop_table("ledger_transactions")
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_ledger_accounts_wallet",
            sqlite_where=sa.text("kind = 'wallet'"),
            postgresql_where=sa.text("kind = 'wallet'"),
        )
        batch_op.drop_index(
            "uq_ledger_accounts_singleton",
            sqlite_where=sa.text("kind IN ('platform_fee', 'issuance')"),
            postgresql_where=sa.text("kind IN ('platform_fee', 'issuance')"),
        )
        batch_op.drop_index(
            "uq_ledger_accounts_escrow",
            sqlite_where=sa.text("kind = 'escrow'"),
            postgresql_where=sa.text("kind = 'escrow'"),
        )
        batch_op.drop_index(batch_op.f("ix_ledger_accounts_user_id"))

    op.drop_table("ledger_accounts")
