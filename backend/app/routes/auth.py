"""Logging in and out: POST /auth/token, /auth/refresh, /auth/logout, /auth/password;
POST /auth/register (admin), GET /auth/me."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request, Response, status

from app.deps import AdminUser, CurrentUser, DbSession, PasswordContextDep, SettingsDep
from app.errors import error_responses
from app.schemas.auth import AccessToken, PasswordChangeIn, RefreshIn, RegisterUserIn, UserOut
from auth.models import User
from auth.refresh import (
    IssuedRefreshToken,
    issue_refresh_token,
    revoke_refresh_token,
    rotate_refresh_token,
)
from auth.service import LoginLimits, authenticate, client_address_key
from auth.tokens import create_access_token
from compute.accounts.lifecycle import change_password
from compute.accounts.service import register_user, signup_grant_micro
from core.errors import PermissionDeniedError
from core.settings import Settings

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=AccessToken,
    # 401: wrong username or password; 403: a form from another site; 429: too many failures.
    responses=error_responses(401, 403, 429),
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
    reverse proxy, name it in `DISTLM_TRUSTED_PROXIES` so the address is the client's. A
    browser's form posted from another site (its `Origin` is not this gateway) is refused
    (403 `cross_origin`): no page elsewhere can log a visitor in to an account of its choosing."""
    refuse_other_origins(request)
    user = authenticate(
        session,
        context,
        username=username,
        password=password,
        client=client_address_key(request.client.host if request.client else None),
        limits=login_limits(settings),
    )
    lifetime = dt.timedelta(days=settings.refresh_token_expire_days)
    return token_pair(user, settings, issue_refresh_token(session, user, lifetime=lifetime))


@router.post("/refresh", response_model=AccessToken, responses=error_responses(401))
def refresh(body: RefreshIn, session: DbSession, settings: SettingsDep) -> AccessToken:
    """Swap a refresh token for a new access token and a new refresh token (the old one is
    used up). Presenting a used refresh token again revokes every token of its login: 401
    `refresh_token_reused`."""
    lifetime = dt.timedelta(days=settings.refresh_token_expire_days)
    user, issued = rotate_refresh_token(session, body.refresh_token, lifetime=lifetime)
    return token_pair(user, settings, issued)


def token_pair(user: User, settings: Settings, refresh: IssuedRefreshToken) -> AccessToken:
    """A new access token for the user beside the refresh token just issued."""
    expires = dt.timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        user_id=user.id,
        role=user.role,
        secret_key=settings.secret_key,
        expires_in=expires,
        version=user.token_version,
    )
    return AccessToken(
        access_token=token,
        expires_in=int(expires.total_seconds()),
        refresh_token=refresh.token,
        refresh_expires_in=int(
            dt.timedelta(days=settings.refresh_token_expire_days).total_seconds()
        ),
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(body: RefreshIn, session: DbSession) -> Response:
    """Revoke the refresh token (and every token of its login). Logging out twice, or with
    an unknown token, is not an error. Access tokens already issued expire on their own
    within `DISTLM_ACCESS_TOKEN_EXPIRE_MINUTES`; change the password to end them at once."""
    revoke_refresh_token(session, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(403, 429),  # the current password is wrong; too many were
)
def change_password_(
    body: PasswordChangeIn,
    user: CurrentUser,
    session: DbSession,
    context: PasswordContextDep,
    settings: SettingsDep,
) -> Response:
    """Change your password. Every session of yours ends, this one included: every refresh
    token is revoked and every access token refused; log in again with the new password.
    Wrong current passwords are throttled like logins (429 once the account's limit is
    reached, until the lockout ends)."""
    change_password(
        session,
        context,
        user,
        current=body.current_password,
        new=body.new_password,
        limits=login_limits(settings),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


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


def login_limits(settings: Settings) -> LoginLimits:
    return LoginLimits(
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        lockout=dt.timedelta(seconds=settings.login_lockout_s),
    )


def refuse_other_origins(request: Request) -> None:
    """A browser names the page a form came from (Origin); curl and scripts send none."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise PermissionDeniedError(
            f"a login form from {origin[:100]} is not this gateway's", code="cross_origin"
        )
