"""A job's money as its ledger entries tell it, for any number of jobs in one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.models import EntryKind, LedgerEntry, LedgerTransaction, TransactionKind


@dataclass
class JobLedger:
    """Micro-tokens. The hold is ``charged + voided + refunded + in escrow``."""

    charged: int = 0  # out of the escrow for work, less what was voided back
    voided: int = 0  # pending credit given back to the payer: work refused
    refunded: int = 0  # the unused hold, back to the payer
    fees: int = 0  # the platform's part of released credit
    compensated: int = 0  # given back by the platform: the job's result was found invalid
    earnings: dict[int, int] = field(default_factory=dict)  # node → owner's released credit
    settled: bool = False

    @property
    def pending(self) -> int:
        """Charged to the payer, not yet released to node owners (nor voided)."""
        return self.charged - self.fees - sum(self.earnings.values())


def job_ledgers(session: Session, job_ids: Sequence[int]) -> dict[int, JobLedger]:
    """Every listed job's ledger (an empty one for a job with no entries)."""
    found = {job_id: JobLedger() for job_id in job_ids}
    if not job_ids:
        return found
    rows = session.execute(
        select(
            LedgerTransaction.job_id,
            LedgerTransaction.kind,
            LedgerEntry.kind,
            LedgerEntry.amount,
            LedgerEntry.node_id,
        )
        # outer: a settlement of a job that held nothing has no entries
        .outerjoin(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.job_id.in_(job_ids))
    ).all()
    for job_id, transaction_kind, kind, amount, node_id in rows:
        money = found[job_id]
        if transaction_kind == TransactionKind.SETTLEMENT.value:
            money.settled = True
        if kind is None:
            continue
        if kind == EntryKind.CHARGE.value:
            money.charged -= amount  # the escrow's side: negative
        elif kind == EntryKind.VOID.value and amount > 0:  # the payer's side
            money.voided += amount
            money.charged -= amount
        elif kind == EntryKind.REFUND.value and amount > 0:  # the wallet's side
            money.refunded += amount
        elif kind == EntryKind.COMPENSATION.value and amount > 0:  # the wallet's side
            money.compensated += amount
        elif kind == EntryKind.PLATFORM_FEE.value:
            money.fees += amount
        elif kind == EntryKind.NODE_CREDIT.value and node_id is not None:
            money.earnings[node_id] = money.earnings.get(node_id, 0) + amount
    return found
