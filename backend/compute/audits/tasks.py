"""Audits of split's validate and infer jobs, whose predictor also drives the job.

When such a job succeeds on a node that earns from it, the gateway draws (at the node's check
rate, keyed with its secret) whether to audit it, before the job settles, so that the
predictor's credit waits for the verdict. The audit job does the task again on another node,
from the same trained model and rows: a validate job's whole scoring (forward passes only),
an infer job's rows of ``AUDIT_BATCHES`` batches drawn at random. Its results must be the
audited job's: the same numbers of samples and classes, scores and probabilities within
``AUDIT_RELATIVE`` (rounding across machines), the same labels and texts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from compute.audits.snapshots import audited_node, drawn, job_storage
from compute.jobs.strategy import job_request
from compute.models import Job, TrainerAudit
from protocol.results import (
    FLOW_FIGURES,
    JSONL_FILE,
    RESULTS_DIR,
    SUMMARY_FILE,
    VALIDATION_FILE,
)
from protocol.trust import check_rate_for

CHECKED_TASKS = ("validate", "infer")
AUDIT_BATCHES = 4  # of an infer job's batches, predicted again
AUDIT_RELATIVE = 1e-3
AUDIT_ABSOLUTE = 1e-4  # probabilities are rounded to 4 digits (classifier_row)
DEFAULT_BATCH_SIZE = 64  # InferenceSettings.batch_size


def maybe_audit_task(session: Session, job: Job, secret: str) -> TrainerAudit | None:
    """As a validate or infer job succeeds (before it settles): draw whether to audit it."""
    node = audited_node(session, job, CHECKED_TASKS)
    if node is None:
        return None
    if not drawn(secret, job.id, job.attempts, 0, check_rate_for(node.valid_streak or 0)):
        return None
    audit = TrainerAudit(
        job_id=job.id, node_id=node.id, attempt=job.attempts, from_step=0, metric_cursor=0,
        status="snapshot", detail="",
    )  # fmt: skip
    session.add(audit)
    return audit


def audit_orders(job: Job, storage_root: Path, secret: str) -> dict[str, Any] | None:
    """What the audit job does again: the whole validation, or an infer job's drawn batches
    (None when its results are gone)."""
    task = job_request(job).task
    if task == "validate":
        return {"task": task}
    summary = read_json(job_storage(storage_root, job.id) / RESULTS_DIR / SUMMARY_FILE)
    if summary is None:
        return None
    size = int(job_request(job).inference.get("batch_size") or DEFAULT_BATCH_SIZE)
    batches = math.ceil(int(summary.get("total_samples", 0)) / size)
    seed = hmac.new(secret.encode(), f"audit-rows:{job.id}".encode(), hashlib.sha256).digest()
    drawn_batches = sorted(random.Random(seed).sample(range(batches), min(AUDIT_BATCHES, batches)))
    return {"task": task, "batches": drawn_batches, "batch_size": size}


def results_difference(storage_root: Path, job: Job, audit_job: Job) -> str | None:
    """What differs between the audited job's results and the audit's ('' when nothing;
    None when either is gone)."""
    audited = job_storage(storage_root, job.id) / RESULTS_DIR
    again = job_storage(storage_root, audit_job.id) / RESULTS_DIR
    if job_request(job).task == "validate":
        claimed, replayed = read_json(audited / VALIDATION_FILE), read_json(again / VALIDATION_FILE)
        if claimed is None or replayed is None:
            return None
        scores = {k: v for k, v in claimed.items() if k not in FLOW_FIGURES}
        return differs(scores, {k: v for k, v in replayed.items() if k not in FLOW_FIGURES})
    claimed_rows, replayed_rows = read_rows(audited / JSONL_FILE), read_rows(again / JSONL_FILE)
    if claimed_rows is None or replayed_rows is None:
        return None
    # Every row the audit predicted (the drawn batches' rows above the threshold) must be
    # the audited job's row of that sample: a row made up or left out differs.
    for sample in sorted(replayed_rows):
        gap = differs(claimed_rows.get(sample), replayed_rows[sample])
        if gap:
            return f"row {sample}: {gap}"
    return ""


def differs(claimed: Any, replayed: Any, where: str = "") -> str:
    """The first difference between two JSON values: numbers within the audit's tolerance,
    everything else equal."""
    if isinstance(claimed, bool) or isinstance(replayed, bool):
        return "" if claimed == replayed else f"{where or 'value'} {claimed} vs {replayed}"
    if isinstance(claimed, int | float) and isinstance(replayed, int | float):
        close = math.isclose(claimed, replayed, rel_tol=AUDIT_RELATIVE, abs_tol=AUDIT_ABSOLUTE)
        return "" if close else f"{where or 'value'} {claimed} vs {replayed} done again"
    if isinstance(claimed, dict) and isinstance(replayed, dict):
        if claimed.keys() != replayed.keys():
            return f"{where or 'keys'} {sorted(claimed)} vs {sorted(replayed)}"
        for key in sorted(claimed):
            gap = differs(claimed[key], replayed[key], f"{where}.{key}" if where else key)
            if gap:
                return gap
        return ""
    if isinstance(claimed, list) and isinstance(replayed, list):
        if len(claimed) != len(replayed):
            return f"{where or 'list'} has {len(claimed)} items vs {len(replayed)}"
        for n, (a, b) in enumerate(zip(claimed, replayed, strict=True)):
            gap = differs(a, b, f"{where}[{n}]")
            if gap:
                return gap
        return ""
    return "" if claimed == replayed else f"{where or 'value'} {claimed!r} vs {replayed!r}"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> dict[int, Any] | None:
    try:
        with path.open(encoding="utf-8") as lines:
            return {int(row["id"]): row for row in map(json.loads, lines)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
