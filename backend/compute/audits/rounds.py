"""An audit's further rounds: a failed audit job tried once more elsewhere, and a
disagreement refereed on a third owner's node.

- **Retry.** An audit job that fails for a reason of its own (its node lost, its data
  missing there) is tried once more, on a node other than the ones it failed on, before the
  credit is released unaudited: an audited node cannot make its audit fail away.
- **Referee.** An auditor that finds the audited node's work different could itself be the
  liar (voiding an honest node's credit costs the auditor nothing). So a disagreement is not
  a verdict yet: the same audit is made again on a node of a third owner (neither the audited
  node's nor the first auditor's), and whichever of the two the referee contradicts is
  invalid. Where no third owner's node can hold it, the first auditor's finding stands (the
  log says so): with two owners, the platform has no one else to ask.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.billing.service import job_nodes
from compute.billing.verified_credit import apply_verdict
from compute.jobs.events import add_log
from compute.models import Job, Node, TrainerAudit
from ledger.pricing import Rates
from protocol.events import VerdictEvent

TRIES = 2  # audit jobs per round: the first, and one more where it failed


def nodes_of_owner(session: Session, node_id: int | None) -> frozenset[int]:
    """Every node of ``node_id``'s owner (the node itself included)."""
    if node_id is None:
        return frozenset()
    owner = session.scalar(select(Node.owner_id).where(Node.id == node_id))
    return frozenset(session.scalars(select(Node.id).where(Node.owner_id == owner))) | {node_id}


def exclusion_tiers(session: Session, audit: TrainerAudit) -> list[frozenset[int]]:
    """The nodes to keep the next audit job away from, most to least: the audited node's
    owner's, else the audited node alone, and never a node it failed on; a referee, also
    the first auditor's owner's, with no fallback."""
    base = frozenset({audit.node_id, *(audit.passed_over or [])})
    owners = nodes_of_owner(session, audit.node_id)
    if refereeing(audit):
        return [base | owners | nodes_of_owner(session, audit.first_auditor)]
    return [base | owners, base]


def refereeing(audit: TrainerAudit) -> bool:
    return audit.first_auditor is not None


def retry(session: Session, audit: TrainerAudit, job: Job, audit_job: Job | None, why: str) -> bool:
    """A failed audit job's audit queued again away from its nodes, once per round; whether
    it was."""
    if audit_job is None or audit.tries >= TRIES:
        return False
    audit.passed_over = sorted({*(audit.passed_over or []), *job_nodes(audit_job)})
    audit.status, audit.audit_job_id = "snapshot", None
    add_log(session, job, f"node {audit.node_id}'s audit job {audit_job.id} could not finish "
            f"({why}); it is tried once more on another node")  # fmt: skip
    return True


def ask_referee(
    session: Session, audit: TrainerAudit, job: Job, auditor: int, audit_job_id: int, detail: str
) -> bool:
    """A first disagreement: the audit made again on a third owner's node before any
    verdict; whether one was asked (not when this was the referee's own)."""
    if refereeing(audit):
        return False
    audit.first_auditor, audit.first_audit_job_id, audit.first_detail = (
        auditor, audit_job_id, detail[:1000],
    )  # fmt: skip
    audit.status, audit.audit_job_id, audit.tries = "snapshot", None, 0
    add_log(session, job, f"node {audit.node_id}'s audit by node {auditor} disagrees with it "
            f"({detail[:300]}); a third owner's node referees before any verdict")  # fmt: skip
    return True


def judge_first_auditor(
    session: Session, audit: TrainerAudit, rates: Rates, *, valid: bool, referee: int, step: int
) -> None:
    """The referee's word on the first auditor, on its audit job: contradicted (the audited
    node's work was found right after all), it is invalid; confirmed, valid."""
    first_job = session.get(Job, audit.first_audit_job_id) if audit.first_audit_job_id else None
    if first_job is None or audit.first_auditor is None:
        return
    detail = "" if valid else (
        f"its audit of job {audit.job_id} said node {audit.node_id}'s work differed "
        f"({audit.first_detail[:300]}); a referee on a third owner's node found it right"
    )  # fmt: skip
    verdict = VerdictEvent(audit.first_auditor, step, valid, 1, referee, detail)
    apply_verdict(session, first_job, verdict, rates, {audit.first_auditor})
