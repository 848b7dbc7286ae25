"""The dispatcher: the gateway's background loop and the single writer of job state.

Each round: reconcile registered nodes with what their agents say, place queued jobs (pure
scheduler, only when its inputs changed), start each placed attempt (its nodes' agents find
it at their next ask), then collect every running job's events and act on them
(``policy`` decides: store metrics and usage, stop for cancel, budget or
max_runtime_s, re-plan a lost attempt, settle). Every round reads in a short transaction,
asks the runners' side with none open, and writes each outcome in a short transaction
guarded by the state it read. Runs live on the nodes and event cursors in the database, so
a restarted gateway picks up where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from compute.audits.lifecycle import advance, due, link_audit_checkpoint
from compute.audits.snapshots import maybe_snapshot, split_driver_node
from compute.audits.tasks import maybe_audit_task
from compute.billing.metering import (
    describe_unsaved,
    is_saved,
    saved_by,
    unsaved_events,
    with_unsaved,
)
from compute.billing.pending_credit import credit_saved_work
from compute.billing.service import charged_nodes, job_estimate, node_owners, rates_from
from compute.billing.usage import JobUsage
from compute.billing.verified_credit import apply_verdict
from compute.dispatch.leadership import hold_lease, holder_name, release_lease
from compute.dispatch.metrics import DISPATCHER_ERRORS, DISPATCHER_ROUNDS
from compute.dispatch.node_reconciliation import node_changes
from compute.dispatch.policy import Decision, DispatchLimits, RunningJob, decide, without_roots
from compute.dispatch.run_configs import run_config
from compute.dispatch.scheduling import QueueView, eligible_nodes, jobs_by_id
from compute.jobs.events import add_log, record_event
from compute.jobs.service import finish_job, transition_job
from compute.jobs.state import ACTIVE, JobStatus
from compute.jobs.strategy import job_settings
from compute.models import Job, JobMetric, Node
from compute.nodes.service import prune_heartbeats
from compute.storage.service import expire_storage
from core.db import read_only_factory, session_scope, utcnow
from core.settings import Settings
from ledger.pricing import Rates
from protocol.errors import SettingsError
from protocol.events import (
    ArtifactEvent,
    CheckpointEvent,
    LogEvent,
    MetricEvent,
    RecordedEvent,
    UsageEvent,
    VerdictEvent,
)
from protocol.nodes import LiveNode
from protocol.run import RunConfig, WorkerPlan
from protocol.strategies.registry import get_rules

log = logging.getLogger(__name__)
AUDIT_SWEEP_S = 1.0  # how often ended jobs' audits are launched and decided


class RunnerPort(Protocol):
    """Everything the dispatcher asks of where jobs run (the nodes' agents, ``AgentRunners``;
    tests substitute a slow or failing one)."""

    def live_nodes(self) -> dict[int, LiveNode]: ...
    def launch_runner(self, config: RunConfig) -> None: ...
    def fetch_events(self, job_id: int, after: int) -> list[RecordedEvent] | None: ...
    def stop_runner(self, job_id: int) -> None: ...
    def why_lost(self, job_id: int) -> str:
        """Why ``fetch_events`` last said the job's runner is gone."""
        ...


class Dispatcher:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        runners: RunnerPort,
    ) -> None:
        self.session_factory = session_factory
        self.read_factory = read_only_factory(session_factory)
        self.settings = settings
        self.rates = rates_from(settings)
        self.runners = runners
        self.limits = DispatchLimits(
            max_attempts=settings.job_max_attempts,
            start_timeout_s=settings.job_start_timeout_s,
            hidden_roots=(str(settings.storage_path), str(settings.data_root)),
        )
        self.planned_for: tuple | None = None  # the scheduler's inputs at its last run
        self.queue = QueueView()
        self.reasons: dict[int, str] = {}  # the waiting reasons last written
        self.holder = holder_name()
        self.leading = False
        self.renewed_at = 0.0  # time.monotonic() of the last renewal
        self.expired_at = -math.inf  # time.monotonic() of the last retention sweep
        self.audits_swept_at = -math.inf

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if self.lead():
                        with DISPATCHER_ROUNDS.time():
                            self.tick()
                except Exception:  # one bad round must not stop the platform
                    DISPATCHER_ERRORS.inc()
                    log.exception("dispatcher round failed")
                stop.wait(self.settings.dispatch_interval_s)
        finally:
            self.resign()

    def lead(self) -> bool:
        """Hold the dispatcher lease (one leader per database); True while this process
        dispatches. Renewed every round and between the runner calls of a long round."""
        with session_scope(self.session_factory) as session:
            leading = hold_lease(session, self.holder, ttl_s=self.settings.leader_lease_s)
        if leading:
            self.renewed_at = time.monotonic()
        if leading and not self.leading:
            log.info("this process dispatches now (%s)", self.holder)
            self.planned_for = None
            self.reasons = {}  # written by another leader meanwhile, perhaps
        elif self.leading and not leading:
            log.warning("another process took the dispatcher lease; this one stops dispatching")
        self.leading = leading
        return leading

    def still_leading(self) -> bool:
        """Between the runner calls of a round: renew once a third of the lease has passed
        (not once per job: each renewal is a write)."""
        if time.monotonic() - self.renewed_at < self.settings.leader_lease_s / 3:
            return self.leading
        return self.lead()

    def resign(self) -> None:
        if self.leading:
            with session_scope(self.session_factory) as session:
                release_lease(session, self.holder)
            self.leading = False

    def tick(self) -> None:
        self.reconcile_nodes(self.runners.live_nodes())
        self.schedule()
        self.start_placed()
        self.poll_running()
        self.sweep_audits()
        self.expire_storage()

    def sweep_audits(self) -> None:
        """Audits of trainers (``compute.audits``): launched once their job ends, decided
        once their audit job does."""
        now = time.monotonic()
        if now - self.audits_swept_at < AUDIT_SWEEP_S:
            return
        self.audits_swept_at = now
        with session_scope(self.read_factory) as session:
            to_launch, to_decide = due(session)
        for audit_id in [*to_launch, *to_decide]:
            try:  # each in its own transaction: one that fails holds up no other
                with session_scope(self.session_factory) as session:
                    advance(session, audit_id, self.settings.storage_path, self.rates,
                            self.settings.secret_key)  # fmt: skip
            except Exception:
                log.exception("audit %s could not go on", audit_id)

    def expire_storage(self) -> None:
        """Once a minute: heartbeat samples past their retention, and the files of jobs
        finished too long ago (the artifact retention)."""
        now = time.monotonic()
        if now - self.expired_at < 60:
            return
        self.expired_at = now
        with session_scope(self.session_factory) as session:
            prune_heartbeats(session)
            expire_storage(
                session,
                storage_root=self.settings.storage_path,
                retention_days=self.settings.artifact_retention_days,
            )

    # -- nodes ----------------------------------------------------------------------------
    def reconcile_nodes(self, live: dict[int, LiveNode]) -> None:
        """What the agents say (read before any transaction) is the truth about which
        machines are really there. Written only where something changed."""
        now = utcnow()
        # Refresh liveness once per heartbeat interval, not every round: fewer writes.
        fresh_enough = dt.timedelta(seconds=self.settings.node_heartbeat_interval)
        # Only rows that can change: those the agents name, and those still marked alive (a
        # row neither named nor alive has nothing to change), not every node ever registered.
        maybe = select(Node).where(or_(Node.ray_alive.is_(True), Node.id.in_(list(live))))
        with session_scope(self.read_factory) as session:
            changes = {
                node.id: change
                for node in session.scalars(maybe)
                if (change := node_changes(node, live.get(node.id), now, fresh_enough))
            }
        if not changes:
            return
        with session_scope(self.session_factory) as session:
            for node_id, change in changes.items():
                node = session.get(Node, node_id)
                if node is not None:
                    for name, value in change.items():
                        setattr(node, name, value)

    # -- scheduling -----------------------------------------------------------------------
    def schedule(self) -> None:
        """Place queued jobs, only when what the scheduler looks at has changed since it
        last ran: jobs queued or re-queued, jobs that ended (freed capacity), nodes."""
        with session_scope(self.read_factory) as session:
            if scheduling_inputs(session) == self.planned_for:
                return
        with session_scope(self.session_factory) as session:
            # The inputs as they are before the plan reads them: a job submitted while the
            # plan runs (PostgreSQL lets it commit meanwhile) then still differs next round.
            # Taken after the plan, they named that job as planned for, and it waited forever.
            seen = scheduling_inputs(session)
            decision = self.queue.plan(session)
            changed = {
                waiting.job_id: waiting.reason
                for waiting in decision.waiting
                if self.reasons.get(waiting.job_id) != waiting.reason
            }
            for job in jobs_by_id(session, changed):
                if job.status == JobStatus.QUEUED.value and job.status_reason != changed[job.id]:
                    job.status_reason = changed[job.id]
                    job.updated_at = utcnow()
            self.reasons = {waiting.job_id: waiting.reason for waiting in decision.waiting}
            placements = {placement.job_id: placement for placement in decision.placements}
            for job in jobs_by_id(session, placements):
                placement = placements[job.id]
                job.placement = [placement_slot(slot) for slot in placement.slots]
                job.attempts += 1
                job.event_cursor = 0
                job.cluster_address = None  # the new attempt's cluster is yet to form
                nodes = sorted({slot.node_id for slot in placement.slots})
                where = (
                    f"placed on node{'s' if len(nodes) > 1 else ''} "
                    f"{', '.join(map(str, nodes))} (attempt {job.attempts})"
                )
                transition_job(session, job, JobStatus.SCHEDULED, where)
                add_log(session, job, where)
            session.flush()
            # Placing jobs changed the inputs: the next round plans once more, and stops.
            self.planned_for = seen

    def start_placed(self) -> None:
        """Start a runner for each placed job (placed this round, or before a restart)."""
        with session_scope(self.read_factory) as session:
            placed = session.scalars(
                select(Job).where(Job.status == JobStatus.SCHEDULED.value).order_by(Job.id)
            ).all()
            configs = [(job.id, job.attempts, self.run_config(job, session)) for job in placed]
            for job in placed:  # an audit's kept checkpoint, linked in as its own
                link_audit_checkpoint(session, job.id, self.settings.storage_path)
        for job_id, attempt, config in configs:
            if not self.still_leading():
                return
            error = ""
            try:
                self.runners.launch_runner(config)
            except Exception as exc:  # refused: back to the queue for the next round
                log.exception("could not start the runner of job %s", job_id)
                text = str(exc).strip()
                error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]
            with session_scope(self.session_factory) as session:
                job = session.get(Job, job_id, with_for_update=True)
                if job is None or job.status != JobStatus.SCHEDULED.value:
                    continue
                if job.attempts != attempt:
                    continue
                if error:
                    requeue(session, job, f"could not start: {error}", attempt_lost=False)
                else:
                    transition_job(
                        session, job, JobStatus.RUNNING, f"running (attempt {job.attempts})"
                    )

    def run_config(self, job: Job, session: Session) -> RunConfig:
        return run_config(
            job,
            session,
            data_root=self.settings.data_root,
            storage_path=self.settings.storage_path,
        )

    # -- running jobs ---------------------------------------------------------------------
    def poll_running(self) -> None:
        with session_scope(self.read_factory) as session:
            running = running_jobs(session, self.rates)
        for job in running:
            if not self.still_leading():
                return
            try:
                self.poll(job)
            except Exception:  # one job's bad event must not stall the others
                log.exception("polling job %s failed", job.job_id)

    def poll(self, job: RunningJob) -> None:
        fresh = self.runners.fetch_events(job.job_id, job.event_cursor)
        why = self.runners.why_lost(job.job_id) if fresh is None else ""
        decision = decide(
            job, fresh, now=utcnow(), limits=self.limits, rates=self.rates, lost_because=why
        )
        if decision.stops_runner:
            if decision.status is JobStatus.QUEUED:
                log.warning("job %s: %s", job.job_id, decision.reason)
            self.runners.stop_runner(job.job_id)  # frees its placement before anyone re-plans
        with session_scope(self.session_factory) as session:
            self.record(session, job, decision)

    def record(self, session: Session, seen: RunningJob, decision: Decision) -> None:
        """Write a decision, if the job is still as it was read (another leader or a
        stale round may have moved it on)."""
        job = session.get(Job, seen.job_id, with_for_update=True)
        if (
            job is None
            or job.status != JobStatus.RUNNING.value
            or job.attempts != seen.attempt
            or job.event_cursor != seen.event_cursor
        ):
            log.info("job %s changed while its events were fetched; round skipped", seen.job_id)
            return
        for recorded in decision.events:
            job.event_cursor = max(job.event_cursor, recorded.seq)
            self.store(session, job, recorded)
        if decision.status is None:
            return
        if decision.status is JobStatus.QUEUED:
            requeue(session, job, decision.reason)
            add_log(session, job, decision.reason, level="warning")
            return
        placed_on = placement_nodes(job)
        if decision.status is JobStatus.SUCCEEDED and self.settings.audit_trainers:
            # Drawn before it settles: an audited predictor's credit waits for the audit.
            maybe_audit_task(session, job, self.settings.secret_key)
        if decision.attempt_lost:
            drop_unsaved_usage(session, job)
        else:
            # Success saved everything (its final model); a job cancelled, stopped at a
            # limit or failed by its own doing used what it ran, checkpointed or not.
            save_usage(session, job, unsaved_events(job.unsaved_usage))
            job.unsaved_usage, job.saved_step = None, None
        job.placement = None
        level = "error" if decision.status is JobStatus.FAILED else "info"
        add_log(session, job, decision.reason, level=level)
        finish_job(
            session,
            job,
            decision.status,
            decision.reason,
            usage=JobUsage.from_column(job.usage),
            rates=self.rates,
            # A job that ran pays the minimum charge even if it ended before any work.
            placed_on=() if decision.attempt_lost else placed_on,
        )

    def store(self, session: Session, job: Job, recorded: RecordedEvent) -> None:
        match recorded.event:
            case MetricEvent(step=step, values=values):
                session.add(JobMetric(job_id=job.id, step=step, values=values))
                if job.first_step_at is None:
                    job.first_step_at = utcnow()
                if step > 0:
                    job.status_reason = f"running (attempt {job.attempts}): {progress(job, step)}"
                    note = progress_note(job, values)
                    if note:
                        job.status_reason += f"; {note}"
            case UsageEvent() as usage:
                if is_saved(usage, job.saved_step):
                    save_usage(session, job, [usage])
                    credit_saved_work(session, job, self.rates, step=job.saved_step)
                else:
                    job.unsaved_usage = with_unsaved(job.unsaved_usage, usage)
            case CheckpointEvent(step=step):
                job.saved_step = max(step, job.saved_step or 0)
                saved, job.unsaved_usage = saved_by(job.unsaved_usage, step)
                record_event(session, job, "checkpoint", {"step": step, "attempt": job.attempts})
                if self.settings.audit_trainers:
                    maybe_snapshot(
                        session, job, self.settings.storage_path, self.settings.secret_key
                    )
                save_usage(session, job, saved)
                credit_saved_work(session, job, self.rates, step=step)
                job.status_reason = (
                    f"running (attempt {job.attempts}): {progress(job, step)}, checkpointed"
                )
            case ArtifactEvent(path=path):
                job.artifact_path = path
            case VerdictEvent() as verdict:
                if verdict.node_id == split_driver_node(job):
                    add_log(
                        session,
                        job,
                        f"a verdict on node {verdict.node_id}, which drives this job (only an "
                        "audit on another node checks it), was ignored",
                        level="warning",
                    )
                else:
                    apply_verdict(session, job, verdict, self.rates, set(placement_nodes(job)))
            case LogEvent(message=message, level=level, source=source):
                text = without_roots(message, self.limits.hidden_roots)
                add_log(session, job, text, level=level, source=source)


def save_usage(session: Session, job: Job, usages: list[UsageEvent]) -> None:
    """Usage a checkpoint (or the final model) saved: from now on it is charged and credited;
    each part goes into the job's event stream."""
    if not usages:
        return
    job.usage = JobUsage.from_column(job.usage).plus(usages).to_column()
    for usage in usages:
        record_event(
            session,
            job,
            "usage",
            {
                "node_id": usage.node_id,
                "stage": usage.stage,
                "step": usage.step,
                "attempt": job.attempts,
                **usage.figures(),
            },
        )


def requeue(session: Session, job: Job, reason: str, *, attempt_lost: bool = True) -> None:
    """Back to the queue, placement given up, for the scheduler to place again. A lost
    attempt resumes from its last checkpoint: its unsaved work is dropped, and its nodes take
    no new work until their agents ask again (one may be the machine that died). An attempt
    that could not start (``attempt_lost=False``) ran nothing: only its placement goes."""
    if attempt_lost:
        now = utcnow()
        for node_id in placement_nodes(job):
            node = session.get(Node, node_id)
            if node is not None:
                node.lost_run_at = now
        drop_unsaved_usage(session, job)
    job.placement = None
    job.event_cursor = 0
    transition_job(session, job, JobStatus.QUEUED, reason)


def drop_unsaved_usage(session: Session, job: Job) -> None:
    """An attempt ends without saving its last work: that work is neither charged nor
    credited (a resumed attempt redoes it from the checkpoint, and is paid for it once)."""
    lost = unsaved_events(job.unsaved_usage)
    if lost:
        since = (
            f"since its last checkpoint (step {job.saved_step})"
            if job.saved_step
            else "before its first checkpoint"
        )
        add_log(
            session,
            job,
            f"attempt {job.attempts}: the work {since} is not charged or credited "
            f"({describe_unsaved(lost)})",
            level="warning",
        )
    job.unsaved_usage, job.saved_step = None, None


def scheduling_inputs(session: Session) -> tuple:
    """What the scheduler's plan depends on, in a few cheap queries: the queue (count and
    newest id, so new, cancelled and re-queued jobs all show), the placed jobs (count: an
    ended job frees capacity) and the eligible nodes with their resources."""
    queued = session.execute(
        select(func.count(), func.max(Job.id)).where(
            Job.status == JobStatus.QUEUED.value, Job.cancel_requested_at.is_(None)
        )
    ).one()
    placed = session.scalar(select(func.count()).where(Job.status.in_(ACTIVE)))
    nodes = tuple(
        (n.id, n.gpu, n.cpu_cores, n.memory_gb, n.single_node_only, n.ray_pool)
        for n in eligible_nodes(session)
    )
    return (tuple(queued), placed, nodes)


def running_jobs(session: Session, rates: Rates) -> list[RunningJob]:
    """Snapshots of the running jobs, for decisions made with no transaction open."""
    jobs = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING.value).order_by(Job.id)
    ).all()
    owners = node_owners(session, jobs)
    return [
        RunningJob(
            job_id=job.id,
            attempt=job.attempts,
            event_cursor=job.event_cursor,
            updated_at=job.updated_at,
            started_at=job.started_at,
            max_runtime_s=job.max_runtime_s,
            cancel_requested=job.cancel_requested_at is not None,
            budget=job_estimate(job, rates).total,
            usage=JobUsage.from_column(job.usage),
            unsaved=tuple(unsaved_events(job.unsaved_usage)),
            charged_nodes=charged_nodes(owners, job),
        )
        for job in jobs
    ]


def progress(job: Job, step: int) -> str:
    """ "round 4 of 10", "step 30 of 60": how far a running job is, in its strategy's unit."""
    try:
        strategy, settings = job_settings(job)
        return strategy.progress(settings, step)
    except SettingsError:  # a spec stored under older rules: still say how far it is
        return f"step {step}"


def progress_note(job: Job, values: dict) -> str | None:
    """What the strategy reads in a metric point about what limits the run."""
    try:
        return get_rules(job.strategy).progress_note(values)
    except SettingsError:
        return None


def placement_slot(slot: WorkerPlan) -> dict:
    """A slot as the job's placement keeps it: where and how much, not the run-time trust
    figures (the run config adds those from the node as it is at launch)."""
    kept = asdict(slot)
    del kept["owner_id"], kept["valid_streak"]
    return kept


def placement_nodes(job: Job) -> list[int]:
    return sorted({int(slot["node_id"]) for slot in job.placement or []})


def start_dispatcher(
    session_factory: sessionmaker[Session],
    settings: Settings,
    runners: RunnerPort,
) -> Callable[[], None]:
    """Run the dispatcher in a daemon thread; return the function that stops it."""
    stop = threading.Event()
    dispatcher = Dispatcher(session_factory, settings, runners)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="dispatcher", daemon=True)
    thread.start()

    def stop_it() -> None:
        stop.set()
        thread.join(timeout=30)

    return stop_it
