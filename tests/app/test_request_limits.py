"""Limits every request meets before routing (issue 11, items 5 and 10): one body size limit
whatever the Content-Type or framing, bounded JSON nesting, UTF-8 JSON, bounded headers; each
refusal is a 4xx in the one error shape, through the app and through the real server."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.json_body import MAX_BODY_BYTES, MAX_JSON_DEPTH
from app.launcher import server_options
from tests.conftest import SEED_JOB, Account, make_settings

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    None,
]


def big_job_body(size: int) -> bytes:
    """A job spec that is valid but for its size: the padding is a string in the spec."""
    body = json.dumps({**SEED_JOB, "name": "x", "training_config": {"note": ""}}).encode()
    return body.replace(b'"note": ""', b'"note": "' + b"x" * size + b'"')


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["detail"], body
    return body


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_one_body_limit_for_every_content_type(
    client: TestClient, user: Account, content_type: str | None
) -> None:
    headers = dict(user.headers)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(
        "/jobs/submit", headers=headers, content=big_job_body(2 * MAX_BODY_BYTES)
    )
    body = assert_error(response, 413, "payload_too_large")
    assert str(MAX_BODY_BYTES) in body["detail"]
    assert client.get("/jobs", headers=user.headers).json()["total"] == 0


def test_a_chunked_json_body_without_content_length_is_counted(
    client: TestClient, user: Account
) -> None:
    payload = big_job_body(2 * MAX_BODY_BYTES)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    response = client.post(
        "/jobs/submit",
        headers={**user.headers, "Content-Type": "application/json"},
        content=chunks(),
    )
    assert_error(response, 413, "payload_too_large")
    assert client.get("/jobs", headers=user.headers).json()["total"] == 0


def test_a_declared_length_over_the_limit_is_refused_before_reading(client: TestClient) -> None:
    """Content-Length says 1 GB: refused at once, without waiting for (or reading) the body."""
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body must not be read")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/jobs/submit",
        "raw_path": b"/jobs/submit",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000000000")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "payload_too_large"


def test_a_body_just_under_the_limit_reaches_the_route(client: TestClient, user: Account) -> None:
    response = client.post(
        "/jobs/submit",
        headers={**user.headers, "Content-Type": "application/json"},
        content=big_job_body(MAX_BODY_BYTES - 1024),
    )
    assert response.status_code == 422  # the route's own answer: `note` is no knob
    assert "training_config" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", None]
)
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_json_nested_10000_deep_is_422(
    client: TestClient, admin: Account, content_type: str | None, opener: bytes
) -> None:
    closer = b"]" if opener == b"[" else b"}"
    headers = dict(admin.headers)
    if content_type:
        headers["Content-Type"] = content_type
    for route in ("/jobs/submit", "/auth/register", "/tokens/estimate", "/nodes/register"):
        response = client.post(route, headers=headers, content=opener * 10_000 + closer * 10_000)
        body = assert_error(response, 422, "invalid_input")
        assert "nested more than" in body["detail"]


def deep_overrides_job(levels: int) -> bytes:
    """A job whose model overrides nest ``levels`` deep (the probe stored 200-253, and 254
    was a 500)."""
    deep = b'{"a":' * levels + b"1" + b"}" * levels
    body = {**SEED_JOB, "model_config": {**SEED_JOB["model_config"], "overrides": 0}}
    return json.dumps(body).encode().replace(b'"overrides": 0', b'"overrides": ' + deep)


@pytest.mark.parametrize("how", ["two content types, the last not JSON", "a byte-order mark"])
def test_the_nesting_limit_holds_however_the_body_is_labelled(
    client: TestClient, user: Account, how: str
) -> None:
    """The parsers read the first Content-Type, and JSON with a byte-order mark and no
    Content-Type at all: neither may slip past the check."""
    body = deep_overrides_job(254)
    headers: list[tuple[str, str]] = list(user.headers.items())
    if how.startswith("two"):
        headers += [("Content-Type", "application/json"), ("Content-Type", "text/html")]
    else:
        body = b"\xef\xbb\xbf" + body
    response = client.post("/jobs/submit", headers=headers, content=body)
    assert 400 <= response.status_code < 500, response.text
    assert client.get("/jobs", headers=user.headers).json()["items"] == []  # nothing stored


def test_nesting_up_to_the_limit_is_the_route_business(client: TestClient, user: Account) -> None:
    deep = b'{"a":' * (MAX_JSON_DEPTH - 2) + b"1" + b"}" * (MAX_JSON_DEPTH - 2)
    payload = json.dumps({**SEED_JOB, "training_config": {"note": 0}}).encode()
    response = client.post(
        "/jobs/submit",
        headers={**user.headers, "Content-Type": "application/json"},
        content=payload.replace(b'"note": 0', b'"note": ' + deep),
    )
    assert response.status_code == 422
    assert "nested" not in response.json()["detail"]  # refused by the spec, not the limit


def test_a_json_body_that_is_not_utf8_is_422(client: TestClient, user: Account) -> None:
    response = client.post(
        "/jobs/submit",
        headers={**user.headers, "Content-Type": "application/json"},
        content=b'{"name": "\xaf\x10"}',
    )
    body = assert_error(response, 422, "invalid_input")
    assert "UTF-8" in body["detail"] and "position 10" in body["detail"]


def test_a_1mb_authorization_header_is_431_in_the_error_shape(client: TestClient) -> None:
    for path in ("/auth/me", "/jobs", "/health"):
        response = client.get(path, headers={"Authorization": "Bearer " + "a" * 1024 * 1024})
        assert_error(response, 431, "headers_too_large")


# --- through the real server (`make run`'s uvicorn configuration) -------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(app: object, database_url: str) -> Iterator[int]:
    port = free_port()
    settings = make_settings(database_url, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(app, **server_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def test_the_server_answers_a_1mb_authorization_header_in_the_error_shape(served: int) -> None:
    status, content_type, body = raw_request(
        served, "GET", "/auth/me", {"Authorization": "Bearer " + "a" * 1024 * 1024}
    )
    assert status == 431, body[:200]
    assert content_type.startswith("application/json")
    assert json.loads(body)["error"] == "headers_too_large"
