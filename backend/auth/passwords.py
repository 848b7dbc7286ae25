"""Password hashing through libpass (the maintained passlib): argon2 first, bcrypt accepted."""

from __future__ import annotations

from functools import lru_cache

from passlib.context import CryptContext

MIN_PASSWORD_LENGTH = 8
# Bounded so a huge password cannot be used to burn CPU in the hasher.
MAX_PASSWORD_LENGTH = 128


@lru_cache(maxsize=4)
def password_context(time_cost: int = 3, memory_kib: int = 65536) -> CryptContext:
    return CryptContext(
        schemes=["argon2", "bcrypt"],
        deprecated="auto",
        argon2__time_cost=time_cost,
        argon2__memory_cost=memory_kib,
        argon2__parallelism=1,
    )


@lru_cache(maxsize=4)
def _dummy_hash(context: CryptContext) -> str:
    return context.hash("dummy-password-for-timing")


def hash_password(context: CryptContext, password: str) -> str:
    return context.hash(password)


def verify_password(context: CryptContext, password: str, password_hash: str | None) -> bool:
    """Check a password; with no hash (unknown user) still spend the time of one check."""
    if password_hash is None:
        context.verify(password, _dummy_hash(context))
        return False
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    return context.verify(password, password_hash)
