"""Jobs the gateway queues for a user's job: its audit, its recompute. Each is a copy of the
job's stored request and resources under a name that says what it is for."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from compute.jobs.state import JobStatus
from compute.models import Job
from core.db import utcnow


def job_copy(
    job: Job,
    *,
    name: str,
    reason: str,
    request: dict[str, Any],
    spec: dict[str, Any],
    identity: dict[str, Any],
    max_tokens_micro: int | None,
) -> Job:
    """A queued copy of ``job`` for its owner; ``identity`` (what the copy is for) is its
    request hash."""
    now = utcnow()
    return Job(
        owner_id=job.owner_id,
        name=name[:128],
        status=JobStatus.QUEUED.value,
        status_reason=reason,
        model_type=job.model_type,
        strategy=job.strategy,
        gpu=job.gpu,
        cpu_cores=job.cpu_cores,
        memory_gb=job.memory_gb,
        max_runtime_s=job.max_runtime_s,
        max_tokens_micro=max_tokens_micro,
        spec=spec,
        request=request,
        request_hash=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        created_at=now,
        updated_at=now,
    )
