"""Seed 003's curl examples, byte for byte in shape: no JSON Content-Type on register, a form
login, JSON node register and job submit."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import Account

FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends without -H


def test_register_without_content_type_then_login_with_a_form(
    client: TestClient, admin: Account
) -> None:
    response = client.post(
        "/auth/register",
        headers={**admin.headers, "Content-Type": FORM},
        content=b'{"username": "user1", "password": "pass1234", "role": "node_owner"}',
    )
    assert response.status_code == 201, response.text
    assert response.json()["role"] == "node_owner"

    login = client.post(
        "/auth/token", headers={"Content-Type": FORM}, content=b"username=user1&password=pass1234"
    )
    assert login.status_code == 200
    token = login.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    node = client.post(
        "/nodes/register",
        headers=headers,
        content=b"""{
       "hostname": "gpu-node-1",
       "resources": {
         "gpu": 1,
         "cpu_cores": 8,
         "memory": 32
       }
     }""",
    )
    assert node.status_code == 201, node.text

    job = client.post(
        "/jobs/submit",
        headers=headers,
        content=b"""{
       "model_config": {
         "type": "simple_transformer",
         "model_name": "gpt2"
       },
       "data_config": {
         "data_source": "huggingface",
         "dataset_name": "wikitext"
       },
       "requirements": {
         "gpu": 1,
         "cpu_cores": 4,
         "memory": 16
       }
     }""",
    )
    assert job.status_code == 201, job.text
    assert job.json()["status"] == "queued"
    # curl prints the body as is: a final newline puts the shell prompt on its own line.
    for answer in (response, login, node, job):
        assert answer.content.endswith(b"}\n"), answer.content[-20:]


def test_json_without_any_content_type_header(client: TestClient, admin: Account) -> None:
    response = client.post(
        "/auth/register",
        headers=admin.headers,
        content=b'{"username": "user2", "password": "pass1234"}',
    )
    assert response.status_code == 201, response.text


def test_seed_password_too_short_gets_a_clear_422(client: TestClient, admin: Account) -> None:
    """The seed's literal 'pass123' is 7 characters: below the minimum, said plainly."""
    response = client.post(
        "/auth/register",
        headers={**admin.headers, "Content-Type": FORM},
        content=b'{"username": "user1", "password": "pass123", "role": "node_owner"}',
    )
    assert response.status_code == 422
    assert "password" in response.json()["detail"]
