"""Request dependencies: settings, the per-request session, the caller and role gates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from passlib.context import CryptContext
from sqlalchemy.orm import Session

from auth.models import Role, User
from auth.passwords import password_context
from auth.service import get_active_user
from auth.tokens import decode_access_token
from compute.models import Node
from compute.nodes.service import CREDENTIAL_PREFIX, node_for_credential
from core.errors import AuthenticationError, DistLMError, PermissionDeniedError
from core.settings import Settings
from ledger.pricing import Rates

# Ids, offsets and steps meet 32-bit database integers (and SQLite's 64-bit ones): anything
# outside is bad input (422), never an overflow in the database driver (500).
MAX_ID = 2**31 - 1
MAX_INT = 2**31 - 1
NodeId = Annotated[int, Path(ge=1, le=MAX_ID, description="node id")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="user id")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="items to skip")]

# auto_error=False: a missing token becomes our own 401 JSON, not FastAPI's default.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


# What needs no I/O is an `async def`: FastAPI hands every plain `def` dependency to its
# thread pool, a round trip through the event loop that costs more than the work itself.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_password_context(settings: SettingsDep) -> CryptContext:
    return password_context(settings.argon2_time_cost, settings.argon2_memory_kib)


PasswordContextDep = Annotated[CryptContext, Depends(get_password_context)]


async def get_rates(request: Request) -> Rates:
    return request.app.state.rates  # the settings' prices, worked out at start


RatesDep = Annotated[Rates, Depends(get_rates)]


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per request: commit when the handler returns, roll back if it raised.
    GET and HEAD requests read in a read-only session (on SQLite: no write lock). Making
    the session touches no database (it connects at its first statement), so only its end
    goes to the thread pool: one hop, where a plain generator took two; none where a route
    commits on its own thread (submit: see there)."""
    reads_only = request.method in ("GET", "HEAD")
    factory = (
        request.app.state.read_session_factory if reads_only else request.app.state.session_factory
    )
    session: Session = factory()
    try:
        yield session
    except BaseException as exc:
        await run_in_threadpool(_end, session, commit=_keeps_changes(exc))
        raise
    if session.in_transaction():
        await run_in_threadpool(_end, session, commit=True)
    else:  # the route committed on its own thread (or read nothing): no database to wait on
        session.close()


def _keeps_changes(exc: BaseException) -> bool:
    return isinstance(exc, DistLMError) and exc.keep_changes


def _end(session: Session, *, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": commit before the response is sent, so a 2xx means it is stored.
DbSession = Annotated[Session, Depends(get_db, scope="function")]
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def get_current_user(token: BearerToken, session: DbSession, settings: SettingsDep) -> User:
    if not token:
        raise AuthenticationError("not authenticated: send 'Authorization: Bearer <token>'")
    if token.startswith(CREDENTIAL_PREFIX):
        raise AuthenticationError("a node credential is only accepted for heartbeats")
    claims = decode_access_token(token, secret_key=settings.secret_key)
    if not 1 <= claims.user_id <= MAX_ID:
        # Signed by us, yet no user can have this id: refuse it before it reaches the database.
        raise AuthenticationError("invalid access token")
    # The role is read from the database, so a changed role takes effect at once; a token
    # from before a password change or a disable is refused.
    user = get_active_user(session, claims.user_id)
    if claims.version != user.token_version:
        raise AuthenticationError("this access token was revoked; log in again")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: Role) -> Callable[[User], User]:
    allowed = ", ".join(r.value for r in roles)

    def check(user: CurrentUser) -> User:
        if user.role not in {r.value for r in roles}:
            raise PermissionDeniedError(f"this action needs the role: {allowed}")
        return user

    check.required_roles = roles  # type: ignore[attr-defined]  # read by app.openapi
    return check


AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]
NodeOwnerUser = Annotated[User, Depends(require_roles(Role.NODE_OWNER, Role.ADMIN))]


@dataclass(frozen=True)
class NodeCaller:
    """Who sends a heartbeat: the node itself (its credential) or a user (JWT)."""

    node: Node | None
    user: User | None


def get_node_caller(
    node_id: NodeId, token: BearerToken, session: DbSession, settings: SettingsDep
) -> NodeCaller:
    if token and token.startswith(CREDENTIAL_PREFIX):
        return NodeCaller(node=node_for_credential(session, node_id, token), user=None)
    return NodeCaller(node=None, user=get_current_user(token, session, settings))


NodeCallerDep = Annotated[NodeCaller, Depends(get_node_caller)]
