"""What each job has cost, as its owner sees it: the hold, the cost so far, what waits as
nodes' pending credit, and once it is settled what was charged (the minimum charge
included), refunded, voided, kept as the platform's fee and earned by each node. Read for a
page of jobs in a fixed number of queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from compute.billing.service import charged_nodes, job_estimate, node_owners
from compute.billing.usage import JobUsage
from compute.models import Job
from ledger.job_ledger import job_ledgers
from ledger.pricing import Rates


@dataclass(frozen=True)
class JobMoney:
    """Micro-tokens. ``charged`` and the rest are None until the job is settled, but for
    ``pending`` and ``voided``, which move as checkpoints save work."""

    hold: int
    cost_so_far: int
    charged: int | None = None
    refunded: int | None = None
    fees: int | None = None
    earnings: dict[int, int] = field(default_factory=dict)  # node id → its owner's credit
    pending: int = 0  # charged into nodes' pending credit, not yet released to their owners
    voided: int = 0  # pending credit given back to the payer: the node's work was refused
    compensated: int = 0  # given back by the platform: the job's result was found invalid


def new_job_money(job: Job, rates: Rates) -> JobMoney:
    """A job just queued: its hold and nothing else yet (no read needed to know it)."""
    return JobMoney(hold=job_estimate(job, rates).total, cost_so_far=0)


def jobs_money(session: Session, jobs: Sequence[Job], rates: Rates) -> dict[int, JobMoney]:
    """Each job's money. A settled job's cost so far is what was charged; a running job's is
    its metered work on others' nodes, raised to the minimum charge once it has any, and
    never above its hold."""
    owners = node_owners(session, jobs)
    ledgers = job_ledgers(session, [job.id for job in jobs])
    minimum = rates.min_charge_micro
    money: dict[int, JobMoney] = {}
    for job in jobs:
        hold = job_estimate(job, rates).total
        done = ledgers[job.id]
        if done.settled:
            money[job.id] = JobMoney(
                hold=done.charged + done.voided + done.refunded,
                cost_so_far=done.charged,
                charged=done.charged,
                refunded=done.refunded,
                fees=done.fees,
                earnings=dict(sorted(done.earnings.items())),
                pending=done.pending,
                voided=done.voided,
                compensated=done.compensated,
            )
            continue
        so_far = JobUsage.from_column(job.usage).metered(charged_nodes(owners, job), rates)
        if so_far > 0:
            so_far = max(so_far, minimum)
        money[job.id] = JobMoney(
            hold=hold,
            cost_so_far=min(so_far, hold),
            pending=done.pending,
            voided=done.voided,
            compensated=done.compensated,
        )
    return money
