"""Every route x every caller: anonymous → 401, wrong role → 403, right role → success."""

from __future__ import annotations

import itertools

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from compute.cluster_access import ClusterAccess
from tests.conftest import SEED_JOB, Account, register_node, submit_job

ALL = {"user", "node_owner", "admin"}
OWNERS = {"node_owner", "admin"}
ADMIN = {"admin"}
_counter = itertools.count()

# (method, path template, body factory, roles allowed). {node} and {job} are the caller's own.
MATRIX: list[tuple[str, str, object, set[str]]] = [
    ("GET", "/auth/me", None, ALL),
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
    ("POST", "/nodes/{node}/approve", None, ADMIN),
    ("POST", "/nodes/{node}/ban", None, ADMIN),
    ("POST", "/jobs/submit", lambda: SEED_JOB, ALL),
    ("GET", "/jobs", None, ALL),
    ("GET", "/jobs/{job}", None, ALL),
    ("POST", "/jobs/{job}/cancel", None, ALL),
    ("GET", "/jobs/{job}/artifacts", None, ALL),  # 409 while the job has no model
    ("GET", "/jobs/{job}/results", None, ALL),  # 409: a training job has no results
    ("GET", "/jobs/{job}/results/summary", None, ALL),
    ("GET", "/metrics/system", None, ADMIN),
    ("GET", "/metrics/node/{node}", None, OWNERS),
    ("GET", "/metrics/training/{job}", None, ALL),
    ("GET", "/tokens/balance/me", None, ALL),
    ("GET", "/tokens/history/me", None, ALL),
    ("POST", "/tokens/estimate", lambda: {"requirements": {"cpu_cores": 1, "memory": 1}}, ALL),
    ("POST", "/tokens/grant", lambda: {"user_id": 1, "amount": 1}, ADMIN),
]
PUBLIC = {("GET", "/health"), ("POST", "/auth/token")}


def test_matrix_covers_every_route(client: TestClient) -> None:
    documented = {(m, p) for m, p, _, _ in MATRIX} | PUBLIC
    routes = set()
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        path = path.replace("{node_id}", "{node}").replace("{job_id}", "{job}")
        path = path.replace("{user_id}", "me")
        routes.update((method.upper(), path) for method in operations)
    assert routes == documented


@pytest.fixture
def callers(admin: Account, user: Account, node_owner: Account, client: TestClient) -> dict:
    """Each role with a node and a job of its own (a plain user borrows the owner's node)."""
    client.app.state.cluster = ClusterAccess.fixed("127.0.0.1:6379")  # type: ignore[attr-defined]  # no Ray here
    owner_node = register_node(client, node_owner.headers, "owner-node")["id"]
    admin_node = register_node(client, admin.headers, "admin-node")["id"]
    return {
        "user": (user, owner_node, submit_job(client, user.headers)["id"]),
        "node_owner": (node_owner, owner_node, submit_job(client, node_owner.headers)["id"]),
        "admin": (admin, admin_node, submit_job(client, admin.headers)["id"]),
    }


def _call(client: TestClient, method: str, path: str, body: object, headers: dict) -> int:
    json_body = body() if callable(body) else None
    return client.request(method, path, headers=headers, json=json_body).status_code


@pytest.mark.parametrize(("method", "template", "body", "allowed"), MATRIX)
def test_anonymous_is_401(
    client: TestClient, callers: dict, method: str, template: str, body: object, allowed: set
) -> None:
    _, node, job = callers["admin"]
    path = template.format(node=node, job=job)
    response = client.request(method, path, json=body() if callable(body) else None)
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("role", [r.value for r in Role])
@pytest.mark.parametrize(("method", "template", "body", "allowed"), MATRIX)
def test_role_gets_success_or_403(
    client: TestClient,
    callers: dict,
    role: str,
    method: str,
    template: str,
    body: object,
    allowed: set,
) -> None:
    account, node, job = callers[role]
    status = _call(client, method, template.format(node=node, job=job), body, account.headers)
    if role in allowed:
        no_output_yet = template.endswith(("/artifacts", "/results", "/summary"))
        no_model_yet = no_output_yet and status == 409
        assert 200 <= status < 300 or no_model_yet, (role, method, template, status)
    else:
        assert status == 403, (role, method, template, status)


def test_public_routes_need_no_token(client: TestClient, admin: Account) -> None:
    assert client.get("/health").status_code == 200
    response = client.post("/auth/token", data={"username": "admin", "password": admin.password})
    assert response.status_code == 200
