"""Node registry: registration, credentials, heartbeats, status over time, approval and bans."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from compute.models import Node, NodeHeartbeat
from compute.nodes.service import HEARTBEAT_RETENTION, prune_heartbeats
from core.db import utcnow
from tests.conftest import SEED_NODE, Account, register_node


def test_seed_register_body_returns_id_and_one_time_credential(
    client: TestClient, node_owner: Account, db: Session
) -> None:
    response = client.post("/nodes/register", headers=node_owner.headers, json=SEED_NODE)
    assert response.status_code == 201
    body = response.json()
    assert body["hostname"] == "gpu-node-1"
    assert body["resources"] == {"gpu": 1, "cpu_cores": 8.0, "memory": 32.0}
    assert body["status"] == "registered"
    assert body["credential"].startswith("dln_")
    # Stored hashed, never shown again.
    stored = db.get(Node, body["id"])
    assert stored is not None and body["credential"] not in stored.credential_hash
    again = client.get(f"/nodes/{body['id']}", headers=node_owner.headers).json()
    assert "credential" not in again
    listed = client.get("/nodes", headers=node_owner.headers).json()["items"]
    assert all("credential" not in n for n in listed)


def test_same_hostname_twice_is_409_but_other_owners_may_reuse_it(
    client: TestClient, node_owner: Account, other_node_owner: Account
) -> None:
    register_node(client, node_owner.headers, "box")
    again = client.post(
        "/nodes/register", headers=node_owner.headers, json={**SEED_NODE, "hostname": "box"}
    )
    assert again.status_code == 409
    assert again.json()["error"] == "node_exists"
    register_node(client, other_node_owner.headers, "box")


def test_heartbeat_with_credential_turns_node_online_and_stores_sample(
    client: TestClient, node_owner: Account
) -> None:
    node = register_node(client, node_owner.headers)
    response = client.post(
        f"/nodes/{node['id']}/heartbeat",
        headers={"Authorization": f"Bearer {node['credential']}"},
        json={"cpu_percent": 37.5, "memory_used_gb": 12.0, "gpu_utilization": 80},
    )
    assert response.status_code == 200
    # A heartbeat alone makes a node live, not schedulable: no Ray worker has joined.
    assert response.json()["status"] == "not_joined"
    assert response.json()["next_heartbeat_in_s"] > 0
    metrics = client.get(f"/metrics/node/{node['id']}", headers=node_owner.headers).json()
    assert metrics["node"]["status"] == "not_joined"
    (sample,) = metrics["samples"]
    assert sample["cpu_percent"] == 37.5
    assert sample["memory_used_gb"] == 12.0
    assert sample["gpu_utilization"] == 80


def test_a_nodes_metrics_sum_its_work_over_the_jobs_that_ran_on_it(
    client: TestClient, node_owner: Account, user: Account, db: Session
) -> None:
    from compute.models import Job
    from tests.conftest import submit_job

    node = register_node(client, node_owner.headers)
    key, elsewhere = str(node["id"]), str(node["id"] + 100)
    figures = {"gpu_seconds": 1.5, "cpu_core_seconds": 6.0, "memory_gb_seconds": 24.0}
    split = {**figures, "stages": {"loader": figures}}
    usages = [{key: figures, elsewhere: figures}, {key: split}, {elsewhere: figures}]
    job_ids = [submit_job(client, user.headers)["id"] for _ in usages]
    for job_id, usage in zip(job_ids, usages, strict=True):  # API calls first: SQLite's lock
        db.execute(update(Job).where(Job.id == job_id).values(usage=usage))
    db.commit()
    metrics = client.get(f"/metrics/node/{node['id']}", headers=node_owner.headers).json()
    assert metrics["jobs_run"] == 2  # not the job that ran elsewhere only
    assert metrics["resource_seconds_served"] == {
        "gpu_seconds": 3.0,
        "cpu_core_seconds": 12.0,
        "memory_gb_seconds": 48.0,
    }


def test_heartbeat_with_owner_token_and_without_body(
    client: TestClient, node_owner: Account
) -> None:
    node = register_node(client, node_owner.headers)
    response = client.post(f"/nodes/{node['id']}/heartbeat", headers=node_owner.headers)
    assert response.status_code == 200
    assert response.json()["status"] == "not_joined"


def test_node_goes_offline_after_node_timeout(
    client: TestClient, node_owner: Account, db: Session, settings
) -> None:
    node = register_node(client, node_owner.headers)
    client.post(f"/nodes/{node['id']}/heartbeat", headers=node_owner.headers)
    stale = utcnow() - dt.timedelta(seconds=settings.node_timeout + 1)
    db.execute(
        update(Node).where(Node.id == node["id"]).values(last_heartbeat_at=stale, ray_alive=True)
    )
    db.commit()
    assert client.get(f"/nodes/{node['id']}", headers=node_owner.headers).json()["status"] == (
        "offline"
    )
    client.post(f"/nodes/{node['id']}/heartbeat", headers=node_owner.headers)
    assert client.get(f"/nodes/{node['id']}", headers=node_owner.headers).json()["status"] == (
        "online"
    )


def test_wrong_credential_is_refused_and_records_nothing(
    client: TestClient, node_owner: Account
) -> None:
    node = register_node(client, node_owner.headers)
    response = client.post(
        f"/nodes/{node['id']}/heartbeat",
        headers={"Authorization": "Bearer dln_not-the-credential"},
        json={"cpu_percent": 1},
    )
    assert response.status_code == 403
    metrics = client.get(f"/metrics/node/{node['id']}", headers=node_owner.headers).json()
    assert metrics["samples"] == []
    assert metrics["node"]["status"] == "registered"


def test_banned_node_heartbeats_are_refused_until_approved_again(
    client: TestClient, node_owner: Account, admin: Account
) -> None:
    node = register_node(client, node_owner.headers)
    auth = {"Authorization": f"Bearer {node['credential']}"}
    banned = client.post(f"/nodes/{node['id']}/ban", headers=admin.headers)
    assert banned.json()["approval"] == "banned"
    refused = client.post(f"/nodes/{node['id']}/heartbeat", headers=auth, json={})
    assert refused.status_code == 403
    assert refused.json()["error"] == "node_banned"
    client.post(f"/nodes/{node['id']}/approve", headers=admin.headers)
    assert client.post(f"/nodes/{node['id']}/heartbeat", headers=auth, json={}).status_code == 200


def test_nodes_wait_for_approval_when_auto_approve_is_off(
    app, node_owner: Account, admin: Account, client: TestClient
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"node_auto_approve_mode": "false"})
    node = register_node(client, node_owner.headers)
    assert node["approval"] == "pending"
    approved = client.post(f"/nodes/{node['id']}/approve", headers=admin.headers).json()
    assert approved["approval"] == "approved"


def test_admin_lists_all_nodes_owner_lists_own_with_pagination(
    client: TestClient, node_owner: Account, other_node_owner: Account, admin: Account
) -> None:
    for i in range(3):
        register_node(client, node_owner.headers, f"mine-{i}")
    register_node(client, other_node_owner.headers, "theirs")
    mine = client.get("/nodes?limit=2&offset=0", headers=node_owner.headers).json()
    assert mine["total"] == 3 and len(mine["items"]) == 2
    rest = client.get("/nodes?limit=2&offset=2", headers=node_owner.headers).json()
    assert [n["hostname"] for n in rest["items"]] == ["mine-2"]
    assert client.get("/nodes", headers=admin.headers).json()["total"] == 4


def test_unknown_node_is_404(client: TestClient, admin: Account) -> None:
    for method, path in [
        ("GET", "/nodes/4242"),
        ("POST", "/nodes/4242/approve"),
        ("POST", "/nodes/4242/ban"),
        ("GET", "/metrics/node/4242"),
        ("POST", "/nodes/4242/heartbeat"),
    ]:
        response = client.request(method, path, headers=admin.headers)
        assert response.status_code == 404, (method, path)


def test_system_metrics_count_users_nodes_jobs_and_online_resources(
    client: TestClient, admin: Account, node_owner: Account, user: Account, db: Session
) -> None:
    online = register_node(client, node_owner.headers, "online-box")
    register_node(client, node_owner.headers, "silent-box")
    client.post(f"/nodes/{online['id']}/heartbeat", headers=node_owner.headers)
    from tests.conftest import submit_job

    submit_job(client, user.headers)
    metrics = client.get("/metrics/system", headers=admin.headers).json()
    assert metrics["users_by_role"] == {"user": 1, "node_owner": 1, "admin": 1}
    # Issue 11 (14): heartbeats without a Ray worker count as not joined, offering nothing.
    assert metrics["nodes_by_status"] == {
        "registered": 1,
        "online": 0,
        "not_joined": 1,
        "offline": 0,
        "deregistered": 0,
    }
    assert metrics["online_resources"]["gpu"] == 0
    db.execute(update(Node).where(Node.id == online["id"]).values(ray_alive=True))
    db.commit()  # as the dispatcher's reconciler does once Ray reports the node's worker
    metrics = client.get("/metrics/system", headers=admin.headers).json()
    assert metrics["nodes_by_status"]["online"] == 1
    assert metrics["jobs_by_status"]["queued"] == 1
    assert metrics["online_resources"] == {
        "nodes": 1,
        "gpu": 1,
        "cpu_cores": 8.0,
        "memory_gb": 32.0,
    }


def test_join_info_is_given_to_approved_nodes_only(
    client: TestClient, node_owner: Account, admin: Account
) -> None:
    node = register_node(client, node_owner.headers)
    auth = {"Authorization": f"Bearer {node['credential']}"}
    info = client.get(f"/nodes/{node['id']}/join", headers=auth).json()
    # What its Ray offers; nothing of a cluster to join (the gateway has none).
    assert "ray_address" not in info and "ray_auth_token" not in info
    assert info["resources"] == {f"distlm_node_{node['id']}": 1000}
    assert info["labels"] == {"distlm-node-id": str(node["id"])}
    assert (info["num_cpus"], info["num_gpus"], info["memory_gb"]) == (8, 1, 32.0)

    client.post(f"/nodes/{node['id']}/ban", headers=admin.headers)
    assert client.get(f"/nodes/{node['id']}/join", headers=auth).status_code == 403


def test_pending_node_cannot_join_yet(
    app,
    client: TestClient,
    node_owner: Account,
    admin: Account,
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"node_auto_approve_mode": "false"})
    node = register_node(client, node_owner.headers)
    waiting = client.get(f"/nodes/{node['id']}/join", headers=node_owner.headers)
    assert waiting.status_code == 409 and waiting.json()["error"] == "node_not_approved"
    client.post(f"/nodes/{node['id']}/approve", headers=admin.headers)
    assert client.get(f"/nodes/{node['id']}/join", headers=node_owner.headers).status_code == 200


def test_a_flood_of_heartbeats_writes_one_sample_a_second_and_old_samples_are_pruned(
    client: TestClient, node_owner: Account, db: Session
) -> None:
    """The probe's pending node sent 819 heartbeats in 8 s, each a row (never pruned), and
    doubled everyone's latency."""
    node = register_node(client, node_owner.headers)
    auth = {"Authorization": f"Bearer {node['credential']}"}
    started = utcnow()
    for _ in range(50):
        answer = client.post(f"/nodes/{node['id']}/heartbeat", headers=auth, json={})
        assert answer.status_code == 200
    elapsed = (utcnow() - started).total_seconds()
    rows = db.scalars(select(NodeHeartbeat).where(NodeHeartbeat.node_id == node["id"])).all()
    assert 1 <= len(rows) <= 1 + elapsed  # one a second at most
    assert client.get(f"/nodes/{node['id']}", headers=node_owner.headers).json()[
        "last_heartbeat_at"
    ]

    old = utcnow() - HEARTBEAT_RETENTION - dt.timedelta(minutes=1)
    db.add(NodeHeartbeat(node_id=node["id"], received_at=old, cpu_percent=1.0))
    db.commit()
    assert prune_heartbeats(db) == 1
    db.commit()
    left = db.scalars(select(NodeHeartbeat).where(NodeHeartbeat.node_id == node["id"])).all()
    assert len(left) == len(rows)  # the recent ones stay
