"""Nodes over their whole life through the API: change what a node offers, a new
credential, leaving, deregistering, unbanning; every call checks who owns the node."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from auth.models import Role
from tests.conftest import Account, register_node


def as_node(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def beat(client: TestClient, node_id: int, headers: dict) -> object:
    return client.post(f"/nodes/{node_id}/heartbeat", headers=headers)


def test_an_owner_changes_what_a_node_offers_and_its_agent_is_told(
    client: TestClient, node_owner: Account, make_account
) -> None:
    node = register_node(client, node_owner.headers, "box")
    body = {"resources": {"gpu": 0, "cpu_cores": 6, "memory": 12}}
    updated = client.patch(f"/nodes/{node['id']}", headers=node_owner.headers, json=body)
    assert updated.status_code == 200
    assert updated.json()["resources"] == {"gpu": 0, "cpu_cores": 6, "memory": 12}
    answer = beat(client, node["id"], as_node(node["credential"])).json()
    assert answer["resources"]["cpu_cores"] == 6  # the agent restarts Ray on this
    stranger = make_account("mallory", Role.NODE_OWNER)
    url = f"/nodes/{node['id']}"
    assert client.patch(url, headers=stranger.headers, json=body).status_code == 404
    bad = {"resources": {"cpu_cores": -1, "memory": 1}}
    assert client.patch(url, headers=node_owner.headers, json=bad).status_code == 422


def test_a_new_credential_stops_the_old_one(
    client: TestClient, node_owner: Account, make_account, db: Session
) -> None:
    node = register_node(client, node_owner.headers, "box")
    old = node["credential"]
    assert beat(client, node["id"], as_node(old)).status_code == 200
    reset = client.post(f"/nodes/{node['id']}/credential", headers=node_owner.headers)
    assert reset.status_code == 200, reset.text
    new = reset.json()["credential"]
    assert new != old and "credential file" in reset.json()["how_to_use"]
    refused = beat(client, node["id"], as_node(old))
    assert refused.status_code == 403 and refused.json()["error"] == "bad_node_credential"
    assert beat(client, node["id"], as_node(new)).status_code == 200
    # Nor does it learn what the node runs (its jobs, their run credentials).
    runs = client.post(f"/nodes/{node['id']}/runs", headers=as_node(old))
    assert runs.status_code == 403 and runs.json()["error"] == "bad_node_credential"
    assert client.post(f"/nodes/{node['id']}/runs", headers=as_node(new)).status_code == 200
    stranger = make_account("mallory", Role.NODE_OWNER)
    url = f"/nodes/{node['id']}/credential"
    assert client.post(url, headers=stranger.headers).status_code == 404


def test_a_node_that_leaves_is_offline_until_it_beats_again(
    client: TestClient, node_owner: Account
) -> None:
    node = register_node(client, node_owner.headers, "box")
    credential = as_node(node["credential"])
    beat(client, node["id"], credential)
    status = lambda: client.get(f"/nodes/{node['id']}", headers=node_owner.headers).json()["status"]  # noqa: E731
    assert status() == "not_joined"  # heartbeats, no Ray worker here
    left = client.post(f"/nodes/{node['id']}/leave", headers=credential)
    assert left.status_code == 200 and left.json()["status"] == "offline"
    assert status() == "offline"
    beat(client, node["id"], credential)
    assert status() == "not_joined"


def test_a_retired_node_keeps_its_record_and_refuses_heartbeats(
    client: TestClient, node_owner: Account, admin: Account
) -> None:
    node = register_node(client, node_owner.headers, "box")
    gone = client.delete(f"/nodes/{node['id']}", headers=node_owner.headers)
    assert gone.status_code == 200 and gone.json()["status"] == "deregistered"
    assert gone.json()["deregistered_at"]
    refused = beat(client, node["id"], as_node(node["credential"]))
    assert refused.status_code == 403  # its credential is void
    owner_beat = beat(client, node["id"], node_owner.headers)
    assert owner_beat.status_code == 409 and owner_beat.json()["error"] == "node_deregistered"
    join = client.get(f"/nodes/{node['id']}/join", headers=node_owner.headers)
    assert join.status_code == 409
    again = client.delete(f"/nodes/{node['id']}", headers=node_owner.headers)
    assert again.status_code == 409
    listed = client.get("/nodes", headers=admin.headers).json()["items"]
    assert [n["status"] for n in listed if n["id"] == node["id"]] == ["deregistered"]


def test_an_admin_unbans_a_node(client: TestClient, node_owner: Account, admin: Account) -> None:
    node = register_node(client, node_owner.headers, "box")
    assert client.post(f"/nodes/{node['id']}/ban", headers=admin.headers).status_code == 200
    assert beat(client, node["id"], as_node(node["credential"])).status_code == 403
    url = f"/nodes/{node['id']}/unban"
    assert client.post(url, headers=node_owner.headers).status_code == 403
    unbanned = client.post(f"/nodes/{node['id']}/unban", headers=admin.headers)
    assert unbanned.status_code == 200 and unbanned.json()["approval"] == "approved"
    assert beat(client, node["id"], as_node(node["credential"])).status_code == 200
    twice = client.post(f"/nodes/{node['id']}/unban", headers=admin.headers)
    assert twice.status_code == 409 and twice.json()["error"] == "not_banned"


def test_a_banned_node_takes_no_owner_action_but_its_retirement(
    client: TestClient, node_owner: Account, admin: Account
) -> None:
    node = register_node(client, node_owner.headers, "box")
    url = f"/nodes/{node['id']}"
    assert client.post(f"{url}/ban", headers=admin.headers).status_code == 200
    body = {"resources": {"gpu": 0, "cpu_cores": 2, "memory": 2}}
    for method, path, json in (
        ("PATCH", url, body),
        ("POST", f"{url}/credential", None),
        ("POST", f"{url}/drain", None),
        ("POST", f"{url}/undrain", None),
    ):
        for who in (node_owner, admin):
            answer = client.request(method, path, headers=who.headers, json=json)
            assert answer.status_code == 409, (method, path, answer.text)
            assert answer.json()["error"] == "node_banned"
    # Nothing changed: what it offers, its credential (still refused as banned, not unknown).
    assert client.get(url, headers=node_owner.headers).json()["resources"]["cpu_cores"] == 8
    refused = beat(client, node["id"], as_node(node["credential"]))
    assert refused.status_code == 403 and refused.json()["error"] == "node_banned"
    retired = client.delete(url, headers=node_owner.headers)
    assert retired.status_code == 200 and retired.json()["status"] == "deregistered"


@pytest.mark.parametrize("cut_off", ["disable", "demote"])
def test_an_owner_disabled_or_demoted_cuts_their_nodes_off_at_once(
    client: TestClient, node_owner: Account, admin: Account, cut_off: str
) -> None:
    node = register_node(client, node_owner.headers, "box")
    credential = as_node(node["credential"])
    calls = (
        ("POST", f"/nodes/{node['id']}/heartbeat"),
        ("GET", f"/nodes/{node['id']}/join"),
        ("POST", f"/nodes/{node['id']}/runs"),
    )
    for method, path in calls:
        assert client.request(method, path, headers=credential).status_code == 200, path
    if cut_off == "disable":
        client.post(f"/users/{node_owner.id}/disable", headers=admin.headers, json={})
    else:
        client.patch(f"/users/{node_owner.id}", headers=admin.headers, json={"role": "user"})
    for method, path in calls:
        refused = client.request(method, path, headers=credential)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"] == "owner_cannot_lend"
    # Undone, the node lends again with the same credential.
    if cut_off == "disable":
        client.post(f"/users/{node_owner.id}/enable", headers=admin.headers)
    else:
        client.patch(f"/users/{node_owner.id}", headers=admin.headers, json={"role": "node_owner"})
    for method, path in calls:
        assert client.request(method, path, headers=credential).status_code == 200, path
