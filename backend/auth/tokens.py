"""JWT access tokens (PyJWT, HS256 only)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import jwt

from core.errors import AuthenticationError

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    role: str
    version: int = 0  # the user's token_version when it was issued


def create_access_token(
    *, user_id: int, role: str, secret_key: str, expires_in: dt.timedelta, version: int = 0
) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "role": role,
        "ver": version,
        "iat": now,
        "exp": now + expires_in,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret_key, algorithm=ALGORITHM)


def decode_access_token(token: str, *, secret_key: str) -> TokenClaims:
    """Verify signature, algorithm and expiry; any failure is one uniform 401."""
    try:
        claims = jwt.decode(
            token,
            secret_key,
            algorithms=[ALGORITHM],  # pinned: no 'none', no algorithm confusion
            options={"require": ["exp", "sub", "iat"]},
        )
        return TokenClaims(
            user_id=int(claims["sub"]),
            role=str(claims.get("role", "")),
            version=int(claims.get("ver", 0)),
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationError("access token expired; log in again") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError("invalid access token") from exc
