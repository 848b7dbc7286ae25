"""Accounts, as admins manage them: /users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from app.deps import (
    AdminUser,
    CurrentUser,
    DbSession,
    Offset,
    PasswordContextDep,
    RatesDep,
    SettingsDep,
    UserId,
)
from app.errors import error_responses
from app.schemas.auth import DisableIn, PasswordResetIn, UserOut, UserUpdateIn
from app.schemas.common import Page
from app.schemas.storage import StorageOut
from auth.models import Role
from compute.accounts.lifecycle import (
    UserStatus,
    disable_user,
    enable_user,
    get_user,
    list_users,
    reset_password,
    set_role,
)
from compute.accounts.service import resolve_user_for
from compute.storage.service import storage_used

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=Page[UserOut])
def list_(
    _admin: AdminUser,
    session: DbSession,
    role: Role | None = None,
    status_filter: Annotated[UserStatus | None, Query(alias="status")] = None,
    search: Annotated[str | None, Query(max_length=64, description="part of the name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    """Every account, oldest first; filter by role, status (`active`/`disabled`) and a part
    of the username (case does not matter)."""
    users, total = list_users(
        session, role=role, status=status_filter, search=search, limit=limit, offset=offset
    )
    items = [UserOut.model_validate(u) for u in users]
    return Page[UserOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/{user_id}", response_model=UserOut)
def get(user_id: UserId, _admin: AdminUser, session: DbSession) -> UserOut:
    return UserOut.model_validate(get_user(session, user_id))


# 409: demoting yourself or the last active admin.
@router.patch("/{user_id}", response_model=UserOut, responses=error_responses(409))
def update(user_id: UserId, body: UserUpdateIn, admin: AdminUser, session: DbSession) -> UserOut:
    """Change a user's role (effective on their next request)."""
    return UserOut.model_validate(set_role(session, admin, user_id, body.role))


@router.post("/{user_id}/disable", response_model=UserOut, responses=error_responses(409))
def disable(
    user_id: UserId,
    admin: AdminUser,
    session: DbSession,
    rates: RatesDep,
    body: Annotated[DisableIn | None, Body()] = None,
) -> UserOut:
    """Disable an account: its tokens are refused at once, its queued jobs are cancelled
    and refunded, its running jobs finish (`running_jobs: finish`, the default) or are
    cancelled and charged for what they used (`cancel`), its nodes get no new work. 409 for
    your own account or the last active admin."""
    running = (body or DisableIn()).running_jobs
    return UserOut.model_validate(
        disable_user(session, admin, user_id, running_jobs=running, rates=rates)
    )


@router.post("/{user_id}/enable", response_model=UserOut)
def enable(user_id: UserId, _admin: AdminUser, session: DbSession) -> UserOut:
    """Let a disabled user log in again (their old sessions stay revoked)."""
    return UserOut.model_validate(enable_user(session, user_id))


@router.post("/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password_(
    user_id: UserId,
    body: PasswordResetIn,
    _admin: AdminUser,
    session: DbSession,
    context: PasswordContextDep,
) -> Response:
    """Set a user's password; every session of theirs ends."""
    reset_password(session, context, user_id, body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{user_id}/storage", response_model=StorageOut)
def storage(
    user_id: Annotated[str, Path(max_length=20, description="a user id or `me`")],
    viewer: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
) -> StorageOut:
    """The disk your jobs' models, results and checkpoints take (`me`; admins: anyone's)."""
    user = resolve_user_for(session, viewer, user_id)
    used = storage_used(session, user, storage_root=settings.storage_path)
    return StorageOut(
        user_id=user.id,
        total_bytes=used.total_bytes,
        jobs=[{"job_id": job_id, "bytes": size} for job_id, size in used.jobs],
        retention_days=settings.artifact_retention_days,
    )
