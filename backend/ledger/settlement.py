"""Settle a job exactly once: charge metered usage (capped by the hold) into each node's
pending credit (what checkpoints have not put there already), refund the rest, then release
each node's pending credit to its owner less the platform fee, or void it back to the payer
where the node's work is refused."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from ledger.job_ledger import job_ledgers
from ledger.models import (
    AccountKind,
    EntryKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)
from ledger.pending import KnownPending, open_pending, release_request, void_request
from ledger.posted_together import post_all_new
from ledger.postings import (
    Posting,
    TransactionRequest,
    escrow,
    find_transaction,
    look_up_accounts,
    pending,
    post,
    wallet_id,
)
from ledger.pricing import Rates, ResourceSeconds, price_usage


@dataclass(frozen=True)
class NodeUsage:
    """Completed work on one node, with the node's owner (who earns for it)."""

    node_id: int
    owner_id: int
    usage: ResourceSeconds


@dataclass(frozen=True)
class SettlementResult:
    """Micro-tokens: ``held`` = ``charged`` + ``voided`` + ``refunded``."""

    job_id: int
    transaction_id: int
    held: int
    charged: int  # what the payer paid in the end (voided credit not included)
    refunded: int
    fees: int
    credits: dict[int, int] = field(default_factory=dict)  # node id → owner's released credit
    voided: int = 0  # charged, then given back because a node's work was refused
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


def charged_by_node(session: Session, escrow_id: int) -> dict[int, int]:
    """What has gone out of the escrow into each node's pending credit so far."""
    rows = session.execute(
        select(LedgerEntry.node_id, -func.sum(LedgerEntry.amount))
        .where(LedgerEntry.account_id == escrow_id, LedgerEntry.kind == EntryKind.CHARGE.value)
        .group_by(LedgerEntry.node_id)
    ).all()
    return {int(node): int(amount) for node, amount in rows if node is not None}


def top_ups(targets: dict[int, int], already: dict[int, int], available: int) -> dict[int, int]:
    """What each node is still owed of its target, scaled down to what the escrow holds."""
    owed = {node: target - already.get(node, 0) for node, target in targets.items()}
    owed = {node: amount for node, amount in sorted(owed.items()) if amount > 0}
    total = sum(owed.values())
    if total > available:
        nodes = list(owed)
        owed = {node: owed[node] * available // total for node in nodes}
        owed[nodes[0]] += available - sum(owed.values())
    return {node: amount for node, amount in owed.items() if amount > 0}


# Lock the escrow row (PostgreSQL) so a concurrent settlement waits, then loses on the key;
# whether this job was settled before, and whether checkpoints charged it, come with it.
# Built once: building it per settlement cost more CPU than running it.
LOCK_ESCROW = (
    select(
        LedgerAccount,
        select(LedgerTransaction.id)
        .where(LedgerTransaction.idempotency_key == bindparam("key"))
        .scalar_subquery(),
        select(LedgerEntry.id)
        .where(
            LedgerEntry.account_id == LedgerAccount.id,
            LedgerEntry.kind == EntryKind.CHARGE.value,
        )
        .exists(),
    )
    .where(
        LedgerAccount.kind == AccountKind.ESCROW.value, LedgerAccount.job_id == bindparam("job_id")
    )
    .with_for_update(of=LedgerAccount)
    .execution_options(populate_existing=True)
)


def settle_job(
    session: Session,
    *,
    job_id: int,
    job_owner_id: int,
    usage: Sequence[NodeUsage],
    rates: Rates,
    refused_nodes: Collection[int] = (),
    held_nodes: Collection[int] = (),
    memo: str = "",
) -> SettlementResult:
    """Idempotent: a second call for the same job changes nothing and returns the first
    result. ``refused_nodes``: nodes whose pending credit is voided instead of released;
    ``held_nodes``: nodes whose pending credit stays pending (an audit of their work is
    still to come, and releases or voids it)."""
    key = settlement_key(job_id)
    found = session.execute(LOCK_ESCROW, {"key": key, "job_id": job_id}).first()
    existing_id = found[1] if found is not None else _transaction_id(session, key)
    if existing_id is not None:
        return _result_of(session, existing_id, job_id, first_time=False)
    job_escrow = found[0] if found is not None else escrow(session, job_id, job_owner_id)
    # What checkpoints charged before, by node (read only where there was any).
    already = charged_by_node(session, job_escrow.id) if found is not None and found[2] else {}
    held = job_escrow.balance + sum(already.values())
    owners = {item.node_id: item.owner_id for item in usage}
    targets = node_charges(usage, job_owner_id=job_owner_id, held=held, rates=rates)
    owed = top_ups(targets, already, job_escrow.balance)
    # The wallets and fee accounts this settlement posts to, in one statement.
    look_up_accounts(session, [job_owner_id, *(owners[node] for node in owed)], owed)

    postings: list[Posting] = []
    charged_now: list[KnownPending] = []
    for node_id, amount in owed.items():
        account = pending(session, job_id, node_id, owners[node_id])
        charged_now.append(KnownPending(account.id, job_id, node_id, owners[node_id], amount))
        postings.append(Posting(job_escrow.id, -amount, EntryKind.CHARGE, node_id))
        postings.append(Posting(account.id, amount, EntryKind.PENDING, node_id))
    refund = job_escrow.balance - sum(owed.values())
    if refund:
        postings.append(Posting(job_escrow.id, -refund, EntryKind.REFUND))
        postings.append(Posting(wallet_id(session, job_owner_id), refund, EntryKind.REFUND))

    settlement = TransactionRequest(
        kind=TransactionKind.SETTLEMENT,
        key=key,
        postings=postings,
        job_id=job_id,
        memo=memo or f"settlement of job {job_id}",
    )
    if not already:
        # Nothing was charged before, so the only pending credit is this posting's (a
        # pending account is only ever filled by charges): what happens to it is known now,
        # and the settlement posts together with it, its answer built from what it posted.
        moves = _pending_moves(session, charged_now, job_owner_id, rates, refused_nodes, held_nodes)
        posted = post_all_new(session, [settlement, *(request for request, _ in moves)])
        if posted is not None:
            voided = sum(move.voided for _, move in moves)
            return SettlementResult(
                job_id=job_id,
                transaction_id=posted[0],
                held=held,
                charged=sum(owed.values()) - voided,
                refunded=refund,
                fees=sum(move.fee for _, move in moves),
                credits={move.node_id: move.credit for _, move in moves if move.credit},
                voided=voided,
            )
    # Credit charged before (by checkpoints), or a concurrent settlement got there first:
    # one posting at a time, the pending credit read back.
    transaction, created = post(session, settlement)
    if created:
        accounts = open_pending(session, job_id=job_id)
        for request, _ in _pending_moves(
            session, accounts, job_owner_id, rates, refused_nodes, held_nodes
        ):
            post(session, request)
    return _result_of(session, transaction.id, job_id, first_time=created)


@dataclass(frozen=True)
class PendingMove:
    """What a settlement does with one node's pending credit."""

    node_id: int
    credit: int = 0  # released to the owner
    fee: int = 0  # the platform's, on release
    voided: int = 0  # back to the payer


def _pending_moves(
    session: Session,
    accounts: Sequence[LedgerAccount | KnownPending],
    payer_id: int,
    rates: Rates,
    refused_nodes: Collection[int],
    held_nodes: Collection[int],
) -> list[tuple[TransactionRequest, PendingMove]]:
    """Each account's credit voided back to the payer where its node's work was refused,
    left pending where an audit of it is to come, released to its owner otherwise; in
    node order."""
    moves: list[tuple[TransactionRequest, PendingMove]] = []
    for account in sorted(accounts, key=lambda found: (found.node_id or 0, found.id)):
        node_id, job_id = account.node_id, account.job_id
        if node_id in refused_nodes:
            memo = f"job {job_id}: node {node_id}'s work was refused"
            request, amount = void_request(session, account, payer_id=payer_id, memo=memo)
            move = PendingMove(node_id, voided=amount)
        elif node_id not in held_nodes:
            memo = f"job {job_id}: node {node_id}'s work"
            request, credit, fee = release_request(session, account, rates, memo=memo)
            move = PendingMove(node_id, credit=credit, fee=fee)
        else:
            continue
        if request is not None:
            moves.append((request, move))
    return moves


def _transaction_id(session: Session, key: str) -> int | None:
    transaction = find_transaction(session, key)
    return transaction.id if transaction is not None else None


def _result_of(
    session: Session, transaction_id: int, job_id: int, *, first_time: bool
) -> SettlementResult:
    money = job_ledgers(session, [job_id])[job_id]
    return SettlementResult(
        job_id=job_id,
        transaction_id=transaction_id,
        held=money.charged + money.voided + money.refunded,
        charged=money.charged,
        refunded=money.refunded,
        fees=money.fees,
        credits=dict(sorted(money.earnings.items())),
        voided=money.voided,
        first_time=first_time,
    )
