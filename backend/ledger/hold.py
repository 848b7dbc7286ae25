"""A job's hold, wallet → the job's new escrow: the posting every submit makes, in as few
statements as the database allows. It posts what ``post_transaction`` would (the same key,
entries, balances and wallet counters), without its generic lookups."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, text
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from core.db import UTCDateTime, utcnow
from core.errors import InsufficientFundsError
from ledger.balance_rows import (
    MAX_AMOUNT,
    UnbalancedTransactionError,
    apply_change,
    insert_entries,
    insert_transaction,
)
from ledger.models import AccountKind, EntryKind, LedgerAccount, LedgerTransaction, TransactionKind
from ledger.postings import INSERT_ACCOUNT, Posting, escrow

# Both entries are the user's: the wallet counts two more, its spending is unchanged.
DEBIT_WALLET = text(
    "UPDATE ledger_accounts SET balance = balance - :amount, "
    "history_entries = history_entries + 2 "
    "WHERE kind = 'wallet' AND user_id = :user_id AND balance >= :amount RETURNING id"
)

# PostgreSQL: the whole hold as one statement (data-modifying WITH clauses all run, once).
# Nothing after the key where the key was there; no escrow or entries where the wallet is
# short (the key is then deleted by hand); the escrow's entry only where it was new.
HOLD_IN_ONE = text(
    "WITH tx AS ("
    " INSERT INTO ledger_transactions (kind, idempotency_key, job_id, node_id, memo, created_at)"
    " VALUES ('hold', :key, :job_id, NULL, :memo, :now)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    "), debit AS ("
    " UPDATE ledger_accounts SET balance = balance - :amount,"
    " history_entries = history_entries + 2"
    " WHERE kind = 'wallet' AND user_id = :user_id AND balance >= :amount"
    " AND EXISTS (SELECT 1 FROM tx) RETURNING id"
    "), held AS ("
    " INSERT INTO ledger_accounts (kind, user_id, job_id, node_id, shard, balance, earned,"
    " spent, history_entries, created_at)"
    " SELECT 'escrow', :user_id, :job_id, NULL, 0, :amount, 0, 0, 0, :now FROM debit"
    " ON CONFLICT DO NOTHING RETURNING id"
    "), entries AS ("
    " INSERT INTO ledger_entries (transaction_id, account_id, kind, amount, node_id, user_id)"
    " SELECT tx.id, debit.id, 'hold', -:amount, CAST(NULL AS INTEGER), :user_id FROM tx, debit"
    " UNION ALL"
    " SELECT tx.id, held.id, 'hold', :amount, CAST(NULL AS INTEGER), :user_id FROM tx, held"
    ") SELECT (SELECT id FROM tx), (SELECT id FROM debit), (SELECT id FROM held)"
).bindparams(bindparam("now", type_=UTCDateTime()))


def post_hold(session: Session, *, user_id: int, job_id: int, amount: int) -> bool:
    """Hold ``amount`` for the job, once per job. False, with nothing posted, where it was
    posted before; InsufficientFundsError, with nothing posted, where the wallet is short."""
    if not 0 < amount <= MAX_AMOUNT:
        raise UnbalancedTransactionError("entry amounts must be non-zero and bounded")
    key, memo, now = f"hold:job:{job_id}", f"hold for job {job_id}", utcnow()
    if session.get_bind().dialect.name == "postgresql":
        values = {"key": key, "job_id": job_id, "memo": memo, "now": now}
        values |= {"amount": amount, "user_id": user_id}
        transaction_id, source, target = session.execute(HOLD_IN_ONE, values).one()
        if transaction_id is None:
            return False
        if source is None:
            _short(session, transaction_id, user_id, amount)
        if target is None:  # the job's escrow was made before: add to it
            _into_existing_escrow(session, transaction_id, job_id, user_id, amount)
        else:
            _known_escrow(session, target, _escrow_values(user_id, job_id, amount, now))
    else:  # four statements: the key, the wallet's debit, the escrow holding it, the entries
        transaction = insert_transaction(session, TransactionKind.HOLD, key, job_id, None, memo)
        if transaction is None:
            return False
        transaction_id = transaction.id
        source = session.execute(DEBIT_WALLET, {"amount": amount, "user_id": user_id}).scalar()
        if source is None:
            _short(session, transaction_id, user_id, amount)
        values = _escrow_values(user_id, job_id, amount, now)
        target = session.execute(INSERT_ACCOUNT, values).scalar()
        if target is None:
            target = _into_existing_escrow(session, None, job_id, user_id, amount)
        else:
            _known_escrow(session, target, values)
        owners = {source: (AccountKind.WALLET.value, user_id)}
        owners[target] = (AccountKind.ESCROW.value, user_id)
        postings = [Posting(source, -amount, EntryKind.HOLD)]
        postings.append(Posting(target, amount, EntryKind.HOLD))
        insert_entries(session, transaction_id, postings, owners)
    wallet = session.identity_map.get(identity_key(LedgerAccount, source))
    if wallet is not None:  # changed under the ORM's feet: reload
        session.expire(wallet, ["balance", "history_entries"])
    return True


def _short(session: Session, transaction_id: int, user_id: int, amount: int) -> None:
    """Take the key back (within the caller's transaction) and refuse."""
    session.execute(delete(LedgerTransaction).where(LedgerTransaction.id == transaction_id))
    found = session.identity_map.get(identity_key(LedgerTransaction, transaction_id))
    if found is not None:
        session.expunge(found)
    raise InsufficientFundsError(f"the wallet of user {user_id} cannot cover {amount}")


def _escrow_values(user_id: int, job_id: int, amount: int, now: object) -> dict[str, object]:
    """The row of the job's new escrow, holding ``amount``."""
    return {
        **dict.fromkeys(("earned", "spent", "history_entries", "shard"), 0),
        **{"kind": AccountKind.ESCROW.value, "node_id": None, "created_at": now},
        **{"user_id": user_id, "job_id": job_id, "balance": amount},
    }


def _known_escrow(session: Session, account_id: int, values: dict[str, object]) -> None:
    """The new escrow, known to the session without a read."""
    account = LedgerAccount(id=account_id, **values)
    make_transient_to_detached(account)  # the row exists: no read to hold it
    session.add(account)


def _into_existing_escrow(
    session: Session, transaction_id: int | None, job_id: int, user_id: int, amount: int
) -> int:
    """Where the job's escrow was there before: add to it (and, for the one-statement hold,
    write its entry)."""
    target = escrow(session, job_id, user_id).id
    apply_change(session, target, amount)
    if transaction_id is not None:
        owners = {target: (AccountKind.ESCROW.value, user_id)}
        insert_entries(session, transaction_id, [Posting(target, amount, EntryKind.HOLD)], owners)
    return target
