"""Every route x every caller: anonymous → 401, wrong role → 403, right role → success."""

from __future__ import annotations

import itertools

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from tests.conftest import SEED_JOB, Account, register_node, submit_job

ALL = {"user", "node_owner", "admin"}
OWNERS = {"node_owner", "admin"}
ADMIN = {"admin"}
_counter = itertools.count()

# (method, path template, body factory, roles allowed). {node}, {job} and {me} are the
# caller's own; {user} is another account (the target of admin routes). A body factory may
# take the caller's Account.
MATRIX: list[tuple[str, str, object, set[str]]] = [
    ("GET", "/auth/me", None, ALL),
    (
        "POST",
        "/auth/password",
        lambda account: {"current_password": account.password, "new_password": "a-new-long-pw"},
        ALL,
    ),
    ("GET", "/users", None, ADMIN),
    ("GET", "/users/{user}", None, ADMIN),
    ("PATCH", "/users/{user}", lambda: {"role": "user"}, ADMIN),
    ("POST", "/users/{user}/disable", lambda: {"running_jobs": "cancel"}, ADMIN),
    ("POST", "/users/{user}/enable", None, ADMIN),
    ("POST", "/users/{user}/password", lambda: {"new_password": "reset-long-pw"}, ADMIN),
    ("GET", "/users/{me}/storage", None, ALL),
    ("PATCH", "/nodes/{node}", lambda: {"resources": {"cpu_cores": 2, "memory": 4}}, OWNERS),
    ("POST", "/nodes/{node}/credential", None, OWNERS),
    ("POST", "/nodes/{node}/drain", None, OWNERS),
    ("POST", "/nodes/{node}/undrain", None, OWNERS),
    ("POST", "/nodes/{node}/leave", None, OWNERS),
    ("POST", "/nodes/{node}/unban", None, ADMIN),  # 409: the node is not banned
    ("DELETE", "/nodes/{node}", None, OWNERS),
    ("DELETE", "/jobs/{job}/artifacts", None, ALL),  # 409: the job has not finished
    ("GET", "/jobs/{job}/events", None, ALL),  # a stream: only its status is read
    ("GET", "/jobs/{job}/logs", None, ALL),
    ("GET", "/status", None, ALL),
    ("GET", "/metrics", None, ADMIN),  # or the scrape token (tests/app/test_prometheus.py)
    (
        "POST",
        "/auth/register",
        lambda: {"username": f"new{next(_counter)}", "password": "long-enough-pw"},
        ADMIN,
    ),
    (
        "POST",
        "/nodes/register",
        lambda: {"hostname": f"h{next(_counter)}", "resources": {"cpu_cores": 2, "memory": 4}},
        OWNERS,
    ),
    ("GET", "/nodes", None, OWNERS),
    ("GET", "/nodes/{node}", None, OWNERS),
    ("POST", "/nodes/{node}/heartbeat", lambda: {"cpu_percent": 5}, OWNERS),
    ("GET", "/nodes/{node}/join", None, OWNERS),
    # 409 here: these gateways run jobs on their own Ray (tests/hosts run them on agents)
    ("POST", "/nodes/{node}/runs", lambda: {"clusters": []}, OWNERS),
    ("POST", "/nodes/{node}/approve", None, ADMIN),
    ("POST", "/nodes/{node}/ban", None, ADMIN),
    ("POST", "/jobs/submit", lambda: SEED_JOB, ALL),
    ("GET", "/jobs", None, ALL),
    ("GET", "/jobs/{job}", None, ALL),
    ("POST", "/jobs/{job}/cancel", None, ALL),
    ("GET", "/jobs/{job}/artifacts", None, ALL),  # 409 while the job has no model
    ("GET", "/jobs/{job}/results", None, ALL),  # 409: a training job has no results
    ("GET", "/jobs/{job}/results/summary", None, ALL),
    ("GET", "/jobs/{job}/results/preview", None, ALL),
    ("GET", "/metrics/system", None, ADMIN),
    ("GET", "/metrics/node/{node}", None, OWNERS),
    ("GET", "/metrics/training/{job}", None, ALL),
    ("GET", "/tokens/balance/{me}", None, ALL),
    ("GET", "/tokens/history/{me}", None, ALL),
    ("POST", "/tokens/estimate", lambda: {"requirements": {"cpu_cores": 1, "memory": 1}}, ALL),
    ("POST", "/tokens/grant", lambda: {"user_id": 1, "amount": 1}, ADMIN),
]
PUBLIC = {
    ("GET", "/health"),
    ("POST", "/auth/token"),
    ("POST", "/auth/refresh"),  # the refresh token is the credential
    ("POST", "/auth/logout"),
}
# A job driver's routes: only its run credential gets in (tests/app/test_runs.py), never a
# role's access token.
RUN_CREDENTIAL = {
    ("POST", "/runs/{job}/events"),
    ("PUT", "/runs/{job}/{kind}"),
    ("GET", "/runs/{job}/checkpoint"),
    ("GET", "/runs/{job}/source-model"),
}
# Allowed, and the caller's objects are in a state where the answer is a conflict.
CONFLICT_OK = ("/artifacts", "/results", "/summary", "/preview", "/unban", "/nodes/{node}/runs")


def test_matrix_covers_every_route(client: TestClient) -> None:
    documented = {(m, p) for m, p, _, _ in MATRIX} | PUBLIC | RUN_CREDENTIAL
    routes = set()
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        path = path.replace("{node_id}", "{node}").replace("{job_id}", "{job}")
        path = path.replace("{user_id}", "{me}" if path.startswith("/tokens") else "{user}")
        path = path.replace("/users/{user}/storage", "/users/{me}/storage")
        routes.update((method.upper(), path) for method in operations)
    assert routes == documented


def world_of(
    role: str, client: TestClient, admin: Account, make_account, owners_node: list[int]
) -> tuple[Account, int, int, int]:
    """One role's caller with a node and a job of its own (a plain user borrows a node
    owner's node) and another account to be the target of admin routes."""
    account = {
        "admin": lambda: admin,
        "node_owner": lambda: make_account("olivia", Role.NODE_OWNER),
        "user": lambda: make_account("alice", Role.USER),
    }[role]()
    if role == "user":
        if not owners_node:
            owner = make_account("olivia", Role.NODE_OWNER)
            owners_node.append(register_node(client, owner.headers, "owner-node")["id"])
        node = owners_node[0]
    else:
        node = register_node(client, account.headers, f"{role}-node")["id"]
        if role == "node_owner":
            owners_node.append(node)
    job = submit_job(client, account.headers)["id"]
    return account, node, job, make_account(f"target-of-{role}").id


@pytest.fixture
def caller(admin: Account, client: TestClient, make_account):
    """``caller(role)``: that role's world, built only for the roles a test asks for (the
    matrix's 400-odd cases each need one)."""
    owners_node: list[int] = []
    return lambda role: world_of(role, client, admin, make_account, owners_node)


@pytest.fixture
def callers(caller) -> dict:
    """Each role with a node and a job of its own."""
    return {role: caller(role) for role in ("node_owner", "user", "admin")}


def _body(body: object, account: Account) -> object:
    if not callable(body):
        return None
    return body(account) if body.__code__.co_argcount else body()


def _path(template: str, account: Account, node: int, job: int, target: int) -> str:
    return template.format(node=node, job=job, me=account.id, user=target)


def _call(client: TestClient, method: str, path: str, body: object, account: Account) -> int:
    json_body = _body(body, account)
    if path.endswith("/events"):  # the job is queued: its stream would go on
        with client.stream(method, path, headers=account.headers) as response:
            return response.status_code
    return client.request(method, path, headers=account.headers, json=json_body).status_code


@pytest.mark.parametrize(("method", "template", "body", "allowed"), MATRIX)
def test_anonymous_is_401(
    client: TestClient, caller, method: str, template: str, body: object, allowed: set
) -> None:
    account, node, job, target = caller("admin")
    path = _path(template, account, node, job, target)
    response = client.request(method, path, json=_body(body, account))
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("role", [r.value for r in Role])
@pytest.mark.parametrize(("method", "template", "body", "allowed"), MATRIX)
def test_role_gets_success_or_403(
    client: TestClient,
    caller,
    role: str,
    method: str,
    template: str,
    body: object,
    allowed: set,
) -> None:
    account, node, job, target = caller(role)
    status = _call(client, method, _path(template, account, node, job, target), body, account)
    if role in allowed:
        conflict_ok = template.endswith(CONFLICT_OK) and status == 409
        assert 200 <= status < 300 or conflict_ok, (role, method, template, status)
    else:
        assert status == 403, (role, method, template, status)


def test_public_routes_need_no_token(client: TestClient, admin: Account) -> None:
    assert client.get("/health").status_code == 200
    response = client.post("/auth/token", data={"username": "admin", "password": admin.password})
    assert response.status_code == 200


def test_no_roles_token_gets_into_a_drivers_routes(client: TestClient, callers: dict) -> None:
    for role, (account, _, job, _) in callers.items():
        for method, template in sorted(RUN_CREDENTIAL):
            path = template.replace("{job}", str(job)).replace("{kind}", "checkpoint")
            answer = client.request(
                method,
                path,
                params={"attempt": 1},
                headers={**account.headers, "X-Content-SHA256": "0" * 64},
                json={"attempt": 1, "events": []},
            )
            assert answer.status_code == 401, (role, method, path, answer.text)
