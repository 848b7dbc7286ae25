"""What a client reads (issue 11, item 15): JSON that ends with a newline, so curl's output
ends cleanly in a terminal; a broken JSON body explained (where, and what was expected); and
an OpenAPI document whose every error response is the one error shape."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.json_body import MAX_BODY_BYTES
from tests.conftest import SEED_JOB, Account, submit_job


def test_every_kind_of_response_ends_with_a_newline(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers)
    cancelled = client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    responses = {
        "200 cancel": cancelled,
        "200 model": client.get(f"/jobs/{job['id']}", headers=user.headers),
        "200 page": client.get("/jobs", headers=user.headers),
        "200 dict": client.get("/health"),
        "201": client.post("/jobs/submit", headers=user.headers, json=SEED_JOB),
        "401": client.get("/jobs"),
        "404 domain": client.get("/jobs/999", headers=user.headers),
        "404 route": client.get("/no/such/route"),
        "405": client.delete("/health"),
        "409": client.post(f"/jobs/{job['id']}/cancel", headers=user.headers),
        "413": client.post(
            "/jobs/submit", headers=user.headers, content=b"{" + b" " * MAX_BODY_BYTES + b"}"
        ),
        "422 validation": client.get("/jobs?limit=0", headers=user.headers),
        "422 json": client.post("/jobs/submit", headers=user.headers, content=b"{broken"),
        "431": client.get("/jobs", headers={"Authorization": "Bearer " + "a" * 100_000}),
    }
    for label, response in responses.items():
        assert response.headers["content-type"].startswith("application/json"), label
        assert response.content.endswith(b"}\n"), (label, response.content[-40:])
        assert response.content.count(b"\n") == 1, label  # one line of JSON, then the newline
        assert int(response.headers["content-length"]) == len(response.content), label
        json.loads(response.content)


@pytest.mark.parametrize(
    ("payload", "line", "column", "expected"),
    [
        (b'{"name": "x",, "requirements": {}}', 1, 14, "Expecting property name"),
        (b'{\n  "name": "x",\n  "requirements": {"gpu": 1 "cpu_cores": 2}\n}', 3, 29, "','"),
        (b'{"name": "unterminated}', 1, 10, "Unterminated string"),
        (b"[1, 2", 1, 6, "Expecting"),
    ],
)
def test_a_broken_json_body_says_where_and_what_was_expected(
    client: TestClient, user: Account, payload: bytes, line: int, column: int, expected: str
) -> None:
    for content_type in ("application/json", "application/x-www-form-urlencoded"):
        response = client.post(
            "/jobs/submit", headers={**user.headers, "Content-Type": content_type}, content=payload
        )
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "invalid_input"
        detail = body["detail"]
        assert detail.startswith("body: not valid JSON: "), detail
        assert expected in detail and f"at line {line}, column {column}" in detail, detail
        assert body["fields"] == [{"field": "body", "message": detail.removeprefix("body: ")}]


def test_every_documented_error_is_the_one_error_shape(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert "422" in responses or not operation.get("parameters"), where
            assert "431" in responses, where
            if method == "post":
                assert "413" in responses, where
            if operation.get("security"):
                assert "401" in responses, where
            for status, response in responses.items():
                if status.startswith(("4", "5")) and status != "503":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (where, status)
