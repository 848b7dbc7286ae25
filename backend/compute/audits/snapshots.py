"""A checkpoint kept aside for an audit, when the trainer saves it.

Which checkpoints are audited is drawn here, on the gateway, at the trainer node's check rate
(``protocol.trust``: every checkpoint of a new node, few of a trusted one), keyed with the
gateway's secret, which no node knows. One checkpoint per attempt at most. Where the driver
uploads its checkpoints (nodes that share nothing with the gateway), the snapshot is taken as
the upload is accepted, before the driver can send the next; where nodes write to the
gateway's disk, at the checkpoint's event, and a fast trainer may have replaced it by then
(the snapshot is then of a later checkpoint, or of the last, which leaves nothing to audit).

The snapshot is hard links to the checkpoint's files, taken through a handle on its directory
(``linkat``): writers replace a checkpoint's directory whole and never rewrite a file, so the
links are one whole version and cost no copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compute.jobs.strategy import job_request
from compute.models import Job, JobMetric, Node, TrainerAudit
from protocol.trust import check_rate_for

SNAPSHOTS = "audits"  # under the job's storage directory
STATE_FILE = "state.json"  # the checkpoint's step (ray_module.storage.checkpoints)
TRIES = 3  # a checkpoint replaced while it was linked is linked again


def job_storage(storage_root: Path, job_id: int) -> Path:
    return storage_root / "jobs" / str(job_id)


def snapshot_path(storage_root: Path, audit: TrainerAudit) -> Path:
    return job_storage(storage_root, audit.job_id) / SNAPSHOTS / str(audit.id)


def audited_node(session: Session, job: Job, tasks: tuple[str, ...] = ("train",)) -> Node | None:
    """The node a split job's worker (trainer, evaluator or predictor: the job's driver)
    runs on, for a job of one of ``tasks``, when the job pays it."""
    if job.strategy != "split" or job_request(job).task not in tasks:
        return None
    trainers = [slot for slot in job.placement or [] if slot.get("role", "worker") != "loader"]
    if len(trainers) != 1:
        return None
    node = session.get(Node, int(trainers[0]["node_id"]))
    if node is None or node.owner_id == job.owner_id:
        return None  # the job owner's own machine earns nothing: nothing to protect
    return node


def maybe_snapshot(
    session: Session, job: Job, storage_root: Path, secret: str
) -> TrainerAudit | None:
    """At a checkpoint of ``job`` (its row locked): draw whether to audit it and, if so,
    keep it aside. Called as the checkpoint is accepted (uploaded), and again at its event
    where nodes write to the gateway's disk; the same draw for the same checkpoint."""
    node = audited_node(session, job)
    if node is None:
        return None
    taken = session.scalar(
        select(TrainerAudit.id).where(
            TrainerAudit.job_id == job.id, TrainerAudit.attempt == job.attempts
        )
    )
    if taken is not None:
        return None
    snapshots = job_storage(storage_root, job.id) / SNAPSHOTS
    incoming = snapshots / f".incoming-{secrets.token_hex(8)}"
    step = link_checkpoint(job_storage(storage_root, job.id) / "checkpoint", incoming)
    rate = check_rate_for(node.valid_streak or 0)
    if step is None or not drawn(secret, job.id, job.attempts, step, rate):
        shutil.rmtree(incoming, ignore_errors=True)
        return None
    audit = TrainerAudit(
        job_id=job.id,
        node_id=node.id,
        attempt=job.attempts,
        from_step=step,
        metric_cursor=session.scalar(
            select(func.coalesce(func.max(JobMetric.id), 0)).where(JobMetric.job_id == job.id)
        ),
        status="snapshot",
        detail="",
    )
    session.add(audit)
    session.flush()  # its id names the snapshot's directory
    os.replace(incoming, snapshot_path(storage_root, audit))
    return audit


def drawn(secret: str, job_id: int, attempt: int, step: int, rate: float) -> bool:
    """Whether this checkpoint is audited: keyed with the gateway's secret, so no node can
    tell in advance (it must train every step as if that one were), and the same at the
    upload and at the event."""
    if rate >= 1.0:
        return True
    key = f"audit:{job_id}:{attempt}:{step}".encode()
    digest = hmac.new(secret.encode(), key, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def link_checkpoint(checkpoint: Path, into: Path) -> int | None:
    """Hard-link the checkpoint's files into ``into`` (a new directory); its step, or None
    when there is no whole checkpoint to link."""
    for _ in range(TRIES):
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        try:
            directory = os.open(checkpoint, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            for name in os.listdir(directory):
                os.link(name, into / name, src_dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            continue  # the directory was replaced and removed while it was linked
        finally:
            os.close(directory)
        try:
            return int(json.loads((into / STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    shutil.rmtree(into, ignore_errors=True)
    return None
