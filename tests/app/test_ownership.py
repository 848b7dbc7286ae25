"""Object-level authorization: an id in a path is checked against its owner, not only the role."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import Account, register_node, submit_job


def test_user_cannot_read_or_cancel_another_users_job(
    client: TestClient, user: Account, other_user: Account
) -> None:
    job = submit_job(client, other_user.headers)
    for method, path in [
        ("GET", f"/jobs/{job['id']}"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("GET", f"/metrics/training/{job['id']}"),
    ]:
        response = client.request(method, path, headers=user.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == "not_found"
    # Nothing changed for the owner, and the job is not in the other user's list.
    assert client.get(f"/jobs/{job['id']}", headers=other_user.headers).json()["status"] == "queued"
    assert client.get("/jobs", headers=user.headers).json()["total"] == 0


def test_not_yours_and_unknown_look_the_same(
    client: TestClient, user: Account, other_user: Account
) -> None:
    job = submit_job(client, other_user.headers)
    theirs = client.get(f"/jobs/{job['id']}", headers=user.headers)
    missing = client.get("/jobs/999999", headers=user.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"]


def test_node_owner_cannot_see_or_heartbeat_another_owners_node(
    client: TestClient, node_owner: Account, other_node_owner: Account
) -> None:
    node = register_node(client, other_node_owner.headers)
    for method, path in [
        ("GET", f"/nodes/{node['id']}"),
        ("GET", f"/metrics/node/{node['id']}"),
        ("POST", f"/nodes/{node['id']}/heartbeat"),
    ]:
        response = client.request(method, path, headers=node_owner.headers, json={})
        assert response.status_code == 404, (method, path)
    listing = client.get("/nodes", headers=node_owner.headers).json()
    assert listing["total"] == 0
    # No heartbeat was recorded for the other owner's node.
    samples = client.get(f"/metrics/node/{node['id']}", headers=other_node_owner.headers).json()
    assert samples["samples"] == []


def test_node_credential_only_works_for_its_own_node(
    client: TestClient, node_owner: Account, other_node_owner: Account
) -> None:
    mine = register_node(client, node_owner.headers, "mine")
    theirs = register_node(client, other_node_owner.headers, "theirs")
    response = client.post(
        f"/nodes/{theirs['id']}/heartbeat",
        headers={"Authorization": f"Bearer {mine['credential']}"},
        json={},
    )
    assert response.status_code == 403
    assert response.json()["error"] == "bad_node_credential"


def test_admin_sees_and_cancels_everything(
    client: TestClient, admin: Account, user: Account, node_owner: Account
) -> None:
    job = submit_job(client, user.headers)
    node = register_node(client, node_owner.headers)
    assert client.get(f"/jobs/{job['id']}", headers=admin.headers).status_code == 200
    assert client.get(f"/nodes/{node['id']}", headers=admin.headers).status_code == 200
    assert client.get("/jobs", headers=admin.headers).json()["total"] == 1
    cancelled = client.post(f"/jobs/{job['id']}/cancel", headers=admin.headers).json()
    assert cancelled["status"] == "cancelled"
    assert "admin" in cancelled["status_reason"]


def test_admin_cannot_impersonate_a_node_heartbeat(
    client: TestClient, admin: Account, node_owner: Account
) -> None:
    node = register_node(client, node_owner.headers)
    response = client.post(f"/nodes/{node['id']}/heartbeat", headers=admin.headers, json={})
    assert response.status_code == 403
