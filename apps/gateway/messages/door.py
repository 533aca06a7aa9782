"""The Messages door: ``POST /v1/messages`` (JSON or SSE) and ``POST /v1/messages/count_tokens``.

A thin door, like the chat one: authenticate (``x-api-key`` or ``Authorization: Bearer``),
prepare, cache, answer, all through the shared pipeline; every error leaves in Anthropic's
shape (:mod:`apps.gateway.messages.errors`).
"""

from __future__ import annotations

import orjson

from apps.core.errors import AuthenticationFailed, GatewayError, MethodNotAllowed, NotFound
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.caching import cache_hit_log, cache_lookup, cache_plan, cache_settle, completion_from_stream
from apps.gateway.limits import limits_settle
from apps.gateway.messages.errors import error_render
from apps.gateway.messages.flow import (
    count_tokens,
    forwarded_headers,
    messages_json,
    messages_prepare,
    messages_stream_open,
    replay_chunks,
)
from apps.gateway.messages.translate import message_from_completion
from apps.providers.transport import UpstreamClientError

_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_NO_KEY = "Missing or invalid API key. Send 'x-api-key: <key>' or 'Authorization: Bearer <key>'."


def _authorization(scope) -> str | None:
    api_key = header(scope, b"x-api-key")
    if api_key:
        return "Bearer " + api_key.strip()
    return header(scope, b"authorization")


async def messages_handle(runtime, scope, receive, send, started: float) -> None:
    """Answer one request on a ``/v1/messages`` path."""
    call = None
    request_id = None
    try:
        if scope["path"] not in _PATHS:
            raise NotFound(f"No such endpoint: {scope['path']}.")
        try:
            key = await runtime.authenticate(_authorization(scope))
        except AuthenticationFailed as error:
            if error.code == "invalid_api_key":
                error.message = _NO_KEY
            raise
        if scope["method"] != "POST":
            raise MethodNotAllowed(allowed=("POST",))
        raw = await body_read(receive)
        if scope["path"].endswith("/count_tokens"):
            await json_send(send, 200, await count_tokens(runtime, key, raw, forwarded=forwarded_headers(scope)))
            return
        request = await messages_prepare(runtime, key, raw, started=started,
                                         tags_header=header(scope, b"x-switchyard-tags"),
                                         forwarded=forwarded_headers(scope))
        call = request.call
        request_id = call.request_id
        plan = cache_plan(call, request.body, cache_control=header(scope, b"cache-control"),
                          namespace=header(scope, b"x-switchyard-cache-namespace"))
        if plan is not None:
            hit = await cache_lookup(runtime, call, plan)
            if hit is not None:
                cache_hit_log(runtime, call, hit)
                headers = [(b"request-id", request_id.encode()), *call.headers()]
                if call.stream:
                    await chunks_send(send, headers, replay_chunks(request_id, hit.response))
                else:
                    message = message_from_completion(hit.response, message_id=f"msg_{request_id}")
                    await json_send(send, 200, orjson.dumps(message), headers)
                return
        try:
            if call.stream:
                stream = await messages_stream_open(runtime, request)
                if plan is not None:
                    stream.on_complete = lambda done: cache_settle(
                        runtime, call, plan, _stream_completion(done))
                await stream_relay(stream, receive, send, [(b"request-id", request_id.encode()), *call.headers()])
            else:
                answer, completion = await messages_json(runtime, request)
                cache_settle(runtime, call, plan, completion)
                await json_send(send, 200, answer, [(b"request-id", request_id.encode()), *call.headers()])
        finally:
            cache_settle(runtime, call, plan, None)  # no-op when already settled
    except GatewayError as error:
        status, body, headers = error_render(error, request_id)
        if request_id:
            headers.append((b"request-id", request_id.encode()))
        await json_send(send, status, body, headers)
    except UpstreamClientError as exc:
        # A native provider's refusal is already in Anthropic's shape; others were translated.
        headers = [(b"content-type", exc.content_type.encode())]
        if request_id:
            headers.append((b"request-id", request_id.encode()))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": exc.body})
    except ConnectionResetError:
        return
    finally:
        if call is not None:
            limits_settle(runtime, call)  # a no-op unless the request ended without its usage row


def _stream_completion(stream) -> dict | None:
    """What the cache keeps of a stream that ended: None when it did not end normally, or
    held blocks a replay cannot rebuild."""
    if stream is None:
        return None
    completion = completion_from_stream(stream)
    translator = getattr(stream, "translator", None)
    if not getattr(stream, "replayable", True) or (translator is not None and translator.tools):
        return None
    return completion
