"""A posting over several accounts moves every balance or none (on SQLite and PostgreSQL):
its balances are changed by one set-based statement, and a short debit must undo the rest."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.db import make_session_factory, session_scope
from core.errors import InsufficientFundsError
from ledger.invariants import ledger_report
from ledger.models import MICRO, EntryKind, LedgerAccount, LedgerTransaction, TransactionKind
from ledger.postings import Posting, post_transaction, wallet
from tests.conftest import Account


def _wallets(session, accounts: list[Account]) -> list[LedgerAccount]:
    return [wallet(session, account.id) for account in accounts]


def _balances(factory, accounts: list[Account]) -> list[int]:
    with session_scope(factory) as session:
        return [found.balance for found in _wallets(session, accounts)]


def _transactions(factory) -> int:
    with session_scope(factory) as session:
        return session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0


@pytest.fixture
def factory(client: TestClient):
    return make_session_factory(client.app.state.engine)  # type: ignore[attr-defined]


def _post(factory, accounts: list[Account], amounts: list[int], key: str) -> None:
    with session_scope(factory) as session:
        _post_in(session, accounts, amounts, key)


def _post_in(session, accounts: list[Account], amounts: list[int], key: str) -> None:
    ids = [found.id for found in _wallets(session, accounts)]
    post_transaction(
        session,
        kind=TransactionKind.ADMIN_GRANT,
        key=key,
        postings=[Posting(i, a, EntryKind.GRANT) for i, a in zip(ids, amounts, strict=True)],
    )


def test_a_posting_over_four_wallets_moves_each_by_its_amount(
    factory, user: Account, node_owner: Account, admin: Account, other_user: Account
) -> None:
    accounts = [user, node_owner, admin, other_user]
    before = _balances(factory, accounts)
    amounts = [-3 * MICRO, -2 * MICRO, 4 * MICRO, 1 * MICRO]
    _post(factory, accounts, amounts, "four-way")
    after = _balances(factory, accounts)
    assert [a - b for a, b in zip(after, before, strict=True)] == amounts


def test_a_short_debit_among_several_moves_no_balance_and_keeps_no_transaction(
    factory, user: Account, node_owner: Account, admin: Account, other_user: Account
) -> None:
    accounts = [user, node_owner, admin, other_user]
    before, transactions = _balances(factory, accounts), _transactions(factory)
    # The first debit is covered, the second is not (more than the wallet holds).
    too_much = before[1] + 1
    amounts = [-1 * MICRO, -too_much, too_much, 1 * MICRO]
    # Refused within a transaction that goes on and commits (as a caller that answers 402
    # and keeps its other work does): nothing of the posting may be left in it.
    with session_scope(factory) as session, pytest.raises(InsufficientFundsError):
        _post_in(session, accounts, amounts, "short")
    assert _balances(factory, accounts) == before
    assert _transactions(factory) == transactions
    # The key was never taken: the same key posts once the debit is covered.
    _post(factory, accounts, [-1 * MICRO, -1 * MICRO, 1 * MICRO, 1 * MICRO], "short")
    after = _balances(factory, accounts)
    assert [a - b for a, b in zip(after, before, strict=True)] == [-MICRO, -MICRO, MICRO, MICRO]
    with session_scope(factory) as session:
        assert ledger_report(session, terminal_job_ids=set()).invariant_ok


def _request(session, accounts: list[Account], amounts: list[int], key: str):
    from ledger.postings import TransactionRequest

    ids = [found.id for found in _wallets(session, accounts)]
    postings = [Posting(i, a, EntryKind.GRANT) for i, a in zip(ids, amounts, strict=True)]
    return TransactionRequest(TransactionKind.ADMIN_GRANT, key, postings)


def test_postings_made_together_move_the_net_and_keep_every_entry(
    factory, user: Account, node_owner: Account, other_user: Account
) -> None:
    """A settlement and the release of what it charged, as one set of rows: an account one
    request pays into and the next pays out of moves by the difference, and each keeps
    its entries."""
    from ledger.models import LedgerEntry
    from ledger.posted_together import post_all_new

    accounts = [user, node_owner, other_user]
    before = _balances(factory, accounts)
    with session_scope(factory) as session:
        first = _request(session, accounts[:2], [-2 * MICRO, 2 * MICRO], "together-1")
        then = _request(session, accounts[1:], [-2 * MICRO, 2 * MICRO], "together-2")
        ids = post_all_new(session, [first, then])
        assert ids is not None and len(set(ids)) == 2
    after = _balances(factory, accounts)
    assert [a - b for a, b in zip(after, before, strict=True)] == [-2 * MICRO, 0, 2 * MICRO]
    with session_scope(factory) as session:
        entries = session.scalars(select(LedgerEntry).where(LedgerEntry.transaction_id.in_(ids)))
        assert sorted(entry.amount for entry in entries) == [-2 * MICRO] * 2 + [2 * MICRO] * 2
        assert ledger_report(session, terminal_job_ids=set()).invariant_ok


def test_postings_made_together_post_nothing_where_a_key_was_posted_before(
    factory, user: Account, node_owner: Account
) -> None:
    from ledger.posted_together import post_all_new

    accounts = [user, node_owner]
    _post(factory, accounts, [-MICRO, MICRO], "posted-before")
    before, transactions = _balances(factory, accounts), _transactions(factory)
    with session_scope(factory) as session:
        fresh = _request(session, accounts, [-MICRO, MICRO], "not-yet")
        again = _request(session, accounts, [-MICRO, MICRO], "posted-before")
        assert post_all_new(session, [fresh, again]) is None
    assert _balances(factory, accounts) == before
    assert _transactions(factory) == transactions


def test_postings_made_together_with_a_short_debit_post_nothing(
    factory, user: Account, node_owner: Account, other_user: Account
) -> None:
    """One debit among them that its account cannot cover: no balance moves, no key or
    entry is kept, and the caller's transaction goes on (and commits)."""
    from ledger.models import LedgerEntry
    from ledger.posted_together import post_all_new

    accounts = [user, node_owner, other_user]
    before, transactions = _balances(factory, accounts), _transactions(factory)
    with session_scope(factory) as session:
        entries_before = session.scalar(select(func.count()).select_from(LedgerEntry))
    too_much = before[2] + 1
    with session_scope(factory) as session:
        covered = _request(session, accounts[:2], [-MICRO, MICRO], "short-1")
        short = _request(session, [other_user, user], [-too_much, too_much], "short-2")
        with pytest.raises(InsufficientFundsError):
            post_all_new(session, [covered, short])
    assert _balances(factory, accounts) == before
    assert _transactions(factory) == transactions
    with session_scope(factory) as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == entries_before
        assert ledger_report(session, terminal_job_ids=set()).invariant_ok


@pytest.mark.parametrize("amount", [32_768, 2**31])
def test_amounts_at_the_edge_of_small_integer_types_post(
    factory, user: Account, node_owner: Account, amount: int
) -> None:
    """A debit of exactly 2**15 (or 2**31) micro-tokens: PostgreSQL's driver sends a small int
    as a small integer type, whose negation overflowed (found by the ledger's property test:
    a grant of 32,768 micro-tokens failed)."""
    from ledger.flows import grant_tokens

    with session_scope(factory) as session:
        grant_tokens(
            session, user_id=user.id, amount=amount, kind=TransactionKind.ADMIN_GRANT, key="edge"
        )
    before = _balances(factory, [user, node_owner])
    _post(factory, [user, node_owner], [-amount, amount], f"edge-{amount}")
    after = _balances(factory, [user, node_owner])
    assert [a - b for a, b in zip(after, before, strict=True)] == [-amount, amount]


@pytest.fixture(params=["beyond the balance before", "within it"])
def debit_beyond(request: pytest.FixtureRequest) -> bool:
    return request.param == "beyond the balance before"


def test_a_debit_after_a_credit_committed_while_it_waited_keeps_both(
    factory,
    user: Account,
    node_owner: Account,
    admin: Account,
    other_user: Account,
    debit_beyond: bool,
) -> None:
    """A posting waits for the row lock of a concurrent credit to the wallet it debits; once
    that credit commits, the debit posts on the balance the credit left: one the credit
    covers is not refused, and no debit overwrites the credit (computed from the
    statement's snapshot, taken before the wait, the first overdrew and the second lost the
    credit)."""
    accounts = [user, node_owner, admin, other_user]
    before = _balances(factory, accounts)
    # More than the wallet holds before the credit (less than after it), or less.
    debit = before[0] + 5 * MICRO if debit_beyond else 3 * MICRO
    started, outcome = threading.Event(), {}

    def post_the_debit() -> None:
        started.set()
        try:
            _post(factory, accounts, [-debit, debit - 2 * MICRO, MICRO, MICRO], "waits")
            outcome["posted"] = True
        except InsufficientFundsError as exc:
            outcome["refused"] = exc

    with session_scope(factory) as crediting:
        _post_in(crediting, [user, admin], [10 * MICRO, -10 * MICRO], "credit-first")
        waiting = threading.Thread(target=post_the_debit)
        waiting.start()
        started.wait(10)
        time.sleep(0.5)  # the debit is now waiting for the wallet's lock (or SQLite's)
    waiting.join(30)
    assert outcome == {"posted": True}, outcome
    after = _balances(factory, accounts)
    assert after[0] - before[0] == 10 * MICRO - debit
