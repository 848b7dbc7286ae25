"""GET /docs (Swagger UI) and GET /redoc (ReDoc) on this gateway's own files.

FastAPI's pages load their scripts from a CDN (a blank page offline, code from a third party
with the user's token in reach) and inline their start-up script. These pages load
Swagger UI and ReDoc from the ``fastapi-offline`` package and a start-up script of ours, so
they run under the dashboard's Content-Security-Policy: scripts from this gateway only, no
framing. Swagger UI's "Authorize" keeps the token in the page's memory, never in
localStorage (``persistAuthorization`` is off).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.dashboard.pages import SECURITY_HEADERS

OURS = Path(__file__).parent / "api_docs_static"
VENDOR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, redoc...
# ReDoc searches in a web worker it makes from a blob; nothing else differs from the dashboard.
DOCS_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"]
    + "; worker-src 'self' blob:",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> FileResponse:
    return FileResponse(OURS / "docs.html", media_type="text/html", headers=DOCS_HEADERS)


@router.get("/redoc")
def redoc() -> FileResponse:
    return FileResponse(OURS / "redoc.html", media_type="text/html", headers=DOCS_HEADERS)


def install_api_docs(app: FastAPI) -> None:
    """Call with an app made with ``docs_url=None, redoc_url=None``."""
    app.include_router(router)
    app.mount("/docs/assets", StaticFiles(directory=OURS), name="api-docs-assets")
    app.mount("/docs/vendor", StaticFiles(directory=VENDOR), name="api-docs-vendor")
