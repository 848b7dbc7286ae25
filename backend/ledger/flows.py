"""The money flows: grants, holds at submit, and balances."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.errors import InsufficientFundsError, InvalidInputError
from ledger.hold import post_hold
from ledger.models import (
    AccountKind,
    EntryKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)
from ledger.pending import pending_by_user
from ledger.postings import (
    Posting,
    escrow,
    post_transaction,
    system_account,
    wallet,
)
from ledger.pricing import tokens


def grant_tokens(
    session: Session,
    *,
    user_id: int,
    amount: int,
    kind: TransactionKind,
    key: str,
    memo: str = "",
) -> LedgerTransaction:
    """Issue new tokens into a wallet: the only way tokens come into being.

    Idempotent per `key`; a key reused for another grant (another user, amount or memo)
    is refused (IdempotencyKeyReusedError) and issues nothing."""
    if kind not in (TransactionKind.SIGNUP_GRANT, TransactionKind.ADMIN_GRANT):
        raise InvalidInputError("grants are signup or admin grants only")
    if amount <= 0:
        raise InvalidInputError("a grant must be a positive amount")
    issuance = system_account(session, AccountKind.ISSUANCE)
    target = wallet(session, user_id)
    transaction, _ = post_transaction(
        session,
        kind=kind,
        key=key,
        postings=[
            Posting(issuance.id, -amount, EntryKind.ISSUE),
            Posting(target.id, amount, EntryKind.GRANT),
        ],
        memo=memo,
        replay_must_match=True,
    )
    return transaction


def place_hold(session: Session, *, user_id: int, job_id: int, amount: int) -> None:
    """Move a job's maximum cost from the wallet into the job's escrow (402 if short)."""
    if amount == 0:
        escrow(session, job_id, user_id)  # settlement finds it there, empty
        return
    try:
        post_hold(session, user_id=user_id, job_id=job_id, amount=amount)
    except InsufficientFundsError as exc:
        source = wallet(session, user_id)
        session.refresh(source)
        available = source.balance
        raise InsufficientFundsError(
            f"this job needs a hold of {tokens(amount)} tokens but {tokens(available)} "
            f"are available (short by {tokens(amount - available)}); lower requirements, "
            "max_runtime_s or max_tokens, or ask an admin for tokens"
        ) from exc


@dataclass(frozen=True)
class BalanceSummary:
    available: int
    held: int
    earned: int
    spent: int
    pending: int = 0  # earned by the user's nodes, not yet released to them


def balance_summary(session: Session, user_id: int) -> BalanceSummary:
    """One wallet row, the user's open escrows and open pending credit: the same cost
    whatever the history."""
    own_wallet = session.scalar(
        select(LedgerAccount).where(
            LedgerAccount.kind == AccountKind.WALLET.value, LedgerAccount.user_id == user_id
        )
    )
    held = session.scalar(
        select(func.coalesce(func.sum(LedgerAccount.balance), 0)).where(
            LedgerAccount.user_id == user_id,
            # The terms of the partial index ix_ledger_accounts_open_escrows, as written there.
            text("kind = 'escrow' AND balance > 0"),
        )
    )
    waiting = pending_by_user(session, user_id)
    if own_wallet is None:
        return BalanceSummary(available=0, held=int(held or 0), earned=0, spent=0, pending=waiting)
    return BalanceSummary(
        available=own_wallet.balance,
        held=int(held or 0),
        earned=own_wallet.earned,
        spent=own_wallet.spent,
        pending=waiting,
    )


@dataclass(frozen=True)
class HistoryLine:
    entry_id: int
    transaction_id: int
    created_at: object
    transaction_kind: str
    kind: str
    account: str
    amount: int
    job_id: int | None
    node_id: int | None
    memo: str


def history(
    session: Session, user_id: int, *, limit: int, offset: int, wallet_only: bool = False
) -> tuple[list[HistoryLine], int]:
    """Entries on the user's wallet and on their jobs' escrows, newest first; with
    ``wallet_only``, the wallet's own: one row per movement in or out of it."""
    base = (
        select(LedgerEntry, LedgerTransaction, LedgerAccount)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerEntry.user_id == user_id)
    )
    if wallet_only:
        base = base.where(LedgerAccount.kind == AccountKind.WALLET.value)
        total = session.scalar(select(func.count()).select_from(base.subquery()))
    else:
        total = session.scalar(
            select(LedgerAccount.history_entries).where(
                LedgerAccount.kind == AccountKind.WALLET.value, LedgerAccount.user_id == user_id
            )
        )
    total = total or 0
    rows = session.execute(base.order_by(LedgerEntry.id.desc()).limit(limit).offset(offset))
    lines = [
        HistoryLine(
            entry_id=entry.id,
            transaction_id=transaction.id,
            created_at=transaction.created_at,
            transaction_kind=transaction.kind,
            kind=entry.kind,
            account=account.kind,
            amount=entry.amount,
            job_id=transaction.job_id if transaction.job_id is not None else account.job_id,
            node_id=entry.node_id,
            memo=transaction.memo,
        )
        for entry, transaction, account in rows
    ]
    return lines, total
