"""Settle a job exactly once: charge metered usage (capped by the hold), credit node owners
for their nodes' completed work less the platform fee, refund the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.models import (
    AccountKind,
    EntryKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)
from ledger.postings import (
    Posting,
    escrow,
    find_transaction,
    post_transaction,
    system_account,
    wallet,
)
from ledger.pricing import Rates, ResourceSeconds, platform_fee, price_usage


@dataclass(frozen=True)
class NodeUsage:
    """Completed work on one node, with the node's owner (who earns for it)."""

    node_id: int
    owner_id: int
    usage: ResourceSeconds


@dataclass(frozen=True)
class SettlementResult:
    job_id: int
    transaction_id: int
    held: int
    charged: int
    refunded: int
    fees: int
    credits: dict[int, int] = field(default_factory=dict)  # node id → owner's credit
    first_time: bool = True


def settlement_key(job_id: int) -> str:
    return f"settle:job:{job_id}"


def node_charges(
    usage: Sequence[NodeUsage], *, job_owner_id: int, held: int, rates: Rates
) -> dict[int, int]:
    """Cost per node, capped so the total never exceeds the hold.

    Work on the job owner's own nodes is free: an owner neither pays nor earns for running
    their own job (so they are never paid by themselves).
    """
    costs: dict[int, int] = {}
    for item in usage:
        if item.owner_id == job_owner_id:
            continue
        costs[item.node_id] = costs.get(item.node_id, 0) + price_usage(item.usage, rates).total
    costs = with_minimum(costs, rates.min_charge_micro)
    total = sum(costs.values())
    if total > held:  # scale down proportionally to exactly the hold
        nodes = sorted(costs)
        costs = {node: costs[node] * held // total for node in nodes}
        costs[nodes[0]] += held - sum(costs.values())  # the rounding's remainder, to the first
    return {node: cost for node, cost in costs.items() if cost > 0}


def with_minimum(costs: dict[int, int], minimum: int) -> dict[int, int]:
    """Raise a run's total to ``minimum``, shared by the nodes in proportion to their cost
    (equally where nothing was priced yet); the remainder of the rounding to the first."""
    total = sum(costs.values())
    if not costs or total >= minimum:
        return costs
    nodes = sorted(costs)
    if total:
        raised = {node: costs[node] * minimum // total for node in nodes}
    else:
        raised = {node: minimum // len(nodes) for node in nodes}
    raised[nodes[0]] += minimum - sum(raised.values())
    return raised


def settle_job(
    session: Session,
    *,
    job_id: int,
    job_owner_id: int,
    usage: Sequence[NodeUsage],
    rates: Rates,
    memo: str = "",
) -> SettlementResult:
    """Idempotent: a second call for the same job changes nothing and returns the first result."""
    existing = find_transaction(session, settlement_key(job_id))
    if existing is not None:
        return _result_of(session, existing, job_id)

    # Lock the escrow row (PostgreSQL) so a concurrent settlement waits, then loses on the key.
    job_escrow = session.scalar(
        select(LedgerAccount)
        .where(LedgerAccount.kind == AccountKind.ESCROW.value, LedgerAccount.job_id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ) or escrow(session, job_id, job_owner_id)
    held = job_escrow.balance
    owners = {item.node_id: item.owner_id for item in usage}
    charges = node_charges(usage, job_owner_id=job_owner_id, held=held, rates=rates)

    postings: list[Posting] = []
    fees = 0
    credits: dict[int, int] = {}
    fee_account = system_account(session, AccountKind.PLATFORM_FEE)
    for node_id, cost in sorted(charges.items()):
        fee = platform_fee(cost, rates)
        credits[node_id] = cost - fee
        fees += fee
        postings.append(Posting(job_escrow.id, -cost, EntryKind.CHARGE, node_id))
        if cost - fee:
            owner_wallet = wallet(session, owners[node_id])
            postings.append(Posting(owner_wallet.id, cost - fee, EntryKind.NODE_CREDIT, node_id))
        if fee:
            postings.append(Posting(fee_account.id, fee, EntryKind.PLATFORM_FEE, node_id))
    charged = sum(charges.values())
    refund = held - charged
    if refund:
        postings.append(Posting(job_escrow.id, -refund, EntryKind.REFUND))
        postings.append(Posting(wallet(session, job_owner_id).id, refund, EntryKind.REFUND))

    transaction, created = post_transaction(
        session,
        kind=TransactionKind.SETTLEMENT,
        key=settlement_key(job_id),
        postings=postings,
        job_id=job_id,
        memo=memo or f"settlement of job {job_id}",
    )
    if not created:
        return _result_of(session, transaction, job_id)
    return SettlementResult(
        job_id=job_id,
        transaction_id=transaction.id,
        held=held,
        charged=charged,
        refunded=refund,
        fees=fees,
        credits=credits,
    )


def _result_of(session: Session, transaction: LedgerTransaction, job_id: int) -> SettlementResult:
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.transaction_id == transaction.id)
    ).all()
    charged = -sum(e.amount for e in entries if e.kind == EntryKind.CHARGE.value)
    refunded = sum(e.amount for e in entries if e.kind == EntryKind.REFUND.value and e.amount > 0)
    fees = sum(e.amount for e in entries if e.kind == EntryKind.PLATFORM_FEE.value)
    credits: dict[int, int] = {}
    for entry in entries:
        if entry.kind == EntryKind.NODE_CREDIT.value and entry.node_id is not None:
            credits[entry.node_id] = credits.get(entry.node_id, 0) + entry.amount
    return SettlementResult(
        job_id=job_id,
        transaction_id=transaction.id,
        held=charged + refunded,
        charged=charged,
        refunded=refunded,
        fees=fees,
        credits=credits,
        first_time=False,
    )
