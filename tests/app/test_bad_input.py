"""Bad input never yields a 500: every route answers malformed bodies with a JSON 4xx."""

from __future__ import annotations

import datetime as dt
import json

import jwt
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import SEED_JOB, Account, register_node, submit_job

MALFORMED_BODIES: list[tuple[str, bytes, str]] = [
    ("application/json", b"{not json", "broken json"),
    ("application/json", b"[]", "array"),
    ("application/json", b"null", "null"),
    ("application/json", b'"a string"', "string"),
    ("application/json", b"12345678901234567890123456789", "huge number"),
    ("application/json", b'{"hostname": ' + b'"x" ' * 3 + b"}", "garbage object"),
    ("application/json", json.dumps({"a": "\u0000\ud7ff" * 100}).encode(), "odd unicode"),
    ("application/x-www-form-urlencoded", b"a=1&b=2", "form"),
    ("text/plain", b"hello", "text"),
    ("application/json", b"", "empty"),
    ("application/xml", b"<job/>", "xml"),
]

POST_ROUTES = [
    "/auth/register",
    "/auth/token",
    "/nodes/register",
    "/nodes/{node}/heartbeat",
    "/jobs/submit",
]


def assert_clean_4xx(response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert set(body) >= {"error", "detail"}
    assert "Traceback" not in response.text


@pytest.fixture
def owned_node(client: TestClient, admin: Account) -> int:
    return register_node(client, admin.headers)["id"]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(("content_type", "payload", "label"), MALFORMED_BODIES)
def test_malformed_bodies_are_clean_4xx(
    client: TestClient,
    admin: Account,
    owned_node: int,
    route: str,
    content_type: str,
    payload: bytes,
    label: str,
) -> None:
    response = client.post(
        route.format(node=owned_node),
        headers={**admin.headers, "Content-Type": content_type},
        content=payload,
    )
    if route.endswith("/heartbeat") and label in ("empty", "null"):
        assert response.status_code == 200  # a bare heartbeat is fine
        return
    assert_clean_4xx(response)


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/abc",
        "/jobs/1.5",
        "/nodes/-",
        "/metrics/node/x",
        "/metrics/training/%00",
        "/jobs/99999999999999999999999",
        "/jobs?limit=0",
        "/jobs?limit=100000",
        "/jobs?offset=-1",
        "/nodes?limit=abc",
        "/metrics/training/1?after_step=x",
    ],
)
def test_bad_path_and_query_values_are_clean_4xx(
    client: TestClient, admin: Account, path: str
) -> None:
    assert_clean_4xx(client.get(path, headers=admin.headers))


@pytest.mark.parametrize(
    "ref", ["%C2%B2", "%E2%91%A0", "1" * 5000, "0", "-1", "1%20", "%D9%A3"], ids=repr
)
@pytest.mark.parametrize("route", ["/tokens/balance/{}", "/users/{}/storage"])
def test_a_user_id_that_is_not_plain_ascii_digits_is_422(
    client: TestClient, admin: Account, route: str, ref: str
) -> None:
    """Superscript two, a circled one, Arabic-Indic three and 5,000 digits all pass
    str.isdigit() and broke int() with a 500."""
    answer = client.get(route.format(ref), headers=admin.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_input"


def test_unknown_route_and_wrong_method_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/no/such/thing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = client.delete("/health")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_oversized_body_is_413(client: TestClient, admin: Account) -> None:
    payload = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = client.post(
        "/jobs/submit",
        headers={**admin.headers, "Content-Type": "application/x-www-form-urlencoded"},
        content=payload,
    )
    assert response.status_code == 413


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_422(client: TestClient, user: Account, number: bytes) -> None:
    payload = json.dumps({**SEED_JOB, "training_config": {"custom": 1}}).encode()
    payload = payload.replace(b'"custom": 1', b'"custom": ' + number)
    response = client.post(
        "/jobs/submit",
        headers={**user.headers, "Content-Type": "application/json"},
        content=payload,
    )
    assert response.status_code == 422
    assert "finite" in response.json()["detail"]


def test_bad_input_changes_nothing(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers)
    client.post(
        f"/jobs/{job['id']}/cancel",
        headers={**user.headers, "Content-Type": "a/b"},
        content=b"\xff\xfe",
    )
    client.post("/jobs/submit", headers=user.headers, content=b"{broken")
    jobs = client.get("/jobs", headers=user.headers).json()
    assert jobs["total"] == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    section=st.sampled_from(
        [
            "model_config",
            "data_config",
            "training_config",
            "requirements",
            "max_tokens",
            "max_runtime_s",
            "name",
        ]
    ),
    value=json_values,
)
def test_random_job_spec_sections_never_500(
    client: TestClient, user: Account, section: str, value: object
) -> None:
    response = client.post("/jobs/submit", headers=user.headers, json={**SEED_JOB, section: value})
    assert response.status_code in (200, 201, 402, 422), response.text  # 402: tokens ran out
    if response.status_code == 422:
        assert response.json()["error"] == "invalid_input"


HUGE = "100000000000000000000"  # 1e20, past every database integer


@pytest.mark.parametrize("path", ["/jobs?offset={n}", "/nodes?offset={n}"])
def test_huge_offsets_are_422_not_overflow(client: TestClient, admin: Account, path: str) -> None:
    submit_job(client, admin.headers)
    register_node(client, admin.headers)
    response = client.get(path.format(n=HUGE), headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "offset"


def test_huge_after_step_is_422_not_overflow(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers)
    response = client.get(f"/metrics/training/{job['id']}?after_step={HUGE}", headers=user.headers)
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "after_step"
    ok = client.get(f"/metrics/training/{job['id']}?after_step=2147483647", headers=user.headers)
    assert ok.status_code == 200


@pytest.mark.parametrize("sub", [HUGE, "-1", "0", str(2**31), str(2**63)])
def test_a_signed_token_for_an_impossible_user_id_is_401(
    client: TestClient, settings, sub: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": sub, "role": "admin", "iat": now, "exp": now + dt.timedelta(minutes=5)}
    token = jwt.encode(claims, settings.secret_key, algorithm="HS256")
    for path in ("/auth/me", "/jobs", "/nodes/1/heartbeat"):
        method = client.post if path.endswith("heartbeat") else client.get
        response = method(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (path, response.text)
        assert response.json() == {"error": "not_authenticated", "detail": "invalid access token"}
