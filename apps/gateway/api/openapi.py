"""``GET /v1/openapi.json``: the tenant API's OpenAPI document (no key needed)."""

from __future__ import annotations

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.core.errors import MethodNotAllowed, error_response
from apps.gateway.openapi import document_json


@csrf_exempt  # no session, no state: a POST is refused with 405 like on any other API path
def openapi_json(request) -> HttpResponse:
    """The document, built and serialized once per process."""
    if request.method not in ("GET", "HEAD"):
        return error_response(MethodNotAllowed(allowed=("GET", "HEAD")))
    return HttpResponse(document_json(), content_type="application/json")
