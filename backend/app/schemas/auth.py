"""Bodies of /auth: login tokens and users."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from auth.models import Role
from auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from compute.accounts.lifecycle import RunningJobs


class AccessToken(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str = Field(
        description="single-use: POST /auth/refresh swaps it for a new pair; "
        "POST /auth/logout revokes it"
    )
    refresh_expires_in: int


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=256)


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


class PasswordResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


class UserUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class DisableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    running_jobs: RunningJobs = Field(
        RunningJobs.FINISH,
        description="finish: running jobs run to their end; cancel: stopped now",
    )


class RegisterUserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    role: Role = Role.USER


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool
    created_at: dt.datetime
    disabled_at: dt.datetime | None = None
