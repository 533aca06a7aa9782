"""The gateway's error tree, rendered in OpenAI's shape in one place.

    GatewayError (500, api_error)
    ├── BadRequest (400, invalid_request_error)
    │   ├── ContextTooLong (400, context_length_exceeded)
    │   └── CapabilityMissing (400, model_capability_missing)
    ├── AuthenticationFailed (401, invalid_api_key)
    ├── ModelNotAllowed (403, model_not_allowed)
    ├── NotFound (404, not_found)
    │   └── ModelNotFound (404, model_not_found)
    ├── MethodNotAllowed (405)
    ├── Conflict (409, conflict)
    ├── PayloadTooLarge (413, payload_too_large)
    ├── RateLimited (429, rate_limit_exceeded; carries Retry-After)
    │   └── BudgetExceeded (429, budget_exceeded)
    ├── UpstreamError (502, upstream_error)
    ├── LimitsUnavailable (503, limits_unavailable)
    ├── UpstreamUnavailable (503, upstream_unavailable; carries Retry-After)
    ├── ServerShuttingDown (503, server_shutdown)
    └── UpstreamTimeout (504, upstream_timeout)

Views and consumers raise; :func:`error_body` renders ``{"error": {"message", "type",
"param", "code"}}`` for HTTP and for the error event of a stream that has already started.
"""

from __future__ import annotations

import orjson
from django.http import HttpResponse


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code = "internal_error"
    default_message = "The gateway failed to handle the request."

    def __init__(self, message: str | None = None, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    default_message = "The request body is not valid."


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class CapabilityMissing(BadRequest):
    """The request uses tools, images, JSON schema output or reasoning that no model it may go to supports."""

    code = "model_capability_missing"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    default_message = "Missing or invalid API key. Send 'Authorization: Bearer <key>'."


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    default_message = "This key may not do that."


class ModelNotAllowed(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"
    default_message = "This API key may not use that model."


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    default_message = "No such endpoint."


class ModelNotFound(NotFound):
    code = "model_not_found"
    default_message = "The model does not exist or is not active."


class MethodNotAllowed(GatewayError):
    """Carries the ``Allow`` header RFC 9110 requires on a 405: the methods the path takes."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    default_message = "Method not allowed on this endpoint."

    def __init__(self, message: str | None = None, *, allowed: tuple[str, ...] = (), **kwargs) -> None:
        if message is None and allowed:
            message = f"Method not allowed on this endpoint; it takes {', '.join(allowed)}."
        super().__init__(message, **kwargs)
        if allowed:
            self.headers["Allow"] = ", ".join(allowed)


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    default_message = "The resource is not in a state that allows this."


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    default_message = "The request body is too large."


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    default_message = "Rate limit exceeded."


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"
    code = "budget_exceeded"
    default_message = "The budget for this period is spent."


class LimitsUnavailable(GatewayError):
    status = 503
    code = "limits_unavailable"
    default_message = "Limits cannot be checked right now; the request was not sent. Retry shortly."


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"
    default_message = "Every upstream for this request failed."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    default_message = "The upstream did not answer in time."


class UpstreamUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "upstream_unavailable"
    default_message = "Every upstream for this request is failing; retry after the cooldown."


class ServerShuttingDown(GatewayError):
    status = 503
    code = "server_shutdown"
    default_message = "This server is shutting down; send the request again on a new connection."


def error_body(error: GatewayError) -> bytes:
    """The JSON body of an error response (or of a stream's error event)."""
    return orjson.dumps(error.body())


def error_response(error: GatewayError) -> HttpResponse:
    """An error as a Django response (the management API and the Django-served doors); the raw
    ASGI doors render the same body through their dialect."""
    response = HttpResponse(error_body(error), status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response
