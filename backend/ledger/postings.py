"""Posting balanced, idempotent transactions.

Correct under concurrency on both databases: a debit is one conditional
``UPDATE … SET balance = balance - :x WHERE balance >= :x`` (atomic on PostgreSQL, which locks
the row; serialised on SQLite by BEGIN IMMEDIATE), balances are updated in account-id order so
concurrent postings lock rows in one fixed order, and the unique idempotency key makes a
retried or concurrent duplicate return the first transaction instead of posting twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from core.errors import IdempotencyKeyReusedError, InsufficientFundsError, InvalidInputError
from ledger.models import (
    AccountKind,
    EntryKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)

# Far beyond any real amount, far below 2**63: sums of many entries cannot overflow.
MAX_AMOUNT = 10**18 // 1000


class UnbalancedTransactionError(InvalidInputError):
    code = "unbalanced_transaction"


@dataclass(frozen=True)
class Posting:
    account_id: int
    amount: int  # signed micro-tokens
    kind: EntryKind
    node_id: int | None = None


def _get_or_create(session: Session, lookup: dict[str, object], kind: AccountKind) -> LedgerAccount:
    query = select(LedgerAccount).where(LedgerAccount.kind == kind.value)
    for column, value in lookup.items():
        query = query.where(getattr(LedgerAccount, column) == value)
    account = session.scalar(query)
    if account is not None:
        return account
    try:
        with session.begin_nested():
            account = LedgerAccount(kind=kind.value, balance=0, **lookup)
            session.add(account)
    except IntegrityError:  # created concurrently: use that one
        account = session.scalar(query)
        assert account is not None
    return account


def system_account(session: Session, kind: AccountKind) -> LedgerAccount:
    assert kind in (AccountKind.ISSUANCE, AccountKind.PLATFORM_FEE)
    return _get_or_create(session, {}, kind)


def wallet(session: Session, user_id: int) -> LedgerAccount:
    return _get_or_create(session, {"user_id": user_id}, AccountKind.WALLET)


def escrow(session: Session, job_id: int, user_id: int) -> LedgerAccount:
    return _get_or_create(session, {"job_id": job_id, "user_id": user_id}, AccountKind.ESCROW)


def pending(session: Session, job_id: int, node_id: int, owner_id: int) -> LedgerAccount:
    wallet(session, owner_id)  # first: the wallet keeps the count of the owner's entries
    return _get_or_create(
        session, {"job_id": job_id, "node_id": node_id, "user_id": owner_id}, AccountKind.PENDING
    )


def find_transaction(session: Session, key: str) -> LedgerTransaction | None:
    return session.scalar(select(LedgerTransaction).where(LedgerTransaction.idempotency_key == key))


def _same_request(
    session: Session,
    transaction: LedgerTransaction,
    *,
    kind: TransactionKind,
    postings: list[Posting],
    job_id: int | None,
    node_id: int | None,
    memo: str,
) -> bool:
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.transaction_id == transaction.id)
    ).all()
    posted = sorted((e.account_id, e.kind, e.amount, e.node_id or 0) for e in entries)
    asked = sorted((p.account_id, p.kind.value, p.amount, p.node_id or 0) for p in postings)
    return (transaction.kind, transaction.job_id, transaction.node_id, transaction.memo) == (
        kind.value,
        job_id,
        node_id,
        memo,
    ) and posted == asked


@dataclass
class WalletCounters:
    """What a transaction adds to a wallet's counters (see LedgerAccount)."""

    earned: int = 0
    spent: int = 0
    entries: int = 0


# Entries into a wallet that give back what its user was charged: not spent.
GIVEN_BACK = (EntryKind.VOID, EntryKind.COMPENSATION)


def _apply(
    session: Session, account_id: int, delta: int, counters: WalletCounters | None = None
) -> None:
    statement = update(LedgerAccount).where(LedgerAccount.id == account_id)
    if delta < 0:
        statement = statement.where(
            or_(LedgerAccount.kind == AccountKind.ISSUANCE.value, LedgerAccount.balance >= -delta)
        )
    changes: dict[str, object] = {"balance": LedgerAccount.balance + delta}
    if counters is not None:
        changes.update(
            earned=LedgerAccount.earned + counters.earned,
            spent=LedgerAccount.spent + counters.spent,
            history_entries=LedgerAccount.history_entries + counters.entries,
        )
    result = session.execute(statement.values(changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise InsufficientFundsError(f"account {account_id} cannot cover {-delta} micro-tokens")


def _wallet_counters(
    session: Session, postings: list[Posting], owners: dict[int, tuple[str, int | None]]
) -> dict[int, WalletCounters]:
    """What to add per wallet id: node credits into a wallet, charges out of an escrow
    (counted on its user's wallet) less voids back into the wallet, and the entries on the
    user's accounts."""
    by_user: dict[int, WalletCounters] = defaultdict(WalletCounters)
    for posting in postings:
        kind, user_id = owners[posting.account_id]
        if user_id is None:
            continue
        counters = by_user[user_id]
        counters.entries += 1
        if posting.kind is EntryKind.NODE_CREDIT and kind == AccountKind.WALLET.value:
            counters.earned += posting.amount
        elif posting.kind is EntryKind.CHARGE and kind == AccountKind.ESCROW.value:
            counters.spent -= posting.amount
        elif posting.kind in GIVEN_BACK and kind == AccountKind.WALLET.value:
            counters.spent -= posting.amount  # charged, then given back: not spent
    if not by_user:
        return {}
    wallets = session.execute(
        select(LedgerAccount.user_id, LedgerAccount.id).where(
            LedgerAccount.kind == AccountKind.WALLET.value, LedgerAccount.user_id.in_(by_user)
        )
    ).all()
    return {wallet_id: by_user[user_id] for user_id, wallet_id in wallets}


def post_transaction(
    session: Session,
    *,
    kind: TransactionKind,
    key: str,
    postings: list[Posting],
    job_id: int | None = None,
    node_id: int | None = None,
    memo: str = "",
    replay_must_match: bool = False,
) -> tuple[LedgerTransaction, bool]:
    """Post a balanced transaction once per key; returns (transaction, created).

    A key that was already posted returns its first transaction. With `replay_must_match`
    (keys that come from a client) the replay must also ask for the same postings, kind,
    references and memo, or IdempotencyKeyReusedError is raised and nothing is posted;
    internal keys (a hold, a settlement) are derived from the job, and a late concurrent
    duplicate computed from a changed balance must still just get the first result.
    """

    def first_result(existing: LedgerTransaction) -> tuple[LedgerTransaction, bool]:
        if replay_must_match and not _same_request(
            session,
            existing,
            kind=kind,
            postings=postings,
            job_id=job_id,
            node_id=node_id,
            memo=memo,
        ):
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new request"
            )
        return existing, False

    existing = find_transaction(session, key)
    if existing is not None:
        return first_result(existing)
    if sum(p.amount for p in postings) != 0:
        raise UnbalancedTransactionError("a transaction's entries must sum to zero")
    if any(p.amount == 0 or abs(p.amount) > MAX_AMOUNT for p in postings):
        raise UnbalancedTransactionError("entry amounts must be non-zero and bounded")

    deltas: dict[int, int] = defaultdict(int)
    for posting in postings:
        deltas[posting.account_id] += posting.amount
    owners: dict[int, tuple[str, int | None]] = {
        account_id: (kind, user_id)
        for account_id, kind, user_id in session.execute(
            select(LedgerAccount.id, LedgerAccount.kind, LedgerAccount.user_id).where(
                LedgerAccount.id.in_(deltas)
            )
        )
    }
    counters = _wallet_counters(session, postings, owners)
    try:
        with session.begin_nested():
            transaction = LedgerTransaction(
                kind=kind.value, idempotency_key=key, job_id=job_id, node_id=node_id, memo=memo
            )
            session.add(transaction)
            session.flush()  # a duplicate key fails here, before any balance moves
            for account_id in sorted(set(deltas) | set(counters)):  # one lock order
                _apply(session, account_id, deltas.get(account_id, 0), counters.get(account_id))
            session.add_all(
                LedgerEntry(
                    transaction_id=transaction.id,
                    account_id=p.account_id,
                    kind=p.kind.value,
                    amount=p.amount,
                    node_id=p.node_id,
                    user_id=owners[p.account_id][1],
                )
                for p in postings
            )
            session.flush()
    except IntegrityError:
        existing = find_transaction(session, key)
        if existing is None:
            raise
        return first_result(existing)
    for account_id in set(deltas) | set(counters):  # changed under the ORM's feet: reload
        account = session.identity_map.get(identity_key(LedgerAccount, account_id))
        if account is not None:
            session.expire(account, ["balance", "earned", "spent", "history_entries"])
    return transaction, True
