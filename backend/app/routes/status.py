"""GET /status: the platform at a glance, for any logged-in user."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from app.deps import CurrentUser, DbSession
from compute.jobs.status_summary import platform_status

router = APIRouter(tags=["status"])


@router.get("/status")
def status(_viewer: CurrentUser, session: DbSession) -> dict[str, Any]:
    """Running jobs with their progress (step or round of total), queue length, active
    nodes and how many have GPUs. Public fields only: no owners, names or specs."""
    return asdict(platform_status(session))
