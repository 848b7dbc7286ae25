"""The login throttle counts the client's own address behind `make run`'s server: a forged
X-Forwarded-For is ignored unless its sender is a proxy named in DISTLM_TRUSTED_PROXIES
(issue 24, item 8: uvicorn trusted it from 127.0.0.1, and rotating it gave 12 wrong
passwords with no lockout)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.agent.gateway_process import running_gateway

pytestmark = [pytest.mark.slow]

MAX_FAILURES = 3


def wrong_logins(base: str, count: int) -> list[int]:
    """``count`` wrong passwords for the admin, each claiming another client address."""
    return [
        httpx.post(
            f"{base}/auth/token",
            data={"username": "admin", "password": f"wrong-{attempt}"},
            headers={"X-Forwarded-For": f"203.0.113.{attempt + 1}"},
            timeout=30,
        ).status_code
        for attempt in range(count)
    ]


def test_a_forged_forwarded_for_does_not_dodge_the_login_lockout(tmp_path: Path) -> None:
    with running_gateway(
        tmp_path, DISTLM_LOCAL_NODE="false", DISTLM_LOGIN_MAX_FAILURES=str(MAX_FAILURES)
    ) as gateway:
        codes = wrong_logins(gateway.base, MAX_FAILURES + 2)
    assert codes[:MAX_FAILURES] == [401] * MAX_FAILURES
    assert codes[MAX_FAILURES:] == [429, 429]  # one address, whatever the header said


def test_a_named_proxy_is_believed(tmp_path: Path) -> None:
    with running_gateway(
        tmp_path,
        DISTLM_LOCAL_NODE="false",
        DISTLM_LOGIN_MAX_FAILURES=str(MAX_FAILURES),
        DISTLM_TRUSTED_PROXIES="127.0.0.1",
    ) as gateway:
        codes = wrong_logins(gateway.base, MAX_FAILURES + 2)
    assert codes == [401] * (MAX_FAILURES + 2)  # each a client of its own, as the proxy says
