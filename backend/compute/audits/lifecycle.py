"""An audit from snapshot to verdict, swept by the dispatcher each round.

1. ``launch``: once the audited job has ended, its audit job is queued: the job's own request
   as task ``audit``, trained to the step before its next checkpoint (at most
   ``MAX_AUDIT_STEPS`` steps), starting from the snapshot, on any nodes but the audited one
   (in a Ray cluster of its own: the audited node cannot reach it). It holds no tokens and
   earns none: like every validator, an auditor is not paid for checking (README, "Verified
   credit"); the user pays nothing for it either.
2. ``decide``: once the audit job has ended, its losses are compared with those the trainer
   reported for the same steps. A disagreement is refereed on a third owner's node first, and
   a failed audit job is tried once more elsewhere (``rounds``). The verdict goes through
   ``apply_verdict`` like any other, so the trainer's pending credit in the job is released
   or voided and its reliability counts it; an invalid one has the job computed again for
   the user at the platform's cost (``recompute``). An audit that could not be made at all
   releases the credit unaudited: the node is not punished for the platform's own failure,
   and the log says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compute.audits.copies import job_copy
from compute.audits.held import audited_nodes
from compute.audits.recompute import recompute
from compute.audits.rounds import (
    ask_referee,
    exclusion_tiers,
    judge_first_auditor,
    refereeing,
    retry,
)
from compute.audits.snapshots import job_storage, link_checkpoint, snapshot_path
from compute.audits.tasks import AUDIT_BATCHES, AUDIT_RELATIVE, audit_orders, results_difference
from compute.billing.verified_credit import apply_verdict, pending_account, refused_in_job
from compute.dispatch.placement import fit_job
from compute.dispatch.scheduling import capacity_and_free, pending_job
from compute.jobs.events import add_log
from compute.jobs.state import JobStatus
from compute.jobs.strategy import job_request
from compute.models import Job, JobEvent, JobMetric, TrainerAudit
from core.db import utcnow
from ledger.pending import release_pending
from ledger.pricing import Rates
from protocol.events import VerdictEvent
from protocol.strategies.split import AUDIT_TASK, UNUSABLE_CHECKPOINT

MAX_AUDIT_STEPS = 50  # a longer interval is audited on its first steps
TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())
# Losses trained again on another machine: the same code, weights, batches and dropout
# draws; only float rounding differs (the same on two CPUs of this suite: the losses agree
# to 1e-6). A GPU trainer audited on a CPU rounds differently: 1e-3 is an assumption until
# measured on one (no GPU was lent while this was built).
# (AUDIT_RELATIVE, 1e-3: ``tasks``'s, the one tolerance of every audit.)
AUDIT_ABSOLUTE = 1e-5


def due(session: Session) -> tuple[list[int], list[int]]:
    """The audits to launch (their job has ended) and to decide (their audit job has)."""
    return (
        ended_with(session, "snapshot", TrainerAudit.job_id),
        ended_with(session, "running", TrainerAudit.audit_job_id),
    )


def ended_with(session: Session, status: str, job: Any) -> list[int]:
    """Up to 20 audits in ``status`` whose ``job`` column names a job that has ended."""
    return list(
        session.scalars(
            select(TrainerAudit.id)
            .join(Job, Job.id == job)
            .where(TrainerAudit.status == status, Job.status.in_(TERMINAL))
            .order_by(TrainerAudit.id)
            .limit(20)
        )
    )


def advance(session: Session, audit_id: int, storage_root: Path, rates: Rates, secret: str) -> None:
    """One audit's next step, in its own transaction (the dispatcher's sweep)."""
    audit = session.get(TrainerAudit, audit_id, with_for_update=True)
    if audit is None:
        return
    if audit.status == "snapshot":
        launch(session, audit, storage_root, rates, secret)
    elif audit.status == "running":
        decide(session, audit, rates, storage_root)


def claimed_losses(session: Session, audit: TrainerAudit, until: int) -> dict[int, float]:
    """The losses the trainer reported for steps after the checkpoint, up to ``until``:
    each step's first report after the snapshot."""
    found: dict[int, float] = {}
    rows = session.execute(
        select(JobMetric.step, JobMetric.values)
        .where(
            JobMetric.job_id == audit.job_id,
            JobMetric.id > audit.metric_cursor,
            JobMetric.step > audit.from_step,
            JobMetric.step <= until,
        )
        .order_by(JobMetric.id)
    )
    for step, values in rows:
        if step not in found and isinstance(values.get("loss"), int | float):
            found[step] = float(values["loss"])
    return found


def window_end(session: Session, audit: TrainerAudit) -> int:
    """The last step audited: the one before the attempt's next checkpoint is saved (its
    own checkpoint step), at most ``MAX_AUDIT_STEPS`` on."""
    later = [
        int(p["step"])
        for p in session.scalars(
            select(JobEvent.payload).where(
                JobEvent.job_id == audit.job_id, JobEvent.kind == "checkpoint"
            )
        )
        if p.get("attempt") == audit.attempt and int(p["step"]) > audit.from_step
    ]
    return min([audit.from_step + MAX_AUDIT_STEPS, *later])


def launch(
    session: Session, audit: TrainerAudit, storage_root: Path, rates: Rates, secret: str
) -> Job | None:
    job = session.get(Job, audit.job_id)
    assert job is not None
    if job_request(job).task != "train":
        return launch_task_audit(session, audit, job, storage_root, rates, secret)
    if not audit.snapshot:  # one candidate only: the latest is the one
        audit.snapshot, audit.from_step = audit.latest, audit.latest_step
        audit.metric_cursor = audit.latest_cursor
    claimed = claimed_losses(session, audit, window_end(session, audit))
    steps = consecutive_from(audit.from_step + 1, claimed)
    if not steps:
        if reported_after(session, audit):  # it went on, but reported no loss for the step
            missing = f"it reported no loss for step {audit.from_step + 1}"
            judge(session, audit, job, rates, audit.from_step + 1, 0, 0, missing)
        else:
            why = "the trainer reported no step after the checkpoint kept for its audit"
            close(session, audit, job, rates, why)
        return None
    until = steps[-1]
    # Trained to ``until``, resumed from the snapshot (linked in as its own checkpoint).
    audit_job = audit_job_for(
        job, audit, {"max_steps": until}, {"task": "train"}, f"steps {audit.from_step + 1}-{until}"
    )
    if not queue(session, audit, job, audit_job, rates):
        return None
    audit.audit_job_id, audit.until_step, audit.status = audit_job.id, until, "running"
    log_launch(session, audit, job, f"training from step {audit.from_step} to {until}")
    return audit_job


def launch_task_audit(
    session: Session, audit: TrainerAudit, job: Job, storage_root: Path, rates: Rates,
    secret: str,
) -> Job | None:  # fmt: skip
    """A validate or infer job's audit: the task done again on another node (``tasks``)."""
    orders = audit_orders(job, secret)
    what = "its scoring" if orders["task"] == "validate" else f"{AUDIT_BATCHES} drawn batches"
    audit_job = audit_job_for(job, audit, {}, orders, what)
    if not queue(session, audit, job, audit_job, rates):
        return None
    audit.audit_job_id, audit.status = audit_job.id, "running"
    log_launch(session, audit, job, f"{orders['task']} work ({what})")
    return audit_job


def log_launch(session: Session, audit: TrainerAudit, job: Job, what: str) -> None:
    if refereeing(audit):
        how = "refereed by job {} on a third owner's node"
    elif audit.tries > 1:
        how = "audited again by job {} on another node"
    else:
        how = "audited by job {} on another node"
    add_log(session, job, f"node {audit.node_id}'s {what} is {how.format(audit.audit_job_id)}; "
            "its credit in this job waits for the verdict")  # fmt: skip


def queue(session: Session, audit: TrainerAudit, job: Job, audit_job: Job, rates: Rates) -> bool:
    """Queue the audit job away from the audited node's owner's machines where another
    owner's can hold it, else away from the audited node alone (one owner's several
    machines); a referee only on a third owner's (``rounds``). Nowhere to hold it now: the
    credit is released unaudited, or under referee the first finding stands."""
    capacity, _ = capacity_and_free(session)
    for left_out in exclusion_tiers(session, audit):
        if fit_job(pending_job(audit_job, left_out), capacity) is not None:
            orders = {**audit_job.request["audit"], "excluded": sorted(left_out)}
            audit_job.request = {**audit_job.request, "audit": orders}
            session.add(audit_job)
            session.flush()
            audit.tries += 1
            return True
    if refereeing(audit):
        first_finding_stands(session, audit, job, rates, "no third owner's node can referee it")
    else:
        close(session, audit, job, rates, "no node other than the audited one can hold its audit")
    return False


def first_finding_stands(
    session: Session, audit: TrainerAudit, job: Job, rates: Rates, why: str
) -> None:
    """No referee's word: the first auditor's disagreement is the verdict."""
    add_log(
        session, job, f"node {audit.node_id}'s audit: {why}; the first auditor's finding stands"
    )
    step = audit.until_step or audit.from_step
    judge(session, audit, job, rates, step, 1, audit.first_auditor or 0, audit.first_detail)


def reported_after(session: Session, audit: TrainerAudit) -> bool:
    """Whether the trainer reported any step after the kept checkpoint."""
    return (
        session.scalar(
            select(JobMetric.id)
            .where(
                JobMetric.job_id == audit.job_id,
                JobMetric.id > audit.metric_cursor,
                JobMetric.step > audit.from_step,
            )
            .limit(1)
        )
        is not None
    )


def link_audit_checkpoint(session: Session, audit_job_id: int, storage_root: Path) -> None:
    """Before an audit job's attempt starts (its row committed): the kept checkpoint,
    linked in as its own (linked only now: a rolled-back queueing leaves no files)."""
    audit = session.scalar(select(TrainerAudit).where(TrainerAudit.audit_job_id == audit_job_id))
    if audit is None or not audit.snapshot or audit.from_step == 0:
        return
    checkpoint = job_storage(storage_root, audit_job_id) / "checkpoint"
    if checkpoint.is_dir():
        return
    link_checkpoint(snapshot_path(storage_root, audit), checkpoint)


def consecutive_from(first: int, claimed: dict[int, float]) -> list[int]:
    steps = []
    while first + len(steps) in claimed:
        steps.append(first + len(steps))
    return steps


def audit_job_for(
    job: Job, audit: TrainerAudit, knobs: dict[str, Any], orders: dict[str, Any], what: str
) -> Job:
    """The audited job's request as an audit job: task ``audit`` with ``orders`` (what it
    does again), ``knobs`` over the job's own."""
    request = dict(job.request)
    own = {k: v for k, v in request.get("knobs", {}).items() if not (k == "epochs" and knobs)}
    # One loader of at most a core: which loader makes a batch does not change it, and
    # the audit then fits beside its worker on one node.
    loader = {**own.get("loader", {}), "nodes": 1}
    loader["cpu_cores"] = min(float(loader.get("cpu_cores", 1.0)), 1.0)
    request.update(task=AUDIT_TASK, knobs={**own, **knobs, "loader": loader}, audit=orders)
    audit_of = {"job_id": job.id, "node_id": audit.node_id, "task": orders["task"]}
    if orders["task"] == "train":
        audit_of["steps"] = [audit.from_step + 1, knobs["max_steps"]]
    return job_copy(
        job,
        name=f"audit of job {job.id}, {what}",
        reason=f"queued: an audit of job {job.id}, for a node other than {audit.node_id}",
        request=request,
        spec={**job.spec, "task": AUDIT_TASK, "audit_of": audit_of},
        identity=audit_of,
        max_tokens_micro=0,  # nothing held, nothing charged: the platform's own check
    )


def decide(session: Session, audit: TrainerAudit, rates: Rates, storage_root: Path) -> None:
    job = session.get(Job, audit.job_id)
    audit_job = session.get(Job, audit.audit_job_id) if audit.audit_job_id else None
    assert job is not None
    if audit_job is not None and UNUSABLE_CHECKPOINT in audit_job.status_reason:
        detail = f"its checkpoint at step {audit.from_step} cannot be loaded"
        conclude(session, audit, job, rates, audit_job, audit.from_step, 0,
                 f"{detail} ({audit_job.status_reason})")  # fmt: skip
        return
    if audit_job is None or audit_job.status != JobStatus.SUCCEEDED.value:
        why = audit_job.status_reason if audit_job is not None else "it was deleted"
        if retry(session, audit, job, audit_job, why):
            return
        if refereeing(audit):
            first_finding_stands(session, audit, job, rates, f"the referee could not ({why})")
            return
        close(session, audit, job, rates, f"the audit could not be made ({why})")
        return
    if job_request(job).task != "train":
        difference = results_difference(storage_root, job, audit_job)
        if difference is None:
            close(session, audit, job, rates, "the results to compare are no longer stored")
            return
        task = job_request(job).task
        detail = f"its {task} results differ from the audit's: {difference}" if difference else ""
        conclude(session, audit, job, rates, audit_job, 1, 1, detail)
        return
    until = audit.until_step or audit.from_step
    claimed = claimed_losses(session, audit, until)
    replayed = replayed_losses(session, audit_job.id)
    steps = range(audit.from_step + 1, until + 1)
    wrong = [s for s in steps if not agrees(claimed.get(s), replayed.get(s))]
    detail = ""
    if wrong:
        step = wrong[0]
        detail = (
            f"its loss at step {step} was {claimed.get(step)}, trained again from its "
            f"checkpoint at step {audit.from_step}: {replayed.get(step)}"
        )
    conclude(session, audit, job, rates, audit_job, until, len(steps), detail)


def conclude(
    session: Session, audit: TrainerAudit, job: Job, rates: Rates, audit_job: Job, step: int,
    checked: int, detail: str,
) -> None:  # fmt: skip
    """An audit job's finding (``detail``: what differed, '' for nothing): a first
    disagreement goes to a referee; a referee's finding judges both the audited node and
    the first auditor."""
    auditor = auditor_of(session, audit_job.id)
    if detail and ask_referee(session, audit, job, auditor, audit_job.id, detail):
        return
    if refereeing(audit):
        judge_first_auditor(session, audit, rates, valid=bool(detail), referee=auditor, step=step)
    judge(session, audit, job, rates, step, checked, auditor, detail)


def judge(
    session: Session, audit: TrainerAudit, job: Job, rates: Rates, step: int, checked: int,
    validator: int, detail: str,
) -> None:  # fmt: skip
    """The audit's verdict, as any other (``apply_verdict``); ``detail``: what differed
    ('' when nothing did). A valid one releases the credit only once no other audit of the
    node in the job is open."""
    verdict = VerdictEvent(audit.node_id, step, not detail, checked, validator, detail[:1000])
    audit.status, audit.detail, audit.decided_at = (
        "valid" if verdict.valid else "invalid",
        verdict.detail,
        utcnow(),
    )
    session.flush()
    release = not (verdict.valid and audit.node_id in audited_nodes(session, job.id))
    apply_verdict(session, job, verdict, rates, {audit.node_id}, release=release)
    if not verdict.valid:
        recompute(session, audit, job, rates)


def agrees(claimed: float | None, replayed: float | None) -> bool:
    if claimed is None or replayed is None:
        return False
    if math.isnan(claimed) or math.isnan(replayed):  # an honestly diverged run: both
        return math.isnan(claimed) and math.isnan(replayed)
    return math.isclose(claimed, replayed, rel_tol=AUDIT_RELATIVE, abs_tol=AUDIT_ABSOLUTE)


def replayed_losses(session: Session, audit_job_id: int) -> dict[int, float]:
    """The audit's loss per step (its last attempt's, where it ran more than once)."""
    found: dict[int, float] = {}
    rows = session.execute(
        select(JobMetric.step, JobMetric.values)
        .where(JobMetric.job_id == audit_job_id)
        .order_by(JobMetric.id)
    )
    for step, values in rows:
        if isinstance(values.get("loss"), int | float):
            found[step] = float(values["loss"])
    return found


def auditor_of(session: Session, audit_job_id: int) -> int:
    """The node the audit's trainer ran on (its usage says; before any, its placement)."""
    for payload in session.scalars(
        select(JobEvent.payload)
        .where(JobEvent.job_id == audit_job_id, JobEvent.kind == "usage")
        .order_by(JobEvent.id.desc())
    ):
        if payload.get("stage") == "trainer":
            return int(payload["node_id"])
    audit_job = session.get(Job, audit_job_id)
    placement = (audit_job.placement if audit_job is not None else None) or []
    slots = [slot for slot in placement if slot.get("role", "worker") == "worker"]
    return int(slots[0]["node_id"]) if slots else 0


def close(session: Session, audit: TrainerAudit, job: Job, rates: Rates, why: str) -> None:
    """An audit that gives no verdict: the credit it held is released (unless the node's
    work in the job was refused otherwise), and the log says why."""
    audit.status, audit.detail, audit.decided_at = "unaudited", why[:1000], utcnow()
    session.flush()
    account = pending_account(session, job.id, audit.node_id)
    held = audit.node_id in audited_nodes(session, job.id)  # by another audit still open
    if account is not None and not held and not refused_in_job(session, job.id, audit.node_id):
        memo = f"job {job.id}: node {audit.node_id}'s work, released unaudited: {why}"
        release_pending(session, account, rates, memo=memo[:500])
    add_log(session, job, f"node {audit.node_id}'s audit: {why}; its credit is released")
