"""accounts and nodes over their whole life

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:00:00.000000

Users get a ``token_version`` (bumped when a password changes or the account is disabled: every
access token issued before stops working at once) and ``disabled_at``; refresh tokens are
stored hashed, one row per issued token, chained by ``family`` so that a reused one revokes
its whole chain. Nodes get ``drained_at`` (no new work), ``deregistered_at`` (retired, history
kept), ``left_at`` (its agent said goodbye: offline at once) and ``credential_reset_at`` (the
old credential may have leaked: the Ray cluster's token is rotated as after a ban). Jobs get
``storage_deleted_at``: their files were deleted (by their owner or the retention).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NODE_COLUMNS = ("drained_at", "deregistered_at", "left_at", "credential_reset_at")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_version", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        for name in NODE_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("storage_deleted_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_refresh_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
    )
    op.create_index(op.f("ix_refresh_tokens_user_id"), "refresh_tokens", ["user_id"])
    op.create_index(op.f("ix_refresh_tokens_family"), "refresh_tokens", ["family"])


def downgrade() -> None:
    op.drop_index(op.f("ix_refresh_tokens_family"), table_name="refresh_tokens")
    op.drop_index(op.f("ix_refresh_tokens_user_id"), table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("storage_deleted_at")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        for name in reversed(NODE_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("token_version")
