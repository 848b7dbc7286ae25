"""One JSON error shape, ``{"error": code, "detail": sentence}``, for every 4xx and 5xx.

Domain error families map to HTTP statuses here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    AuthenticationError,
    ConflictError,
    DistLMError,
    InsufficientFundsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)

log = logging.getLogger(__name__)

STATUS_BY_FAMILY: list[tuple[type[DistLMError], int]] = [
    (AuthenticationError, 401),
    (InsufficientFundsError, 402),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (RateLimitedError, 429),
]

HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def status_for(exc: DistLMError) -> int:
    for family, status in STATUS_BY_FAMILY:
        if isinstance(exc, family):
            return status
    return 400


def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DistLMError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(error_body(exc.code, exc.detail), status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    # The first element says where the value came from (body, query, ...); the rest is the field.
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        where, parts = parts[0], parts[1:]
        return ".".join(parts) or where
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    messages = []
    for err in errors[:5]:
        where = _location(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        messages.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(messages) + more


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    body = error_body("invalid_input", describe_validation_errors(errors))
    body["fields"] = [  # type: ignore[assignment]
        {"field": _location(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
        for e in errors[:20]
    ]
    return JSONResponse(body, status_code=422)


def _model_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """A body validated inside a service (e.g. one of two accepted shapes)."""
    assert isinstance(exc, ValidationError)
    errors = [dict(e) for e in exc.errors()]
    return JSONResponse(
        error_body("invalid_input", describe_validation_errors(errors)), status_code=422
    )


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return JSONResponse(error_body(code, detail), status_code=exc.status_code, headers=exc.headers)


def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "the server hit an unexpected error; it has been logged"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DistLMError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _model_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
