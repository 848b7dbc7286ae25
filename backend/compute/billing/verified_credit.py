"""A run's verdicts on its nodes' work, turned into money and trust.

A valid verdict releases the node's pending credit for the job (the work the checkpoints saved
so far, less the platform's fee); an invalid one voids it back to the payer, and the node's
later work in the job is refused at settlement. Each verdict counts toward the node's
reliability (``compute.nodes.trust``); too many invalid ones in a row send the node back to an
admin's approval.

A verdict comes from the job's driver, which the gateway already trusts with the job's usage
and checkpoints; it may name only nodes the job was placed on, so what a false one costs stays
within that job (nothing of the node's other jobs is voided on its word).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.jobs.events import add_log, record_event
from compute.models import Job, JobEvent, Node
from compute.nodes import trust
from ledger.models import AccountKind, LedgerAccount
from ledger.pending import release_pending, void_pending
from ledger.pricing import Rates
from protocol.events import VerdictEvent

VERDICT = "verdict"


def apply_verdict(
    session: Session,
    job: Job,
    verdict: VerdictEvent,
    rates: Rates,
    placed: set[int],
    *,
    release: bool = True,
) -> None:
    """Record ``verdict`` on the job, the node's counts and its pending credit (a valid one
    releases it unless ``release`` is false: another check of it is still to come)."""
    if verdict.node_id not in placed:
        add_log(
            session,
            job,
            f"a verdict on node {verdict.node_id}, which this job is not placed on, was ignored",
            level="warning",
        )
        return
    node = session.get(Node, verdict.node_id)
    if node is None:
        return
    record_event(
        session,
        job,
        VERDICT,
        {
            "node_id": verdict.node_id,
            "step": verdict.step,
            "valid": verdict.valid,
            "checked": verdict.checked,
            "validator_node_id": verdict.validator_node_id,
            "detail": verdict.detail,
            "attempt": job.attempts,
        },
    )
    suspended = trust.record_result(node, valid=verdict.valid)
    account = pending_account(session, job.id, node.id)
    if verdict.valid:
        if release and account is not None and not refused_in_job(session, job.id, node.id):
            release_pending(
                session,
                account,
                rates,
                memo=f"job {job.id}: node {node.id}'s work, validated at step {verdict.step}",
            )
        return
    why = f"its work at step {verdict.step} failed validation ({verdict.detail})"
    add_log(
        session, job, f"node {node.id}: {why}; its credit in this job is voided", level="warning"
    )
    if account is not None:
        void_pending(
            session,
            account,
            payer_id=job.owner_id,
            memo=f"job {job.id}: node {node.id}'s pending credit voided: {why}",
        )
    if suspended and node.approval == "approved":
        node.approval = "pending"
        node.suspended_reason = (
            f"{node.invalid_streak} invalid results in a row, the last in job {job.id} "
            f"at step {verdict.step}: {verdict.detail}"
        )[:1000]


def pending_account(session: Session, job_id: int, node_id: int) -> LedgerAccount | None:
    return session.scalar(
        select(LedgerAccount)
        .where(
            LedgerAccount.kind == AccountKind.PENDING.value,
            LedgerAccount.job_id == job_id,
            LedgerAccount.node_id == node_id,
        )
        .with_for_update()
    )


def invalid_in_job(session: Session, job_id: int) -> set[int]:
    """The job's nodes with an invalid verdict: their work in it is not paid for."""
    payloads = session.scalars(
        select(JobEvent.payload).where(JobEvent.job_id == job_id, JobEvent.kind == VERDICT)
    )
    return {int(p["node_id"]) for p in payloads if not p.get("valid")}


def refused_in_job(session: Session, job_id: int, node_id: int) -> bool:
    return node_id in invalid_in_job(session, job_id)
