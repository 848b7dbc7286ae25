"""The token economy through the API: grants, holds, refunds, privacy, estimates."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth.models import Role
from compute.models import Job
from ledger.models import LedgerTransaction
from tests.conftest import SEED_JOB, Account, submit_job

SEED_HOLD = 15.6  # 1 GPU x 10 + 4 cores x 1 + 16 GB x 0.1, for the default hour


def balance(client: TestClient, account: Account, who: str = "me") -> dict:
    response = client.get(f"/tokens/balance/{who}", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_new_users_get_the_signup_grant(client: TestClient, user: Account) -> None:
    assert balance(client, user) == {
        "user_id": user.id,
        "available": 100.0,
        "held": 0.0,
        "earned": 0.0,
        "spent": 0.0,
        "pending": 0.0,
    }
    (line,) = client.get("/tokens/history/me", headers=user.headers).json()["items"]
    assert line["kind"] == "grant" and line["transaction_kind"] == "signup_grant"
    assert line["amount"] == 100.0


def test_users_registered_through_the_api_get_it_too(client: TestClient, admin: Account) -> None:
    created = client.post(
        "/auth/register", headers=admin.headers, json={"username": "neo", "password": "pass12345"}
    ).json()
    assert balance(client, admin, str(created["id"]))["available"] == 100.0


def test_submit_holds_the_maximum_cost_and_cancel_refunds_it(
    client: TestClient, user: Account
) -> None:
    job = submit_job(client, user.headers)
    assert balance(client, user) == {
        "user_id": user.id,
        "available": 84.4,
        "held": SEED_HOLD,
        "earned": 0.0,
        "spent": 0.0,
        "pending": 0.0,
    }
    client.post(f"/jobs/{job['id']}/cancel", headers=user.headers)
    assert balance(client, user)["available"] == 100.0
    assert balance(client, user)["held"] == 0.0
    kinds = [
        (e["kind"], e["account"], e["amount"])
        for e in client.get("/tokens/history/me", headers=user.headers).json()["items"]
    ]
    assert kinds[:4] == [
        ("refund", "wallet", SEED_HOLD),
        ("refund", "escrow", -SEED_HOLD),
        ("hold", "escrow", SEED_HOLD),
        ("hold", "wallet", -SEED_HOLD),
    ]


def test_max_tokens_caps_the_hold(client: TestClient, user: Account) -> None:
    job = submit_job(client, user.headers, max_tokens=2.5)
    assert job["max_tokens"] == 2.5
    assert balance(client, user)["held"] == 2.5


def test_max_runtime_sets_the_hold(client: TestClient, user: Account) -> None:
    submit_job(client, user.headers, max_runtime_s=360)
    assert balance(client, user)["held"] == pytest.approx(1.56)


def test_not_enough_tokens_is_402_with_the_shortfall_and_stores_nothing(
    client: TestClient, user: Account, db: Session
) -> None:
    body = {**SEED_JOB, "max_runtime_s": 8 * 3600}  # 124.8 tokens > 100
    response = client.post("/jobs/submit", headers=user.headers, json=body)
    assert response.status_code == 402
    assert response.json()["error"] == "insufficient_tokens"
    assert "short by 24.8" in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    holds = db.scalar(
        select(func.count()).select_from(LedgerTransaction).where(LedgerTransaction.kind == "hold")
    )
    assert holds == 0
    assert balance(client, user)["available"] == 100.0


def test_admin_grant_is_issuance_and_idempotent(
    client: TestClient, admin: Account, user: Account
) -> None:
    headers = {**admin.headers, "Idempotency-Key": "grant-1"}
    body = {"user_id": user.id, "amount": 12.345678, "memo": "welcome"}
    first = client.post("/tokens/grant", headers=headers, json=body)
    again = client.post("/tokens/grant", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert balance(client, user)["available"] == pytest.approx(112.345678)
    system = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert system["issued"] == pytest.approx(200 + 12.345678)  # two signups + one grant
    assert system["invariant_ok"] is True


def issued(client: TestClient, admin: Account) -> float:
    return client.get("/metrics/system", headers=admin.headers).json()["ledger"]["issued"]


@pytest.mark.parametrize(
    "change",
    [{"amount": 7}, {"memo": "another memo"}, {"user": "other"}],
    ids=["amount", "memo", "user"],
)
def test_a_grant_key_reused_with_another_body_is_422_like_submit(
    client: TestClient, admin: Account, user: Account, other_user: Account, change: dict
) -> None:
    """Issue 11 item 8: it answered 201 and silently granted nothing."""
    headers = {**admin.headers, "Idempotency-Key": "grant-once"}
    body = {"user_id": user.id, "amount": 5, "memo": "welcome"}
    assert client.post("/tokens/grant", headers=headers, json=body).status_code == 201
    before = issued(client, admin)
    if change.pop("user", None):
        change["user_id"] = other_user.id
    reused = client.post("/tokens/grant", headers=headers, json={**body, **change})
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"] == "idempotency_key_reused"
    assert set(reused.json()) == {"error", "detail"}
    assert "Idempotency-Key" in reused.json()["detail"]
    assert issued(client, admin) == before
    assert balance(client, user)["available"] == 105.0
    assert balance(client, other_user)["available"] == 100.0
    # The first body with its key is still a harmless replay.
    replay = client.post("/tokens/grant", headers=headers, json=body)
    assert replay.status_code == 201 and replay.json()["available"] == 105.0


def test_grant_keys_are_per_admin(
    client: TestClient, admin: Account, make_account, user: Account
) -> None:
    second_admin = make_account("root2", Role.ADMIN)
    body = {"user_id": user.id, "amount": 1}
    for account, amount in ((admin, 1), (second_admin, 2)):
        headers = {**account.headers, "Idempotency-Key": "same-key"}
        response = client.post("/tokens/grant", headers=headers, json={**body, "amount": amount})
        assert response.status_code == 201, response.text
    assert balance(client, user)["available"] == 103.0


@pytest.mark.parametrize(
    "query",
    [
        "offset=1e20",
        "offset=100000000000000000000",
        "offset=9223372036854775808",
        "offset=1000000001",
        "offset=-1",
        "offset=1.5",
        "offset=abc",
        "offset=nan",
        "offset=1e400",
        "limit=1e20",
        "limit=0",
        "limit=501",
        "limit=2.5",
    ],
)
def test_history_refuses_out_of_range_pages(client: TestClient, user: Account, query: str) -> None:
    """Issue 11 item 10: a huge offset overflowed the database integer and answered 500."""
    response = client.get(f"/tokens/history/me?{query}", headers=user.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert isinstance(response.json()["detail"], str)
    name = query.split("=")[0]
    assert name in response.json()["detail"]


def test_history_accepts_the_largest_offset(client: TestClient, user: Account) -> None:
    page = client.get("/tokens/history/me?offset=1000000000&limit=500", headers=user.headers)
    assert page.status_code == 200, page.text
    assert page.json()["items"] == [] and page.json()["total"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": 1, "amount": 0},
        {"user_id": 1, "amount": -5},
        {"user_id": 1, "amount": 1.0000001},
        {"user_id": 1, "amount": 1e12},
        {"user_id": 1, "amount": "lots"},
        {"amount": 5},
        {"user_id": 424242, "amount": 5},
    ],
)
def test_bad_grants_are_refused(client: TestClient, admin: Account, body: dict) -> None:
    response = client.post("/tokens/grant", headers=admin.headers, json=body)
    assert response.status_code in (404, 422), response.text
    assert client.get("/metrics/system", headers=admin.headers).json()["ledger"]["issued"] == 100


def test_only_admins_can_grant(client: TestClient, user: Account, node_owner: Account) -> None:
    for account in (user, node_owner):
        response = client.post(
            "/tokens/grant", headers=account.headers, json={"user_id": account.id, "amount": 5}
        )
        assert response.status_code == 403
    assert balance(client, user)["available"] == 100.0


def test_balance_and_history_are_private(
    client: TestClient, user: Account, other_user: Account, admin: Account
) -> None:
    for path in (f"/tokens/balance/{other_user.id}", f"/tokens/history/{other_user.id}"):
        assert client.get(path, headers=user.headers).status_code == 404
        assert client.get(path, headers=admin.headers).status_code == 200
    assert client.get(f"/tokens/balance/{user.id}", headers=user.headers).status_code == 200
    assert client.get("/tokens/balance/notanid", headers=user.headers).status_code == 422
    assert client.get("/tokens/balance/me").status_code == 401


def test_history_is_newest_first_and_paginated(client: TestClient, user: Account) -> None:
    for _ in range(3):
        submit_job(client, user.headers, max_runtime_s=60)
    page = client.get("/tokens/history/me?limit=2", headers=user.headers).json()
    assert page["total"] == 7  # grant + 3 holds x 2 entries
    ids = [e["entry_id"] for e in page["items"]]
    assert ids == sorted(ids, reverse=True)
    assert all(e["job_id"] is not None for e in page["items"])


def test_the_wallet_view_shows_each_movement_once_with_its_kind(
    client: TestClient, user: Account
) -> None:
    """Issue 23 (3): the escrow's legs made every hold look doubled."""
    job = submit_job(client, user.headers, max_runtime_s=60)
    assert client.post(f"/jobs/{job['id']}/cancel", headers=user.headers).status_code == 200
    everything = client.get("/tokens/history/me", headers=user.headers).json()
    wallet = client.get("/tokens/history/me?account=wallet", headers=user.headers).json()
    assert everything["total"] == 5  # grant; hold, refund: each on the wallet and the escrow
    assert wallet["total"] == 3 == len(wallet["items"])
    assert [(e["kind"], e["account"]) for e in wallet["items"]] == [
        ("refund", "wallet"),
        ("hold", "wallet"),
        ("grant", "wallet"),
    ]
    assert wallet["items"][0]["amount"] == -wallet["items"][1]["amount"] > 0  # all of it back
    assert sum(e["amount"] for e in wallet["items"]) == balance(client, user)["available"]
    bad = client.get("/tokens/history/me?account=escrow", headers=user.headers)
    assert bad.status_code == 422


def test_estimate_takes_requirements_or_a_whole_spec(client: TestClient, user: Account) -> None:
    simple = client.post(
        "/tokens/estimate",
        headers=user.headers,
        json={"requirements": {"gpu": 1, "cpu_cores": 4, "memory": 16}, "max_runtime_s": 3600},
    ).json()
    assert simple["total"] == SEED_HOLD
    assert simple["breakdown"] == {"gpu": 10.0, "cpu": 4.0, "memory": 1.6}
    whole = client.post("/tokens/estimate", headers=user.headers, json=SEED_JOB).json()
    assert whole["total"] == SEED_HOLD and whole["max_runtime_s"] == 3600
    capped = client.post(
        "/tokens/estimate", headers=user.headers, json={**SEED_JOB, "max_tokens": 3}
    ).json()
    assert capped["total"] == 3.0 and capped["capped_by_max_tokens"] is True
    assert balance(client, user)["available"] == 100.0  # estimates hold nothing


@pytest.mark.parametrize(
    "body",
    [
        {"requirements": {"gpu": -1}},
        {"requirements": {"cpu_cores": "many"}},
        {"max_runtime_s": 0},
        {"model_config": {"type": "nope"}},
        {"unexpected": 1},
    ],
)
def test_bad_estimates_are_422(client: TestClient, user: Account, body: dict) -> None:
    response = client.post("/tokens/estimate", headers=user.headers, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
