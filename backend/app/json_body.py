"""Every request passes here first: limits on headers and body, and lenient JSON.

- **Headers.** Over ``MAX_HEADER_BYTES`` in all (e.g. a 1 MB Authorization header) is a 431
  in the one error shape. The launcher lets uvicorn pass header blocks up to
  ``SERVER_MAX_HEADER_BYTES`` so that this answer, not the server's plain-text 400, is what a
  client sees.
- **Size.** One limit (``MAX_BODY_BYTES``) for every body, whatever its Content-Type and
  whether or not it declares a Content-Length (chunked uploads are counted as they arrive),
  except a job driver's uploads of checkpoints, models and results, which their route
  streams to disk under ``DISTLM_MAX_UPLOAD_MB``.
  The body is read here, before routing, so no route or parser ever sees more than the limit.
- **JSON.** A JSON body that is not UTF-8, or nests deeper than ``MAX_JSON_DEPTH``, is
  refused (422) before any parser meets it: otherwise the parser's RecursionError or
  UnicodeDecodeError surfaces as a 500 or a 400 that says nothing useful, and a deep
  structure could reach recursive serializers (pydantic, the database's JSON column). The
  nesting is counted on the bytes of every body, whatever its Content-Type says (a body
  labelled otherwise, or starting with a byte-order mark, may still reach a JSON parser),
  and a request with more than one Content-Type is refused (400): the parsers and this check
  must not read different ones.
- **Lenient JSON.** Seed 003's curl examples post JSON with ``-d`` and no header, which curl
  labels ``application/x-www-form-urlencoded``. A form body never starts with ``{`` or ``[``,
  so such a body is relabelled ``application/json`` before routing; a broken one then gets
  the JSON parser's own error (line, column, what was expected).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
SERVER_MAX_HEADER_BYTES = 2 * 1024 * 1024  # uvicorn's own limit, far above ours
MAX_JSON_DEPTH = 64
STREAMED_UPLOAD = re.compile(r"/runs/[0-9]+/(checkpoint|model|results)")
_RELABELLED = {b"", b"application/x-www-form-urlencoded", b"text/plain"}
# Strings are skipped when counting nesting: brackets inside them are text. The closing quote
# is optional so an unterminated string ends the scan instead of restarting it at every quote.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _DEPTH_STEP[_open], _DEPTH_STEP[_close] = 1, -1


class BodyTooLargeError(Exception):
    """The body went over ``MAX_BODY_BYTES`` (declared or counted)."""


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await _send_error(
                send,
                431,
                "headers_too_large",
                f"the request's headers are over {MAX_HEADER_BYTES} bytes in all",
            )
            return
        if is_streamed_upload(scope):  # the route streams it to disk under its own limit
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            if _declared_length(headers) > MAX_BODY_BYTES:
                raise BodyTooLargeError
            body = await _read_body(receive)
        except BodyTooLargeError:
            await _send_error(
                send, 413, "payload_too_large", f"the request body is over {MAX_BODY_BYTES} bytes"
            )
            return
        if body is None:  # the client went away
            return

        labels = [v for k, v in scope["headers"] if k == b"content-type"]
        if len(labels) > 1:
            await _send_error(
                send, 400, "bad_request", "the request has more than one Content-Type header"
            )
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type in _RELABELLED and body.lstrip()[:1] in (b"{", b"["):
            content_type = b"application/json"
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
                (b"content-type", content_type)
            ]
        problem = json_body_problem(body) if _is_json(content_type) else deep_body_problem(body)
        if problem:
            await _send_error(send, 422, "invalid_input", problem)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def is_streamed_upload(scope: Scope) -> bool:
    """A driver's upload (``PUT /runs/{id}/checkpoint|model|results``): gigabytes, streamed
    to disk by its route, never buffered here."""
    return scope["method"] == "PUT" and STREAMED_UPLOAD.fullmatch(scope["path"]) is not None


def _declared_length(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0  # the server rejects a malformed length; count the bytes instead


async def _read_body(receive: Receive) -> bytes | None:
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body.extend(message.get("body", b""))
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLargeError
    return bytes(body)


def _is_json(content_type: bytes) -> bool:
    return content_type == b"application/json" or content_type.endswith(b"+json")


def json_body_problem(body: bytes) -> str | None:
    """Why a JSON body cannot be handed to the parsers, if it cannot: JSON on the wire is
    UTF-8 (RFC 8259), and nesting is bounded."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"body: not valid JSON: the body is not UTF-8 text "
            f"(byte 0x{body[exc.start]:02x} at position {exc.start})"
        )
    return deep_body_problem(body)


def deep_body_problem(body: bytes) -> str | None:
    """A body not labelled JSON is still refused if it nests like too-deep JSON."""
    if json_depth(body) > MAX_JSON_DEPTH:
        return f"body: the JSON is nested more than {MAX_JSON_DEPTH} levels deep"
    return None


def json_depth(body: bytes) -> int:
    """How deeply a JSON text nests arrays and objects (0 for a scalar), without parsing it
    recursively; a broken text gets an estimate, and the parser reports what is wrong."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    # Running sum of +1/-1 steps, all in C: a 1 MB body of brackets takes milliseconds.
    return max(0, max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0))


async def _send_error(send: Send, status: int, code: str, detail: str) -> None:
    # The one error shape, newline-terminated like every other response.
    payload = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
