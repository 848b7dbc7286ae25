"""Totals and the invariants a correct ledger always satisfies, computed from the entries."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ledger.balance_rows import GIVEN_BACK
from ledger.models import AccountKind, EntryKind, LedgerAccount, LedgerEntry


@dataclass(frozen=True)
class LedgerReport:
    issued: int
    in_wallets: int
    in_escrow: int
    pending: int  # node owners' earnings not yet released
    fees: int
    problems: tuple[str, ...]

    @property
    def invariant_ok(self) -> bool:
        return not self.problems


def ledger_report(session: Session, *, terminal_job_ids: Collection[int]) -> LedgerReport:
    problems: list[str] = []

    entry_total = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
    if entry_total != 0:
        problems.append(f"entries sum to {entry_total}, not 0")

    unbalanced = session.scalars(
        select(LedgerEntry.transaction_id)
        .group_by(LedgerEntry.transaction_id)
        .having(func.sum(LedgerEntry.amount) != 0)
        .limit(5)
    ).all()
    if unbalanced:
        problems.append(f"transactions not summing to zero: {list(unbalanced)}")

    sums = dict(
        session.execute(
            select(LedgerEntry.account_id, func.sum(LedgerEntry.amount)).group_by(
                LedgerEntry.account_id
            )
        ).all()
    )
    problems.extend(wallet_counter_problems(session))
    totals = {kind.value: 0 for kind in AccountKind}
    for account in session.scalars(select(LedgerAccount)):
        from_entries = int(sums.get(account.id, 0))
        if account.balance != from_entries:
            problems.append(
                f"account {account.id} balance {account.balance} != entries {from_entries}"
            )
        if account.kind != AccountKind.ISSUANCE.value and from_entries < 0:
            problems.append(f"{account.kind} account {account.id} is negative")
        if (
            account.kind == AccountKind.ESCROW.value
            and account.job_id in terminal_job_ids
            and from_entries != 0
        ):
            problems.append(f"escrow of finished job {account.job_id} still holds {from_entries}")
        totals[account.kind] += from_entries

    return LedgerReport(
        issued=-totals[AccountKind.ISSUANCE.value],
        in_wallets=totals[AccountKind.WALLET.value],
        in_escrow=totals[AccountKind.ESCROW.value],
        pending=totals[AccountKind.PENDING.value],
        fees=totals[AccountKind.PLATFORM_FEE.value],
        problems=tuple(problems),
    )


def wallet_counter_problems(session: Session) -> list[str]:
    """Each wallet's counters equal what the entries say: node credits into the wallet,
    charges out of the same user's escrows less voids and compensations back to them, entries
    on the user's accounts."""
    credited = dict(
        session.execute(
            select(LedgerEntry.account_id, func.sum(LedgerEntry.amount))
            .where(LedgerEntry.kind == EntryKind.NODE_CREDIT.value)
            .group_by(LedgerEntry.account_id)
        ).all()
    )
    charged = dict(
        session.execute(
            select(LedgerAccount.user_id, -func.sum(LedgerEntry.amount))
            .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
            .where(
                or_(
                    (LedgerEntry.kind == EntryKind.CHARGE.value)
                    & (LedgerAccount.kind == AccountKind.ESCROW.value),
                    LedgerEntry.kind.in_([kind.value for kind in GIVEN_BACK])
                    & (LedgerAccount.kind == AccountKind.WALLET.value),
                )
            )
            .group_by(LedgerAccount.user_id)
        ).all()
    )
    entries = dict(
        session.execute(
            select(LedgerEntry.user_id, func.count()).group_by(LedgerEntry.user_id)
        ).all()
    )
    problems = []
    wallets = select(LedgerAccount).where(LedgerAccount.kind == AccountKind.WALLET.value)
    for wallet in session.scalars(wallets):
        if wallet.earned != int(credited.get(wallet.id, 0)):
            problems.append(f"wallet {wallet.id} earned {wallet.earned} != its node credits")
        if wallet.spent != int(charged.get(wallet.user_id, 0)):
            problems.append(f"wallet {wallet.id} spent {wallet.spent} != its user's charges")
        if wallet.history_entries != int(entries.get(wallet.user_id, 0)):
            problems.append(f"wallet {wallet.id} counts {wallet.history_entries} entries, wrongly")
    return problems
