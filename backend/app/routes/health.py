"""GET /health: liveness of the gateway, its database and its Ray connection (no auth;
"ray" is "nodes" where the nodes run jobs on Ray of their own)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from core.db import database_ok
from ray_module.cluster import is_connected

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={503: {"description": "The database or Ray is down (same body, `degraded`)"}},
)
def health(request: Request, response: Response) -> dict[str, Any]:
    state = request.app.state
    db_ok = database_ok(state.engine)
    if not state.manage_ray:
        ray_state = "disabled"
    elif state.settings.run_jobs_on == "agents":
        ray_state = "nodes"  # this process runs no Ray: nothing of it to be down
    else:
        ray_state = "connected" if is_connected() else "down"
    healthy = db_ok and ray_state != "down"
    if not healthy:
        response.status_code = 503
    return {
        "status": "ok" if healthy else "degraded",
        "database": "ok" if db_ok else "down",
        "ray": ray_state,
        "version": state.version,
    }
