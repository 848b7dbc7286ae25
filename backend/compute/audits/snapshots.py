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
    return job_storage(storage_root, audit.job_id) / SNAPSHOTS / audit.snapshot


def split_driver_node(job: Job) -> int | None:
    """A split job's worker node (trainer, evaluator or predictor), which also drives the
    job: nothing in the job checks it, so no verdict of the job's own may name it."""
    if job.strategy != "split":
        return None
    workers = [slot for slot in job.placement or [] if slot.get("role", "worker") != "loader"]
    return int(workers[0]["node_id"]) if len(workers) == 1 else None


def audited_node(session: Session, job: Job, tasks: tuple[str, ...] = ("train",)) -> Node | None:
    """The node of a split job of one of ``tasks`` that its audit checks, when the job
    pays it (the job owner's own machine earns nothing: nothing to protect)."""
    driver = split_driver_node(job)
    if driver is None or job_request(job).task not in tasks:
        return None
    node = session.get(Node, driver)
    if node is None or node.owner_id == job.owner_id:
        return None
    return node


def maybe_snapshot(
    session: Session, job: Job, storage_root: Path, secret: str
) -> TrainerAudit | None:
    """At a checkpoint of ``job`` (its row locked): draw whether it is a candidate for the
    attempt's audit (at the node's check rate: every checkpoint of a new node) and keep it
    aside as the latest candidate; the one it follows enters the reservoir, where it takes
    the place of the one kept with chance 1 / candidates: each alike likely to be the one
    audited, so no node can tell which. Called as the checkpoint is accepted (uploaded), and
    again at its event where nodes write to the gateway's disk: drawn for once."""
    node = audited_node(session, job)
    if node is None:
        return None
    audit = session.scalar(
        select(TrainerAudit).where(
            TrainerAudit.job_id == job.id, TrainerAudit.attempt == job.attempts
        )
    )
    if audit is None:
        audit = TrainerAudit(
            job_id=job.id, node_id=node.id, attempt=job.attempts, from_step=0, metric_cursor=0,
            snapshot="", latest="", latest_step=0, latest_cursor=0, drawn=0, seen_step=0,
            status="none", detail="",
        )  # fmt: skip
        session.add(audit)
    snapshots = job_storage(storage_root, job.id) / SNAPSHOTS
    name = secrets.token_hex(8)
    step = link_checkpoint(job_storage(storage_root, job.id) / "checkpoint", snapshots / name)
    if (
        step is None
        or step <= audit.seen_step
        or not drawn(
            secret, f"{job.id}:{job.attempts}:{step}", check_rate_for(node.valid_streak or 0)
        )
    ):
        shutil.rmtree(snapshots / name, ignore_errors=True)
        if step is not None:
            audit.seen_step = max(audit.seen_step, step)
        return None
    audit.seen_step = step
    if audit.latest:  # the previous candidate enters the reservoir
        audit.drawn += 1
        if drawn(secret, f"keep:{job.id}:{job.attempts}:{audit.latest_step}", 1 / audit.drawn):
            if audit.snapshot:
                shutil.rmtree(snapshots / audit.snapshot, ignore_errors=True)
            audit.snapshot, audit.from_step = audit.latest, audit.latest_step
            audit.metric_cursor = audit.latest_cursor
        else:
            shutil.rmtree(snapshots / audit.latest, ignore_errors=True)
    audit.latest, audit.latest_step, audit.status = name, step, "snapshot"
    audit.latest_cursor = session.scalar(
        select(func.coalesce(func.max(JobMetric.id), 0)).where(JobMetric.job_id == job.id)
    )
    return audit


def keep_for_audit(session: Session, job_id: int, storage_root: Path, secret: str) -> None:
    """The checkpoint of ``job_id`` just accepted (uploaded), kept aside if it is drawn."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None:
        maybe_snapshot(session, job, storage_root, secret)


def drawn(secret: str, what: str, rate: float) -> bool:
    """A draw at ``rate`` keyed with the gateway's secret: no node can tell its outcome in
    advance (it must train every step as if that one were audited), and the same for the
    same ``what`` (at the upload and at the event)."""
    if rate >= 1.0:
        return True
    digest = hmac.new(secret.encode(), f"audit:{what}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def link_checkpoint(checkpoint: Path, into: Path) -> int | None:
    """Hard-link the checkpoint's files into ``into`` (a new directory); its step, or None
    when there is no whole checkpoint of plain files to link."""
    for _ in range(TRIES):
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        try:
            directory = os.open(checkpoint, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            break
        try:
            for name in os.listdir(directory):
                os.link(name, into / name, src_dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            continue  # the directory was replaced and removed while it was linked
        except OSError:
            break  # not plain files (a directory inside): nothing an audit can start from
        finally:
            os.close(directory)
        try:
            return int(json.loads((into / STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            break
    shutil.rmtree(into, ignore_errors=True)
    return None
