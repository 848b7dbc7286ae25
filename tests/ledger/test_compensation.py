"""The platform's compensation for a job whose result was found invalid: everything the job
cost its user given back, from the platform's fees first and issued where they lack, once,
with every ledger invariant holding (ledger/compensation.py; the audits that call it are
tests/compute/test_audit_rounds.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.db import make_session_factory
from ledger.compensation import compensate_job
from tests.conftest import Account, register_node, submit_job
from tests.ledger_helpers import run_to_end, usage


@pytest.fixture
def session(client: TestClient):
    factory = make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]
    with factory() as session:
        yield session


def test_a_compensated_job_costs_its_user_nothing_the_fees_paying_first(
    client: TestClient, session, settings, user: Account, node_owner: Account, admin: Account
) -> None:
    node = register_node(client, node_owner.headers)
    job = submit_job(client, user.headers)
    run_to_end(session, settings, job["id"], [usage(node["id"], 360, 1440, 5760)])  # 1.56
    fees_before = client.get("/metrics/system", headers=admin.headers).json()["ledger"]["fees"]
    assert fees_before == 0.078

    given = compensate_job(session, job_id=job["id"], payer_id=user.id, memo="result invalid")
    session.commit()
    assert given == 1_560_000
    mine = client.get("/tokens/balance/me", headers=user.headers).json()
    assert (mine["available"], mine["spent"]) == (100.0, 0.0)
    # The node owner keeps what it earned; the platform's fees went first, the rest issued.
    owner = client.get("/tokens/balance/me", headers=node_owner.headers).json()
    assert owner["earned"] == 1.482
    totals = client.get("/metrics/system", headers=admin.headers).json()["ledger"]
    assert totals["fees"] == 0 and totals["invariant_ok"], totals
    shown = client.get(f"/jobs/{job['id']}", headers=user.headers).json()
    assert shown["compensated"] == 1.56 and shown["charged"] == 1.56
    history = client.get("/tokens/history/me", headers=user.headers).json()["items"]
    assert history[0]["kind"] == "compensation" and history[0]["amount"] == 1.56, history[0]

    # Once per job.
    assert compensate_job(session, job_id=job["id"], payer_id=user.id, memo="again") == 0
    session.commit()
    assert client.get("/tokens/balance/me", headers=user.headers).json()["available"] == 100.0
