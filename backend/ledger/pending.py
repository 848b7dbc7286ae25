"""Pending credit: a node owner's earnings for saved work, charged to the payer but held per
(job, node) until the work is accepted.

``credit_pending`` moves escrow → pending as checkpoints save work; ``release_pending`` pays
the owner (less the platform's fee, taken only on release); ``void_pending`` gives it all back
to the payer, with the reason in the memo the owner and the payer both see. Every movement is
a balanced, idempotent transaction: its key names the account's running total, so a retried
posting is the same posting, and a later one a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from ledger.models import AccountKind, EntryKind, LedgerAccount, LedgerEntry, TransactionKind
from ledger.postings import (
    Posting,
    TransactionRequest,
    fee_account_id,
    pending,
    post,
    post_transaction,
    wallet_id,
)
from ledger.pricing import Rates, platform_fee


def flows(session: Session, account_id: int) -> tuple[int, int]:
    """(everything that went into the account, everything that went out), both positive."""
    into, out = session.execute(
        select(
            func.coalesce(func.sum(case((LedgerEntry.amount > 0, LedgerEntry.amount))), 0),
            func.coalesce(func.sum(case((LedgerEntry.amount < 0, -LedgerEntry.amount))), 0),
        ).where(LedgerEntry.account_id == account_id)
    ).one()
    return int(into), int(out)


def credit_pending(
    session: Session,
    *,
    escrow: LedgerAccount,
    node_id: int,
    owner_id: int,
    amount: int,
    memo: str,
) -> int:
    """Move up to ``amount`` (never more than the escrow holds) into the node's pending
    credit for the escrow's job; what was moved."""
    amount = min(amount, escrow.balance)
    if amount <= 0:
        return 0
    assert escrow.job_id is not None
    account = pending(session, escrow.job_id, node_id, owner_id)
    credited, _ = flows(session, account.id)
    post_transaction(
        session,
        kind=TransactionKind.PENDING_CREDIT,
        key=f"pending:job:{escrow.job_id}:node:{node_id}:to:{credited + amount}",
        postings=[
            Posting(escrow.id, -amount, EntryKind.CHARGE, node_id),
            Posting(account.id, amount, EntryKind.PENDING, node_id),
        ],
        job_id=escrow.job_id,
        node_id=node_id,
        memo=memo,
    )
    session.refresh(escrow, ["balance"])
    return amount


@dataclass(frozen=True)
class KnownPending:
    """A pending account as its caller knows it within the transaction (it has just moved
    money into it, and nothing out ever), so releasing it needs no reads."""

    id: int
    job_id: int
    node_id: int
    user_id: int
    balance: int


def _balance_and_paid_out(
    session: Session, account: LedgerAccount | KnownPending
) -> tuple[int, int]:
    """What the account holds now, and what has gone out of it (its postings' keys name it)."""
    if isinstance(account, KnownPending):
        return account.balance, 0  # nothing has ever gone out of it
    session.refresh(account, ["balance"])
    if account.balance <= 0:
        return account.balance, 0
    return account.balance, flows(session, account.id)[1]


def release_pending(
    session: Session, account: LedgerAccount | KnownPending, rates: Rates, *, memo: str
) -> tuple[int, int]:
    """The account's whole balance to its owner, less the platform's fee: (credit, fee)."""
    request, credit, fee = release_request(session, account, rates, memo=memo)
    if request is not None:
        post(session, request)
    return credit, fee


def release_request(
    session: Session, account: LedgerAccount | KnownPending, rates: Rates, *, memo: str
) -> tuple[TransactionRequest | None, int, int]:
    """What ``release_pending`` posts (None where the account holds nothing), with the
    owner's credit and the platform's fee."""
    amount, out = _balance_and_paid_out(session, account)
    if amount <= 0:
        return None, 0, 0
    assert account.user_id is not None and account.job_id is not None
    fee = platform_fee(amount, rates)
    postings = [Posting(account.id, -amount, EntryKind.RELEASE, account.node_id)]
    if amount - fee:
        owner = wallet_id(session, account.user_id)
        postings.append(Posting(owner, amount - fee, EntryKind.NODE_CREDIT, account.node_id))
    if fee:
        fees = fee_account_id(session, account.node_id)
        postings.append(Posting(fees, fee, EntryKind.PLATFORM_FEE, account.node_id))
    request = TransactionRequest(
        kind=TransactionKind.RELEASE,
        key=f"release:job:{account.job_id}:node:{account.node_id}:after:{out}",
        postings=postings,
        job_id=account.job_id,
        node_id=account.node_id,
        memo=memo,
    )
    return request, amount - fee, fee


def void_pending(
    session: Session, account: LedgerAccount | KnownPending, *, payer_id: int, memo: str
) -> int:
    """The account's whole balance back to the payer; what was voided."""
    request, amount = void_request(session, account, payer_id=payer_id, memo=memo)
    if request is not None:
        post(session, request)
    return amount


def void_request(
    session: Session, account: LedgerAccount | KnownPending, *, payer_id: int, memo: str
) -> tuple[TransactionRequest | None, int]:
    """What ``void_pending`` posts (None where the account holds nothing), and its amount."""
    amount, out = _balance_and_paid_out(session, account)
    if amount <= 0:
        return None, 0
    request = TransactionRequest(
        kind=TransactionKind.VOID,
        key=f"void:job:{account.job_id}:node:{account.node_id}:after:{out}",
        postings=[
            Posting(account.id, -amount, EntryKind.VOID, account.node_id),
            Posting(wallet_id(session, payer_id), amount, EntryKind.VOID, account.node_id),
        ],
        job_id=account.job_id,
        node_id=account.node_id,
        memo=memo,
    )
    return request, amount


def open_pending(
    session: Session, *, job_id: int | None = None, node_id: int | None = None
) -> list[LedgerAccount]:
    """Pending accounts that still hold credit, of a job or of a node, locked for the move."""
    query = select(LedgerAccount).where(
        LedgerAccount.kind == AccountKind.PENDING.value, LedgerAccount.balance > 0
    )
    if job_id is not None:
        query = query.where(LedgerAccount.job_id == job_id)
    if node_id is not None:
        query = query.where(LedgerAccount.node_id == node_id)
    return list(
        session.scalars(
            query.order_by(LedgerAccount.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def pending_by_user(session: Session, user_id: int) -> int:
    """A node owner's pending earnings, gross: what their nodes earned but is not yet theirs
    (the platform's fee comes off on release)."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerAccount.balance), 0)).where(
            LedgerAccount.user_id == user_id,
            # The terms of the partial index ix_ledger_accounts_open_pending, as written there.
            text("kind = 'pending' AND balance > 0"),
        )
    )
    return int(total or 0)
