"""JWT access tokens (PyJWT, HS256 only)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
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


# Tokens this process has verified, with their claims and expiry: a client sends the same
# token with every request, and PyJWT's decoding was a twentieth of a submit's CPU. The key
# holds the whole token (its signature included) and the secret, so only a token verified
# with this secret is found; its expiry is checked at every use. Whether the user may still
# use it (disabled, password changed) is read from the database by every request anyway.
VERIFIED: dict[tuple[str, str], tuple[TokenClaims, float]] = {}
VERIFIED_MAX = 10_000  # then forgotten all at once: at worst each token is decoded again


def decode_access_token(token: str, *, secret_key: str) -> TokenClaims:
    """Verify signature, algorithm and expiry; any failure is one uniform 401."""
    known = VERIFIED.get((secret_key, token))
    if known is not None:
        claims, expires_at = known
        if time.time() < expires_at:
            return claims
        VERIFIED.pop((secret_key, token), None)
        raise AuthenticationError("access token expired; log in again")
    try:
        decoded = jwt.decode(
            token,
            secret_key,
            algorithms=[ALGORITHM],  # pinned: no 'none', no algorithm confusion
            options={"require": ["exp", "sub", "iat"]},
        )
        claims = TokenClaims(
            user_id=int(decoded["sub"]),
            role=str(decoded.get("role", "")),
            version=int(decoded.get("ver", 0)),
        )
        expires_at = float(decoded["exp"])
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationError("access token expired; log in again") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError("invalid access token") from exc
    if len(VERIFIED) >= VERIFIED_MAX:
        VERIFIED.clear()
    VERIFIED[(secret_key, token)] = (claims, expires_at)
    return claims
