"""The dispatcher lease: one holder at a time, taken over once it expires or is released,
and many processes racing for it get exactly one winner (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import select

from compute.dispatch.leadership import hold_lease, release_lease
from compute.models import Lease
from core.db import session_scope


def factory(client: TestClient):
    return client.app.state.session_factory  # type: ignore[attr-defined]


def take(client: TestClient, holder: str, ttl_s: float = 30) -> bool:
    with session_scope(factory(client)) as session:
        return hold_lease(session, holder, ttl_s=ttl_s)


def test_one_holder_until_it_expires_or_resigns(client: TestClient) -> None:
    assert take(client, "a")
    assert not take(client, "b")
    assert take(client, "a")  # renewing is taking again
    with session_scope(factory(client)) as session:
        release_lease(session, "a")
    assert take(client, "b")  # at once after a clean release
    assert not take(client, "a")
    assert take(client, "b", ttl_s=-1)  # renewed into the past: as good as a dead leader
    assert take(client, "a")


def test_racing_processes_get_exactly_one_leader(client: TestClient) -> None:
    racers = [f"p{i}" for i in range(8)]
    start = threading.Barrier(len(racers))

    def race(name: str) -> bool:
        start.wait(timeout=60)
        return take(client, name)

    with ThreadPoolExecutor(len(racers)) as pool:
        # result() raises here whatever a racer raised (a bare thread would only print it),
        # so a racer that crashed instead of answering "not mine" fails the test.
        taken = [future.result() for future in [pool.submit(race, name) for name in racers]]
    winners = [name for name, won in zip(racers, taken, strict=True) if won]
    assert len(winners) == 1, winners
    with session_scope(factory(client)) as session:
        assert session.scalars(select(Lease.holder)).all() == winners
