"""The gateway's PostgreSQL connections: no ping on a connection just used (a round trip on
every request), yet a connection that idled and was dropped by the server is replaced
before a request gets it."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from core import db
from tests.conftest import postgres_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not postgres_url(), reason="TEST_DATABASE_URL not set"),
]


def server_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def last_activity(watcher, pid: int):
    """When the server last saw the connection do anything (a statement, or its end)."""
    with watcher.connect() as connection:
        return connection.execute(
            text("SELECT state_change FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar_one()


def test_a_connection_used_a_moment_ago_is_taken_without_a_ping():
    engine = db.make_engine(postgres_url(), pool_size=1, max_overflow=0)
    watcher = create_engine(postgres_url())
    try:
        pid = server_pid(engine)  # used and back in the pool
        before = last_activity(watcher, pid)
        with engine.connect() as connection:  # taken again at once
            assert last_activity(watcher, pid) == before  # nothing was sent to check it
            connection.execute(text("SELECT 1"))
            assert last_activity(watcher, pid) > before
    finally:
        engine.dispose()
        watcher.dispose()


def test_a_connection_the_server_dropped_while_idle_is_replaced(monkeypatch):
    engine = db.make_engine(postgres_url(), pool_size=1, max_overflow=0)
    killer = create_engine(postgres_url())
    try:
        first = server_pid(engine)
        with killer.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        monkeypatch.setattr(db, "IDLE_BEFORE_PING_S", 0.0)  # it has idled long enough
        second = server_pid(engine)  # would raise "server closed the connection" unpinged
        assert second != first
    finally:
        engine.dispose()
        killer.dispose()
