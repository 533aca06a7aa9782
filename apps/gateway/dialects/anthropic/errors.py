"""The gateway's errors in Anthropic's shape, for ``/v1/messages`` only.

    {"type": "error", "error": {"type": "...", "message": "..."}, "request_id": "req_..."}

One mapping from the :class:`~apps.core.errors.GatewayError` tree (by HTTP status) to
Anthropic's status codes and error types; the gateway's own ``code`` travels in the
``x-switchyard-error-code`` header so nothing is lost:

    400 invalid_request_error   401 authentication_error   403 permission_error
    404 not_found_error         405 invalid_request_error  413 request_too_large
    429 rate_limit_error (Retry-After; budgets too)         500 api_error
    502 every upstream failed -> 529 overloaded_error       503 limits unavailable -> 529 overloaded_error
    504 every upstream timed out -> 504 timeout_error

Once a stream has started, the same body goes out as an ``event: error`` SSE event.
"""

from __future__ import annotations

import orjson

from apps.core.errors import GatewayError

_BY_STATUS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    405: (405, "invalid_request_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    502: (529, "overloaded_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
    529: (529, "overloaded_error"),
}


def status_and_type(status: int) -> tuple[int, str]:
    """Anthropic's status and error type for a gateway (or OpenAI-compatible upstream) status."""
    known = _BY_STATUS.get(status)
    if known is not None:
        return known
    return (status, "invalid_request_error") if 400 <= status < 500 else (status, "api_error")


def error_body(kind: str, message: str, request_id: str | None = None) -> bytes:
    body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_render(error: GatewayError, request_id: str | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of an error answer."""
    status, kind = status_and_type(error.status)
    headers = [(b"x-switchyard-error-code", error.code.encode())]
    headers.extend((name.lower().encode(), value.encode()) for name, value in error.headers.items())
    return status, error_body(kind, error.message, request_id), headers


def error_event(error: GatewayError, request_id: str | None = None) -> bytes:
    """The ``event: error`` of a stream that has already started."""
    _, kind = status_and_type(error.status)
    return b"event: error\ndata: " + error_body(kind, error.message, request_id) + b"\n\n"


def upstream_error_translate(status: int, body: bytes) -> bytes:
    """An OpenAI-shaped 4xx body from an OpenAI-compatible provider, in Anthropic's shape."""
    message = f"The upstream refused the request (status {status})."
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(inner, str):
            message = inner
    return error_body(status_and_type(status)[1], message)
