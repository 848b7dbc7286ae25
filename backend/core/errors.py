"""Domain error families. They carry a machine code and a human sentence, never an HTTP status:
``app/errors.py`` maps each family to a status once."""

from __future__ import annotations


class DistLMError(Exception):
    """Base of every error a user may see."""

    code = "error"
    # True when the request's session must commit despite the error (e.g. a failed
    # login's counter); the request dependency honours it.
    keep_changes = False

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class AuthenticationError(DistLMError):
    code = "not_authenticated"


class PermissionDeniedError(DistLMError):
    code = "forbidden"


class NotFoundError(DistLMError):
    code = "not_found"


class InvalidInputError(DistLMError):
    code = "invalid_input"


class IdempotencyKeyReusedError(InvalidInputError):
    """A key already did something else (another job submitted, another transaction
    posted): a retry must repeat its request."""

    code = "idempotency_key_reused"


class PayloadTooLargeError(InvalidInputError):
    """An upload over its limit (413)."""

    code = "payload_too_large"


class ConflictError(DistLMError):
    """The object exists but is in a state that forbids the request."""

    code = "conflict"


class InsufficientFundsError(DistLMError):
    code = "insufficient_tokens"


class RateLimitedError(DistLMError):
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s
