"""The API's errors as exceptions: each carries the HTTP status, the API's ``error`` code and
its ``detail`` sentence."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    def __init__(self, status: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class NotAuthenticatedError(APIError):
    """401: no token, or one the gateway refused (expired, revoked)."""


class InsufficientTokensError(APIError):
    """402: the balance cannot cover the job's hold; ``detail`` says the shortfall."""


class PermissionDeniedError(APIError):
    """403: the role does not allow it."""


class NotFoundError(APIError):
    """404: no such object, or not yours."""


class ConflictError(APIError):
    """409: the object is not in a state that allows it."""


class InvalidInputError(APIError):
    """422: bad input; ``body['fields']`` names the fields."""


BY_STATUS: dict[int, type[APIError]] = {
    401: NotAuthenticatedError,
    402: InsufficientTokensError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
}


def error_for(status: int, body: Any) -> APIError:
    code = body.get("error", "http_error") if isinstance(body, dict) else "http_error"
    detail = body.get("detail", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
    return BY_STATUS.get(status, APIError)(status, str(code), str(detail), body)
