"""The dispatcher never holds the database while it waits on Ray (issue 12): with a stand-in
for Ray whose launch and fetch block until the test lets them go, submits, heartbeats,
`/health` and a cancel of the very job being fetched all answer meanwhile, on SQLite and
PostgreSQL. The old dispatcher held its transaction (SQLite's write lock, PostgreSQL's row
lock on the job) across those calls, and these requests waited for it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from auth.models import Role
from core.settings import Settings
from protocol.events import RecordedEvent, RunState, StatusEvent
from protocol.nodes import LiveNode
from protocol.run import RunConfig
from tests.conftest import Account, clear_tables, make_settings, register_node, submit_job
from tests.polling import wait_for

BLOCK_S = 60  # the stand-in waits at most this long for the test to let it go


class BlockingRay:
    """Ray as seen by the dispatcher, each launch and fetch parked until released."""

    def __init__(self) -> None:
        self.nodes: dict[int, LiveNode] = {}
        self.in_launch = threading.Event()
        self.in_fetch = threading.Event()
        self.release_launch = threading.Event()
        self.release_fetch = threading.Event()
        self.launched: list[int] = []
        self.stopped: list[int] = []

    def live_nodes(self) -> dict[int, LiveNode]:
        return dict(self.nodes)

    def launch_runner(self, config: RunConfig) -> None:
        self.in_launch.set()
        self.release_launch.wait(BLOCK_S)
        self.launched.append(config.job_id)

    def fetch_events(self, job_id: int, after: int) -> list[RecordedEvent] | None:
        self.in_fetch.set()
        self.release_fetch.wait(BLOCK_S)
        return [RecordedEvent(after + 1, 0.0, StatusEvent(RunState.RUNNING, "started"))]

    def stop_runner(self, job_id: int) -> None:
        self.stopped.append(job_id)

    def why_lost(self, job_id: int) -> str:
        return "its runner was lost"


@pytest.fixture
def blocking_ray() -> BlockingRay:
    return BlockingRay()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, dispatch_interval_s=0.05)


@pytest.fixture
def app(settings: Settings, blocking_ray: BlockingRay) -> Iterator[object]:
    """The gateway with its dispatcher running against the blocking stand-in."""
    clear_tables(settings.database_url)
    yield create_app(settings, dispatch=True, run_migrations=False, runners=blocking_ray)
    blocking_ray.release_launch.set()  # let the dispatcher thread finish its round
    blocking_ray.release_fetch.set()
    clear_tables(settings.database_url)


def answers_within(seconds: float, *calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in a thread; fail if they have not all answered in time (they would
    hang while the dispatcher holds the database)."""
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.extend(call() for call in calls))
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "requests waited on the dispatcher's Ray call"
    return results


def test_requests_answer_while_the_dispatcher_waits_on_ray(
    client: TestClient,
    blocking_ray: BlockingRay,
    make_account,
) -> None:
    owner: Account = make_account("nora", Role.NODE_OWNER)
    user: Account = make_account("ursula")
    node = register_node(client, owner.headers, "slow-node")
    node_auth = {"Authorization": f"Bearer {node['credential']}"}
    blocking_ray.nodes[node["id"]] = LiveNode(node["id"], "ray-1", True, cpus=8, gpus=1)
    job = submit_job(client, user.headers)

    assert blocking_ray.in_launch.wait(30), "the dispatcher never launched the job"
    health, submitted, beat = answers_within(
        10,
        lambda: client.get("/health"),
        lambda: client.post("/jobs/submit", headers=user.headers, json=job["spec"]),
        lambda: client.post(f"/nodes/{node['id']}/heartbeat", headers=node_auth),
    )
    assert health.status_code == 200
    assert submitted.status_code == 201, submitted.text
    assert beat.status_code == 200, beat.text
    assert client.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == "scheduled"

    blocking_ray.release_launch.set()
    assert blocking_ray.in_fetch.wait(30), "the dispatcher never fetched the job's events"
    assert client.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == "running"
    (cancel,) = answers_within(
        10, lambda: client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    )
    assert cancel.status_code == 200, cancel.text

    blocking_ray.release_fetch.set()
    done = wait_for(
        lambda: (
            (j := client.get(f"/jobs/{job['id']}", headers=user.headers).json())["status"]
            == "cancelled"
            and j
        ),
        what="the dispatcher to end the cancelled job",
    )
    assert done["status_reason"] == "cancelled while running"
    assert job["id"] in blocking_ray.stopped
