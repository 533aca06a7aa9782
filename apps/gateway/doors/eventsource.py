"""``GET /v1/stream``: the events of one chat request as Server-Sent Events, for a browser's
``EventSource`` (which can only GET and cannot set headers).

For a staff user logged in to Django (the playground): the session cookie authenticates, and
the request acts as the API key picked by id. Query parameters:

    key          the API key's id (required)
    prompt       the user message (required)
    model        a model name or "auto" (default)
    system       an optional system message
    max_tokens   an optional limit
    sentences    1 (default) to also get sentence events, 0 for none
    cache        "no-cache" or "no-store", as the Cache-Control request header

Each event is ``event: <type>`` plus ``data: <json>``, the same events as the WebSocket door
(``delta``, ``sentence``, then one ``done`` or ``error``); the stream closes after the last one.
Call ``close()`` on the EventSource then: otherwise the browser reconnects and asks again (the
stream sets a day-long ``retry`` to make that unlikely). Closing early cancels the upstream call
and bills what was produced, as on the other doors. Problems found before the stream starts are
answered as JSON errors with their status: 401 not a logged-in staff user, 403 a cross-site
request, 400 a bad parameter.
"""

from __future__ import annotations

import contextlib
import time

import orjson
from django.http import StreamingHttpResponse

from apps.core.errors import AuthenticationFailed, BadRequest, GatewayError, error_response
from apps.gateway.doors.chat_events import ChatEvents
from apps.gateway.live import live_publish, live_usage_event
from apps.gateway.playground_auth import is_playground_user, playground_key_prefix
from apps.gateway.runtime import runtime

_MAX_PROMPT_CHARS = 100_000


class CrossSite(GatewayError):
    status = 403
    type = "permission_error"
    code = "cross_site_request"
    default_message = "This endpoint serves pages of this site only."


def _body_from(params) -> tuple[dict, bool, str | None]:
    prompt = params.get("prompt", "")
    if not prompt.strip():
        raise BadRequest("'prompt' is required.", param="prompt")
    if len(prompt) > _MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' may not exceed {_MAX_PROMPT_CHARS} characters.", param="prompt")
    messages = [{"role": "user", "content": prompt}]
    if params.get("system"):
        messages.insert(0, {"role": "system", "content": params["system"][:_MAX_PROMPT_CHARS]})
    body: dict = {"model": params.get("model") or "auto", "messages": messages}
    if params.get("max_tokens"):
        try:
            body["max_tokens"] = int(params["max_tokens"])
        except ValueError:
            raise BadRequest("'max_tokens' must be an integer.", param="max_tokens") from None
    sentences = params.get("sentences", "1") not in ("0", "false", "")
    cache = params.get("cache") or None
    if cache not in (None, "no-cache", "no-store"):
        raise BadRequest("'cache' must be no-cache or no-store.", param="cache")
    return body, sentences, cache


async def stream(request):
    started = time.perf_counter()
    try:
        if request.method != "GET":
            raise BadRequest("Use GET.", code="method_not_allowed")
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise CrossSite()
        user = await request.auser()
        if not is_playground_user(user):
            raise AuthenticationFailed("Log in as a staff user to use the playground stream.")
        body, sentences, cache = _body_from(request.GET)
        prefix = await playground_key_prefix(request.GET.get("key"))
        if prefix is None:
            raise BadRequest("'key' must be the id of an API key.", param="key")
        await runtime.start()
        key = await runtime.key_for_prefix(prefix)
    except GatewayError as error:
        return error_response(error)
    run = ChatEvents(runtime, key, body, request_id="1", sentences=sentences, cache_control=cache, started=started)
    response = StreamingHttpResponse(_events(run), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _events(run: ChatEvents):
    yield b"retry: 86400000\n\n"
    events = run.events()
    async with contextlib.aclosing(events):
        async for event in events:
            yield b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            if event["type"] == "done":
                live_publish(runtime, run.key.tenant_id, live_usage_event(event))
