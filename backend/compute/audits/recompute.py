"""A result found invalid by an audit, computed again.

An invalid audit voids the audited node's credit back to the user, but the job's model (or
results) came from that node and cannot be trusted, and the other nodes' honest work in it
(split's loaders) was paid for nothing. So the platform gives the user back what the job
cost them (``ledger.compensation``: from its fees) and queues the job again for them, under
a hold like any job's, on nodes other than the audited one's owner's where others can hold
it: the user ends up paying once, for a result computed honestly (README, "Verified
credit"). No tokens for the hold: the compensation stays in the wallet and the log says to
resubmit.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from compute.audits.copies import job_copy
from compute.audits.rounds import nodes_of_owner
from compute.billing.service import job_estimate
from compute.dispatch.placement import fit_job
from compute.dispatch.scheduling import capacity_and_free, pending_job
from compute.jobs.events import add_log
from compute.models import Job, TrainerAudit
from core.errors import InsufficientFundsError
from ledger.compensation import compensate_job
from ledger.flows import place_hold
from ledger.pricing import Rates, tokens


def recompute(session: Session, audit: TrainerAudit, job: Job, rates: Rates) -> Job | None:
    """Once per audit: the user compensated, and the job queued again without the node."""
    if audit.recompute_job_id is not None:
        return None
    given = compensate_job(
        session,
        job_id=job.id,
        payer_id=job.owner_id,
        memo=f"job {job.id}: its result was found invalid (node {audit.node_id}'s work); "
        "what it cost you, given back by the platform",
    )
    if given:
        add_log(session, job, f"{tokens(given)} tokens it cost you are given back by the platform")
    recompute_of = {
        "job_id": job.id,
        "node_id": audit.node_id,
        "excluded": sorted(away_from(session, job, audit.node_id)),
    }
    redo = job_copy(
        job,
        name=f"recompute of job {job.id}",
        reason=f"queued: job {job.id} computed again, its node {audit.node_id}'s work invalid",
        request=dict(job.request),
        spec={**job.spec, "recompute_of": recompute_of},
        identity={"recompute_of": recompute_of},
        max_tokens_micro=job.max_tokens_micro,
    )
    try:
        with session.begin_nested():
            session.add(redo)
            session.flush()
            hold = job_estimate(redo, rates).total
            place_hold(session, user_id=job.owner_id, job_id=redo.id, amount=hold)
    except InsufficientFundsError as exc:
        add_log(session, job, f"it could not be computed again for you ({exc}); resubmit it",
                level="warning")  # fmt: skip
        return None
    audit.recompute_job_id = redo.id
    add_log(session, job, f"computed again as job {redo.id}, on nodes other than {audit.node_id}")
    return redo


def away_from(session: Session, job: Job, node_id: int) -> frozenset[int]:
    """The node's owner's machines where another owner's can hold the job, else the node
    alone (it then waits for room on the others)."""
    owners = nodes_of_owner(session, node_id)
    capacity, _ = capacity_and_free(session)
    if fit_job(pending_job(job, owners), capacity) is not None:
        return owners
    return frozenset({node_id})
