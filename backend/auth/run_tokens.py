"""Run credentials: what a job's driver on a node uses to report to the gateway.

One is made for each attempt of a job when the attempt is launched, signed with the gateway's
secret and scoped to (job, attempt, node): it is refused for any other job, and once the
attempt has ended (the gateway checks that the job is still running that attempt). An access
token is never a run credential, nor the other way round (the audience differs)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import jwt

from auth.tokens import ALGORITHM
from core.errors import AuthenticationError

RUN_AUDIENCE = "distlm-run"
RUN_PREFIX = "run."  # tells a run credential from a JWT access token at a glance


@dataclass(frozen=True)
class RunClaims:
    job_id: int
    attempt: int
    node_id: int  # the node its driver runs on


def create_run_token(claims: RunClaims, *, secret_key: str, expires_in: dt.timedelta) -> str:
    now = dt.datetime.now(dt.UTC)
    payload = {
        "aud": RUN_AUDIENCE,
        "sub": f"job:{claims.job_id}",
        "job": claims.job_id,
        "att": claims.attempt,
        "node": claims.node_id,
        "iat": now,
        "exp": now + expires_in,
    }
    return RUN_PREFIX + jwt.encode(payload, secret_key, algorithm=ALGORITHM)


def decode_run_token(token: str, *, secret_key: str) -> RunClaims:
    """Signature, algorithm, audience and expiry; any failure is one uniform 401."""
    if not token.startswith(RUN_PREFIX):
        raise AuthenticationError("not a run credential")
    try:
        payload = jwt.decode(
            token.removeprefix(RUN_PREFIX),
            secret_key,
            algorithms=[ALGORITHM],
            audience=RUN_AUDIENCE,
            options={"require": ["exp", "aud", "job", "att", "node"]},
        )
        return RunClaims(int(payload["job"]), int(payload["att"]), int(payload["node"]))
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationError("run credential expired") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError("invalid run credential") from exc
