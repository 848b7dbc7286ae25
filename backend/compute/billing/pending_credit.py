"""Node owners' earnings as work is saved: each checkpoint moves the price of the work it
saved from the job's escrow into the node's pending credit, which settlement releases to the
owner or, for a node whose work is refused (banned), voids back to the payer.

A valid verdict on the node's replayed work releases it before then, an invalid one voids it
(``verified_credit``); what no verdict covered is released when the job settles, unless the
node has been banned or its work in the job failed validation. Banning a node voids all of
its pending credit at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.billing.usage import JobUsage
from compute.billing.verified_credit import invalid_in_job
from compute.models import Job, Node
from ledger.models import AccountKind, LedgerAccount
from ledger.pending import credit_pending, open_pending, void_pending
from ledger.postings import escrow
from ledger.pricing import Rates, price_usage
from ledger.settlement import charged_by_node


def credit_saved_work(session: Session, job: Job, rates: Rates, *, step: int | None) -> int:
    """Move into each node's pending credit the price of its saved work not yet there
    (never more than the escrow holds; the job owner's own nodes earn nothing). What moved."""
    saved = JobUsage.from_column(job.usage).by_node()
    owners = dict(
        session.execute(select(Node.id, Node.owner_id).where(Node.id.in_(list(saved)))).all()
    )
    job_escrow = escrow(session, job.id, job.owner_id)
    already = charged_by_node(session, job_escrow.id)
    where = f"checkpoint at step {step}" if step is not None else "saved work"
    moved = 0
    for node_id, seconds in sorted(saved.items()):
        owner_id = owners.get(node_id)
        if owner_id is None or owner_id == job.owner_id:
            continue
        owed = price_usage(seconds, rates).total - already.get(node_id, 0)
        if owed > 0:
            moved += credit_pending(
                session,
                escrow=job_escrow,
                node_id=node_id,
                owner_id=owner_id,
                amount=owed,
                memo=f"job {job.id}: node {node_id}'s work, {where}",
            )
    return moved


def refused_nodes(session: Session, node_ids: Iterable[int], job_id: int) -> frozenset[int]:
    """Of the job's nodes, those whose work in it is not paid for: banned ones, and those
    whose work in the job failed validation."""
    ids = list(node_ids)
    if not ids:
        return frozenset()
    banned = session.scalars(select(Node.id).where(Node.id.in_(ids), Node.banned_at.is_not(None)))
    return frozenset(banned) | (invalid_in_job(session, job_id) & set(ids))


def void_node_credit(session: Session, node_id: int, reason: str) -> int:
    """Give every job's payer back the node's pending credit for that job; what was voided."""
    voided = 0
    for account in open_pending(session, node_id=node_id):
        payer = session.scalar(
            select(LedgerAccount.user_id).where(
                LedgerAccount.kind == AccountKind.ESCROW.value,
                LedgerAccount.job_id == account.job_id,
            )
        )
        if payer is None:
            continue
        voided += void_pending(
            session,
            account,
            payer_id=payer,
            memo=f"job {account.job_id}: node {node_id}'s pending credit voided: {reason}",
        )
    return voided
