"""The Jepsen-style bank test: many concurrent submits, cancels and settlements against a user
whose balance covers only some of them. No overdraft, totals conserved, every 402 stored
nothing. On SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from compute.billing.service import rates_from
from compute.jobs.service import cancel_job, submit_job
from compute.jobs.spec import JobSpec
from compute.jobs.state import InvalidTransitionError, JobStatus
from compute.models import Job
from core.db import make_session_factory, session_scope
from core.errors import InsufficientFundsError
from ledger.flows import balance_summary
from ledger.invariants import ledger_report
from ledger.models import LedgerTransaction
from tests.conftest import Account, register_node
from tests.ledger_helpers import run_to_end, usage

# 1 core for an hour = 1 token; the user starts with 100 tokens.
JOB = JobSpec.model_validate(
    {
        "model_config": {"type": "classifier", "model_name": "mlp"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits"},
        "requirements": {"gpu": 0, "cpu_cores": 7, "memory": 10},
        "max_runtime_s": 3600,
    }
)  # hold: 7 + 1 = 8 tokens


def test_concurrent_submits_cancels_and_settlements_conserve_tokens(
    client: TestClient,
    settings,
    user: Account,
    node_owner: Account,
) -> None:
    factory = make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]
    rates = rates_from(settings)
    node_id = register_node(client, node_owner.headers)["id"]
    outcomes: dict[str, int] = {"created": 0, "refused": 0}
    created_ids: list[int] = []
    lock = threading.Lock()

    def submit_one(_: int) -> None:
        with factory() as session:
            owner = session.get(type(user.user), user.id)
            try:
                job, _ = submit_job(
                    session,
                    owner,
                    JOB,
                    idempotency_key=None,
                    default_max_runtime_s=3600,
                    rates=rates,
                )
                session.commit()
                with lock:
                    outcomes["created"] += 1
                    created_ids.append(job.id)
            except InsufficientFundsError:
                session.rollback()
                with lock:
                    outcomes["refused"] += 1

    def finish_one(job_id: int) -> None:
        with factory() as session:
            try:
                if random.random() < 0.5:
                    owner = session.get(type(user.user), user.id)
                    cancel_job(session, owner, job_id, rates=rates)
                    session.commit()
                else:
                    run_to_end(
                        session, settings, job_id, [usage(node_id, 0, random.uniform(0, 50_000), 0)]
                    )
            except InvalidTransitionError:
                session.rollback()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(submit_one, range(24)))  # 24 x 8 = 192 tokens wanted, 100 available
        assert outcomes["created"] == 12 and outcomes["refused"] == 12
        # Every job is finished twice over, concurrently: settlement must happen once.
        list(pool.map(finish_one, created_ids * 2))
        # With the tokens back, a second wave of submits races the first wave's refunds.
        list(pool.map(submit_one, range(8)))

    with session_scope(factory) as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
        assert jobs == outcomes["created"]  # every 402 stored nothing
        holds = session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "hold")
        )
        settlements = session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "settlement")
        )
        assert holds == jobs and settlements == 12
        terminal = [s.value for s in JobStatus if s.is_terminal()]
        finished = set(session.scalars(select(Job.id).where(Job.status.in_(terminal))))
        report = ledger_report(session, terminal_job_ids=finished)
        assert report.invariant_ok, report.problems
        assert report.issued == report.in_wallets + report.in_escrow + report.pending + report.fees
        summary = balance_summary(session, user.id)
        assert summary.available >= 0
        open_jobs = outcomes["created"] - 12
        assert summary.held == open_jobs * 8_000_000


def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: TestClient, user: Account
) -> None:
    body = {
        "model_config": {"type": "classifier", "model_name": "mlp"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits"},
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    }
    headers = {**user.headers, "Idempotency-Key": "same-key"}

    def post(_: int) -> tuple[int, int]:
        response = client.post("/jobs/submit", headers=headers, json=body)
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(post, range(6)))
    assert {job_id for _, job_id in results} == {results[0][1]}
    assert sorted(status for status, _ in results) == [200] * 5 + [201]
    balance = client.get("/tokens/balance/me", headers=user.headers).json()
    assert balance["held"] == 1.1  # one hold: 1 core-hour + 1 GB-hour
