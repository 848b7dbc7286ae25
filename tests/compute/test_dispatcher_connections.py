"""The dispatcher against a busy PostgreSQL: it keeps its lease while request traffic holds
every pooled connection (issue 24, item 1: 80 event streams once took the pool), and a job
submitted while a plan runs is planned next round (it once waited forever)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from app.main import create_app
from compute.dispatch.dispatcher import Dispatcher
from compute.dispatch.leadership import DISPATCHER_LEASE
from compute.models import Lease
from protocol.events import RecordedEvent
from protocol.nodes import LiveNode
from protocol.run import RunConfig
from tests.conftest import clear_tables, make_settings, submit_job


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


def test_a_job_submitted_while_a_plan_runs_is_planned_next_round(
    database_url: str, client: TestClient, settings, user
) -> None:
    """PostgreSQL lets a submit commit while the dispatcher's plan runs; the inputs the
    dispatcher remembered were read after the plan, so they named a job the plan never saw,
    and nothing changed again to make it plan: the job stayed "waiting for the dispatcher".
    """
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock keeps a submit out while a plan runs")
    dispatcher = Dispatcher(client.app.state.session_factory, settings, NoNodes())
    plan = dispatcher.queue.plan
    submitted: list[dict] = []

    def plan_while_a_user_submits(session):  # type: ignore[no-untyped-def]
        decision = plan(session)
        if not submitted:  # the request commits in its own transaction, mid-plan
            submitted.append(submit_job(client, user.headers))
        return decision

    dispatcher.queue.plan = plan_while_a_user_submits  # type: ignore[method-assign]
    dispatcher.schedule()  # plans with no job, while the job arrives
    dispatcher.schedule()  # must see it
    job = client.get(f"/jobs/{submitted[0]['id']}", headers=user.headers).json()
    assert job["status"] == "queued"
    assert job["status_reason"].startswith("waiting for"), job["status_reason"]
