"""Login, registration, tokens and brute-force throttling."""

from __future__ import annotations

import datetime as dt
import re

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth.models import LoginThrottle, Role, User
from auth.service import client_address_key
from tests.conftest import PASSWORD, TEST_SECRET, Account, bearer
from tests.polling import wait_for


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


def client_at(client: TestClient, address: str) -> TestClient:
    """A second client of the same running app, connecting from another address."""
    return TestClient(client.app, client=(address, 50000))


ATTACKER = "203.0.113.66"
OWNER = "198.51.100.7"


def test_an_attacker_cannot_lock_the_owner_out_from_elsewhere(
    client: TestClient, user: Account
) -> None:
    """Issue 11 item 7: failures were counted per username only, so anyone could lock
    `alice` (or the admin) out by failing to log in as her."""
    attacker, owner = client_at(client, ATTACKER), client_at(client, OWNER)
    for name in ["alice", "ALICE", "Alice"] * 10:
        assert login(attacker, name, "wrong-password").status_code in (401, 429)
    locked = login(attacker, "alice", user.password)
    assert locked.status_code == 429
    assert locked.json()["error"] == "rate_limited"
    # The owner, from her own address, is not locked out.
    response = login(owner, "alice", user.password)
    assert response.status_code == 200, response.text


def test_the_lock_is_per_address_and_username_case_blind(
    client: TestClient, user: Account, other_user: Account
) -> None:
    attacker = client_at(client, ATTACKER)
    for name in ["ALICE", "alice", "Alice", "aLiCe", "ALICE"]:
        assert login(attacker, name, "wrong-password").status_code == 401
    # Case variants are one username: all five count against `alice` from this address.
    assert login(attacker, "alice", user.password).status_code == 429
    # Another username from the same address is not locked by them.
    assert login(attacker, "bob", other_user.password).status_code == 200


def test_one_address_cannot_spray_passwords_over_many_usernames(
    client: TestClient, user: Account, settings
) -> None:
    attacker, owner = client_at(client, ATTACKER), client_at(client, OWNER)
    limit = settings.login_max_failures_per_address
    assert limit < 100
    for index in range(limit):
        name = f"victim-{index}"  # each username stays below its own limit
        assert login(attacker, name, "guess-123456").status_code == 401
    sprayed = login(attacker, "alice", user.password)
    assert sprayed.status_code == 429
    assert "address" in sprayed.json()["detail"]
    assert int(sprayed.headers["Retry-After"]) > 0
    assert login(owner, "alice", user.password).status_code == 200


def test_the_address_count_survives_a_successful_login(
    client: TestClient, user: Account, settings
) -> None:
    """An attacker with an account of their own cannot reset their spraying allowance by
    logging in to it."""
    attacker = client_at(client, ATTACKER)
    for index in range(settings.login_max_failures_per_address - 1):
        assert login(attacker, f"victim-{index}", "guess-123456").status_code == 401
        if index % 4 == 3:
            assert login(attacker, "alice", user.password).status_code == 200
    assert login(attacker, "victim-x", "guess-123456").status_code == 401
    assert login(attacker, "alice", user.password).status_code == 429


def test_locked_answers_do_not_reveal_whether_the_user_exists(
    client: TestClient, user: Account
) -> None:
    attacker = client_at(client, ATTACKER)
    answers = {}
    for name in ("alice", "ghost-user"):
        for _ in range(5):
            assert login(attacker, name, "wrong-password").status_code == 401
        answers[name] = login(attacker, name, "wrong-password")
    assert answers["alice"].status_code == answers["ghost-user"].status_code == 429
    # The same answer, but for the seconds left (which may tick between the two).
    assert len({re.sub(r"\d+", "N", answer.text) for answer in answers.values()}) == 1


def test_failures_are_forgotten_after_the_lockout_period(
    client: TestClient, user: Account, db: Session, settings
) -> None:
    attacker = client_at(client, ATTACKER)
    for _ in range(settings.login_max_failures - 1):
        assert login(attacker, "alice", "wrong-password").status_code == 401
    db.add(LoginThrottle(client="192.0.2.1", username_key="ghost", failures=3))
    db.commit()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.login_lockout_s + 60)
    db.execute(update(LoginThrottle).values(window_started_at=long_ago))
    db.commit()
    for _ in range(settings.login_max_failures - 1):
        assert login(attacker, "alice", "wrong-password").status_code == 401
    assert login(attacker, "alice", user.password).status_code == 200
    # Rows that count nothing any more are deleted, not kept forever.
    db.expire_all()
    assert db.scalars(select(LoginThrottle.client).distinct()).all() == [ATTACKER]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        (None, "unknown"),
        ("testclient", "testclient"),
    ],
)
def test_client_addresses_are_counted_by_subscriber(host: str | None, key: str) -> None:
    """An IPv6 client can rotate through its /64 at will, so the /64 is what is counted."""
    assert client_address_key(host) == key


def test_login_ignores_the_case_of_the_username(client: TestClient, user: Account) -> None:
    for name in ("ALICE", "Alice", "alice"):
        response = login(client, name, user.password)
        assert response.status_code == 200, (name, response.text)
        me = client.get(
            "/auth/me", headers={"Authorization": f"Bearer {response.json()['access_token']}"}
        )
        assert me.json()["id"] == user.id and me.json()["username"] == "alice"


def test_usernames_differing_only_in_case_are_one_account(
    client: TestClient, admin: Account, user: Account
) -> None:
    for name in ("ALICE", "Alice"):
        response = client.post(
            "/auth/register", headers=admin.headers, json={"username": name, "password": PASSWORD}
        )
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "username_taken"
    assert login(client, "ALICE", user.password).status_code == 200


def test_the_database_refuses_case_variants_of_a_username(db: Session, user: Account) -> None:
    """The rule holds below the service too, e.g. for two concurrent registrations."""
    db.add(User(username="ALICE", password_hash="-", role=Role.USER.value))
    with pytest.raises(IntegrityError):
        db.flush()


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


def test_a_token_that_served_requests_is_refused_once_it_expires(
    client: TestClient, user: Account, settings
) -> None:
    """The gateway remembers tokens it has verified; one it has seen is still refused from
    the second it expires."""
    headers = bearer(user.user, settings, expires_in=dt.timedelta(seconds=2))
    assert client.get("/auth/me", headers=headers).status_code == 200
    assert client.get("/auth/me", headers=headers).status_code == 200  # remembered now
    refused = wait_for(
        lambda: (r := client.get("/auth/me", headers=headers)).status_code == 401 and r,
        timeout_s=10,
        what="the token to expire",
    )
    assert "expired" in refused.json()["detail"]


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


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [(None, True), ("http://testserver", True), ("http://evil.example", False), ("null", False)],
)
def test_a_login_form_posted_from_another_site_is_refused(
    client: TestClient, user: Account, origin: str | None, allowed: bool
) -> None:
    """Login CSRF: a page elsewhere must not log a visitor in to an account it chose."""
    headers = {"Origin": origin} if origin else {}
    form = {"username": user.user.username, "password": user.password}
    answer = client.post("/auth/token", data=form, headers=headers)
    if allowed:
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 403 and answer.json()["error"] == "cross_origin"
