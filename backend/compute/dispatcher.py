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
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from compute.billing import UsageReport, job_estimate, metered_cost, rates_from
from compute.job_state import JobStatus
from compute.jobs import finish_job, source_model_path, transition_job
from compute.models import Job, JobMetric, Node
from compute.scheduling import plan_queue
from core.db import session_scope, utcnow
from core.settings import Settings
from ledger.pricing import ResourceSeconds, tokens
from ray_module import events, training
from ray_module.es.settings import parse_es_settings
from ray_module.federated.settings import parse_fedavg_settings
from ray_module.resource_manager import live_nodes, resource_shortfall
from ray_module.training import RunConfig, WorkerPlan

log = logging.getLogger(__name__)

DATA_FIELDS = (
    "data_source",
    "dataset_name",
    "dataset_config",
    "path",
    "split",
    "text_column",
    "target_column",
    "max_samples",
    "validation_split",
)


class Dispatcher:
    def __init__(self, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.rates = rates_from(settings)

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad round must not stop the platform
                log.exception("dispatcher round failed")
            stop.wait(self.settings.dispatch_interval_s)

    def tick(self) -> None:
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
                training.launch_runner(config)
            except Exception as exc:  # Ray refused: back to the queue for the next round
                log.exception("could not start the runner of job %s", job_id)
                job.placement = None
                transition_job(
                    session, job, JobStatus.QUEUED, f"could not start: {training.describe(exc)}"
                )
                return
            transition_job(session, job, JobStatus.RUNNING, f"running (attempt {job.attempts})")

    def run_config(self, job: Job, session: Session) -> RunConfig:
        spec = job.spec
        model = spec["model_config"]
        data = {k: spec["data_config"].get(k) for k in DATA_FIELDS}
        data["data_root"] = str(self.settings.data_root)
        return RunConfig(
            job_id=job.id,
            strategy=job.strategy,
            model={
                "model_type": model["type"],
                "model_name": source_model_path(session, model["model_name"]),
                "pretrained": model.get("pretrained"),
                "overrides": model.get("overrides") or {},
            },
            data=data,
            training={
                k: v for k, v in (spec.get("training_config") or {}).items() if k != "strategy"
            },
            workers=tuple(WorkerPlan(**slot) for slot in job.placement or []),
            storage_path=str(self.settings.storage_path),
            attempt=job.attempts,
        )

    # -- running jobs ---------------------------------------------------------------------
    def poll(self, session: Session, job: Job) -> None:
        if job.status != JobStatus.RUNNING.value:
            return
        fresh = training.fetch_events(job.id, job.event_cursor)
        if fresh is None:
            self.runner_lost(session, job)
            return
        for event in fresh:
            job.event_cursor = max(job.event_cursor, int(event["seq"]))
            if self.apply(session, job, event):
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

    def apply(self, session: Session, job: Job, event: dict[str, Any]) -> bool:
        """Store one runner event; True when it ended the job (or its attempt)."""
        kind = event["type"]
        if kind == events.METRIC:
            step = int(event["step"])
            session.add(JobMetric(job_id=job.id, step=step, values=event["values"]))
            if job.first_step_at is None:
                job.first_step_at = utcnow()
            if step > 0:
                job.status_reason = f"running (attempt {job.attempts}): {progress(job, step)}"
        elif kind == events.USAGE:
            add_usage(job, event)
        elif kind == events.CHECKPOINT:
            job.status_reason = (
                f"running (attempt {job.attempts}): {progress(job, int(event['step']))}, "
                "checkpointed"
            )
        elif kind == events.ARTIFACT:
            job.artifact_path = str(event["path"])
        elif kind == events.STATUS:
            state = event["state"]
            if state == "succeeded":
                self.end(session, job, JobStatus.SUCCEEDED, "succeeded: training finished")
                return True
            if state == "cancelled":
                self.end(session, job, JobStatus.CANCELLED, "cancelled while running")
                return True
            if state == "failed":
                if event.get("retryable") and job.cancel_requested_at is None:
                    self.retry_or_fail(session, job, str(event.get("reason", "")))
                else:
                    self.end(session, job, JobStatus.FAILED, f"failed: {event.get('reason')}")
                return True
        return False

    def runner_lost(self, session: Session, job: Job) -> None:
        if job.cancel_requested_at is not None:
            self.end(session, job, JobStatus.CANCELLED, "cancelled while running")
        else:
            self.retry_or_fail(session, job, "its runner was lost")

    def retry_or_fail(self, session: Session, job: Job, why: str) -> None:
        """A lost node or worker: resume from the last checkpoint on live nodes, a few times."""
        log.warning("job %s attempt %s lost: %s", job.id, job.attempts, why)
        training.stop_runner(job.id)
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
        training.stop_runner(job.id)
        job.placement = None
        finish_job(session, job, status, reason, usage=usage_reports(job), rates=self.rates)


def progress(job: Job, step: int) -> str:
    """ "round 4 of 10", "step 30 of 60": how far a running job is, in its strategy's unit."""
    training = (job.spec or {}).get("training_config") or {}
    try:
        if job.strategy == "fedavg":
            return f"round {step} of {parse_fedavg_settings(training).rounds}"
        if job.strategy == "es":
            return f"step {step} of {parse_es_settings(training).steps}"
    except ValueError:  # a spec stored under older rules: still say how far it is
        return f"step {step}"
    total = training.get("max_steps")
    return f"step {step}" + (f" of {total}" if total else "")


def attempt_stalled(job: Job, *, now: dt.datetime, timeout_s: int) -> bool:
    """An attempt that has sent nothing but its start event for too long (e.g. it waits for
    the resources of a node that died before Ray noticed) is given up and re-planned.

    The event cursor restarts with every attempt and ``updated_at`` is set when the attempt
    starts running; training events move the cursor past 1.
    """
    return job.event_cursor <= 1 and now - job.updated_at > dt.timedelta(seconds=timeout_s)


def add_usage(job: Job, event: dict[str, Any]) -> None:
    usage = dict(job.usage or {})  # a new dict: JSON columns track assignment, not mutation
    key = str(event["node_id"])
    current = usage.get(
        key, {"gpu_seconds": 0.0, "cpu_core_seconds": 0.0, "memory_gb_seconds": 0.0}
    )
    usage[key] = {name: current[name] + float(event[name]) for name in current}
    job.usage = usage


def usage_reports(job: Job) -> list[UsageReport]:
    return [
        UsageReport(int(node_id), ResourceSeconds(**figures))
        for node_id, figures in (job.usage or {}).items()
    ]


def start_dispatcher(
    session_factory: sessionmaker[Session], settings: Settings
) -> Callable[[], None]:
    """Run the dispatcher in a daemon thread; return the function that stops it."""
    stop = threading.Event()
    dispatcher = Dispatcher(session_factory, settings)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="dispatcher", daemon=True)
    thread.start()

    def stop_it() -> None:
        stop.set()
        thread.join(timeout=30)

    return stop_it
