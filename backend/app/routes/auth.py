"""POST /auth/token, POST /auth/register, GET /auth/me."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, status

from app.deps import AdminUser, CurrentUser, DbSession, PasswordContextDep, SettingsDep
from app.schemas.auth import AccessToken, RegisterUserIn, UserOut
from auth.service import authenticate
from auth.tokens import create_access_token
from compute.accounts import register_user, signup_grant_micro

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/token", response_model=AccessToken)
def login(
    username: Annotated[str, Form(min_length=1, max_length=256)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    session: DbSession,
    settings: SettingsDep,
    context: PasswordContextDep,
) -> AccessToken:
    """OAuth2 password flow (form fields), as in seed 003's curl and Swagger's Authorize."""
    user = authenticate(
        session,
        context,
        username=username,
        password=password,
        max_failures=settings.login_max_failures,
        lockout=dt.timedelta(seconds=settings.login_lockout_s),
    )
    expires = dt.timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        user_id=user.id, role=user.role, secret_key=settings.secret_key, expires_in=expires
    )
    return AccessToken(access_token=token, expires_in=int(expires.total_seconds()))


@router.post("/register", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def register(
    body: RegisterUserIn,
    _admin: AdminUser,
    session: DbSession,
    context: PasswordContextDep,
    settings: SettingsDep,
) -> UserOut:
    """Create a user with a wallet holding the signup grant (`DISTLM_SIGNUP_GRANT`)."""
    user = register_user(
        session,
        context,
        username=body.username,
        password=body.password,
        role=body.role,
        signup_grant=signup_grant_micro(settings.signup_grant),
    )
    return UserOut.model_validate(user)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)
