"""DRF's own refusals in OpenAI's error shape, like every other answer of the API.

DRF answers some requests before a view runs (a method the view does not take, an ``Accept``
it cannot satisfy, a body it cannot parse) with ``{"detail": ...}``; configured as DRF's
``EXCEPTION_HANDLER``, :func:`exception_handler` renders them as the gateway's errors. DRF adds
``Allow`` to a 405 itself. ``JSONOnly`` stops content negotiation from refusing a client's
``Accept``: these views have one representation, JSON.
"""

from __future__ import annotations

from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation

from apps.core.errors import GatewayError, MethodNotAllowed, error_response

# DRF's codes, as OpenAI (and the rest of the gateway) names them.
_CODES = {"parse_error": "invalid_json", "method_not_allowed": "method_not_allowed"}


def _message(detail) -> str:
    if isinstance(detail, list | tuple):
        return " ".join(_message(item) for item in detail)
    if isinstance(detail, dict):
        return " ".join(f"'{name}': {_message(value)}" for name, value in detail.items())
    return str(detail)


def exception_handler(exc, context) -> HttpResponse | None:
    """DRF's exceptions as the gateway's errors; anything else is left to Django (a 500)."""
    if not isinstance(exc, exceptions.APIException):
        return None
    if isinstance(exc, exceptions.MethodNotAllowed):
        view = context.get("view")
        allowed = tuple(view.allowed_methods) if view is not None else ()
        error: GatewayError = MethodNotAllowed(allowed=allowed)
    else:
        error = GatewayError(_message(exc.detail), code=_CODES.get(exc.default_code, exc.default_code))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "api_error"
    return error_response(error)


class JSONOnly(BaseContentNegotiation):
    """Pick the first renderer whatever the client's ``Accept`` says."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
