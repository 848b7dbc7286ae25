"""Several transactions posted as one set of rows: a settlement and the releases (or
voids) of the credit it has just charged, which follow from it and commit with it.

On PostgreSQL all of it is one statement: the keys inserted, the accounts locked in id order
and changed by their net, every entry inserted, where every key was new and every debit
covered; a short debit changes the rows it reached, which are undone by hand. On SQLite
(one writer at a time) three: the keys, the balances, the entries.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, delete, text
from sqlalchemy.orm import Session

from core.db import UTCDateTime, utcnow
from core.errors import InsufficientFundsError
from ledger.balance_rows import (
    CHANGES_FROM_ARRAYS,
    INSERT_ENTRIES,
    LOCKED_IN_ORDER,
    Change,
    apply_changes,
    changes_arrays,
    check_balanced,
    entry_rows,
    expire_changed,
    insert_transactions,
    undo_changes,
    update_changes,
)
from ledger.models import LedgerTransaction
from ledger.postings import TransactionRequest, changes_of


def post_all_new(session: Session, requests: list[TransactionRequest]) -> list[int] | None:
    """Post several balanced transactions that follow one another (a settlement and the
    releases of the credit it charged) as one set of rows. The balances end as posting them
    one by one would leave them (an account that one takes in and the next pays out moves by
    the difference; a debit covered only by an earlier request's credit is not this
    function's to post). Their ids; None, with nothing posted, where any key was posted
    before (the caller then posts them one by one, ``post_transaction``, which answers each
    duplicate)."""
    for request in requests:
        check_balanced(request.postings)
    postings = [posting for request in requests for posting in request.postings]
    changes, owners = changes_of(session, postings)
    if changes and session.get_bind().dialect.name == "postgresql":
        return _in_one_statement(session, requests, changes, owners)
    values: dict[str, object] = {"created_at": utcnow()}
    for n, request in enumerate(requests):
        values |= {f"kind{n}": request.kind.value, f"key{n}": request.key}
        values |= {f"job_id{n}": request.job_id, f"node_id{n}": request.node_id}
        values[f"memo{n}"] = request.memo
    ids = dict(
        (key, new_id) for new_id, key in session.execute(insert_transactions(len(requests)), values)
    )
    if len(ids) != len(requests):  # some key was there: take back the rest
        _take_back(session, ids.values())
        return None
    try:
        apply_changes(session, changes)
    except InsufficientFundsError:
        _take_back(session, ids.values())
        raise
    rows = [
        row
        for request in requests
        for row in entry_rows(ids[request.key], request.postings, owners)
    ]
    if rows:
        session.execute(INSERT_ENTRIES, rows)
    expire_changed(session, [account_id for account_id, _, _ in changes])
    return [ids[request.key] for request in requests]


def _in_one_statement(
    session: Session,
    requests: list[TransactionRequest],
    changes: list[Change],
    owners: dict[int, tuple[str, int | None]],
) -> list[int] | None:
    entries = [(request.key, posting) for request in requests for posting in request.postings]
    values = {
        "created_at": utcnow(),
        "kinds": [request.kind.value for request in requests],
        "keys": [request.key for request in requests],
        "job_ids": [request.job_id for request in requests],
        "node_ids": [request.node_id for request in requests],
        "memos": [request.memo for request in requests],
        **changes_arrays(changes),
        "entry_keys": [key for key, _ in entries],
        "entry_accounts": [posting.account_id for _, posting in entries],
        "entry_kinds": [posting.kind.value for _, posting in entries],
        "entry_amounts": [posting.amount for _, posting in entries],
        "entry_nodes": [posting.node_id for _, posting in entries],
        "entry_users": [owners[posting.account_id][1] for _, posting in entries],
    }
    ids: dict[str, int] = {}
    applied: set[int] = set()
    for row_id, key in session.execute(ALL_IN_ONE, values):
        if key is None:
            applied.add(row_id)
        else:
            ids[key] = row_id
    if len(ids) != len(requests):  # some key was there: nothing else was done
        _take_back(session, ids.values())
        return None
    if len(applied) != len(changes):  # a debit was short: no entries were written
        short = next(account_id for account_id, _, _ in changes if account_id not in applied)
        undo_changes(session, [change for change in changes if change[0] in applied])
        _take_back(session, ids.values())
        raise InsufficientFundsError(f"account {short} cannot cover its debit")
    expire_changed(session, [account_id for account_id, _, _ in changes])
    return [ids[request.key] for request in requests]


def _take_back(session: Session, transaction_ids: Iterable[int]) -> None:
    """Delete keys this posting inserted (within the caller's transaction)."""
    taken = list(transaction_ids)
    if taken:
        session.execute(delete(LedgerTransaction).where(LedgerTransaction.id.in_(taken)))


# PostgreSQL: the keys (``ON CONFLICT DO NOTHING``), then, only where all of them were new,
# the ordered lock and the update of every change, then, only where every change was made,
# the entries in the order posted. Data-modifying CTEs all run once; each step reads the
# previous one's RETURNING rows, which orders them. It returns the new transactions' (id,
# key) and the changed accounts' (id, NULL). Rows come as one array per column: one text
# for every shape of posting, which psycopg converts once and the server prepares.
ALL_IN_ONE = text(
    "WITH tx AS (INSERT INTO ledger_transactions (kind, idempotency_key, job_id, node_id, "
    "memo, created_at) SELECT kind, key, job_id, node_id, memo, :created_at FROM unnest("
    "CAST(:kinds AS VARCHAR[]), CAST(:keys AS VARCHAR[]), CAST(:job_ids AS INTEGER[]), "
    "CAST(:node_ids AS INTEGER[]), CAST(:memos AS VARCHAR[])) WITH ORDINALITY "
    "AS requests (kind, key, job_id, node_id, memo, n) ORDER BY n "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key), "
    f"{CHANGES_FROM_ARRAYS}, "
    + LOCKED_IN_ORDER.replace(
        "ORDER BY id",
        "AND (SELECT count(*) FROM tx) = cardinality(CAST(:keys AS VARCHAR[])) ORDER BY id",
    )
    + f", applied AS ({update_changes(lock=True)}), "
    "entries (key, account_id, kind, amount, node_id, user_id, n) AS (SELECT * FROM unnest("
    "CAST(:entry_keys AS VARCHAR[]), CAST(:entry_accounts AS INTEGER[]), "
    "CAST(:entry_kinds AS VARCHAR[]), CAST(:entry_amounts AS BIGINT[]), "
    "CAST(:entry_nodes AS INTEGER[]), CAST(:entry_users AS INTEGER[])) WITH ORDINALITY), "
    "written AS (INSERT INTO ledger_entries (transaction_id, account_id, kind, amount, "
    "node_id, user_id) SELECT tx.id, entries.account_id, entries.kind, entries.amount, "
    "entries.node_id, entries.user_id FROM entries JOIN tx ON tx.idempotency_key = "
    "entries.key WHERE (SELECT count(*) FROM applied) = "
    "cardinality(CAST(:change_ids AS INTEGER[])) ORDER BY entries.n) "
    "SELECT id, idempotency_key FROM tx UNION ALL SELECT id, NULL FROM applied"
).bindparams(bindparam("created_at", type_=UTCDateTime()))
