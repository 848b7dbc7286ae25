"""An audit's verdict when the auditor may be the liar, when its job fails, and what an
invalid result leads to: the gateway's decisions (``compute.audits``) on a real database,
from what the nodes reported. The audit jobs' own runs are the trainer audits' test
(tests/compute/test_trainer_audits.py); here each audit job ends as a node would end it:
its status and the losses it reported.

Three owners' nodes: ``a`` trains (and is audited), ``b`` and ``c`` can audit."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.models import Role
from compute.audits.lifecycle import advance
from compute.billing.service import rates_from
from compute.models import Job, JobMetric, Node, TrainerAudit
from core.settings import Settings
from ledger.flows import balance_summary
from ledger.invariants import ledger_report, wallet_counter_problems
from ledger.pricing import ResourceSeconds
from ledger.settlement import NodeUsage, settle_job
from tests.conftest import register_node
from tests.scripted_ray import CPU_BOX

TRUE_LOSSES = {step: 2.0 - step / 100 for step in range(9, 17)}  # steps 9-16, from step 8
SPLIT_JOB = {
    "name": "digits, split",
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits"},
    "training_config": {"strategy": "split", "max_steps": 16, "checkpoint_interval": 8,
                        "loader": {"cpu_cores": 1, "memory": 1}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1},
    "max_runtime_s": 600,
}  # fmt: skip


@dataclass
class Pool:
    a: int  # the trainer's node
    b: int
    c: int
    owners: dict[int, int]  # node -> owner
    user_id: int


@pytest.fixture
def pool(client: TestClient, make_account, db: Session, user) -> Pool:
    owners = {}
    for name in ("a", "b", "c"):
        owner = make_account(f"owner_{name}", Role.NODE_OWNER)
        node = register_node(client, owner.headers, f"host-{name}", CPU_BOX)["id"]
        owners[node] = owner.user.id
    for node in db.scalars(select(Node)):
        node.approval, node.ray_alive = "approved", True
    db.commit()
    a, b, c = sorted(owners)
    return Pool(a, b, c, owners, user.user.id)


def trained_job(client: TestClient, db: Session, pool: Pool, settings: Settings, user_headers,
                claimed: dict[int, float]) -> TrainerAudit:  # fmt: skip
    """A split job that ran on ``a`` (trainer) and ``b`` (loader), reported ``claimed`` after
    its checkpoint at step 8 and settled with ``a``'s credit held for its audit."""
    response = client.post("/jobs/submit", headers=user_headers, json=SPLIT_JOB)
    assert response.status_code == 201, response.text
    job = db.get(Job, response.json()["id"])
    job.status, job.attempts = "succeeded", 1
    for step, loss in claimed.items():
        db.add(JobMetric(job_id=job.id, step=step, values={"loss": loss}))
    audit = TrainerAudit(
        job_id=job.id, node_id=pool.a, attempt=1, from_step=8, metric_cursor=0,
        snapshot="kept", latest="", latest_step=0, latest_cursor=0, drawn=1, seen_step=8,
        status="snapshot", detail="",
    )  # fmt: skip
    db.add(audit)
    db.flush()
    work = ResourceSeconds(cpu_core_seconds=100.0)
    settle_job(
        db, job_id=job.id, job_owner_id=job.owner_id,
        usage=[NodeUsage(pool.a, pool.owners[pool.a], work),
               NodeUsage(pool.b, pool.owners[pool.b], work)],
        rates=rates_from(settings), held_nodes={pool.a},
    )  # fmt: skip
    db.commit()
    return audit


def sweep(db: Session, audit: TrainerAudit, settings: Settings) -> TrainerAudit:
    advance(db, audit.id, settings.storage_path, rates_from(settings), settings.secret_key)
    db.commit()
    db.refresh(audit)
    return audit


def audit_job_ends(db: Session, audit: TrainerAudit, on: int, losses: dict[int, float] | None,
                   status: str = "succeeded", reason: str = "") -> Job:  # fmt: skip
    """The audit job queued for ``audit`` runs on node ``on`` and ends as told."""
    audit_job = db.get(Job, audit.audit_job_id)
    excluded = set(audit_job.request["audit"]["excluded"])
    assert on not in excluded, (on, excluded)
    audit_job.status, audit_job.status_reason = status, reason
    audit_job.placement = [{"node_id": on, "gpu": 0, "cpu_cores": 1.0, "memory_gb": 1.0}]
    for step, loss in (losses or {}).items():
        db.add(JobMetric(job_id=audit_job.id, step=step, values={"loss": loss}))
    db.commit()
    return audit_job


def node(db: Session, node_id: int) -> Node:
    db.expire_all()
    return db.get(Node, node_id)


def ledger_holds(db: Session) -> None:
    terminal = list(db.scalars(select(Job.id).where(Job.status == "succeeded")))
    report = ledger_report(db, terminal_job_ids=terminal)
    assert report.invariant_ok, report
    assert wallet_counter_problems(db) == []


def made_up(losses: dict[int, float]) -> dict[int, float]:
    return {step: loss * 0.5 if step >= 12 else loss for step, loss in losses.items()}


def test_an_auditor_that_lies_is_overruled_by_a_third_owners_referee(
    client, db, pool, settings, user_headers
) -> None:
    audit = sweep(db, trained_job(client, db, pool, settings, user_headers, TRUE_LOSSES), settings)
    assert audit.status == "running"
    first = audit_job_ends(db, audit, pool.b, made_up(TRUE_LOSSES))
    audit = sweep(db, audit, settings)
    # No verdict on b's word alone: a referee is asked, on neither a's owner's nor b's.
    assert (audit.status, audit.first_auditor) == ("snapshot", pool.b)
    audit = sweep(db, audit, settings)
    referee_job = db.get(Job, audit.audit_job_id)
    assert referee_job.id != first.id
    assert {pool.a, pool.b} <= set(referee_job.request["audit"]["excluded"])
    audit_job_ends(db, audit, pool.c, TRUE_LOSSES)
    audit = sweep(db, audit, settings)
    # The referee found a's training right: a is paid, b's false finding counts against it.
    assert (audit.status, audit.detail) == ("valid", "")
    assert balance_summary(db, pool.owners[pool.a]).pending == 0
    assert balance_summary(db, pool.owners[pool.a]).earned > 0
    assert node(db, pool.b).results_invalid == 1
    assert node(db, pool.a).results_invalid == 0
    assert audit.recompute_job_id is None
    ledger_holds(db)


def test_a_cheating_trainer_confirmed_by_the_referee_is_voided_and_its_job_computed_again(
    client, db, pool, settings, user_headers
) -> None:
    before = balance_summary(db, pool.user_id)
    audit = trained_job(client, db, pool, settings, user_headers, made_up(TRUE_LOSSES))
    job_id = audit.job_id
    assert balance_summary(db, pool.user_id).spent > 0
    audit = sweep(db, audit, settings)
    audit_job_ends(db, audit, pool.b, TRUE_LOSSES)
    audit = sweep(db, sweep(db, audit, settings), settings)  # the referee asked, queued
    audit_job_ends(db, audit, pool.c, TRUE_LOSSES)
    audit = sweep(db, audit, settings)
    assert audit.status == "invalid" and "its loss at step 12" in audit.detail, audit.detail
    assert node(db, pool.a).results_invalid == 1
    assert node(db, pool.b).results_invalid == 0  # the first auditor was right
    assert balance_summary(db, pool.owners[pool.a]).pending == 0
    # The user paid b's loader for a model that cannot be used: the platform gives it back,
    # and the job is queued again for them, away from a's owner's machines.
    job = client.get(f"/jobs/{job_id}", headers=user_headers).json()
    assert job["voided"] > 0 and job["compensated"] > 0
    assert job["audits"][0]["recompute_job_id"] == audit.recompute_job_id
    redo = client.get(f"/jobs/{audit.recompute_job_id}", headers=user_headers).json()
    assert redo["status"] == "queued" and redo["name"] == f"recompute of job {job_id}"
    assert redo["spec"]["recompute_of"]["job_id"] == job_id
    assert pool.a in redo["spec"]["recompute_of"]["excluded"]
    after = balance_summary(db, pool.user_id)
    # All the first job cost is back (nothing spent); what is held is the recompute's hold.
    assert after.available + after.held == before.available + before.held
    assert after.spent == 0
    assert after.held == redo["hold"] * 1_000_000
    ledger_holds(db)
    # Once only: a second sweep neither compensates nor queues again.
    sweep(db, audit, settings)
    assert db.scalars(select(Job).where(Job.name == f"recompute of job {job_id}")).all() == [
        db.get(Job, audit.recompute_job_id)
    ]


def test_a_failed_audit_job_is_tried_once_more_on_another_node(
    client, db, pool, settings, user_headers
) -> None:
    audit = sweep(db, trained_job(client, db, pool, settings, user_headers, TRUE_LOSSES), settings)
    audit_job_ends(db, audit, pool.b, None, status="failed", reason="node b was lost")
    audit = sweep(db, audit, settings)
    assert audit.status == "snapshot" and audit.passed_over == [pool.b]
    audit = sweep(db, audit, settings)
    assert pool.b in db.get(Job, audit.audit_job_id).request["audit"]["excluded"]
    audit_job_ends(db, audit, pool.c, None, status="failed", reason="node c was lost")
    audit = sweep(db, audit, settings)
    # Twice failed: released unaudited (the platform's failure is not the node's).
    assert audit.status == "unaudited" and "node c was lost" in audit.detail
    assert balance_summary(db, pool.owners[pool.a]).pending == 0
    assert node(db, pool.a).results_invalid == 0
    ledger_holds(db)


def test_with_no_third_owner_the_first_auditors_finding_stands(
    client, db, pool, settings, user_headers
) -> None:
    db.get(Node, pool.c).approval = "pending"  # only a's and b's machines can run anything
    db.commit()
    audit = trained_job(client, db, pool, settings, user_headers, made_up(TRUE_LOSSES))
    audit = sweep(db, audit, settings)
    audit_job_ends(db, audit, pool.b, TRUE_LOSSES)
    audit = sweep(db, sweep(db, audit, settings), settings)
    assert audit.status == "invalid" and "its loss at step 12" in audit.detail
    assert node(db, pool.a).results_invalid == 1
    ledger_holds(db)
