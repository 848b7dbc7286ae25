"""Creating users together with their wallet and signup grant."""

from __future__ import annotations

import logging
import re
import uuid

from passlib.context import CryptContext
from sqlalchemy.orm import Session

from auth.models import Role, User
from auth.service import create_user, find_user
from core.errors import InvalidInputError, NotFoundError
from ledger.flows import grant_tokens
from ledger.models import TransactionKind
from ledger.postings import wallet
from ledger.pricing import tokens_to_micro

log = logging.getLogger(__name__)


def signup_grant_micro(tokens: float) -> int:
    return tokens_to_micro(tokens)


def register_user(
    session: Session,
    context: CryptContext,
    *,
    username: str,
    password: str,
    role: Role,
    signup_grant: int,
) -> User:
    """Create the user, open their wallet and issue the signup grant (if any)."""
    user = create_user(session, context, username=username, password=password, role=role)
    wallet(session, user.id)
    if signup_grant > 0:
        grant_tokens(
            session,
            user_id=user.id,
            amount=signup_grant,
            kind=TransactionKind.SIGNUP_GRANT,
            key=f"signup:user:{user.id}",
            memo="signup grant",
        )
    return user


def ensure_bootstrap_admin(
    session: Session, context: CryptContext, *, username: str, password: str, signup_grant: int
) -> User | None:
    """Create the configured admin at first start; an existing user of that name is kept."""
    if not password:
        log.warning("DISTLM_ADMIN_PASSWORD is empty: no bootstrap admin created")
        return None
    existing = find_user(session, username)
    if existing is not None:
        return existing
    user = register_user(
        session,
        context,
        username=username,
        password=password,
        role=Role.ADMIN,
        signup_grant=signup_grant,
    )
    log.info("created bootstrap admin '%s'", username)
    return user


def resolve_user_for(session: Session, viewer: User, ref: str) -> User:
    """A ``user_id`` path value (an id or ``me``) that the viewer may see: themselves, or
    anyone for an admin. Others' ids answer 'not found', like unknown ones."""
    if ref == "me":
        return viewer
    # ASCII digits only: str.isdigit() takes '²' and '①', which int() refuses.
    if not re.fullmatch(r"[0-9]{1,10}", ref) or not 1 <= int(ref) <= 2**31 - 1:
        raise InvalidInputError("user_id must be a numeric id or 'me'")
    user_id = int(ref)
    if viewer.role != Role.ADMIN and user_id != viewer.id:
        raise NotFoundError(f"user {user_id} not found")
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} not found")
    return user


def admin_grant(
    session: Session,
    admin: User,
    *,
    user_id: int,
    amount: int,
    memo: str,
    idempotency_key: str | None,
) -> User:
    """Issue tokens to a user; the same admin's retry with the same key grants once."""
    user = resolve_user_for(session, admin, str(user_id))
    grant_tokens(
        session,
        user_id=user.id,
        amount=amount,
        kind=TransactionKind.ADMIN_GRANT,
        key=f"grant:{admin.id}:{idempotency_key or uuid.uuid4().hex}",
        memo=memo or f"granted by {admin.username}",
    )
    return user
