"""One JSON error shape, ``{"error": code, "detail": sentence}``, for every 4xx and 5xx.

Domain error families map to HTTP statuses here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.responses import JSONLineResponse
from app.schemas.errors import ErrorOut
from core.errors import (
    AuthenticationError,
    ConflictError,
    DistLMError,
    InsufficientFundsError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
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
    (PayloadTooLargeError, 413),  # before its family, InvalidInputError
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
    431: "headers_too_large",
}


# What each status means on this API, for the OpenAPI document (`responses=` on routes).
STATUS_DESCRIPTIONS = {
    400: "The body cannot be read as its Content-Type says",
    401: "No token, or an invalid or expired one",
    402: "Not enough tokens",
    403: "Your role, or this object, does not allow it",
    404: "No such object (or it is not yours)",
    409: "The object's state does not allow it",
    413: "The request body is over its limit (1 MB; a driver's uploads: DISTLM_MAX_UPLOAD_MB)",
    422: "Invalid input: the detail names each bad field",
    429: "Too many requests: retry after `Retry-After` seconds",
    431: "The request's headers are over 64 KB (e.g. an oversized Authorization header)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for error statuses, all in the one error shape."""
    return {
        status: {"model": ErrorOut, "description": STATUS_DESCRIPTIONS[status]}
        for status in statuses
    }


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def status_for(exc: DistLMError) -> int:
    for family, status in STATUS_BY_FAMILY:
        if isinstance(exc, family):
            return status
    return 400


def _domain_error(_request: Request, exc: Exception) -> JSONLineResponse:
    assert isinstance(exc, DistLMError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONLineResponse(error_body(exc.code, exc.detail), status_code=status, headers=headers)


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


def json_error_message(error: dict[str, Any], document: object) -> str:
    """Where a JSON text is broken and what the parser expected there, e.g. "not valid JSON:
    Expecting ',' delimiter at line 2, column 5"."""
    loc = tuple(error.get("loc", ()))
    position = loc[-1] if loc and isinstance(loc[-1], int) else None
    reason = str((error.get("ctx") or {}).get("error") or "it cannot be parsed")
    if isinstance(document, bytes):
        document = document.decode("utf-8", "replace")
    if position is None or not isinstance(document, str):
        return f"not valid JSON: {reason}"
    line = document.count("\n", 0, position) + 1
    column = position - document.rfind("\n", 0, position)
    return f"not valid JSON: {reason} at line {line}, column {column}"


def _validation_error(_request: Request, exc: Exception) -> JSONLineResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {**e, "loc": ("body",), "msg": json_error_message(e, exc.body)}
        if e.get("type") == "json_invalid"
        else e
        for e in exc.errors()
    ]
    body = error_body("invalid_input", describe_validation_errors(errors))
    body["fields"] = [  # type: ignore[assignment]
        {"field": _location(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
        for e in errors[:20]
    ]
    return JSONLineResponse(body, status_code=422)


def _model_validation_error(_request: Request, exc: Exception) -> JSONLineResponse:
    """A body validated inside a service (e.g. one of two accepted shapes)."""
    assert isinstance(exc, ValidationError)
    errors = [dict(e) for e in exc.errors()]
    return JSONLineResponse(
        error_body("invalid_input", describe_validation_errors(errors)), status_code=422
    )


def _http_error(_request: Request, exc: Exception) -> JSONLineResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return JSONLineResponse(
        error_body(code, detail), status_code=exc.status_code, headers=exc.headers
    )


def _unexpected_error(_request: Request, exc: Exception) -> JSONLineResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONLineResponse(
        error_body("internal_error", "the server hit an unexpected error; it has been logged"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DistLMError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _model_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
