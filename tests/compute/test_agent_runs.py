"""Jobs on the nodes' own Ray, as the gateway sees them (no Ray here: the gateway runs none).
A node's agent asks what to run; the answer is every attempt placed on it, the driver's with
the job and its credential; a multi-node attempt's cluster is reported by its driver node
only; a node that stops asking loses its attempts; an agent may take only single-node jobs.
(tests/hosts/test_across_machines.py runs real agents on separate hosts.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from auth.models import Role
from core.settings import Settings
from tests.conftest import clear_tables, make_settings, register_node
from tests.job_specs import TWO_NODE_JOB
from tests.polling import wait_for

NODE = {"gpu": 0, "cpu_cores": 2, "memory": 4}
ONE_NODE_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
    "training_config": {"steps": 10},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, node_timeout=3, dispatch_interval_s=0.1)


@pytest.fixture
def app(settings: Settings) -> Iterator[object]:
    clear_tables(settings.database_url)
    yield create_app(settings, dispatch=True, run_migrations=False)  # no Ray: agents
    clear_tables(settings.database_url)


def ask(client: TestClient, node: dict, **body: object):
    return client.post(
        f"/nodes/{node['id']}/runs",
        headers={"Authorization": f"Bearer {node['credential']}"},
        json={"clusters": [], **body},
    )


def runs_of(client: TestClient, node: dict, **body: object) -> list[dict]:
    answer = ask(client, node, **body)
    assert answer.status_code == 200, answer.text
    return answer.json()["runs"]


@pytest.fixture
def nodes(client: TestClient, make_account) -> list[dict]:
    owner = make_account("olivia", Role.NODE_OWNER)
    found = [register_node(client, owner.headers, f"m{i}", NODE) for i in (1, 2)]
    for node in found:
        runs_of(client, node)  # asking says the node is ready to run
    for node in found:
        wait_for(
            lambda node=node: (
                client.get(f"/nodes/{node['id']}", headers=owner.headers).json()["status"]
                == "online"
            ),
            timeout_s=10,
            what="the node online once its agent asked",
        )
    return found


def placed_one_node_job(client: TestClient, nodes: list[dict], user) -> tuple[dict, dict, dict]:
    """A one-node job once placed: the job, its node, and the other node."""
    job = client.post("/jobs/submit", headers=user.headers, json=ONE_NODE_JOB).json()
    (node,) = wait_for(
        lambda: [n for n in nodes if runs_of(client, n)], timeout_s=10, what="placed"
    )
    return job, node, next(n for n in nodes if n["id"] != node["id"])


def test_the_driver_node_gets_the_job_and_its_credential_and_nothing_of_it_elsewhere(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    user = make_account("alice")
    job = client.post("/jobs/submit", headers=user.headers, json=ONE_NODE_JOB).json()
    placed = wait_for(
        lambda: [(n, runs) for n in nodes if (runs := runs_of(client, n))],
        timeout_s=10,
        what="the job placed",
    )
    ((node, (run,)),) = placed
    assert (run["job_id"], run["attempt"], run["role"]) == (job["id"], 1, "driver")
    assert run["run_token"].startswith("run.") and run["cluster"] is None
    assert run["config"]["job_id"] == job["id"] and run["config"]["strategy"] == "es"
    assert run["share"] == {"cpu_cores": 1.0, "gpu": 0, "memory_gb": 1.0}
    # The credential is good for this job's events, and the job's owner sees it running.
    events = client.post(
        f"/runs/{job['id']}/events",
        headers={"Authorization": f"Bearer {run['run_token']}"},
        json={"attempt": 1, "events": []},
    )
    assert events.status_code == 200, events.text
    assert client.get(f"/jobs/{job['id']}", headers=user.headers).json()["status"] == "running"
    # Cancelled, it leaves the list: that is the agent's signal to stop it.
    client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    wait_for(lambda: runs_of(client, node) == [], timeout_s=10, what="the run withdrawn")


def poll_in_s(client: TestClient, node: dict) -> float:
    answer = ask(client, node)
    assert answer.status_code == 200, answer.text
    return answer.json()["poll_in_s"]


def test_a_two_node_attempts_cluster_is_told_by_its_driver_node_only(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    user = make_account("alice")
    assert poll_in_s(client, nodes[0]) == 1.0  # nothing to run: the usual second
    job = client.post("/jobs/submit", headers=user.headers, json=TWO_NODE_JOB).json()
    wait_for(lambda: runs_of(client, nodes[0]), timeout_s=10, what="the job placed")
    by_role = {runs_of(client, n)[0]["role"]: n for n in nodes}
    driver, member = by_role["driver"], by_role["member"]
    # While the cluster forms, both nodes ask four times a second: the head's address takes
    # two hops (driver node -> gateway -> member), each a poll.
    assert poll_in_s(client, driver) == poll_in_s(client, member) == 0.25
    (as_member,) = runs_of(client, member)
    assert as_member["config"] is None and as_member["run_token"] is None
    assert as_member["cluster"]["address"] == ""  # the head is not up yet
    assert sorted(as_member["cluster"]["nodes"]) == sorted(n["id"] for n in nodes)
    report = {"job_id": job["id"], "attempt": 1, "address": "198.51.100.11:23456"}
    # The member cannot point the job at a head of its choosing.
    runs_of(client, member, clusters=[{**report, "address": "203.0.113.9:6379"}])
    assert runs_of(client, member)[0]["cluster"]["address"] == ""
    runs_of(client, driver, clusters=[report])
    (told,) = runs_of(client, member)
    assert told["cluster"]["address"] == report["address"]
    assert poll_in_s(client, driver) == poll_in_s(client, member) == 1.0  # formed
    assert told["cluster"]["token"] == runs_of(client, driver)[0]["cluster"]["token"]
    # A malformed address is a 422, and changes nothing.
    bad = ask(client, driver, clusters=[{**report, "address": "not an address"}])
    assert bad.status_code == 422
    assert runs_of(client, member)[0]["cluster"]["address"] == report["address"]


def test_a_node_that_stops_asking_loses_its_attempt_and_the_job_waits_again(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    user = make_account("alice")
    job, node, other = placed_one_node_job(client, nodes, user)
    # Only the other node keeps asking: after NODE_TIMEOUT the attempt is lost and the job
    # is placed again there.
    moved = wait_for(
        lambda: [r for r in runs_of(client, other) if r["attempt"] == 2],
        timeout_s=20,
        every_s=0.5,
        what=lambda: client.get(f"/jobs/{job['id']}", headers=user.headers).json(),
    )
    assert moved[0]["role"] == "driver"
    job_now = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    logs = client.get(f"/jobs/{job['id']}/logs", headers=user.headers).json()["items"]
    said = f"attempt 1 lost (node {node['id']} stopped answering)"
    assert any(said in line["message"] for line in logs), (logs, job_now)


def test_a_single_node_only_node_never_shares_a_cluster(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    owner_view = make_account("root", Role.ADMIN)
    runs_of(client, nodes[1], single_node_only=True)
    shown = client.get(f"/nodes/{nodes[1]['id']}", headers=owner_view.headers).json()
    assert shown["single_node_only"] is True
    user = make_account("alice")
    two = client.post("/jobs/submit", headers=user.headers, json=TWO_NODE_JOB).json()
    one = client.post("/jobs/submit", headers=user.headers, json=ONE_NODE_JOB).json()
    # The one-node job runs; the two-node job waits, saying why, instead of using node 2.
    wait_for(
        lambda: (
            client.get(f"/jobs/{one['id']}", headers=user.headers).json()["status"] == "running"
        ),
        timeout_s=10,
        what="the one-node job placed",
    )
    waiting = client.get(f"/jobs/{two['id']}", headers=user.headers).json()
    assert waiting["status"] == "queued", waiting
    for node in nodes:
        runs_of(client, node, single_node_only=node is nodes[1])
    # Once node 2 shares clusters again, the two-node job can use it.
    runs_of(client, nodes[1], single_node_only=False)
    client.post(f"/jobs/{one['id']}/cancel", headers=user.headers)
    wait_for(
        lambda: (
            client.get(f"/jobs/{two['id']}", headers=user.headers).json()["status"] == "running"
        ),
        timeout_s=10,
        what="the two-node job placed on both",
    )


def test_only_an_approved_node_in_good_standing_is_told_what_to_run(
    client: TestClient, make_account, admin_headers: dict
) -> None:
    owner = make_account("olivia", Role.NODE_OWNER)
    node = register_node(client, owner.headers, "m9", NODE)
    client.post(f"/nodes/{node['id']}/ban", headers=admin_headers)
    assert ask(client, node).status_code == 403
    other = register_node(client, owner.headers, "m10", NODE)
    client.delete(f"/nodes/{other['id']}", headers=owner.headers)
    assert ask(client, other).status_code == 403  # retired: its credential is void


def test_a_driver_gone_without_a_word_fails_its_attempt_which_resumes_and_is_not_restarted(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    user = make_account("alice")
    job, node, other = placed_one_node_job(client, nodes, user)
    (run,) = runs_of(client, node)
    assert run["started"] is False  # nothing heard yet: the agent starts the driver
    said = client.post(
        f"/runs/{job['id']}/events",
        headers={"Authorization": f"Bearer {run['run_token']}"},
        json={"attempt": 1, "events": [{"seq": 1, "at": 0.0, "kind": "log", "message": "hi",
                                        "level": "info", "source": "runner"}]},
    )  # fmt: skip
    assert said.status_code == 200, said.text
    # Heard from: an agent that has no driver for it (it restarted) must not start one.
    assert runs_of(client, node)[0]["started"] is True
    lost = {"job_id": job["id"], "attempt": 1, "why": "the node's agent restarted"}
    runs_of(client, other, lost=[lost])  # not its attempt to give up: ignored
    assert runs_of(client, node)[0]["attempt"] == 1
    runs_of(client, node, lost=[lost])
    again = wait_for(
        lambda: [r for n in nodes for r in runs_of(client, n) if r["attempt"] == 2],
        timeout_s=10,
        what=lambda: client.get(f"/jobs/{job['id']}", headers=user.headers).json(),
    )
    assert again[0]["started"] is False
    logs = client.get(f"/jobs/{job['id']}/logs", headers=user.headers).json()["items"]
    assert any(
        f"its driver on node {node['id']} is gone: the node's agent restarted" in line["message"]
        for line in logs
    ), logs


def test_a_node_whose_owner_is_disabled_loses_its_attempt_at_once(
    client: TestClient, nodes: list[dict], make_account, admin_headers: dict
) -> None:
    user = make_account("alice")
    job, node, _other = placed_one_node_job(client, nodes, user)
    owner_id = client.get(f"/nodes/{node['id']}", headers=admin_headers).json()["owner_id"]
    client.post(f"/users/{owner_id}/disable", headers=admin_headers, json={})
    # Well within NODE_TIMEOUT: not the node's silence but its owner's account ends it.
    said = f"attempt 1 lost (node {node['id']}'s owner's account is disabled)"
    logs = wait_for(
        lambda: [
            line
            for line in client.get(f"/jobs/{job['id']}/logs", headers=user.headers).json()["items"]
            if said in line["message"]
        ],
        timeout_s=2.5,
        every_s=0.1,
        what=lambda: client.get(f"/jobs/{job['id']}", headers=user.headers).json(),
    )
    assert logs
    waiting = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    assert waiting["status"] == "queued"  # every node is that owner's: none is eligible


def test_a_multi_node_job_is_placed_within_one_trusted_pool_only(
    client: TestClient, nodes: list[dict], make_account
) -> None:
    user = make_account("alice")
    pool = "10.0.0.1:6379"
    runs_of(client, nodes[0], ray_pool=pool)  # one node in a pool, the other not
    job = client.post("/jobs/submit", headers=user.headers, json=TWO_NODE_JOB).json()
    waiting = wait_for(
        lambda: (
            (j := client.get(f"/jobs/{job['id']}", headers=user.headers).json())[
                "status_reason"
            ].startswith("waiting")
            and j
        ),
        timeout_s=10,
        what="the job to wait",
    )
    assert waiting["placement"] is None
    runs_of(client, nodes[1], ray_pool=pool)  # now both are
    placed = wait_for(
        lambda: (
            (j := client.get(f"/jobs/{job['id']}", headers=user.headers).json())["placement"] and j
        ),
        timeout_s=10,
        what="the job placed in the pool",
    )
    assert {slot["node_id"] for slot in placed["placement"]} == {n["id"] for n in nodes}
