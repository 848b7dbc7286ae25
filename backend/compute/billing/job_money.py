"""What each job has cost, as its owner sees it: the hold, the cost so far, and once it is
settled what was charged (the minimum charge included), refunded, kept as the platform's fee
and earned by each node. Read for a page of jobs in a fixed number of queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.billing.service import charged_nodes, job_estimate, node_owners
from compute.billing.usage import JobUsage
from compute.models import Job
from ledger.models import EntryKind, LedgerEntry, LedgerTransaction
from ledger.pricing import Rates
from ledger.settlement import settlement_key


@dataclass(frozen=True)
class JobMoney:
    """Micro-tokens. ``charged`` and the rest are None until the job is settled."""

    hold: int
    cost_so_far: int
    charged: int | None = None
    refunded: int | None = None
    fees: int | None = None
    earnings: dict[int, int] = field(default_factory=dict)  # node id → its owner's credit


@dataclass
class _Settlement:
    charged: int = 0
    refunded: int = 0
    fees: int = 0
    earnings: dict[int, int] = field(default_factory=dict)


def _settlements(session: Session, job_ids: Sequence[int]) -> dict[int, _Settlement]:
    """The settlement entries of these jobs, summed per job."""
    if not job_ids:
        return {}
    keys = {settlement_key(job_id): job_id for job_id in job_ids}
    rows = session.execute(
        select(
            LedgerTransaction.idempotency_key,
            LedgerEntry.kind,
            LedgerEntry.amount,
            LedgerEntry.node_id,
        )
        .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.idempotency_key.in_(keys))
    ).all()
    found: dict[int, _Settlement] = {}
    for key, kind, amount, node_id in rows:
        settled = found.setdefault(keys[key], _Settlement())
        if kind == EntryKind.CHARGE.value:
            settled.charged -= amount  # the escrow's side: negative
        elif kind == EntryKind.REFUND.value and amount > 0:
            settled.refunded += amount  # the wallet's side
        elif kind == EntryKind.PLATFORM_FEE.value:
            settled.fees += amount
        elif kind == EntryKind.NODE_CREDIT.value and node_id is not None:
            settled.earnings[node_id] = settled.earnings.get(node_id, 0) + amount
    return found


def jobs_money(session: Session, jobs: Sequence[Job], rates: Rates) -> dict[int, JobMoney]:
    """Each job's money. A settled job's cost so far is what was charged; a running job's is
    its metered work on others' nodes, raised to the minimum charge once it has any, and
    never above its hold."""
    owners = node_owners(session)
    settled = _settlements(session, [job.id for job in jobs])
    minimum = rates.min_charge_micro
    money: dict[int, JobMoney] = {}
    for job in jobs:
        hold = job_estimate(job, rates).total
        done = settled.get(job.id)
        if done is not None:
            money[job.id] = JobMoney(
                hold=done.charged + done.refunded,
                cost_so_far=done.charged,
                charged=done.charged,
                refunded=done.refunded,
                fees=done.fees,
                earnings=dict(sorted(done.earnings.items())),
            )
            continue
        so_far = JobUsage.from_column(job.usage).metered(charged_nodes(owners, job), rates)
        if so_far > 0:
            so_far = max(so_far, minimum)
        money[job.id] = JobMoney(hold=hold, cost_so_far=min(so_far, hold))
    return money
