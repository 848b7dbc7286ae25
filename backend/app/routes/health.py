"""GET /health: liveness of the gateway and its database (no auth). "ray" says where jobs
run: "nodes" (on their agents' Ray; this process runs none, so nothing of it can be down),
or "disabled" where this process runs no dispatcher (tests)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from core.db import database_ok

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={503: {"description": "The database is down (same body, `degraded`)"}},
)
def health(request: Request, response: Response) -> dict[str, Any]:
    state = request.app.state
    db_ok = database_ok(state.engine)
    if not db_ok:
        response.status_code = 503
    return {
        "status": "ok" if db_ok else "degraded",
        "database": "ok" if db_ok else "down",
        "ray": "nodes" if state.dispatch else "disabled",
        "version": state.version,
    }
