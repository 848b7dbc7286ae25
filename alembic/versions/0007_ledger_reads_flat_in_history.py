"""ledger and job reads that cost the same whatever the history

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:40:00.000000

Wallets keep ``earned`` (node credits in), ``spent`` (charges out of the user's escrows) and
``history_entries`` (entries on the user's accounts) counters; entries carry the ``user_id``
of their wallet or escrow (a user's history is one index range); a partial index covers only
the open escrows (what ``held`` sums); ``ix_jobs_owner_id_id`` serves a user's jobs newest
first without sorting them all. Existing rows are backfilled from the entries.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_ESCROWS = "kind = 'escrow' AND balance > 0"


def upgrade() -> None:
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("earned", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("spent", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("history_entries", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE ledger_entries SET user_id = (SELECT a.user_id FROM ledger_accounts a "
        "WHERE a.id = ledger_entries.account_id)"
    )
    op.execute(
        "UPDATE ledger_accounts SET earned = COALESCE((SELECT SUM(e.amount) FROM ledger_entries e "
        "WHERE e.account_id = ledger_accounts.id AND e.kind = 'node_credit'), 0) "
        "WHERE kind = 'wallet'"
    )
    op.execute(
        "UPDATE ledger_accounts SET spent = COALESCE((SELECT -SUM(e.amount) FROM ledger_entries e "
        "JOIN ledger_accounts x ON x.id = e.account_id WHERE x.kind = 'escrow' "
        "AND x.user_id = ledger_accounts.user_id AND e.kind = 'charge'), 0) WHERE kind = 'wallet'"
    )
    op.execute(
        "UPDATE ledger_accounts SET history_entries = (SELECT COUNT(*) FROM ledger_entries e "
        "WHERE e.user_id = ledger_accounts.user_id) WHERE kind = 'wallet'"
    )
    op.create_index("ix_ledger_entries_user_id_id", "ledger_entries", ["user_id", "id"])
    op.create_index("ix_jobs_owner_id_id", "jobs", ["owner_id", "id"])
    op.create_index(
        "ix_ledger_accounts_open_escrows",
        "ledger_accounts",
        ["user_id"],
        sqlite_where=sa.text(OPEN_ESCROWS),
        postgresql_where=sa.text(OPEN_ESCROWS),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_id_id", table_name="jobs")
    op.drop_index("ix_ledger_accounts_open_escrows", table_name="ledger_accounts")
    op.drop_index("ix_ledger_entries_user_id_id", table_name="ledger_entries")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("user_id")
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.drop_column("history_entries")
        batch_op.drop_column("spent")
        batch_op.drop_column("earned")
