"""The rows a posting changes, as plain statements: the balance updates (one account at a
time, or every change of a posting in one statement with its rows locked in id order on
PostgreSQL), the transaction and entry inserts, and what undoes a partial update by hand.
``postings`` makes postings of them; ``hold`` and ``posted_together`` use them for their
own shapes of posting.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from core.db import UTCDateTime, utcnow
from core.errors import InsufficientFundsError, InvalidInputError
from ledger.models import EntryKind, LedgerAccount, LedgerTransaction, TransactionKind

# Far beyond any real amount, far below 2**63: sums of many entries cannot overflow.
MAX_AMOUNT = 10**18 // 1000


class UnbalancedTransactionError(InvalidInputError):
    code = "unbalanced_transaction"


@dataclass(frozen=True)
class Posting:
    """One entry of a transaction: ``amount`` into (or, negative, out of) an account."""

    account_id: int
    amount: int  # signed micro-tokens
    kind: EntryKind
    node_id: int | None = None


@dataclass
class WalletCounters:
    """What a transaction adds to a wallet's counters (see LedgerAccount)."""

    earned: int = 0
    spent: int = 0
    entries: int = 0

    def negated(self) -> WalletCounters:
        return WalletCounters(-self.earned, -self.spent, -self.entries)


# Entries into a wallet that give back what its user was charged: not spent.
GIVEN_BACK = (EntryKind.VOID, EntryKind.COMPENSATION)


# The statements of every posting, written once: built per call, SQLAlchemy's expression
# building and cache keys cost more CPU than the database's work on these one-row statements.
# The amounts as BIGINT: psycopg sends a small int as a smallint, and the negation of
# -32768 (a debit of that many micro-tokens) would overflow it.
APPLY = text(
    "UPDATE ledger_accounts SET balance = balance + CAST(:delta AS BIGINT), "
    "earned = earned + CAST(:earned AS BIGINT), spent = spent + CAST(:spent AS BIGINT), "
    "history_entries = history_entries + :entries WHERE id = :id "
    "AND (:delta >= 0 OR kind = 'issuance' OR balance >= -CAST(:delta AS BIGINT))"
)
INSERT_ENTRIES = text(
    "INSERT INTO ledger_entries (transaction_id, account_id, kind, amount, node_id, user_id) "
    "VALUES (:transaction_id, :account_id, :kind, :amount, :node_id, :user_id)"
)
INSERT_TRANSACTION = text(
    "INSERT INTO ledger_transactions (kind, idempotency_key, job_id, node_id, memo, created_at) "
    "VALUES (:kind, :idempotency_key, :job_id, :node_id, :memo, :created_at) "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
).bindparams(bindparam("created_at", type_=UTCDateTime()))


def apply_change(
    session: Session, account_id: int, delta: int, counters: WalletCounters | None = None
) -> None:
    """Add ``delta`` to the account (a debit only where the balance covers it, but for the
    issuance account) and ``counters`` to a wallet's."""
    counted = counters or WalletCounters()
    result = session.execute(
        APPLY,
        {
            "id": account_id,
            "delta": delta,
            "earned": counted.earned,
            "spent": counted.spent,
            "entries": counted.entries,
        },
    )
    if result.rowcount != 1:
        raise InsufficientFundsError(f"account {account_id} cannot cover {-delta} micro-tokens")


Change = tuple[int, int, "WalletCounters | None"]  # account id, delta, a wallet's counters

# On PostgreSQL the rows are locked in id order before the set-based update changes them
# (the update's own locks follow its plan's order, and concurrent postings must lock in one
# order), in the same statement: a MATERIALIZED CTE's `ORDER BY id FOR UPDATE` locks each
# row as it emits it, in that order, and the update reaches a row only through it. The new
# values come from what the lock returned, the latest committed row (one changed by a
# posting this one waited for), never from the update's own scan: that reads the
# statement's snapshot, taken before the wait, and an update computed from it overwrote the
# credit it had waited for (tests/ledger/test_postings.py). SQLite runs one writer at a
# time and needs no lock.
LOCKED_IN_ORDER = (
    "locked AS MATERIALIZED (SELECT id, kind, balance, earned, spent, history_entries "
    "FROM ledger_accounts WHERE id IN (SELECT id FROM changes) ORDER BY id FOR UPDATE)"
)


def changes_values(rows: int) -> str:
    """SQLite: the ``changes`` CTE's rows: an account's id, its delta and a wallet's counters."""
    return ", ".join(
        f"(CAST(:id{n} AS INTEGER), CAST(:delta{n} AS BIGINT), CAST(:earned{n} AS BIGINT), "
        f"CAST(:spent{n} AS BIGINT), CAST(:entries{n} AS INTEGER))"
        for n in range(rows)
    )


def changes_parameters(changes: list[Change]) -> dict[str, int]:
    values: dict[str, int] = {}
    for n, (account_id, delta, counted) in enumerate(changes):
        counted = counted or WalletCounters()
        values |= {f"id{n}": account_id, f"delta{n}": delta, f"earned{n}": counted.earned}
        values |= {f"spent{n}": counted.spent, f"entries{n}": counted.entries}
    return values


# PostgreSQL: the ``changes`` CTE from one array per column, so that a statement's text is
# the same whatever the number of rows: psycopg then converts it once and the server
# prepares it after a few calls (a statement of more than 50 parameters or 4 kB is parsed
# again, in Python and by the server, on every call).
CHANGES_FROM_ARRAYS = (
    "changes (id, delta, earned, spent, entries) AS (SELECT * FROM unnest("
    "CAST(:change_ids AS INTEGER[]), CAST(:change_deltas AS BIGINT[]), "
    "CAST(:change_earned AS BIGINT[]), CAST(:change_spent AS BIGINT[]), "
    "CAST(:change_entries AS INTEGER[])))"
)


def changes_arrays(changes: list[Change]) -> dict[str, list[int]]:
    """The parameters of ``CHANGES_FROM_ARRAYS``."""
    counters = [counted or WalletCounters() for _, _, counted in changes]
    return {
        "change_ids": [account_id for account_id, _, _ in changes],
        "change_deltas": [delta for _, delta, _ in changes],
        "change_earned": [counted.earned for counted in counters],
        "change_spent": [counted.spent for counted in counters],
        "change_entries": [counted.entries for counted in counters],
    }


def update_changes(*, lock: bool) -> str:
    """The UPDATE of every row in ``changes`` (the same guard as ``APPLY`` per row), through
    ``locked`` where ``lock``; it returns the ids it changed."""
    now = "locked" if lock else "ledger_accounts"  # where the row as it is now is read
    return (
        f"UPDATE ledger_accounts SET balance = {now}.balance + changes.delta, "
        f"earned = {now}.earned + changes.earned, spent = {now}.spent + changes.spent, "
        f"history_entries = {now}.history_entries + changes.entries "
        f"FROM changes{' JOIN locked ON locked.id = changes.id' if lock else ''} "
        f"WHERE ledger_accounts.id = changes.id AND (changes.delta >= 0 "
        f"OR {now}.kind = 'issuance' OR {now}.balance >= -changes.delta) "
        "RETURNING ledger_accounts.id"
    )


@functools.lru_cache(maxsize=32)
def _apply_many(rows: int) -> TextClause:
    """SQLite: every change of a posting in one UPDATE; it returns the ids it changed."""
    changes = f"changes (id, delta, earned, spent, entries) AS (VALUES {changes_values(rows)})"
    return text(f"WITH {changes} {update_changes(lock=False)}")


# PostgreSQL: every change of a posting in one UPDATE, its rows locked in id order first.
APPLY_MANY_LOCKED = text(
    f"WITH {CHANGES_FROM_ARRAYS}, {LOCKED_IN_ORDER} {update_changes(lock=True)}"
)


def apply_changes(session: Session, changes: list[Change]) -> None:
    """Apply every change or none (InsufficientFundsError): one statement for all of them
    (on PostgreSQL, with the lock in id order) where there are more than two."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if len(changes) <= (2 if postgres else 1):
        applied: list[Change] = []
        try:
            for change in changes:
                apply_change(session, *change)
                applied.append(change)
        except InsufficientFundsError:
            undo_changes(session, applied)
            raise
        return
    if postgres:
        changed = set(session.execute(APPLY_MANY_LOCKED, changes_arrays(changes)).scalars())
    else:
        statement = _apply_many(len(changes))
        changed = set(session.execute(statement, changes_parameters(changes)).scalars())
    if len(changed) != len(changes):
        short = next(account_id for account_id, _, _ in changes if account_id not in changed)
        undo_changes(session, [change for change in changes if change[0] in changed])
        raise InsufficientFundsError(f"account {short} cannot cover its debit")


def undo_changes(session: Session, applied: list[Change]) -> None:
    """Undone by hand, within the caller's transaction (its row locks still held): no
    savepoint round trips on the common path."""
    for account_id, delta, counted in reversed(applied):
        apply_change(session, account_id, -delta, counted and counted.negated())


def insert_transaction(
    session: Session,
    kind: TransactionKind,
    key: str,
    job_id: int | None,
    node_id: int | None,
    memo: str,
) -> LedgerTransaction | None:
    """The transaction's row, or None where its key exists already: one statement that
    waits for a concurrent holder of the key and then inserts nothing."""
    values = {
        "kind": kind.value,
        "idempotency_key": key,
        "job_id": job_id,
        "node_id": node_id,
        "memo": memo,
        "created_at": utcnow(),
    }
    new_id = session.execute(INSERT_TRANSACTION, values).scalar()
    if new_id is None:
        return None
    transaction = LedgerTransaction(id=new_id, **values)
    make_transient_to_detached(transaction)  # the row exists: no read to hold it
    session.add(transaction)
    return transaction


def insert_entries(
    session: Session,
    transaction_id: int,
    postings: list[Posting],
    owners: dict[int, tuple[str, int | None]],
) -> None:
    session.execute(INSERT_ENTRIES, entry_rows(transaction_id, postings, owners))


def entry_rows(
    transaction_id: int, postings: list[Posting], owners: dict[int, tuple[str, int | None]]
) -> list[dict[str, object]]:
    return [
        {
            "transaction_id": transaction_id,
            "account_id": p.account_id,
            "kind": p.kind.value,
            "amount": p.amount,
            "node_id": p.node_id,
            "user_id": owners[p.account_id][1],
        }
        for p in postings
    ]


def check_balanced(postings: list[Posting]) -> None:
    if sum(p.amount for p in postings) != 0:
        raise UnbalancedTransactionError("a transaction's entries must sum to zero")
    if any(p.amount == 0 or abs(p.amount) > MAX_AMOUNT for p in postings):
        raise UnbalancedTransactionError("entry amounts must be non-zero and bounded")


def expire_changed(session: Session, account_ids: Iterable[int]) -> None:
    """Accounts changed under the ORM's feet: reloaded when next read."""
    for account_id in account_ids:
        account = session.identity_map.get(identity_key(LedgerAccount, account_id))
        if account is not None:
            session.expire(account, ["balance", "earned", "spent", "history_entries"])


@functools.lru_cache(maxsize=16)
def insert_transactions(rows: int) -> TextClause:
    values = ", ".join(
        f"(:kind{n}, :key{n}, :job_id{n}, :node_id{n}, :memo{n}, :created_at)" for n in range(rows)
    )
    return text(
        "INSERT INTO ledger_transactions (kind, idempotency_key, job_id, node_id, memo, "
        f"created_at) VALUES {values} ON CONFLICT (idempotency_key) DO NOTHING "
        "RETURNING id, idempotency_key"
    ).bindparams(bindparam("created_at", type_=UTCDateTime()))
