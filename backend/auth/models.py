"""User accounts and the login throttle."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, validates

from core.db import Base, UTCDateTime, utcnow

USERNAME_MAX_LENGTH = 64


class Role(enum.StrEnum):
    USER = "user"
    NODE_OWNER = "node_owner"
    ADMIN = "admin"


def username_key(username: str) -> str:
    """The form in which usernames are unique and looked up: case does not matter, so
    `ALICE` and `alice` are one account. Usernames are ASCII, where `lower()` is SQL's."""
    return username.lower()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'node_owner', 'admin')", name="role_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH), unique=True)
    # Kept equal to username_key(username) by the validator below; its unique constraint is
    # what makes case variants of a name one account, even under concurrent registrations.
    username_key: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER.value)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # In every access token; bumped when the password changes or the account is disabled,
    # so every token issued before is refused at once.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @validates("username")
    def _keep_username_key(self, _field: str, username: str) -> str:
        self.username_key = username_key(username)
        return username


# The throttle row that counts a client address's failures for every username together.
ANY_USERNAME = ""


class LoginThrottle(Base):
    """Failed logins per (client address, username key), whether or not the user exists, so
    it reveals nothing and an attacker's failures never lock the owner out from elsewhere;
    the row with username_key ANY_USERNAME counts an address's failures across usernames."""

    __tablename__ = "login_throttle"

    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    username_key: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RefreshToken(Base):
    """One issued refresh token (its hash only). Tokens of one login share a ``family``:
    a used one coming back revokes the family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
