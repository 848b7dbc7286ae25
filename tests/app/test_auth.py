"""Login, registration, tokens and brute-force throttling."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from tests.conftest import TEST_SECRET, Account, bearer


def login(client: TestClient, username: str, password: str):
    return client.post("/auth/token", data={"username": username, "password": password})


def test_login_returns_a_bearer_token_that_works(client: TestClient, user: Account) -> None:
    response = login(client, "alice", user.password)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["username"] == "alice"
    assert me.json()["role"] == "user"
    assert isinstance(me.json()["id"], int)
    claims = jwt.decode(body["access_token"], TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(me.json()["id"]) and claims["role"] == "user" and "exp" in claims


def test_failed_login_does_not_reveal_whether_the_user_exists(
    client: TestClient, user: Account
) -> None:
    wrong_password = login(client, "alice", "not-the-password")
    no_such_user = login(client, "nobody-here", "not-the-password")
    assert wrong_password.status_code == no_such_user.status_code == 401
    assert wrong_password.json() == no_such_user.json()


@pytest.mark.parametrize("username", ["alice", "ghost-user"])
def test_repeated_failures_lock_the_username(
    client: TestClient, user: Account, username: str
) -> None:
    for _ in range(5):
        assert login(client, username, "wrong-password").status_code == 401
    locked = login(client, username, user.password)
    assert locked.status_code == 429
    assert locked.json()["error"] == "rate_limited"
    assert int(locked.headers["Retry-After"]) > 0
    # Other usernames are unaffected.
    assert login(client, "bob-not-locked", "whatever-pass").status_code == 401


def test_a_successful_login_resets_the_failure_count(client: TestClient, user: Account) -> None:
    for _ in range(4):
        login(client, "alice", "wrong-password")
    assert login(client, "alice", user.password).status_code == 200
    for _ in range(4):
        login(client, "alice", "wrong-password")
    assert login(client, "alice", user.password).status_code == 200


def test_admin_registers_users_with_roles(client: TestClient, admin: Account) -> None:
    for role in Role:
        response = client.post(
            "/auth/register",
            headers=admin.headers,
            json={"username": f"new-{role.value}", "password": "pass12345", "role": role.value},
        )
        assert response.status_code == 201, response.text
        assert response.json()["role"] == role.value
        assert login(client, f"new-{role.value}", "pass12345").status_code == 200


def test_register_defaults_to_user_and_refuses_duplicates(
    client: TestClient, admin: Account
) -> None:
    body = {"username": "carol", "password": "pass12345"}
    first = client.post("/auth/register", headers=admin.headers, json=body)
    assert first.json()["role"] == "user"
    again = client.post("/auth/register", headers=admin.headers, json=body)
    assert again.status_code == 409
    assert again.json()["error"] == "username_taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "dave", "password": "short"}, "password"),
        ({"username": "dave", "password": "x" * 129}, "password"),
        ({"username": "dave", "password": "pass12345", "role": "superuser"}, "role"),
        ({"username": "d", "password": "pass12345"}, "username"),
        ({"username": "bad name!", "password": "pass12345"}, "username"),
        ({"password": "pass12345"}, "username"),
    ],
)
def test_register_rejects_bad_input(
    client: TestClient, admin: Account, body: dict, field: str
) -> None:
    response = client.post("/auth/register", headers=admin.headers, json=body)
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert client.get("/jobs", headers=admin.headers).status_code == 200  # still serving


def _forge(claims: dict, key: str = TEST_SECRET, algorithm: str = "HS256") -> dict:
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm=algorithm)}"}


def _claims(user: Account, **overrides: object) -> dict:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user.id),
        "role": user.user.role,
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    claims.update(overrides)
    return claims


def test_expired_token_is_401(client: TestClient, user: Account, settings) -> None:
    headers = bearer(user.user, settings, expires_in=dt.timedelta(seconds=-5))
    response = client.get("/auth/me", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_tampered_token_is_401(client: TestClient, admin: Account) -> None:
    header, payload, signature = admin.headers["Authorization"].removeprefix("Bearer ").split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    response = client.get(
        "/auth/me", headers={"Authorization": f"Bearer {header}.{payload}.{flipped}"}
    )
    assert response.status_code == 401


def test_token_signed_with_another_key_is_401(client: TestClient, admin: Account) -> None:
    headers = _forge(_claims(admin), key="some-other-secret-key-that-is-long-enough")
    assert client.get("/auth/me", headers=headers).status_code == 401


def test_alg_none_token_is_401(client: TestClient, admin: Account) -> None:
    token = jwt.encode(_claims(admin), None, algorithm="none")
    response = client.get("/metrics/system", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_wrong_algorithm_is_401_even_with_the_right_key(
    client: TestClient, admin: Account, algorithm: str
) -> None:
    headers = _forge(_claims(admin), algorithm=algorithm)
    assert client.get("/auth/me", headers=headers).status_code == 401


def test_role_claim_cannot_escalate(client: TestClient, user: Account) -> None:
    """The role comes from the database; a validly signed token claiming admin gains nothing."""
    headers = _forge(_claims(user, role="admin"))
    assert client.get("/metrics/system", headers=headers).status_code == 403


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer not.a.jwt", "Basic YWRtaW46YWRtaW4=", "Bearer " + "a" * 5000],
)
def test_garbage_authorization_headers_are_401(client: TestClient, authorization: str) -> None:
    response = client.get("/auth/me", headers={"Authorization": authorization})
    assert response.status_code == 401


def test_token_for_a_deleted_sub_is_401(client: TestClient, admin: Account) -> None:
    headers = _forge(_claims(admin, sub="999999"))
    assert client.get("/auth/me", headers=headers).status_code == 401


def test_node_credential_is_not_a_user_token(client: TestClient, node_owner: Account) -> None:
    from tests.conftest import register_node

    node = register_node(client, node_owner.headers)
    headers = {"Authorization": f"Bearer {node['credential']}"}
    assert client.get("/auth/me", headers=headers).status_code == 401
    assert client.get("/jobs", headers=headers).status_code == 401


def test_swagger_authorize_uses_the_password_flow(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    (scheme,) = schemes.values()
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"
    assert client.get("/docs").status_code == 200
