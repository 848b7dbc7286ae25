"""The platform's compensation to a user for work they paid for that was found invalid.

When an audit finds a job's result made up (``compute.audits``), the node's own pending credit
is voided back to the user, but the other nodes' honest work in the job (split's loaders) was
paid for a result that cannot be used, and the job is computed again. So that the user pays
no more because a node cheated, the platform gives back what the job cost them: from its
fees, and what its fees lack is issued (as grants are: the only other way tokens come into
being). Once per job.
"""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ledger.models import AccountKind, EntryKind, LedgerEntry, LedgerTransaction, TransactionKind
from ledger.postings import (
    Posting,
    fee_accounts,
    find_transaction,
    post_transaction,
    system_account,
    wallet_id,
)


def compensation_key(job_id: int) -> str:
    return f"compensation:job:{job_id}"


def paid_for_job(session: Session, job_id: int) -> int:
    """What the job's payer has paid for it so far: charges out of its escrow (their entries
    there are negative), less what was voided back to them (positive, on their wallet)."""
    paid = session.scalar(
        select(
            func.coalesce(
                func.sum(
                    case(
                        (LedgerEntry.kind == EntryKind.CHARGE.value, -LedgerEntry.amount),
                        (
                            (LedgerEntry.kind == EntryKind.VOID.value) & (LedgerEntry.amount > 0),
                            -LedgerEntry.amount,
                        ),
                        else_=0,
                    )
                ),
                0,
            )
        )
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(LedgerTransaction.job_id == job_id)
    )
    return int(paid or 0)


def compensate_job(session: Session, *, job_id: int, payer_id: int, memo: str) -> int:
    """Give the payer back what the job cost them, once; what was given (0 when nothing
    was paid, or it was given already)."""
    if find_transaction(session, compensation_key(job_id)) is not None:
        return 0
    amount = paid_for_job(session, job_id)
    if amount <= 0:
        return 0
    postings = [Posting(wallet_id(session, payer_id), amount, EntryKind.COMPENSATION)]
    owed = amount
    for fees in fee_accounts(session):  # the fullest first: few entries
        taken = min(owed, fees.balance)
        postings.append(Posting(fees.id, -taken, EntryKind.COMPENSATION))
        owed -= taken
        if not owed:
            break
    if owed:
        issuance = system_account(session, AccountKind.ISSUANCE)
        postings.append(Posting(issuance.id, -owed, EntryKind.ISSUE))
    post_transaction(
        session,
        kind=TransactionKind.COMPENSATION,
        key=compensation_key(job_id),
        postings=postings,
        job_id=job_id,
        memo=memo[:500],
    )
    return amount
