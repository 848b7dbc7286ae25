"""The dispatcher: the gateway's background loop and the single writer of job state.

Each round: reconcile registered nodes with Ray's node table, place queued jobs (pure
scheduler), start a runner per placed job, then collect every running job's events —
metrics, metered usage, checkpoints, status — and enforce cancellation and runtime limits.
A terminal state settles the ledger once. Runner state lives in Ray and event cursors in the
database, so a restarted gateway picks up where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from compute.billing import UsageReport, job_estimate, metered_cost, rates_from
from compute.cluster_access import ClusterAccess
from compute.job_state import JobStatus
from compute.jobs import finish_job, source_model_path, transition_job
from compute.models import Job, JobMetric, Node
from compute.nodes import banned_since
from compute.scheduling import plan_queue, strategy_knobs
from core.db import session_scope, utcnow
from core.settings import Settings
from ledger.pricing import ResourceSeconds, tokens
from ray_module.contract import RunConfig, WorkerPlan
from ray_module.data.request import DataRequest
from ray_module.errors import SettingsError, describe
from ray_module.events import (
    ArtifactEvent,
    CheckpointEvent,
    MetricEvent,
    RecordedEvent,
    RunState,
    StatusEvent,
    UsageEvent,
)
from ray_module.models.sources import ModelRequest
from ray_module.resources import live_nodes, resource_shortfall
from ray_module.runner import client as runners
from ray_module.strategies.registry import get_strategy

log = logging.getLogger(__name__)


ACTIVE = (JobStatus.SCHEDULED.value, JobStatus.RUNNING.value)


class Dispatcher:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        cluster: ClusterAccess | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.rates = rates_from(settings)
        self.cluster = cluster
        # Bans up to here are handled: shut out by the running cluster's start, or reported.
        self.bans_handled_until = cluster.started_at if cluster is not None else None

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad round must not stop the platform
                log.exception("dispatcher round failed")
            stop.wait(self.settings.dispatch_interval_s)

    def tick(self) -> None:
        self.shut_out_banned_nodes()
        with session_scope(self.session_factory) as session:
            self.reconcile_nodes(session)
        self.schedule()
        with session_scope(self.session_factory) as session:
            scheduled = session.scalars(
                select(Job.id).where(Job.status == JobStatus.SCHEDULED.value)
            ).all()
            running = session.scalars(
                select(Job.id).where(Job.status == JobStatus.RUNNING.value)
            ).all()
        for job_id in scheduled:  # placed but not started (e.g. the gateway stopped between)
            self.launch(job_id)
        for job_id in running:
            try:
                with session_scope(self.session_factory) as session:
                    job = session.get(Job, job_id, with_for_update=True)
                    if job is not None:
                        self.poll(session, job)
            except Exception:  # one job's bad event must not stall the others
                log.exception("polling job %s failed", job_id)

    # -- nodes ----------------------------------------------------------------------------
    def shut_out_banned_nodes(self) -> None:
        """A node banned after the cluster started may still hold its token: restart the
        gateway's own Ray with a new one, then re-queue the jobs whose runners it took down
        (they resume from their last checkpoint). No transaction is open while Ray restarts."""
        cluster, since = self.cluster, self.bans_handled_until
        if cluster is None or since is None:
            return
        with session_scope(self.session_factory) as session:
            banned = [(node.id, node.banned_at) for node in banned_since(session, since)]
            active = session.scalars(select(Job.id).where(Job.status.in_(ACTIVE))).all()
        if not banned:
            return
        names = ", ".join(str(node_id) for node_id, _ in banned)
        self.bans_handled_until = max(at for _, at in banned if at is not None)
        if not cluster.rotatable:
            log.warning(
                "node %s banned, but this gateway does not own its Ray cluster: restart the "
                "cluster with a new RAY_AUTH_TOKEN to shut the node out of it",
                names,
            )
            return
        log.warning("shutting out banned node %s: restarting Ray with a new token", names)
        cluster.rotate()  # every runner and worker goes down with the old cluster
        reason = (
            f"the cluster restarted to shut out banned node {names}; "
            "will resume from its last checkpoint"
        )
        with session_scope(self.session_factory) as session:
            for job_id in active:
                job = session.get(Job, job_id, with_for_update=True)
                if job is not None and job.status in ACTIVE:
                    job.placement = None
                    job.event_cursor = 0
                    transition_job(session, job, JobStatus.QUEUED, reason)

    def reconcile_nodes(self, session: Session) -> None:
        """Ray's node table is the truth about which machines are really there."""
        live = live_nodes()
        now = utcnow()
        # Refresh liveness once per heartbeat interval, not every round: fewer writes.
        fresh_enough = dt.timedelta(seconds=self.settings.node_heartbeat_interval)
        for node in session.scalars(select(Node)):
            seen = live.get(node.id)
            if seen is None:
                if node.ray_alive:
                    node.ray_alive = False
                continue
            node.ray_node_id = seen.ray_node_id
            node.ray_alive = seen.alive
            if seen.alive:
                last = node.last_heartbeat_at
                if last is None or now - last >= fresh_enough:
                    node.last_heartbeat_at = now  # a live raylet is a heartbeat
                shortfall = resource_shortfall(seen, cpu_cores=node.cpu_cores, gpu=node.gpu)
                node.flag_reason = f"its Ray worker offers {shortfall}" if shortfall else ""

    # -- scheduling -----------------------------------------------------------------------
    def schedule(self) -> None:
        with session_scope(self.session_factory) as session:
            decision, jobs = plan_queue(session)
            for waiting in decision.waiting:
                job = jobs[waiting.job_id]
                if job.status_reason != waiting.reason:
                    job.status_reason = waiting.reason
                    job.updated_at = utcnow()
            placed: list[int] = []
            for placement in decision.placements:
                job = jobs[placement.job_id]
                job.placement = [slot.__dict__ for slot in placement.slots]
                job.attempts += 1
                job.event_cursor = 0
                nodes = sorted({slot.node_id for slot in placement.slots})
                transition_job(
                    session,
                    job,
                    JobStatus.SCHEDULED,
                    f"placed on node{'s' if len(nodes) > 1 else ''} "
                    f"{', '.join(map(str, nodes))} (attempt {job.attempts})",
                )
                placed.append(job.id)
        for job_id in placed:
            self.launch(job_id)

    def launch(self, job_id: int) -> None:
        with session_scope(self.session_factory) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status != JobStatus.SCHEDULED.value:
                return
            config = self.run_config(job, session)
            try:
                runners.launch_runner(config)
            except Exception as exc:  # Ray refused: back to the queue for the next round
                log.exception("could not start the runner of job %s", job_id)
                job.placement = None
                transition_job(session, job, JobStatus.QUEUED, f"could not start: {describe(exc)}")
                return
            transition_job(session, job, JobStatus.RUNNING, f"running (attempt {job.attempts})")

    def run_config(self, job: Job, session: Session) -> RunConfig:
        """The stored spec as the runner receives it: typed, data root and storage added."""
        spec = job.spec
        model = spec["model_config"]
        return RunConfig(
            job_id=job.id,
            strategy=job.strategy,
            model=ModelRequest(
                model_type=model["type"],
                model_name=source_model_path(session, model["model_name"]),
                pretrained=model.get("pretrained"),
                overrides=model.get("overrides") or {},
            ),
            data=DataRequest(**spec["data_config"], data_root=str(self.settings.data_root)),
            training=strategy_knobs(job),
            workers=tuple(WorkerPlan(**slot) for slot in job.placement or []),
            storage_path=str(self.settings.storage_path),
            attempt=job.attempts,
        )

    # -- running jobs ---------------------------------------------------------------------
    def poll(self, session: Session, job: Job) -> None:
        if job.status != JobStatus.RUNNING.value:
            return
        fresh = runners.fetch_events(job.id, job.event_cursor)
        if fresh is None:
            self.runner_lost(session, job)
            return
        for recorded in fresh:
            job.event_cursor = max(job.event_cursor, recorded.seq)
            if self.apply(session, job, recorded):
                return
        now = utcnow()
        budget = job_estimate(job, self.rates).total
        if job.cancel_requested_at is not None:
            self.end(session, job, JobStatus.CANCELLED, "cancelled while running")
        elif metered_cost(session, job, usage_reports(job), self.rates) >= budget > 0:
            self.end(
                session,
                job,
                JobStatus.FAILED,
                f"stopped: its budget of {tokens(budget)} tokens is used up",
            )
        elif job.started_at and now - job.started_at > dt.timedelta(seconds=job.max_runtime_s):
            self.end(
                session,
                job,
                JobStatus.FAILED,
                f"stopped: exceeded max_runtime_s ({job.max_runtime_s} s)",
            )
        elif attempt_stalled(job, now=now, timeout_s=self.settings.job_start_timeout_s):
            self.retry_or_fail(
                session,
                job,
                f"it did not start training within {self.settings.job_start_timeout_s} s",
            )

    def apply(self, session: Session, job: Job, recorded: RecordedEvent) -> bool:
        """Store one runner event; True when it ended the job (or its attempt)."""
        match recorded.event:
            case MetricEvent(step=step, values=values):
                session.add(JobMetric(job_id=job.id, step=step, values=values))
                if job.first_step_at is None:
                    job.first_step_at = utcnow()
                if step > 0:
                    job.status_reason = f"running (attempt {job.attempts}): {progress(job, step)}"
            case UsageEvent() as usage:
                add_usage(job, usage)
            case CheckpointEvent(step=step):
                job.status_reason = (
                    f"running (attempt {job.attempts}): {progress(job, step)}, checkpointed"
                )
            case ArtifactEvent(path=path):
                job.artifact_path = path
            case StatusEvent(state=RunState.SUCCEEDED):
                self.end(session, job, JobStatus.SUCCEEDED, "succeeded: training finished")
                return True
            case StatusEvent(state=RunState.CANCELLED):
                self.end(session, job, JobStatus.CANCELLED, "cancelled while running")
                return True
            case StatusEvent(state=RunState.FAILED, reason=reason, retryable=retryable):
                reason = self.without_server_paths(reason)
                if retryable and job.cancel_requested_at is None:
                    self.retry_or_fail(session, job, reason)
                else:
                    self.end(session, job, JobStatus.FAILED, f"failed: {reason}")
                return True
        return False

    def without_server_paths(self, reason: str) -> str:
        """Users see paths relative to the data root or the storage, never where this
        server keeps them (an absolute path also tells which machine and user run it)."""
        for root in (self.settings.storage_path, self.settings.data_root):
            reason = reason.replace(f"{root}/", "").replace(str(root), ".")
        return reason

    def runner_lost(self, session: Session, job: Job) -> None:
        if job.cancel_requested_at is not None:
            self.end(session, job, JobStatus.CANCELLED, "cancelled while running")
        else:
            self.retry_or_fail(session, job, "its runner was lost")

    def retry_or_fail(self, session: Session, job: Job, why: str) -> None:
        """A lost node or worker: resume from the last checkpoint on live nodes, a few times."""
        log.warning("job %s attempt %s lost: %s", job.id, job.attempts, why)
        runners.stop_runner(job.id)
        if job.attempts >= self.settings.job_max_attempts:
            self.end(session, job, JobStatus.FAILED, f"failed after {job.attempts} attempts: {why}")
            return
        job.placement = None
        job.event_cursor = 0
        transition_job(
            session,
            job,
            JobStatus.QUEUED,
            f"attempt {job.attempts} lost ({why}); will resume from its last checkpoint",
        )

    def end(self, session: Session, job: Job, status: JobStatus, reason: str) -> None:
        """Stop the runner (frees its placement) and settle with the metered usage."""
        runners.stop_runner(job.id)
        job.placement = None
        finish_job(session, job, status, reason, usage=usage_reports(job), rates=self.rates)


def progress(job: Job, step: int) -> str:
    """ "round 4 of 10", "step 30 of 60": how far a running job is, in its strategy's unit."""
    try:
        strategy = get_strategy(job.strategy)
        return strategy.progress(strategy.parse_settings(strategy_knobs(job)), step)
    except SettingsError:  # a spec stored under older rules: still say how far it is
        return f"step {step}"


def attempt_stalled(job: Job, *, now: dt.datetime, timeout_s: int) -> bool:
    """An attempt that has sent nothing but its start event for too long (e.g. it waits for
    the resources of a node that died before Ray noticed) is given up and re-planned.

    The event cursor restarts with every attempt and ``updated_at`` is set when the attempt
    starts running; training events move the cursor past 1.
    """
    return job.event_cursor <= 1 and now - job.updated_at > dt.timedelta(seconds=timeout_s)


def add_usage(job: Job, usage: UsageEvent) -> None:
    """Add a node's completed work to the job's metered usage (a JSON column by node id)."""
    totals = dict(job.usage or {})  # a new dict: JSON columns track assignment, not mutation
    key = str(usage.node_id)
    current = totals.get(key) or {name: 0.0 for name in usage.figures()}
    totals[key] = {name: current[name] + value for name, value in usage.figures().items()}
    job.usage = totals


def usage_reports(job: Job) -> list[UsageReport]:
    return [
        UsageReport(int(node_id), ResourceSeconds(**figures))
        for node_id, figures in (job.usage or {}).items()
    ]


def start_dispatcher(
    session_factory: sessionmaker[Session],
    settings: Settings,
    cluster: ClusterAccess | None = None,
) -> Callable[[], None]:
    """Run the dispatcher in a daemon thread; return the function that stops it."""
    stop = threading.Event()
    dispatcher = Dispatcher(session_factory, settings, cluster)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="dispatcher", daemon=True)
    thread.start()

    def stop_it() -> None:
        stop.set()
        thread.join(timeout=30)

    return stop_it
