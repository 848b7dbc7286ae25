"""Refresh tokens: long-lived, single-use, stored hashed, chained in families.

Login issues a new family; each refresh marks its token used and issues the next one in the
family (rotation). A token presented a second time means it was copied: the whole family is
revoked, so the thief's and the owner's sessions both end (RFC 9700's reuse detection).
Changing a password or disabling an account revokes every family of the user.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from auth.models import RefreshToken, User
from core.db import utcnow
from core.errors import AuthenticationError

REFRESH_PREFIX = "dlr_"


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str  # shown once; only its hash is stored
    expires_at: dt.datetime


def _hash(token: str) -> str:
    # 256 random bits: a fast hash is enough, nobody can brute-force the preimage.
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, user: User, *, lifetime: dt.timedelta, family: str | None = None
) -> IssuedRefreshToken:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = RefreshToken(
        user_id=user.id,
        family=family or secrets.token_hex(16),
        token_hash=_hash(token),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    session.flush()
    return IssuedRefreshToken(token, row.expires_at)


class RefreshTokenReusedError(AuthenticationError):
    """A used refresh token came back: its family is revoked, and that must be kept."""

    keep_changes = True


def rotate_refresh_token(
    session: Session, token: str, *, lifetime: dt.timedelta
) -> tuple[User, IssuedRefreshToken]:
    """The user of a valid refresh token and the next token of its family; the presented
    one is used up. Any problem is one uniform 401."""
    row = session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == _hash(token)).with_for_update()
    )
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise AuthenticationError("invalid or expired refresh token; log in again")
    if row.used_at is not None:
        revoke_family(session, row.family)
        raise RefreshTokenReusedError(
            "this refresh token was already used; every session it started is now revoked "
            "(log in again)",
            code="refresh_token_reused",
        )
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise AuthenticationError("the account for this token no longer exists or is disabled")
    row.used_at = now
    return user, issue_refresh_token(session, user, lifetime=lifetime, family=row.family)


def revoke_refresh_token(session: Session, token: str) -> bool:
    """Log out: revoke the token's family (its earlier, used tokens and any later ones).
    False when the token is unknown (logging out twice is not an error)."""
    family = session.scalar(
        select(RefreshToken.family).where(RefreshToken.token_hash == _hash(token))
    )
    if family is None:
        return False
    revoke_family(session, family)
    return True


def revoke_family(session: Session, family: str) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def revoke_all_sessions(session: Session, user: User) -> None:
    """Every refresh token of the user revoked, and every access token issued so far
    refused (the version in them no longer matches)."""
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    user.token_version = (user.token_version or 0) + 1
    session.flush()
