"""User accounts: create, authenticate with throttling, look up, bootstrap the first admin."""

from __future__ import annotations

import datetime as dt
import logging
import re

from passlib.context import CryptContext
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth.models import LoginThrottle, Role, User
from auth.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    verify_password,
)
from core.db import utcnow
from core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    RateLimitedError,
)

log = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$")
LOGIN_FAILED = "incorrect username or password"


class LoginFailedError(AuthenticationError):
    """A wrong password: the failure count it bumped must be kept, so the session commits."""

    keep_changes = True


def validate_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInputError(
            "username must be 3-64 characters: letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return username


def validate_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters long"
        )
    return password


def create_user(
    session: Session, context: CryptContext, *, username: str, password: str, role: Role
) -> User:
    validate_username(username)
    validate_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ConflictError(f"username '{username}' is already taken", code="username_taken")
    user = User(username=username, password_hash=hash_password(context, password), role=role.value)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:  # a concurrent registration won the race
        raise ConflictError(
            f"username '{username}' is already taken", code="username_taken"
        ) from exc
    return user


def get_active_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise AuthenticationError("the account for this token no longer exists or is disabled")
    return user


def _throttle_row(session: Session, username: str) -> LoginThrottle:
    row = session.get(LoginThrottle, username)
    if row is None:
        try:
            with session.begin_nested():
                row = LoginThrottle(username=username, failures=0)
                session.add(row)
        except IntegrityError:
            row = session.get(LoginThrottle, username)
            assert row is not None
    return row


def authenticate(
    session: Session,
    context: CryptContext,
    *,
    username: str,
    password: str,
    max_failures: int,
    lockout: dt.timedelta,
) -> User:
    """Return the user for a correct password.

    Failures are counted per username whether or not it exists, and the same message is
    used for unknown users and wrong passwords, so neither the answer nor the lockout
    reveals which usernames exist.
    """
    now = utcnow()
    throttle = session.get(LoginThrottle, username[:64])
    if throttle is not None and throttle.locked_until is not None and throttle.locked_until > now:
        wait_s = max(1, int((throttle.locked_until - now).total_seconds()))
        raise RateLimitedError(
            f"too many failed logins for this username; try again in {wait_s} s",
            retry_after_s=wait_s,
        )
    user = session.scalar(select(User).where(User.username == username))
    ok = verify_password(context, password, user.password_hash if user else None)
    if ok and user is not None and user.is_active:
        if throttle is not None and throttle.failures:
            throttle.failures = 0
            throttle.locked_until = None
        if context.needs_update(user.password_hash):
            user.password_hash = hash_password(context, password)
        session.flush()
        return user

    row = _throttle_row(session, username[:64])
    # An atomic increment: concurrent failures all count.
    session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.username == row.username)
        .values(failures=LoginThrottle.failures + 1)
    )
    session.refresh(row)
    if row.failures >= max_failures:
        row.failures = 0
        row.locked_until = now + lockout
        log.warning("login locked for %s after %d failures", username[:64], max_failures)
    session.flush()
    raise LoginFailedError(LOGIN_FAILED, code="invalid_credentials")
