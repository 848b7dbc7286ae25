"""The plain records a run emits. Dicts (JSON-safe) so they cross Ray and the database as is.

Every event has ``type``; the runner adds ``seq`` (1, 2, ...) so a poller can resume from the
last one it stored, and ``at`` (unix seconds).
"""

from __future__ import annotations

from typing import Any

STATUS = "status"  # state: running | succeeded | failed; reason; retryable (failed only)
METRIC = "metric"  # step and values: {"loss": ..., "perplexity": ...}
USAGE = "usage"  # node_id and resource-seconds of completed work
CHECKPOINT = "checkpoint"  # step and path
ARTIFACT = "artifact"  # path of the final model directory


def status(state: str, reason: str = "", *, retryable: bool = False) -> dict[str, Any]:
    return {"type": STATUS, "state": state, "reason": reason, "retryable": retryable}


def metric(step: int, values: dict[str, float]) -> dict[str, Any]:
    return {"type": METRIC, "step": step, "values": values}


def usage(
    node_id: int, *, gpu_seconds: float, cpu_core_seconds: float, memory_gb_seconds: float
) -> dict[str, Any]:
    return {
        "type": USAGE,
        "node_id": node_id,
        "gpu_seconds": gpu_seconds,
        "cpu_core_seconds": cpu_core_seconds,
        "memory_gb_seconds": memory_gb_seconds,
    }


def checkpoint(step: int, path: str) -> dict[str, Any]:
    return {"type": CHECKPOINT, "step": step, "path": path}


def artifact(path: str) -> dict[str, Any]:
    return {"type": ARTIFACT, "path": path}
