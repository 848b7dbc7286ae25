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
    VALIDATION_FILE,
)
from protocol.trust import check_rate_for

CHECKED_TASKS = ("validate", "infer")
AUDIT_BATCHES = 4  # of an infer job's batches, predicted again
AUDIT_RELATIVE = 1e-3
# Probabilities are rounded to 4 digits (classifier_row): two roundings of nearly the same
# value may differ by one unit in the last digit.
AUDIT_ABSOLUTE = 1.5e-4
DEFAULT_BATCH_SIZE = 64  # InferenceSettings.batch_size


def maybe_audit_task(session: Session, job: Job, secret: str) -> TrainerAudit | None:
    """As a validate or infer job succeeds (before it settles): draw whether to audit it."""
    node = audited_node(session, job, CHECKED_TASKS)
    if node is None:
        return None
    if not drawn(
        secret, f"{job.id}:{job.attempts}:results", check_rate_for(node.valid_streak or 0)
    ):
        return None
    audit = TrainerAudit(
        job_id=job.id, node_id=node.id, attempt=job.attempts, from_step=0, metric_cursor=0,
        snapshot="", latest="", latest_step=0, latest_cursor=0, drawn=0, seen_step=0,
        status="snapshot", detail="",
    )  # fmt: skip
    session.add(audit)
    return audit


def audit_orders(job: Job, secret: str) -> dict[str, Any]:
    """What the audit job does again: the whole validation, or an infer job's batches, drawn
    by the audit's worker from these numbers (``draw % batches``: it counts the batches
    itself, so the audited node's own figures cannot narrow the draw)."""
    task = job_request(job).task
    if task == "validate":
        return {"task": task}
    seed = hmac.new(secret.encode(), f"audit-rows:{job.id}".encode(), hashlib.sha256).digest()
    draws = [int.from_bytes(hashlib.sha256(seed + bytes([n])).digest()[:7], "big")
             for n in range(AUDIT_BATCHES)]  # fmt: skip
    return {"task": task, "draws": draws}


def results_difference(storage_root: Path, job: Job, audit_job: Job) -> str | None:
    """What differs between the audited job's results and the audit's ('' when nothing).
    Results of the audited node's that are missing or unreadable differ; None only when the
    audit's own are (the platform's failure: no verdict)."""
    audited = job_storage(storage_root, job.id) / RESULTS_DIR
    again = job_storage(storage_root, audit_job.id) / RESULTS_DIR
    if job_request(job).task == "validate":
        replayed = read_json(again / VALIDATION_FILE)
        if replayed is None:
            return None
        claimed = read_json(audited / VALIDATION_FILE)
        if claimed is None:
            return "its scores are missing or unreadable"
        scores = {k: v for k, v in claimed.items() if k not in FLOW_FIGURES}
        return differs(scores, {k: v for k, v in replayed.items() if k not in FLOW_FIGURES})
    replayed_rows = read_rows(again / JSONL_FILE)
    if replayed_rows is None:
        return None
    claimed_rows = read_rows(audited / JSONL_FILE, set(replayed_rows))
    if claimed_rows is None:
        return "its rows are missing or unreadable"
    threshold = float(job_request(job).inference.get("confidence_threshold") or 0.0)
    # Every row the audit predicted (the drawn batches' rows above the threshold) must be
    # the audited job's row of that sample: a row made up or left out differs.
    for sample in sorted(replayed_rows):
        row = replayed_rows[sample]
        if sample not in claimed_rows and near(row.get("probability"), threshold):
            continue  # at the threshold, rounding may leave it out on either side
        gap = differs(claimed_rows.get(sample), row)
        if gap:
            return f"row {sample}: {gap}"
    return ""


def near(probability: Any, threshold: float) -> bool:
    return isinstance(probability, int | float) and abs(probability - threshold) <= AUDIT_ABSOLUTE


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


def read_rows(path: Path, only: set[int] | None = None) -> dict[int, Any] | None:
    """The rows of a predictions file by sample id (``only`` those ids: a file may be large,
    read line by line); None when it is missing or a line is not a row."""
    found: dict[int, Any] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                sample = int(row["id"])
                if only is None or sample in only:
                    found[sample] = row
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found
