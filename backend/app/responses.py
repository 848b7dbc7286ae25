"""The app's JSON response: compact JSON and a final newline, so `curl` output ends cleanly
in a terminal (the shell prompt starts on its own line)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class JSONLineResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"
