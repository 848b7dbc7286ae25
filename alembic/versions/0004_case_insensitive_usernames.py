"""case-insensitive usernames and a login throttle per client address

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 10:00:00.000000

``users.username_key`` holds the lower-cased name under a unique constraint, so `ALICE` and
`alice` are one account on SQLite and PostgreSQL alike (a column rather than a functional
index, which both databases and schema comparison handle the same way). Accounts that
already differ only in case keep the oldest one's name; each later one is renamed to
``<name>~<id>`` (``~`` cannot appear in a registered name) and logged, so nobody loses an
account and the new constraint holds.

``login_throttle`` is keyed by (client address, username key) instead of username: its
rows are short-lived counters, so it is recreated empty rather than converted.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

USERNAME_LENGTH = 64


def _fill_username_keys() -> None:
    users = sa.table(
        "users",
        sa.column("id", sa.Integer()),
        sa.column("username", sa.String()),
        sa.column("username_key", sa.String()),
    )
    connection = op.get_bind()
    taken: set[str] = set()
    rows = connection.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id))
    for user_id, username in rows.all():
        key = username.lower()
        values = {"username_key": key}
        if key in taken:
            suffix = f"~{user_id}"
            renamed = username[: USERNAME_LENGTH - len(suffix)] + suffix
            log.warning(
                "user %d: username %r differs only in case from an older account; renamed to %r",
                user_id,
                username,
                renamed,
            )
            values = {"username": renamed, "username_key": renamed.lower()}
            key = renamed.lower()
        taken.add(key)
        connection.execute(users.update().where(users.c.id == user_id).values(**values))


def _create_throttle_by_username() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_login_throttle")),
    )


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("username_key", sa.String(length=USERNAME_LENGTH), nullable=True)
        )
    _fill_username_keys()
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column(
            "username_key", existing_type=sa.String(length=USERNAME_LENGTH), nullable=False
        )
        batch_op.create_unique_constraint(batch_op.f("uq_users_username_key"), ["username_key"])

    op.drop_table("login_throttle")
    op.create_table(
        "login_throttle",
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("username_key", sa.String(length=USERNAME_LENGTH), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("client", "username_key", name=op.f("pk_login_throttle")),
    )


def downgrade() -> None:
    op.drop_table("login_throttle")
    _create_throttle_by_username()
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_username_key"), type_="unique")
        batch_op.drop_column("username_key")
