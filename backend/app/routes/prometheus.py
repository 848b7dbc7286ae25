"""GET /metrics: the Prometheus text format, for a scraper holding DISTLM_METRICS_TOKEN or an
admin."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.deps import BearerToken, SettingsDep, get_current_user
from app.errors import error_responses
from auth.models import Role
from core.errors import PermissionDeniedError
from monitoring.prometheus import exposition

router = APIRouter(tags=["metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/metrics",
    response_class=Response,
    # 401: no or a bad token; 403: neither the scrape token nor an admin's.
    responses={200: {"content": {CONTENT_TYPE: {}}}, **error_responses(401, 403)},
)
def prometheus(request: Request, token: BearerToken, settings: SettingsDep) -> Response:
    """Request, dispatcher, job, token, ledger, node and cluster figures for Prometheus.
    Scrape with `Authorization: Bearer $DISTLM_METRICS_TOKEN`; without that setting, an
    admin's access token."""
    scraper = (
        settings.metrics_token
        and token
        and hmac.compare_digest(token.encode(), settings.metrics_token.encode())
    )
    if not scraper:
        factory = request.app.state.read_session_factory
        with factory() as session:
            user = get_current_user(token, session, settings)
            if user.role != Role.ADMIN:
                raise PermissionDeniedError(
                    "this action needs the role: admin (or the scrape token)"
                )
    body = exposition(request.app.state.read_session_factory, settings.node_timeout)
    return Response(body, media_type=CONTENT_TYPE)
