"""A node's agent heading a job's own cluster (a multi-node attempt on the nodes' own Ray).
A head takes seconds to start, tens on a loaded machine: the agent goes on asking for its
runs meanwhile (a gateway that hears nothing from a node for its node timeout takes it for
lost and moves its jobs: in a full suite every attempt of a job was lost that way), and a
head whose attempt was withdrawn while it started is stopped once it is up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import runs as agent_runs
from agent.gateway_client import GatewayClient, NodeIdentity
from agent.runs import RunFollower
from app.main import create_app
from auth.models import Role
from core.settings import Settings
from ray_module.head import HeadRecord
from tests.conftest import CPU_NODE, clear_tables, free_port, make_settings, register_node
from tests.job_specs import TWO_NODE_JOB
from tests.live_gateway import LiveGateway
from tests.polling import wait_for

pytestmark = [pytest.mark.ray]  # real Ray heads

NODE_TIMEOUT_S = 3
SLOW_START_S = 2 * NODE_TIMEOUT_S  # on top of the head's own start


@pytest.fixture
def settings(database_url: str) -> Settings:
    if not database_url.startswith("sqlite"):
        pytest.skip("Ray test not marked 'database': runs once, on SQLite")
    return make_settings(database_url, node_timeout=NODE_TIMEOUT_S, dispatch_interval_s=0.1)


@pytest.fixture
def client(settings: Settings) -> Iterator[LiveGateway]:
    """The gateway on a port of its own (the agent reaches it over HTTP)."""
    clear_tables(settings.database_url)
    served = LiveGateway(
        lambda: create_app(settings, dispatch=True, run_migrations=False), free_port()
    ).start()
    yield served
    served.stop()
    clear_tables(settings.database_url)


@pytest.fixture
def slow_heads(monkeypatch: pytest.MonkeyPatch) -> list[HeadRecord]:
    """Heads that take ``SLOW_START_S`` longer to start, as on a loaded machine; each one
    started, in order."""
    started: list[HeadRecord] = []
    real_start = agent_runs.start_head

    def start_slowly(*args: object, **kwargs: object) -> HeadRecord:
        time.sleep(SLOW_START_S)
        started.append(real_start(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(agent_runs, "start_head", start_slowly)
    return started


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_members(pgid: int) -> list[str]:
    """What is left of a process group, as /proc shows it (a zombie counts: unreaped)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            found.append(stat[:80])
    return found


def runs_of(client: LiveGateway, node: dict) -> list[dict]:
    """What the node is told to run (asking is also what keeps it counted on)."""
    answer = client.post(
        f"/nodes/{node['id']}/runs",
        headers={"Authorization": f"Bearer {node['credential']}"},
        json={"clusters": []},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["runs"]


def test_an_agent_asks_on_while_its_jobs_head_starts_and_stops_heads_it_no_longer_needs(
    client: LiveGateway, make_account, slow_heads: list[HeadRecord], tmp_path: Path
) -> None:
    owner, user = make_account("olivia", Role.NODE_OWNER), make_account("alice")
    nodes = [register_node(client, owner.headers, f"m{i}", CPU_NODE) for i in (1, 2)]

    def placed(job_id: int) -> tuple[dict, dict]:
        """The job's driver node and its member (the test asks as the member's agent)."""
        roles = wait_for(
            lambda: {
                run["role"]: node
                for node in nodes
                for run in runs_of(client, node)
                if run["job_id"] == job_id
            },
            timeout_s=20,
            what="the two-node job placed",
        )
        return roles["driver"], roles["member"]

    first = client.post("/jobs/submit", headers=user.headers, json=TWO_NODE_JOB).json()
    driver, member = placed(first["id"])
    identity = NodeIdentity(driver["id"], driver["hostname"], driver["credential"])
    follower = RunFollower(
        GatewayClient(str(client.base_url)), identity, ray_address="", work_dir=tmp_path
    )
    follower.start()
    try:
        # The head starts for twice the node timeout and more; meanwhile the member asks as
        # its agent would, and the driver node's agent asks on: nobody is lost.
        def told_address() -> str:
            runs = runs_of(client, member)
            assert runs, "the member's run was withdrawn: the attempt was lost"
            return runs[0]["cluster"]["address"]

        address = wait_for(told_address, timeout_s=120, what="the head's address", every_s=0.3)
        (head,) = slow_heads
        assert address == head.address and group_alive(head.pid)
        job = client.get(f"/jobs/{first['id']}", headers=user.headers).json()
        assert (job["status"], job["attempts"]) == ("running", 1), job["status_reason"]
        logs = client.get(f"/jobs/{first['id']}/logs", headers=user.headers).json()["items"]
        assert not [line for line in logs if "lost" in line["message"]], logs

        # Cancelled, the job's head stops with its driver.
        client.post(f"/jobs/{first['id']}/cancel", headers=user.headers)
        wait_for(
            lambda: not group_alive(head.pid), timeout_s=30, what=lambda: group_members(head.pid)
        )

        # A job cancelled while its head starts: the head is stopped once it is up.
        second = client.post("/jobs/submit", headers=user.headers, json=TWO_NODE_JOB).json()
        placed(second["id"])
        wait_for(lambda: follower.starting, timeout_s=20, what="the second head starting")
        client.post(f"/jobs/{second['id']}/cancel", headers=user.headers)
        wait_for(lambda: len(slow_heads) == 2, timeout_s=120, what="the second head up")
        wait_for(
            lambda: not group_alive(slow_heads[1].pid),
            timeout_s=30,
            what=lambda: group_members(slow_heads[1].pid),
        )
        assert not follower.heads and not follower.starting
    finally:
        follower.stop()
    assert not any(group_alive(head.pid) for head in slow_heads)
