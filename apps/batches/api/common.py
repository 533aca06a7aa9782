"""What every management endpoint of files and jobs shares: the tenant key, OpenAI's error
shape (the gateway's error tree, rendered in one place), list pages and timestamps."""

from __future__ import annotations

import functools

import orjson
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from apps.core.errors import BadRequest, GatewayError, MethodNotAllowed, PayloadTooLarge, error_response
from apps.core.json_checks import nesting_check, nul_check
from apps.tenants.selectors import key_for_authorization
from apps.tenants.services import key_use_note

MAX_LIMIT = 100


def json_response(payload: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _key(request):
    key = key_for_authorization(request.headers.get("Authorization"))
    key_use_note(api_key=key)
    return key


def tenant_endpoint(methods: tuple[str, ...]):
    """A view for a tenant's API key: ``view(request, key, **kwargs)``; errors rendered in OpenAI's shape."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request, **kwargs):
            try:
                key = _key(request)
                if request.method not in methods:
                    raise MethodNotAllowed(allowed=methods)
                # Ids and query values are looked up in Postgres, whose text cannot hold a NUL.
                for name, value in [*kwargs.items(), *request.GET.lists()]:
                    nul_check(value, name)
                return view(request, key, **kwargs)
            except GatewayError as error:
                return error_response(error)
            except RequestDataTooBig:
                return error_response(PayloadTooLarge("The request body is too large."))
            except (MultiPartParserError, TooManyFieldsSent, SuspiciousOperation) as exc:
                return error_response(BadRequest(f"The request body could not be read: {exc}"))

        wrapper.methods = methods  # what the endpoint answers, for the tenant isolation walk
        return wrapper

    return decorate


def json_body(request) -> dict:
    try:
        body = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    nesting_check(body)  # what is stored as JSON must be writable again
    for name, value in body.items():
        nul_check(value, name)
    return body


def limit_param(request, default: int = 20, maximum: int = MAX_LIMIT) -> int:
    raw = request.GET.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise BadRequest(f"'limit' must be an integer from 1 to {maximum}.", param="limit")
    return value


def list_page(rows: list, limit: int, render) -> dict:
    """OpenAI's cursor page: ``rows`` holds up to ``limit + 1`` rows, newest first."""
    shown = rows[:limit]
    data = [render(row) for row in shown]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


def unix(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None
