"""Accounts over their life, as admins manage them: list and read, change a role, disable
(sessions end at once, queued jobs refunded, running ones finished or cancelled, nodes get
no new work) and enable, reset a password; and everyone's own password change."""

from __future__ import annotations

import enum

from passlib.context import CryptContext
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import Role, User
from auth.passwords import hash_password
from auth.refresh import revoke_all_sessions
from auth.service import LoginLimits, check_current_password, validate_password
from compute.jobs.service import cancel_job
from compute.jobs.state import JobStatus
from compute.models import Job
from compute.visibility import page
from core.db import utcnow
from core.errors import ConflictError, InvalidInputError, NotFoundError
from ledger.pricing import Rates


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class RunningJobs(enum.StrEnum):
    """What disabling a user does to their running jobs."""

    FINISH = "finish"  # they run to their end and are settled as usual
    CANCEL = "cancel"  # stopped now, charged for what they used


def list_users(
    session: Session,
    *,
    role: Role | None,
    status: UserStatus | None,
    search: str | None,
    limit: int,
    offset: int,
) -> tuple[list[User], int]:
    query = select(User)
    if role is not None:
        query = query.where(User.role == role.value)
    if status is not None:
        query = query.where(User.is_active.is_(status is UserStatus.ACTIVE))
    if search:
        # LIKE wildcards in the search are literal characters.
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(User.username_key.like(f"%{escaped}%", escape="\\"))
    return page(session, query, order_by=User.id, limit=limit, offset=offset)


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} not found")
    return user


def _other_active_admins(session: Session, user: User) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                User.role == Role.ADMIN.value, User.is_active.is_(True), User.id != user.id
            )
        )
        or 0
    )


def _keep_an_admin(session: Session, admin: User, user: User, what: str) -> None:
    if user.id == admin.id:
        raise ConflictError(f"you cannot {what} your own account", code="own_account")
    if user.role == Role.ADMIN and _other_active_admins(session, user) == 0:
        raise ConflictError(f"cannot {what} the last active admin", code="last_admin")


def set_role(session: Session, admin: User, user_id: int, role: Role) -> User:
    user = get_user(session, user_id)
    if user.role != role.value:
        if user.role == Role.ADMIN:
            _keep_an_admin(session, admin, user, "demote")
        user.role = role.value  # read from the database on every request: effective at once
        session.flush()
    return user


def disable_user(
    session: Session, admin: User, user_id: int, *, running_jobs: RunningJobs, rates: Rates
) -> User:
    """Disable an account: its tokens are refused from the next request, queued jobs are
    cancelled with a full refund, running ones finish or are cancelled, and its nodes get
    no new work (the scheduler skips nodes of disabled owners)."""
    user = get_user(session, user_id)
    _keep_an_admin(session, admin, user, "disable")
    if not user.is_active:
        return user
    user.is_active = False
    user.disabled_at = utcnow()
    revoke_all_sessions(session, user)
    wanted = [JobStatus.QUEUED.value]
    if running_jobs is RunningJobs.CANCEL:
        wanted += [JobStatus.SCHEDULED.value, JobStatus.RUNNING.value]
    jobs = session.scalars(
        select(Job)
        .where(Job.owner_id == user.id, Job.status.in_(wanted), Job.cancel_requested_at.is_(None))
        .order_by(Job.id)
    ).all()
    for job in jobs:
        cancel_job(session, admin, job.id, rates=rates)
    session.flush()
    return user


def enable_user(session: Session, user_id: int) -> User:
    user = get_user(session, user_id)
    user.is_active = True
    user.disabled_at = None
    session.flush()
    return user


def reset_password(
    session: Session, context: CryptContext, user_id: int, new_password: str
) -> User:
    """An admin sets a new password: every session of the user ends."""
    user = get_user(session, user_id)
    _set_password(session, context, user, new_password)
    return user


def change_password(
    session: Session,
    context: CryptContext,
    user: User,
    *,
    current: str,
    new: str,
    limits: LoginLimits,
) -> User:
    """The user's own change, proven by the current password (throttled like logins):
    every session ends (this one included: log in again with the new password)."""
    check_current_password(session, context, user, current, limits=limits)
    if current == new:
        raise InvalidInputError("the new password is the current one")
    _set_password(session, context, user, new)
    return user


def _set_password(session: Session, context: CryptContext, user: User, password: str) -> None:
    validate_password(password)
    user.password_hash = hash_password(context, password)
    revoke_all_sessions(session, user)
