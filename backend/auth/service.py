"""User accounts: create, authenticate with throttling, look up, bootstrap the first admin."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math
import re
from dataclasses import dataclass

from passlib.context import CryptContext
from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth.models import (
    ANY_USERNAME,
    USERNAME_MAX_LENGTH,
    LoginThrottle,
    Role,
    User,
    username_key,
)
from auth.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    verify_password,
)
from core.db import UTCDateTime, utcnow
from core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    PermissionDeniedError,
    RateLimitedError,
)

log = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$")
LOGIN_FAILED = "incorrect username or password"
CLIENT_KEY_LENGTH = 64
PRUNE_BATCH = 100


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
    existing = find_user(session, username)
    if existing is not None:
        variant = (
            ""
            if existing.username == username
            else f" (as '{existing.username}'; case does not matter)"
        )
        raise ConflictError(
            f"username '{username}' is already taken{variant}", code="username_taken"
        )
    user = User(username=username, password_hash=hash_password(context, password), role=role.value)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:  # a concurrent registration won the race
        raise ConflictError(
            f"username '{username}' is already taken", code="username_taken"
        ) from exc
    return user


def find_user(session: Session, username: str) -> User | None:
    """The user of this name, whatever its case (`ALICE` finds `alice`)."""
    return session.scalar(select(User).where(User.username_key == username_key(username)))


def get_active_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise AuthenticationError("the account for this token no longer exists or is disabled")
    return user


def client_address_key(host: str | None) -> str:
    """The throttle's name for a client address: an IPv6 client is counted by its /64 (one
    subscriber's block, which it can rotate through freely), an IPv4-mapped one as IPv4."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:CLIENT_KEY_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class LoginLimits:
    """Failures allowed per (address, username) and per address across usernames, and how
    long a count lasts and a bucket that reached its limit stays locked."""

    max_failures: int
    max_failures_per_address: int
    lockout: dt.timedelta


def _bucket(client: str, key: str) -> ColumnElement[bool]:
    return and_(LoginThrottle.client == client, LoginThrottle.username_key == key)


def _lock_wait_s(session: Session, client: str, key: str, now: dt.datetime) -> int | None:
    locked_until = session.scalar(select(LoginThrottle.locked_until).where(_bucket(client, key)))
    if locked_until is None or locked_until <= now:
        return None
    return max(1, math.ceil((locked_until - now).total_seconds()))


def _count_failure(
    session: Session, client: str, key: str, *, limit: int, lockout: dt.timedelta, now: dt.datetime
) -> bool:
    """Count one failure in a bucket (an atomic increment, so concurrent failures all count;
    failures older than the lockout period are forgotten). True when this locks it."""
    stale = LoginThrottle.window_started_at < bindparam("cutoff", now - lockout, UTCDateTime)
    increment = (
        update(LoginThrottle)
        .where(_bucket(client, key))
        .values(
            failures=case((stale, 1), else_=LoginThrottle.failures + 1),
            window_started_at=case(
                (stale, bindparam("now", now, UTCDateTime)), else_=LoginThrottle.window_started_at
            ),
        )
        .execution_options(synchronize_session=False)
    )
    if session.execute(increment).rowcount == 0:
        try:
            with session.begin_nested():
                session.add(
                    LoginThrottle(
                        client=client, username_key=key, failures=1, window_started_at=now
                    )
                )
        except IntegrityError:  # a concurrent failure created it: count on that row
            session.execute(increment)
    failures = session.scalar(select(LoginThrottle.failures).where(_bucket(client, key))) or 0
    if failures < limit:
        return False
    session.execute(
        update(LoginThrottle)
        .where(_bucket(client, key))
        .values(failures=0, window_started_at=now, locked_until=now + lockout)
        .execution_options(synchronize_session=False)
    )
    return True


def authenticate(
    session: Session,
    context: CryptContext,
    *,
    username: str,
    password: str,
    client: str,
    limits: LoginLimits,
) -> User:
    """Return the user for a correct password.

    Usernames match without regard to case. Failures are counted per (client address,
    username) whether or not the user exists, and the same message is used for unknown users
    and wrong passwords, so neither the answer nor the lockout reveals which usernames exist;
    and because the count is per address, an attacker's failures lock that attacker out, not
    the account's owner logging in from elsewhere. A second count per address across
    usernames stops one address from trying a password on many accounts.
    """
    now = utcnow()
    key = username_key(username)[:USERNAME_MAX_LENGTH]
    for bucket, what in ((ANY_USERNAME, "from this address"), (key, "for this username")):
        wait_s = _lock_wait_s(session, client, bucket, now)
        if wait_s is not None:
            raise RateLimitedError(
                f"too many failed logins {what}; try again in {wait_s} s",
                retry_after_s=wait_s,
            )
    user = find_user(session, username)
    ok = verify_password(context, password, user.password_hash if user else None)
    if ok and user is not None and user.is_active:
        # The address-wide count is kept: logging in to one's own account must not
        # reset an allowance for trying passwords on others.
        session.execute(
            update(LoginThrottle)
            .where(_bucket(client, key), LoginThrottle.failures != 0)
            .values(failures=0)
            .execution_options(synchronize_session=False)
        )
        if context.needs_update(user.password_hash):
            user.password_hash = hash_password(context, password)
        session.flush()
        return user

    for bucket, limit in (
        (key, limits.max_failures),
        (ANY_USERNAME, limits.max_failures_per_address),
    ):
        if _count_failure(session, client, bucket, limit=limit, lockout=limits.lockout, now=now):
            log.warning(
                "logins locked for %s from %s after %d failures",
                "every username" if bucket == ANY_USERNAME else repr(bucket),
                client,
                limit,
            )
    _forget_expired_buckets(session, now=now, lockout=limits.lockout)
    session.flush()
    raise LoginFailedError(LOGIN_FAILED, code="invalid_credentials")


def _forget_expired_buckets(session: Session, *, now: dt.datetime, lockout: dt.timedelta) -> None:
    """Rows whose window and lock are over count nothing: delete a few per failed login so
    that failures from many addresses and names do not pile up. Rows another login is
    counting on are skipped (SKIP LOCKED), so two pruners never wait on each other."""
    expired = (
        select(LoginThrottle.client, LoginThrottle.username_key)
        .where(
            LoginThrottle.window_started_at < now - lockout,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until <= now),
        )
        .limit(PRUNE_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        delete(LoginThrottle)
        .where(tuple_(LoginThrottle.client, LoginThrottle.username_key).in_(expired))
        .execution_options(synchronize_session=False)
    )


# The throttle's bucket for password changes: per account, whatever the address (the caller
# already holds the account's access token; what it lacks is the current password).
PASSWORD_CHANGE_CLIENT = "password-change"


class WrongPasswordError(PermissionDeniedError):
    """A wrong current password: the failure count it bumped must be kept."""

    keep_changes = True


def check_current_password(
    session: Session, context: CryptContext, user: User, password: str, *, limits: LoginLimits
) -> None:
    """Prove a password change with the current password, throttled like logins: after
    ``limits.max_failures`` wrong ones the account's changes are locked for the lockout
    period (429), the right password included."""
    now = utcnow()
    key = f"#{user.id}"
    wait_s = _lock_wait_s(session, PASSWORD_CHANGE_CLIENT, key, now)
    if wait_s is not None:
        raise RateLimitedError(
            f"too many wrong current passwords; try again in {wait_s} s", retry_after_s=wait_s
        )
    if verify_password(context, password, user.password_hash):
        return
    _count_failure(
        session,
        PASSWORD_CHANGE_CLIENT,
        key,
        limit=limits.max_failures,
        lockout=limits.lockout,
        now=now,
    )
    session.flush()
    raise WrongPasswordError("the current password is wrong", code="wrong_password")
