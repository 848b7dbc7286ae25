"""Nodes, their heartbeat samples, jobs and per-step training metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow


class Node(Base):
    __tablename__ = "nodes"
    __table_args__ = (
        UniqueConstraint("owner_id", "hostname", name="uq_nodes_owner_hostname"),
        CheckConstraint("approval IN ('pending', 'approved', 'banned')", name="approval_known"),
        CheckConstraint("gpu >= 0 AND cpu_cores > 0 AND memory_gb > 0", name="resources_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    cpu_cores: Mapped[float] = mapped_column(Float)
    memory_gb: Mapped[float] = mapped_column(Float)
    approval: Mapped[str] = mapped_column(String(16), default="pending")
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set by the reconciler from Ray's view: None until the node's Ray worker first joins.
    ray_node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ray_alive: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Non-empty when the Ray node offers more than was registered: never scheduled then.
    flag_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # When an admin banned it: a Ray cluster started before then must be restarted with a
    # new token to shut the node out.
    banned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    drained_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deregistered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The agent said it is leaving (Ctrl-C): offline until its next heartbeat.
    left_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When its credential was last replaced (the old one is refused from then on).
    credential_reset_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Jobs on the nodes' own Ray: when the agent last asked what to run (it is ready to).
    runs_polled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Its agent takes only single-node jobs: it never shares a Ray cluster with another
    # owner's machine (the agent says so each time it asks for its runs).
    single_node_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The trusted Ray pool (an operator's own cluster) its agent is a member of, if any.
    ray_pool: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # What its agent says the machine offers (None: it has not said).
    offered_cpus: Mapped[float | None] = mapped_column(Float, nullable=True)
    offered_gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # When an attempt it took part in was lost: no new work until its agent asks again.
    lost_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Verified credit (compute.nodes.trust): its replayed results, and the current runs.
    results_valid: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    results_invalid: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    valid_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    invalid_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why it was sent back to an admin's approval (repeated invalid results); "" if it was not.
    suspended_reason: Mapped[str] = mapped_column(Text, default="", server_default="")


class NodeHeartbeat(Base):
    __tablename__ = "node_heartbeats"
    __table_args__ = (Index("ix_node_heartbeats_node_time", "node_id", "received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_used_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_utilization: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_memory_used_gb: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        CheckConstraint(
            "status IN ('queued', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status_known",
        ),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        # A user's jobs newest first (GET /jobs) as one index range, not a sort of them all.
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    model_type: Mapped[str] = mapped_column(String(32))
    strategy: Mapped[str] = mapped_column(String(32))
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    cpu_cores: Mapped[float] = mapped_column(Float)
    memory_gb: Mapped[float] = mapped_column(Float)
    max_runtime_s: Mapped[int] = mapped_column(Integer)
    max_tokens_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted, defaults filled in
    # The spec as checked at submit (protocol.run.JobRequest, in its stored JSON form): what
    # the scheduler, billing and the runner read; ``spec`` is what the API shows.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The scheduler's decision: [{"node_id", "gpu", "cpu_cores", "memory_gb"}] per worker.
    placement: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Metered resource-seconds of completed work per node: {"<node_id>": {...}}.
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Usage of the running attempt that no checkpoint covers yet, by "<step>/<node>/<stage>"
    # (compute/billing/metering.py), and the step of the attempt's last saved checkpoint.
    unsaved_usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    saved_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How many of the current runner's events the dispatcher has stored.
    event_cursor: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A multi-node attempt on the nodes' own Ray: its cluster's head, as its driver node's
    # agent reported it (None until then, and again at every placement).
    cluster_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    first_step_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    artifact_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Its model, results and checkpoints were deleted (by its owner, or the retention).
    storage_deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    logs_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JobMetric(Base):
    """One training step's figures (loss, accuracy, ...) as reported by the runner."""

    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class JobEvent(Base):
    """What happened to a job besides its metric points: a status change, usage, a log
    line. The id orders the job's event stream."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_kind_id", "job_id", "kind", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # status | usage | log
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class TrainerAudit(Base):
    """An audit of a trainer that is also its job's driver (split): the checkpoint it saved
    at ``from_step``, kept aside, is trained again up to ``until_step`` by an audit job on
    another node, whose losses must be the ones the trainer reported (``compute.audits``).
    Until then the trainer node's credit in the job stays pending."""

    __tablename__ = "trainer_audits"
    __table_args__ = (
        Index("ix_trainer_audits_job", "job_id", "attempt", unique=True),  # one per attempt
        Index("ix_trainer_audits_audit_job", "audit_job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(Integer)  # the audited trainer's node
    attempt: Mapped[int] = mapped_column(Integer)
    from_step: Mapped[int] = mapped_column(Integer)
    until_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The job's metric rows reported after the snapshot have ids above this: the steps the
    # trainer went on to report from that checkpoint.
    metric_cursor: Mapped[int] = mapped_column(Integer, default=0)
    audit_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    # Checkpoints kept aside under the job's ``audits/`` (random names: never one a rolled
    # back row left behind). The attempt's candidates (checkpoints drawn at the node's rate)
    # but its latest enter a reservoir, one kept (``snapshot``, ``from_step``), each alike
    # likely; the latest waits (it may be the last, with no step after it to audit).
    snapshot: Mapped[str] = mapped_column(String(64), default="")
    latest: Mapped[str] = mapped_column(String(64), default="")
    latest_step: Mapped[int] = mapped_column(Integer, default=0)
    latest_cursor: Mapped[int] = mapped_column(Integer, default=0)
    drawn: Mapped[int] = mapped_column(Integer, default=0)  # candidates in the reservoir
    seen_step: Mapped[int] = mapped_column(Integer, default=0)  # last checkpoint drawn for
    # none (nothing drawn yet) | snapshot -> running -> valid | invalid | unaudited
    # (running -> snapshot again: the audit job failed, tried once more elsewhere; or it
    # disagreed with the audited node, refereed on a third owner's node)
    status: Mapped[str] = mapped_column(String(16), default="snapshot")
    detail: Mapped[str] = mapped_column(Text, default="")
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # audit jobs
    # Nodes not to audit this again: those whose audit job failed.
    passed_over: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # Under referee: the first auditor, its audit job and what it found different.
    first_auditor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_audit_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Invalid: the job computed again, without the node (``compute.audits.recompute``).
    recompute_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Lease(Base):
    """A named lease held by one process at a time (the dispatcher's leadership)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RunEvent(Base):
    """An event a job's driver sent over HTTP (the run inbox), kept per attempt in the order
    the driver numbered them; the dispatcher reads them from its cursor."""

    __tablename__ = "run_events"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "seq", name="uq_run_events_job_attempt_seq"),
        Index("ix_run_events_job_attempt_kind", "job_id", "attempt", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the event's wire form
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
