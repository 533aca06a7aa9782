"""The HTTP door: a plain ASGI app for the hot endpoints, ahead of Django.

``/v1/chat/completions`` (JSON and SSE), ``/v1/messages`` (Anthropic's Messages API, in
:mod:`apps.gateway.messages.door`), ``/v1/embeddings`` and ``/v1/models`` are answered here,
with no Django middleware, request signals or thread hop; every other path goes to Django
(admin, probes, DRF). Measured on this hardware a raw ASGI callable serves about 1.5x a
Channels consumer and 4.5x a Django async view. The app also owns the ASGI lifespan: start up
loads the config and starts the usage flusher; shut down (after the server has drained
in-flight requests) flushes the usage buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from django.conf import settings

from apps.core.errors import Forbidden, GatewayError, MethodNotAllowed, PayloadTooLarge, error_body
from apps.gateway import pipeline
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.caching import (
    cache_hit_log,
    cache_lookup,
    cache_plan,
    cache_settle,
    completion_from_stream,
    replay_sse,
)
from apps.gateway.limits import limits_settle
from apps.gateway.messages.door import messages_handle
from apps.gateway.runtime import runtime
from apps.gateway.uploads import upload_pass
from apps.providers.transport import UpstreamClientError

logger = logging.getLogger(__name__)

HOT_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/cache/stats",
                       "/v1/cache/clear", "/metrics", "/v1/messages", "/v1/messages/count_tokens"})


async def _send_error(send, error: GatewayError, call_headers: list | None = None) -> None:
    headers = list(call_headers or [])
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    await json_send(send, error.status, error_body(error), headers)


def _body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds {limit} bytes.")


class GatewayHTTP:
    def __init__(self, django_app) -> None:
        self.django_app = django_app

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] in HOT_PATHS:
            await self.handle(scope, receive, send)
        elif kind == "http" and scope["path"] == "/v1/files" and scope["method"] == "POST":
            await upload_pass(self.django_app, scope, receive, send)  # held to the size limit as it is read
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "http":
            await self.django_pass(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)

    async def django_pass(self, scope, receive, send) -> None:
        """Any other path goes to Django, its body held to ``GATEWAY_MAX_BODY_BYTES`` as it is read.

        Django's handler reads a whole body (to disk past a size) before it routes the request,
        with no limit of its own: a declared length over the limit is refused before a byte is
        read, and a body sent without one is counted as it arrives and refused with 413 the
        moment it passes the limit (Django is then told the client left, and answers nothing).
        """
        limit = settings.GATEWAY_MAX_BODY_BYTES
        length = header(scope, b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > limit:
                await _send_error(send, _body_too_large(limit))
                return
            await self.django_app(scope, receive, send)  # the server reads no more than the length
            return
        size = 0
        refused = False

        async def capped() -> dict:
            nonlocal size, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    refused = True
                    await _send_error(send, _body_too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        await self.django_app(scope, capped, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime.start()
                    runtime.drain_on_sigterm()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        path = scope["path"]
        call_headers = None
        call = None
        try:
            await runtime.start()
            if path == "/metrics":
                await self.metrics(scope, send)
                return
            if path.startswith("/v1/messages"):
                await messages_handle(runtime, scope, receive, send, started)
                return
            key = await runtime.authenticate(header(scope, b"authorization"))
            method = scope["method"]
            if path == "/v1/models":
                if method != "GET":
                    raise MethodNotAllowed(allowed=("GET",))
                await json_send(send, 200, pipeline.models_list(runtime, key))
                return
            if path == "/v1/cache/stats":
                if method != "GET":
                    raise MethodNotAllowed(allowed=("GET",))
                stats = await runtime.cache.stats(key.tenant_id)
                stats["semantic_ready"] = runtime.semantic_ready(key)
                await json_send(send, 200, orjson.dumps(stats))
                return
            if method != "POST":
                raise MethodNotAllowed(allowed=("POST",))
            if path == "/v1/cache/clear":
                deleted = await runtime.cache.clear(key.tenant_id)
                await json_send(send, 200, orjson.dumps({"object": "cache.cleared", "deleted": deleted}))
                return
            raw = await body_read(receive)
            if path == "/v1/embeddings":
                call, answer = await pipeline.embeddings(runtime, key, raw, started=started)
                await json_send(send, 200, answer, call.headers())
                return
            call, body = await pipeline.chat_prepare(runtime, key, raw, started=started,
                                                     tags_header=header(scope, b"x-switchyard-tags"))
            call_headers = [(b"x-switchyard-request-id", call.request_id.encode())]
            plan = cache_plan(call, body, cache_control=header(scope, b"cache-control"),
                              namespace=header(scope, b"x-switchyard-cache-namespace"))
            if plan is not None:
                hit = await cache_lookup(runtime, call, plan)
                if hit is not None:
                    cache_hit_log(runtime, call, hit)
                    await self.replay(call, body, hit, send)
                    return
            try:
                if call.stream:
                    await self.stream(call, body, receive, send, plan)
                else:
                    answer, parsed = await pipeline.chat_json(runtime, call, body)
                    cache_settle(runtime, call, plan, parsed)
                    await json_send(send, 200, answer, call.headers())
            finally:
                cache_settle(runtime, call, plan, None)  # no-op when already settled
        except GatewayError as error:
            await _send_error(send, error, call_headers)
        except UpstreamClientError as exc:
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", exc.content_type.encode()), *(call_headers or [])]})
            await send({"type": "http.response.body", "body": exc.body})
        except ConnectionResetError:
            return
        finally:
            if call is not None:
                limits_settle(runtime, call)  # a no-op unless the request ended without its usage row

    async def metrics(self, scope, send) -> None:
        from apps.core import metrics

        if scope["method"] != "GET":
            raise MethodNotAllowed(allowed=("GET",))
        authorization = header(scope, b"authorization")
        if not metrics.allowed(scope, authorization.encode("latin-1") if authorization else None,
                               settings.METRICS_TOKEN):
            raise Forbidden("/metrics needs 'Authorization: Bearer <METRICS_TOKEN>' (or, without a token set, "
                            "a client on the loopback interface).")
        body, content_type = metrics.exposition(
            len(runtime.usage), runtime.usage.written, upstream_in_flight=runtime.pool.in_flight,
            loop_tasks=len(asyncio.all_tasks()), circuits=runtime.breakers.tripped(runtime.snapshot))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    async def replay(self, call, body, hit, send) -> None:
        if not call.stream:
            await json_send(send, 200, orjson.dumps(hit.response), call.headers())
            return
        options = body.get("stream_options")
        events = replay_sse(hit, include_usage=isinstance(options, dict) and bool(options.get("include_usage")))
        await chunks_send(send, call.headers(), events)

    async def stream(self, call, body, receive, send, plan=None) -> None:
        stream = await pipeline.chat_stream_open(runtime, call, body)
        if plan is not None:
            stream.on_complete = lambda done: cache_settle(
                runtime, call, plan, completion_from_stream(done) if done is not None else None)
        await stream_relay(stream, receive, send, call.headers())
