"""POST /auth/token, POST /auth/register, GET /auth/me."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, Request, status

from app.deps import AdminUser, CurrentUser, DbSession, PasswordContextDep, SettingsDep
from app.errors import error_responses
from app.schemas.auth import AccessToken, RegisterUserIn, UserOut
from auth.service import LoginLimits, authenticate, client_address_key
from auth.tokens import create_access_token
from compute.accounts import register_user, signup_grant_micro

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=AccessToken,
    # 401: wrong username or password; 429: too many failures from this address.
    responses=error_responses(401, 429),
)
def login(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=256)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    session: DbSession,
    settings: SettingsDep,
    context: PasswordContextDep,
) -> AccessToken:
    """OAuth2 password flow (form fields), as in seed 003's curl and Swagger's Authorize.

    Usernames are not case-sensitive. Failed logins are limited per client address and
    username, and per client address across usernames (429 with `Retry-After`). Behind a
    reverse proxy, run uvicorn with `--forwarded-allow-ips` so the address is the client's."""
    user = authenticate(
        session,
        context,
        username=username,
        password=password,
        client=client_address_key(request.client.host if request.client else None),
        limits=LoginLimits(
            max_failures=settings.login_max_failures,
            max_failures_per_address=settings.login_max_failures_per_address,
            lockout=dt.timedelta(seconds=settings.login_lockout_s),
        ),
    )
    expires = dt.timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        user_id=user.id, role=user.role, secret_key=settings.secret_key, expires_in=expires
    )
    return AccessToken(access_token=token, expires_in=int(expires.total_seconds()))


@router.post(
    "/register",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409),  # the username is taken (in any letter case)
)
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
