"""The app's JSON response: compact JSON and a final newline, so `curl` output ends cleanly
in a terminal (the shell prompt starts on its own line)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel


class JSONLineResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


def model_response(
    model: BaseModel, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A route's answer that is already its response model, as JSONLineResponse writes it:
    FastAPI would validate it again (on its thread pool, for a plain `def` route) and
    serialize it through Python's json; pydantic writes it at once."""
    return Response(
        model.model_dump_json().encode() + b"\n",
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
