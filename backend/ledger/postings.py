"""Posting balanced, idempotent transactions.

Correct under concurrency on both databases: a debit is one conditional
``UPDATE … SET balance = balance - :x WHERE balance >= :x`` (atomic on PostgreSQL, which locks
the row; serialised on SQLite by BEGIN IMMEDIATE), balances are updated in account-id order so
concurrent postings lock rows in one fixed order, and the unique idempotency key makes a
retried or concurrent duplicate return the first transaction instead of posting twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Select, bindparam, delete, inspect, select, text
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from core.db import UTCDateTime, utcnow
from core.errors import IdempotencyKeyReusedError, InsufficientFundsError
from ledger.balance_rows import (
    GIVEN_BACK,
    Change,
    Posting,
    WalletCounters,
    apply_changes,
    check_balanced,
    expire_changed,
    insert_entries,
    insert_transaction,
)
from ledger.models import (
    FEE_SHARDS,
    AccountKind,
    EntryKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)


@dataclass(frozen=True)
class TransactionRequest:
    """A balanced transaction to post (``post_transaction``'s arguments, as one value)."""

    kind: TransactionKind
    key: str
    postings: list[Posting]
    job_id: int | None = None
    node_id: int | None = None
    memo: str = ""


INSERT_ACCOUNT = text(
    "INSERT INTO ledger_accounts (kind, user_id, job_id, node_id, shard, balance, earned, "
    "spent, history_entries, created_at) VALUES (:kind, :user_id, :job_id, :node_id, :shard, "
    ":balance, :earned, :spent, :history_entries, :created_at) ON CONFLICT DO NOTHING "
    "RETURNING id"
).bindparams(bindparam("created_at", type_=UTCDateTime()))


def _get_or_create(
    session: Session, lookup: dict[str, object], kind: AccountKind, *, new: bool = False
) -> LedgerAccount:
    """The account of ``kind`` that ``lookup`` names, created where there is none (a
    concurrent creator's kept). ``new``: most likely not there yet (a job's escrow, a node's
    pending credit in a job): inserted first, looked up only if it was there."""

    def query() -> Select:  # built only where it is asked (a new account is not)
        found = select(LedgerAccount).where(LedgerAccount.kind == kind.value)
        for column, value in lookup.items():
            found = found.where(getattr(LedgerAccount, column) == value)
        return found

    if not new:
        account = session.scalar(query())
        if account is not None:
            return account
    values = {
        **dict.fromkeys(("balance", "earned", "spent", "history_entries", "shard"), 0),
        **dict.fromkeys(("user_id", "job_id", "node_id")),
        "kind": kind.value,
        "created_at": utcnow(),
        **lookup,
    }
    created = session.execute(INSERT_ACCOUNT, values).scalar()
    if created is None:  # there already, or created concurrently: that one
        account = session.scalar(query())
        assert account is not None
        return account
    account = LedgerAccount(id=created, **values)
    make_transient_to_detached(account)  # the row exists: no read to hold it
    session.add(account)
    # Whose it is, for this transaction's postings (the session holds the object weakly).
    _cache(session, OWNERS)[created] = (kind.value, values["user_id"])
    return account


def _remembered(session: Session, key: object) -> LedgerAccount | None:
    """The account this session found for ``key`` before, while it still holds it loaded."""
    known = _cache(session, ACCOUNTS).get(key)
    account = known and session.identity_map.get(identity_key(LedgerAccount, known))
    if account is None or "id" in inspect(account).expired_attributes:
        return None
    return account


def _remember(session: Session, key: object, account: LedgerAccount) -> LedgerAccount:
    _cache(session, ACCOUNTS)[key] = account.id
    return account


def system_account(session: Session, kind: AccountKind, shard: int = 0) -> LedgerAccount:
    """The issuance account, or one of the platform's fee accounts (``fee_account``)."""
    assert kind in (AccountKind.ISSUANCE, AccountKind.PLATFORM_FEE)
    found = _remembered(session, (kind, shard))
    if found is not None:
        return found
    lookup = {"shard": shard}
    account = session.scalar(
        select(LedgerAccount).where(LedgerAccount.kind == kind.value, LedgerAccount.shard == shard)
    )
    if account is None:  # created now: not remembered (a rollback would take it back)
        return _get_or_create(session, lookup, kind, new=True)
    return _remember(session, (kind, shard), account)


def fee_account(session: Session, node_id: int | None) -> LedgerAccount:
    """The fee account a node's releases post to: one of ``FEE_SHARDS``, by node."""
    return system_account(session, AccountKind.PLATFORM_FEE, (node_id or 0) % FEE_SHARDS)


def fee_accounts(session: Session) -> list[LedgerAccount]:
    """Every fee account with a balance, locked, fullest first (what the platform pays from)."""
    return list(
        session.scalars(
            select(LedgerAccount)
            .where(LedgerAccount.kind == AccountKind.PLATFORM_FEE.value, LedgerAccount.balance > 0)
            .order_by(LedgerAccount.balance.desc(), LedgerAccount.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


# What a transaction found of the accounts it posts to, kept for the rest of it (one root
# transaction: a rollback could take back an account made in it, and then the next
# transaction starts afresh): the ids of the accounts found (wallets by ("wallet", user id),
# the system's), so a posting's counters need no query and an account asked for again while
# loaded none; {account id: (kind, user id)} of the wallets ``wallet_id`` found.
ACCOUNTS, OWNERS = "accounts", "owners"


def _cache(session: Session, name: str) -> dict:
    root = session.get_transaction()
    caches = session.info.get("ledger_caches")
    if caches is None or caches[0] is not root:
        caches = session.info["ledger_caches"] = (root, {})
    return caches[1].setdefault(name, {})


def wallet(session: Session, user_id: int) -> LedgerAccount:
    found = _remembered(session, ("wallet", user_id))
    if found is not None:
        return found
    account = session.scalar(
        select(LedgerAccount).where(
            LedgerAccount.kind == AccountKind.WALLET.value, LedgerAccount.user_id == user_id
        )
    )
    if account is None:  # created now: not remembered (a rollback would take it back)
        return _get_or_create(session, {"user_id": user_id}, AccountKind.WALLET, new=True)
    return _remember(session, ("wallet", user_id), account)


def escrow(session: Session, job_id: int, user_id: int) -> LedgerAccount:
    lookup = {"job_id": job_id, "user_id": user_id}
    return _get_or_create(session, lookup, AccountKind.ESCROW, new=True)


WALLET_ID = text("SELECT id FROM ledger_accounts WHERE kind = 'wallet' AND user_id = :user_id")


def wallet_id(session: Session, user_id: int) -> int:
    """The id of the user's wallet (created where there is none), for a posting: what
    ``wallet`` finds, for one cheap statement or none."""
    known = _cache(session, ACCOUNTS).get(("wallet", user_id))
    if known is None:
        known = session.execute(WALLET_ID, {"user_id": user_id}).scalar()
        if known is None:
            return wallet(session, user_id).id
        _cache(session, ACCOUNTS)[("wallet", user_id)] = known
    _cache(session, OWNERS)[known] = (AccountKind.WALLET.value, user_id)
    return known


KNOWN_ACCOUNTS = text(
    "SELECT id, kind, user_id, shard FROM ledger_accounts "
    "WHERE (kind = 'wallet' AND user_id IN :users) OR (kind = 'platform_fee' AND shard IN :shards)"
).bindparams(bindparam("users", expanding=True), bindparam("shards", expanding=True))


def look_up_accounts(session: Session, user_ids: Iterable[int], node_ids: Iterable[int]) -> None:
    """Find these users' wallets and the fee accounts of these nodes in one statement, for
    the rest of the transaction (``wallet_id`` and ``fee_account_id`` then need none)."""
    users = sorted(set(user_ids))
    shards = sorted({node_id % FEE_SHARDS for node_id in node_ids})
    if not users and not shards:
        return
    accounts, owners = _cache(session, ACCOUNTS), _cache(session, OWNERS)
    values = {"users": users or [-1], "shards": shards or [-1]}
    for account_id, kind, user_id, shard in session.execute(KNOWN_ACCOUNTS, values):
        if kind == AccountKind.WALLET.value:
            accounts[("wallet", user_id)] = account_id
            owners[account_id] = (kind, user_id)
        else:
            accounts[("fee_id", shard)] = account_id
            owners[account_id] = (kind, None)


def fee_account_id(session: Session, node_id: int | None) -> int:
    """The id of ``fee_account``: none or one cheap statement."""
    known = _cache(session, ACCOUNTS).get(("fee_id", (node_id or 0) % FEE_SHARDS))
    return known if known is not None else fee_account(session, node_id).id


def pending(session: Session, job_id: int, node_id: int, owner_id: int) -> LedgerAccount:
    wallet_id(session, owner_id)  # first: the wallet keeps the count of the owner's entries
    lookup = {"job_id": job_id, "node_id": node_id, "user_id": owner_id}
    return _get_or_create(session, lookup, AccountKind.PENDING, new=True)


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
    known = {user_id: _cache(session, ACCOUNTS).get(("wallet", user_id)) for user_id in by_user}
    wallets = [(user_id, wallet_id) for user_id, wallet_id in known.items() if wallet_id]
    missing = [user_id for user_id, wallet_id in known.items() if not wallet_id]
    if missing:
        wallets += session.execute(
            select(LedgerAccount.user_id, LedgerAccount.id).where(
                LedgerAccount.kind == AccountKind.WALLET.value, LedgerAccount.user_id.in_(missing)
            )
        ).all()
    return {wallet_id: by_user[user_id] for user_id, wallet_id in wallets}


def _owners(session: Session, account_ids: Iterable[int]) -> dict[int, tuple[str, int | None]]:
    """Each account's (kind, user id): from the session where it holds the account (the
    callers looked it up), else one query."""
    owners: dict[int, tuple[str, int | None]] = {}
    known = _cache(session, OWNERS)
    for account_id in account_ids:
        if account_id in known:
            owners[account_id] = known[account_id]
            continue
        account = session.identity_map.get(identity_key(LedgerAccount, account_id))
        state = account is not None and inspect(account)
        if state and not state.expired_attributes & {"kind", "user_id"}:
            owners[account_id] = (account.kind, account.user_id)
    missing = [account_id for account_id in account_ids if account_id not in owners]
    if missing:
        owners.update(
            (account_id, (kind, user_id))
            for account_id, kind, user_id in session.execute(
                select(LedgerAccount.id, LedgerAccount.kind, LedgerAccount.user_id).where(
                    LedgerAccount.id.in_(missing)
                )
            )
        )
    return owners


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

    check_balanced(postings)

    changes, owners = changes_of(session, postings)
    # The key first: a duplicate (posted before, or by a concurrent request that committed
    # first) inserts nothing and moves no balance.
    transaction = insert_transaction(session, kind, key, job_id, node_id, memo)
    if transaction is None:
        existing = find_transaction(session, key)
        assert existing is not None
        return first_result(existing)
    try:
        apply_changes(session, changes)
    except InsufficientFundsError:
        session.execute(delete(LedgerTransaction).where(LedgerTransaction.id == transaction.id))
        session.expunge(transaction)
        raise
    if postings:  # a settlement of a job that held nothing has none
        insert_entries(session, transaction.id, postings, owners)
    expire_changed(session, [account_id for account_id, _, _ in changes])
    return transaction, True


def changes_of(
    session: Session, postings: list[Posting]
) -> tuple[list[Change], dict[int, tuple[str, int | None]]]:
    """What the postings change, per account in id order (one lock order): its balance's
    delta and a wallet's counters; accounts whose changes cancel out are left alone. With
    each account's (kind, user id)."""
    deltas: dict[int, int] = defaultdict(int)
    for posting in postings:
        deltas[posting.account_id] += posting.amount
    owners = _owners(session, deltas)
    counters = _wallet_counters(session, postings, owners)
    changes = [
        (account_id, deltas.get(account_id, 0), counters.get(account_id))
        for account_id in sorted(set(deltas) | set(counters))
        if deltas.get(account_id) or account_id in counters
    ]
    return changes, owners


def post(session: Session, request: TransactionRequest) -> tuple[LedgerTransaction, bool]:
    """``post_transaction`` of a request."""
    return post_transaction(
        session,
        kind=request.kind,
        key=request.key,
        postings=request.postings,
        job_id=request.job_id,
        node_id=request.node_id,
        memo=request.memo,
    )
