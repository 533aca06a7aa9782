"""The HTTP front: a plain ASGI app that answers the hot endpoints itself, ahead of Django.

Each hot path has a door (:mod:`.openai`, :mod:`.messages`, :mod:`.responses`) that parses the request, asks the
pipeline and renders the answer; this module authenticates with the door's credentials, runs
it, and renders its errors in the door's dialect, in one place. Every other path goes to Django
(admin, probes, DRF), its body held to ``GATEWAY_MAX_BODY_BYTES``; ``POST /v1/files`` is read
in pieces as it arrives (:mod:`apps.gateway.uploads`). The app also owns the ASGI lifespan:
start-up loads the config and starts the usage flusher; shut-down (after the server has drained
in-flight requests) flushes the usage buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from apps.core import metrics
from apps.core.errors import Forbidden, GatewayError, MethodNotAllowed, PayloadTooLarge, error_body
from apps.gateway.asgi_io import header, json_send, refusal_send
from apps.gateway.dialects.openai import OPENAI_CHAT
from apps.gateway.doors import messages, openai, responses
from apps.gateway.doors.exchange import Exchange, Route
from apps.gateway.runtime import runtime
from apps.gateway.uploads import upload_pass
from apps.providers.transport import UpstreamClientError

logger = logging.getLogger(__name__)

ROUTES: dict[str, Route] = {
    **openai.ROUTES,
    **messages.ROUTES,
    **responses.ROUTES,  # its paths with an id are templates: ``route_find`` matches them
    "/metrics": Route(None, OPENAI_CHAT, lambda scope: None),  # answered before authentication
}
HOT_PATHS = frozenset(ROUTES)


def route_find(path: str) -> Route | None:
    """The door serving ``path``, or None (Django serves it)."""
    route = ROUTES.get(path)
    if route is None and path.startswith(responses.PREFIX):
        template = responses.route_path(path)
        route = ROUTES[template] if template is not None else None
    return route


async def _send_error(send, error: GatewayError) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await json_send(send, error.status, error_body(error), headers)


def _body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds {limit} bytes.")


class GatewayHTTP:
    def __init__(self, django_app) -> None:
        self.django_app = django_app

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        route = route_find(scope["path"]) if kind == "http" else None
        if route is not None:
            await self.handle(scope, receive, send, route)
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

    async def handle(self, scope, receive, send, route: Route) -> None:
        """A hot path: authenticate with the door's credentials, run the door, render its errors."""
        started = time.perf_counter()
        path = scope["path"]
        x = Exchange(scope, receive, send, started)
        try:
            await runtime.start()
            if path == "/metrics":
                await self.metrics(scope, send)
                return
            key = await runtime.authenticate(route.credentials(scope))
            await route.handler(runtime, x, key)
        except GatewayError as error:
            # The request's own dialect once the door has one (it may name the request's fields).
            dialect = x.chat.dialect if x.chat is not None else route.dialect
            status, body, headers = dialect.error_render(error, x.request_id)
            await json_send(send, status, body, headers)
        except UpstreamClientError as exc:
            await refusal_send(send, exc, route.dialect.request_id_headers(x.request_id))
        except ConnectionResetError:
            return

    async def metrics(self, scope, send) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed(allowed=("GET",))
        authorization = header(scope, b"authorization")
        if not metrics.allowed(scope, authorization.encode("latin-1") if authorization else None,
                               settings.METRICS_TOKEN):
            raise Forbidden("/metrics needs 'Authorization: Bearer <METRICS_TOKEN>' (or, without a token set, "
                            "a client on the loopback interface).")
        body, content_type = metrics.exposition(
            len(runtime.usage), runtime.usage.written, upstream_in_flight=runtime.transport.in_flight,
            loop_tasks=len(asyncio.all_tasks()), circuits=runtime.breakers.tripped(runtime.snapshot))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})
