"""The dispatcher keeps its lease while request traffic holds every pooled connection
(issue 24, item 1): 80 event streams once took the pool, the leader could not renew its
lease and another process would have taken over mid-round. It has connections of its own."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from app.main import create_app
from compute.leadership import DISPATCHER_LEASE
from compute.models import Lease
from protocol.events import RecordedEvent
from protocol.nodes import LiveNode
from protocol.run import RunConfig
from tests.conftest import clear_tables, make_settings


class NoNodes:
    """A runner port with nothing lent: the dispatcher's rounds only renew its lease."""

    def live_nodes(self) -> dict[int, LiveNode]:
        return {}

    def launch_runner(self, config: RunConfig) -> None:
        raise AssertionError("nothing to launch")

    def fetch_events(self, job_id: int, after: int) -> list[RecordedEvent] | None:
        return None

    def stop_runner(self, job_id: int) -> None:
        pass

    def why_lost(self, job_id: int) -> str:
        return "no runner"


def renewed_at(url: str):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(Lease.renewed_at).where(Lease.name == DISPATCHER_LEASE)
            ).scalar()
    finally:
        engine.dispose()


def test_the_lease_is_renewed_while_requests_hold_every_pooled_connection(
    database_url: str,
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's connections are not pooled up to a limit; PostgreSQL's are")
    settings = make_settings(database_url, dispatch_interval_s=0.2)
    clear_tables(database_url)
    app = create_app(settings, dispatch=True, run_migrations=False, runners=NoNodes())
    with TestClient(app):
        engine = app.state.engine
        held = []
        try:
            # Every connection the request pool has, each inside an open transaction, as
            # long-running requests would hold them.
            for _ in range(engine.pool.size() + engine.pool._max_overflow):
                connection = engine.connect()
                connection.execute(text("SELECT 1"))
                held.append(connection)
            first = renewed_at(database_url)
            deadline = time.monotonic() + 10
            while renewed_at(database_url) == first and time.monotonic() < deadline:
                time.sleep(0.2)
            later = renewed_at(database_url)
            assert first is not None and later is not None and later > first, (first, later)
        finally:
            for connection in held:
                connection.close()
    clear_tables(database_url)
