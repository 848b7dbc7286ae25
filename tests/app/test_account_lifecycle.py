"""Accounts over their whole life through the API: admins list, change, disable, enable and
reset users; everyone changes their password; sessions renew with single-use refresh tokens
and end with logout, a password change or a disable."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from auth.models import Role
from compute.dispatch.scheduling import eligible_nodes
from compute.models import Node
from tests.conftest import Account, register_node, submit_job


def login(client: TestClient, username: str, password: str) -> dict:
    response = client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def refresh(client: TestClient, token: str):
    return client.post("/auth/refresh", json={"refresh_token": token})


def test_admins_list_and_find_users_by_role_status_and_name(
    client: TestClient, admin: Account, make_account
) -> None:
    make_account("alice"), make_account("Alina_x"), make_account("olga", Role.NODE_OWNER)
    names = lambda body: [u["username"] for u in body["items"]]  # noqa: E731
    every = client.get("/users", headers=admin.headers).json()
    assert every["total"] == 4 and names(every)[0] == "admin"
    assert names(client.get("/users?role=node_owner", headers=admin.headers).json()) == ["olga"]
    found = client.get("/users?search=ALI", headers=admin.headers).json()
    assert names(found) == ["alice", "Alina_x"]  # case does not matter
    assert names(client.get("/users?search=_", headers=admin.headers).json()) == ["Alina_x"]
    page = client.get("/users?limit=2&offset=2", headers=admin.headers).json()
    assert page["total"] == 4 and len(page["items"]) == 2
    one = client.get(f"/users/{every['items'][1]['id']}", headers=admin.headers).json()
    assert one["username"] == "alice" and one["is_active"] is True
    assert client.get("/users/9999", headers=admin.headers).status_code == 404
    assert client.get("/users?status=sleeping", headers=admin.headers).status_code == 422


def test_a_role_change_takes_effect_at_once_and_the_last_admin_stays(
    client: TestClient, admin: Account, user: Account
) -> None:
    assert client.get("/nodes", headers=user.headers).status_code == 403
    changed = client.patch(f"/users/{user.id}", headers=admin.headers, json={"role": "node_owner"})
    assert changed.status_code == 200 and changed.json()["role"] == "node_owner"
    assert client.get("/nodes", headers=user.headers).status_code == 200  # the same token
    demote = client.patch(f"/users/{admin.id}", headers=admin.headers, json={"role": "user"})
    assert demote.status_code == 409 and demote.json()["error"] == "own_account"
    off = client.post(f"/users/{admin.id}/disable", headers=admin.headers)
    assert off.status_code == 409
    bad = client.patch(f"/users/{user.id}", headers=admin.headers, json={"role": "root"})
    assert bad.status_code == 422


def test_a_disabled_user_is_refused_at_once_their_queued_job_refunded_their_nodes_idle(
    client: TestClient, admin: Account, make_account, db: Session
) -> None:
    owner = make_account("olivia", Role.NODE_OWNER)
    node = register_node(client, owner.headers, "box")
    tokens = login(client, "olivia", owner.password)
    job = submit_job(client, owner.headers)
    held = client.get("/tokens/balance/me", headers=owner.headers).json()
    assert held["held"] > 0
    row = db.get(Node, node["id"])  # live in Ray's eyes: eligible until its owner is disabled
    row.ray_alive = True
    db.commit()
    assert [n.id for n in eligible_nodes(db)] == [node["id"]]

    disabled = client.post(
        f"/users/{owner.id}/disable", headers=admin.headers, json={"running_jobs": "finish"}
    )
    assert disabled.status_code == 200 and disabled.json()["is_active"] is False
    for headers in (owner.headers, bearer(tokens)):
        refused = client.get("/auth/me", headers=headers)
        assert refused.status_code == 401, refused.text
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    again = client.post("/auth/token", data={"username": "olivia", "password": owner.password})
    assert again.status_code == 401
    seen = client.get(f"/jobs/{job['id']}", headers=admin.headers).json()
    assert seen["status"] == "cancelled"
    wallet = client.get(f"/tokens/balance/{owner.id}", headers=admin.headers).json()
    assert wallet["held"] == 0 and wallet["available"] == pytest.approx(100)
    db.expire_all()
    assert eligible_nodes(db) == []  # a disabled owner's node gets no new work

    enabled = client.post(f"/users/{owner.id}/enable", headers=admin.headers)
    assert enabled.json()["is_active"] is True
    fresh = login(client, "olivia", owner.password)
    assert client.get("/auth/me", headers=bearer(fresh)).status_code == 200
    assert client.get("/auth/me", headers=owner.headers).status_code == 401  # still revoked


def test_a_refresh_token_works_once_and_its_reuse_ends_the_whole_login(
    client: TestClient, user: Account
) -> None:
    first = login(client, user.user.username, user.password)
    assert first["refresh_token"].startswith("dlr_") and first["expires_in"] == 15 * 60
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get("/auth/me", headers=bearer(second)).status_code == 200

    reused = refresh(client, first["refresh_token"])  # a copy of a used token comes back
    assert reused.status_code == 401 and reused.json()["error"] == "refresh_token_reused"
    # The whole family is revoked: the legitimate newer token too.
    assert refresh(client, second["refresh_token"]).status_code == 401
    other_login = login(client, user.user.username, user.password)  # other logins live on
    assert refresh(client, other_login["refresh_token"]).status_code == 200
    assert refresh(client, "dlr_made-up").status_code == 401
    assert client.post("/auth/refresh", json={}).status_code == 422


def test_logout_revokes_the_refresh_token(client: TestClient, user: Account) -> None:
    tokens = login(client, user.user.username, user.password)
    out = client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert out.status_code == 204
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    again = client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 204  # logging out twice is fine


def test_a_password_change_ends_every_session_and_needs_the_current_password(
    client: TestClient, user: Account
) -> None:
    name = user.user.username
    old = login(client, name, user.password)
    wrong = client.post(
        "/auth/password", headers=user.headers,
        json={"current_password": "not-it-at-all", "new_password": "brand-new-password"},
    )  # fmt: skip
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong_password"
    short = client.post(
        "/auth/password", headers=user.headers,
        json={"current_password": user.password, "new_password": "short"},
    )  # fmt: skip
    assert short.status_code == 422
    changed = client.post(
        "/auth/password", headers=user.headers,
        json={"current_password": user.password, "new_password": "brand-new-password"},
    )  # fmt: skip
    assert changed.status_code == 204
    assert refresh(client, old["refresh_token"]).status_code == 401
    assert client.get("/auth/me", headers=bearer(old)).status_code == 401
    assert client.get("/auth/me", headers=user.headers).status_code == 401
    failed = client.post("/auth/token", data={"username": name, "password": user.password})
    assert failed.status_code == 401
    assert login(client, name, "brand-new-password")["access_token"]


def test_wrong_current_passwords_are_throttled_like_logins(
    client: TestClient, user: Account, settings
) -> None:
    """The probe's attack: 30 wrong current passwords, then the right one, went through.
    After LOGIN_MAX_FAILURES wrong ones the account's changes wait out the lockout, the
    right password included, whatever the caller's address."""
    change = {"current_password": "guess-0000", "new_password": "brand-new-password"}
    for attempt in range(settings.login_max_failures):
        wrong = client.post(
            "/auth/password", headers=user.headers,
            json={**change, "current_password": f"guess-{attempt:04}"},
        )  # fmt: skip
        assert wrong.status_code == 403, (attempt, wrong.text)
    right = {**change, "current_password": user.password}
    locked = client.post("/auth/password", headers=user.headers, json=right)
    assert locked.status_code == 429 and locked.json()["error"] == "rate_limited"
    assert int(locked.headers["retry-after"]) > 0
    # Nothing changed: the old password still logs in, the session still works.
    assert login(client, user.user.username, user.password)["access_token"]
    assert client.get("/auth/me", headers=user.headers).status_code == 200


def test_an_admin_password_reset_ends_the_users_sessions(
    client: TestClient, admin: Account, user: Account
) -> None:
    old = login(client, user.user.username, user.password)
    reset = client.post(
        f"/users/{user.id}/password", headers=admin.headers, json={"new_password": "set-by-admin-1"}
    )
    assert reset.status_code == 204
    assert refresh(client, old["refresh_token"]).status_code == 401
    assert client.get("/auth/me", headers=user.headers).status_code == 401
    fresh = bearer(login(client, user.user.username, "set-by-admin-1"))
    body = {"new_password": "x" * 12}
    assert client.post(f"/users/{user.id}/password", headers=fresh, json=body).status_code == 403
