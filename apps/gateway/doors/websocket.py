"""The WebSocket door: ``/ws/v1/chat``, a thin Channels consumer over the same pipeline as
``POST /v1/chat/completions`` (see :mod:`apps.gateway.doors.chat_events` for the events it sends).

Authentication, in the order tried (the key never goes in the URL, which access logs keep):

1. ``Authorization: Bearer <key>`` on the handshake, for clients that can set headers;
2. ``Sec-WebSocket-Protocol: switchyard.v1, switchyard.key.<key>`` for browsers (the server
   answers ``switchyard.v1`` and never echoes the key);
3. a first message ``{"type": "auth", "api_key": "<key>"}``, or ``{"type": "auth", "key_id": N}``
   from a staff user logged in to Django on the same origin (the playground).

Client messages: ``chat.request`` (``id``, ``body``, optional ``sentences``, ``cache_control``,
``cache_namespace``, ``tags``, ``session_id``), ``cancel`` (``id``), ``subscribe`` (``topic: "usage"``: live
events of the key's tenant through the channel layer), ``ping``. Several requests run at once;
each event carries its request's ``id``.

The key is judged again at every request, as the HTTP door judges it (the same in-process key
cache, invalidated across processes when a key or tenant changes): its limits and budget as
they are now. Once the key is revoked, expires or its tenant is deactivated, the socket gets an
error event and is closed with 4401 and the reason, whether or not it is sending anything (each
open socket checks its key after every config change and when the key's expiry comes); requests
in flight on it are cancelled and billed for what they produced.

Guards: the ``Origin`` of a browser must be this host or listed in ``WEBSOCKET_ALLOWED_ORIGINS``
(the handshake is refused with 403 otherwise); a message over ``WEBSOCKET_MAX_MESSAGE_BYTES`` is
answered with a 413 error event; at most ``WEBSOCKET_MAX_IN_FLIGHT`` requests per socket; no
authentication within ``WEBSOCKET_AUTH_TIMEOUT`` seconds closes with 4401; no message and no
request in flight for ``WEBSOCKET_IDLE_TIMEOUT`` seconds closes with 4408. Back-pressure: each
event is sent with an ``await`` that waits while the socket's write buffer is full, so a slow
reader pauses its requests' upstream reads instead of growing a buffer in the server.

Close codes: 4401 unauthenticated (or the key no longer usable), 4408 idle, 1011 server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.core.errors import (
    AuthenticationFailed,
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerShuttingDown,
)
from apps.core.live import live_group
from apps.gateway.doors.chat_events import ChatEvents, error_event
from apps.gateway.doors.socket_access import handshake_credentials, origin_allowed, staff_key
from apps.gateway.live import live_publish, live_usage_event
from apps.gateway.runtime import runtime

logger = logging.getLogger(__name__)

PROTOCOL = "switchyard.v1"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_IDLE = 4408
_MAX_ID_LENGTH = 128
_MAX_REASON_BYTES = 123  # a close frame's reason (RFC 6455)


def _dumps(event: dict) -> str:
    return orjson.dumps(event).decode()


def _reason(error: GatewayError) -> str:
    return error.message.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")


class ChatConsumer(AsyncWebsocketConsumer):
    def __init__(self, *args, gateway_runtime=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gateway_runtime = gateway_runtime or runtime  # tests run their own: as_asgi(gateway_runtime=...)

    async def dispatch(self, message):
        # Channels closes stale database connections before every message (a thread hop each);
        # this consumer touches the database only inside database_sync_to_async calls.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.key = None
        self.runs: dict[str, tuple[asyncio.Task, ChatEvents]] = {}
        self.cancelled: set[str] = set()
        self.closing = False
        self.last_activity = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.closer: asyncio.Future | None = None
        self.recheck: asyncio.Task | None = None
        if not origin_allowed(self.scope):
            await self.close()  # before accept: the handshake is refused with 403
            return
        await self.gateway_runtime.start()
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        try:
            credentials = handshake_credentials(self.scope)
            if credentials is not None:
                self.key = await self.gateway_runtime.authenticate(credentials)
        except GatewayError as error:
            await self._refuse(error)
            return
        if self.key is not None:
            await self._ready()
        self._arm(settings.WEBSOCKET_AUTH_TIMEOUT if self.key is None else settings.WEBSOCKET_IDLE_TIMEOUT)

    # --- timers -------------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing:
            return
        if self.key is None:
            self.closing = True
            self.closer = asyncio.ensure_future(self._close_with(error_event(None, AuthenticationFailed(
                "No authentication within the time allowed.")), CLOSE_UNAUTHENTICATED))
            return
        idle_for = time.monotonic() - self.last_activity
        limit = settings.WEBSOCKET_IDLE_TIMEOUT
        if self.runs or idle_for < limit:
            self._arm(max(limit - idle_for, 0.05) if not self.runs else limit)
            return
        self.closing = True
        self.closer = asyncio.ensure_future(self._close_with(
            {"type": "error", "id": None, "status": 408, "error": {
                "message": f"No message for {limit:g} seconds; closing.", "type": "invalid_request_error",
                "param": None, "code": "idle_timeout"}}, CLOSE_IDLE))

    async def _close_with(self, event: dict, code: int, reason: str | None = None) -> None:
        with contextlib.suppress(Exception):
            await self.send(text_data=_dumps(event))
            await self.close(code=code, reason=reason)

    async def _refuse(self, error: GatewayError) -> None:
        self.closing = True
        await self._close_with(error_event(None, error), CLOSE_UNAUTHENTICATED, _reason(error))

    async def _ready(self) -> None:
        await self.send(text_data=_dumps({"type": "ready", "tenant": self.key.tenant_slug, "key": self.key.prefix,
                                          "protocol": PROTOCOL}))
        self.gateway_runtime.reload_watch(self._key_recheck_soon)
        self._expiry_arm()

    # --- the key, judged now ------------------------------------------------------------------

    async def _key_now(self, request_id=None):
        """The socket's key as it stands now; None (the socket is being closed) once it is no
        longer usable."""
        try:
            key = await self.gateway_runtime.key_current(self.key)
        except AuthenticationFailed as error:
            await self._key_lost(error, request_id)
            return None
        if self.closing:
            return None
        if key is not self.key:
            self.key = key
            self._expiry_arm()
        return key

    def _key_recheck_soon(self) -> None:
        """After a config change (or when the key expires): check the key even if the socket is
        silent, so a revoked key's socket is closed at once rather than at its next request."""
        if self.closing or self.key is None or (self.recheck is not None and not self.recheck.done()):
            return
        self.recheck = asyncio.ensure_future(self._key_recheck())

    async def _key_recheck(self) -> None:
        try:
            await self._key_now()
        except Exception:
            # The key could not be loaded (the database is unreachable): the next request or
            # config change checks again.
            logger.warning("could not check a socket's key", exc_info=True)

    def _expiry_arm(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.key.expires_at is not None:
            delay = max(self.key.expires_at - time.time(), 0.0) + 0.05
            self.expiry = asyncio.get_running_loop().call_later(delay, self._key_recheck_soon)

    async def _key_lost(self, error: AuthenticationFailed, request_id=None) -> None:
        """Cancel what runs on this key (billed for what it produced), say why, close with 4401."""
        if self.closing:
            return
        self.closing = True
        runs = list(self.runs.items())
        for _, (task, _run) in runs:
            task.cancel()
        if runs:
            await asyncio.gather(*(task for _, (task, _run) in runs), return_exceptions=True)
        ids = [run_id for run_id, _ in runs] + ([request_id] if request_id is not None else [])
        for run_id in ids[:-1]:
            with contextlib.suppress(Exception):
                await self.send(text_data=_dumps(error_event(run_id, error)))
        await self._close_with(error_event(ids[-1] if ids else None, error), CLOSE_UNAUTHENTICATED, _reason(error))

    # --- messages -----------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.closing:
            return
        self.last_activity = time.monotonic()
        raw = text_data if text_data is not None else bytes_data
        limit = settings.WEBSOCKET_MAX_MESSAGE_BYTES
        if len(raw) > limit or (text_data is not None and len(raw) * 4 > limit and len(raw.encode()) > limit):
            await self._error(None, PayloadTooLarge(f"A message may not exceed {limit} bytes."))
            return
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._error(None, BadRequest(f"The message is not valid JSON: {exc}"))
            return
        if not isinstance(message, dict):
            await self._error(None, BadRequest("A message must be a JSON object with a 'type'."))
            return
        kind = message.get("type")
        if kind == "auth":
            await self._auth(message)
        elif self.key is None:
            await self._refuse(AuthenticationFailed(
                "Authenticate first: send {\"type\": \"auth\", \"api_key\": \"...\"}."))
        elif kind == "chat.request":
            await self._request(message)
        elif kind == "cancel":
            await self._cancel(message)
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "ping":
            await self.send(text_data=_dumps({"type": "pong", "id": message.get("id")}))
        else:
            await self._error(message.get("id"), BadRequest(
                "'type' must be one of auth, chat.request, cancel, subscribe, ping.", param="type"))

    async def _error(self, request_id, error: GatewayError) -> None:
        await self.send(text_data=_dumps(error_event(request_id, error)))

    async def _auth(self, message: dict) -> None:
        if self.key is not None:
            await self._error(None, BadRequest("This socket is already authenticated."))
            return
        try:
            if isinstance(message.get("api_key"), str):
                self.key = await self.gateway_runtime.authenticate("Bearer " + message["api_key"])
            elif message.get("key_id") is not None:
                self.key = await staff_key(self.gateway_runtime, self.scope, message["key_id"])
            else:
                raise AuthenticationFailed("Send 'api_key' (or 'key_id' when logged in to the playground).")
        except GatewayError as error:
            await self._refuse(error)
            return
        await self._ready()
        self._arm(settings.WEBSOCKET_IDLE_TIMEOUT)

    async def _request(self, message: dict) -> None:
        request_id = message.get("id")
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            request_id = str(request_id)
        if not isinstance(request_id, str) or not request_id or len(request_id) > _MAX_ID_LENGTH:
            await self._error(None, BadRequest(
                f"'id' must be a non-empty string of at most {_MAX_ID_LENGTH} characters.", param="id"))
            return
        if request_id in self.runs:
            await self._error(request_id, BadRequest(f"A request with id '{request_id}' is in flight.", param="id"))
            return
        if self.gateway_runtime.draining:
            await self._error(request_id, ServerShuttingDown())
            return
        if len(self.runs) >= settings.WEBSOCKET_MAX_IN_FLIGHT:
            await self._error(request_id, RateLimited(
                f"At most {settings.WEBSOCKET_MAX_IN_FLIGHT} requests may be in flight on one socket."))
            return
        body = message.get("body")
        if not isinstance(body, dict):
            await self._error(request_id, BadRequest("'body' must be a chat completion request object.",
                                                     param="body"))
            return
        key = await self._key_now(request_id)
        if key is None:
            return
        options = {}
        for name in ("cache_control", "cache_namespace", "tags", "session_id", "traceparent"):
            value = message.get(name)
            if value is not None and not isinstance(value, str):
                await self._error(request_id, BadRequest(f"'{name}' must be a string.", param=name))
                return
            options[name] = value
        target = message.get("quality_target")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)
                                   or not 0 <= target <= 1):
            await self._error(request_id, BadRequest("'quality_target' must be a number from 0 to 1.",
                                                     param="quality_target"))
            return
        run = ChatEvents(self.gateway_runtime, key, body, request_id=request_id,
                      sentences=bool(message.get("sentences")), cache_control=options["cache_control"],
                      namespace=options["cache_namespace"], tags=options["tags"], session=options["session_id"],
                      quality_target=None if target is None else repr(float(target)),
                      traceparent=options["traceparent"])
        task = asyncio.ensure_future(self._run(run))
        self.runs[request_id] = (task, run)
        # Counted until the task is done, even one cancelled before it ever ran.
        self.gateway_runtime.socket_runs += 1
        task.add_done_callback(self._run_counted_out)

    def _run_counted_out(self, task: asyncio.Task) -> None:
        self.gateway_runtime.socket_runs -= 1

    async def _run(self, run: ChatEvents) -> None:
        events = run.events()
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    await self.send(text_data=_dumps(event))
                    if event["type"] == "done":
                        live_publish(self.gateway_runtime, run.key.tenant_id, live_usage_event(event))
        except asyncio.CancelledError:
            if run.id in self.cancelled and not self.closing:
                # Cancelled by the client: say what was produced and billed (after the usage
                # row has its figures, which closing the event iterator settled).
                with contextlib.suppress(Exception):
                    await self.send(text_data=_dumps(run.cancelled_event()))
        except Exception:
            if not self.closing:
                logger.exception("websocket request failed", extra={"id": run.id})
                # Every request ends with a done or an error event, even one the gateway failed.
                with contextlib.suppress(Exception):
                    await self.send(text_data=_dumps(error_event(run.id, GatewayError())))
        finally:
            self.runs.pop(run.id, None)
            self.cancelled.discard(run.id)
            self.last_activity = time.monotonic()

    async def _cancel(self, message: dict) -> None:
        request_id = message.get("id")
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            request_id = str(request_id)
        entry = self.runs.get(request_id) if isinstance(request_id, str) else None
        if entry is None:
            await self._error(request_id, NotFound(f"No request with id '{request_id}' is in flight.",
                                                   param="id", code="request_not_found"))
            return
        self.cancelled.add(request_id)
        entry[0].cancel()

    async def _subscribe(self, message: dict) -> None:
        topic = message.get("topic")
        if topic not in ("usage", "batch"):
            await self._error(None, BadRequest("'topic' must be 'usage' or 'batch'.", param="topic"))
            return
        if await self._key_now() is None:
            return
        group = live_group(self.key.tenant_id, topic)
        if group not in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)
        await self.send(text_data=_dumps({"type": "subscribed", "topic": topic}))

    async def live_event(self, message: dict) -> None:
        """A live event pushed through the channel layer to this tenant's subscribers."""
        if not self.closing:
            await self.send(text_data=_dumps({"type": "live", "topic": message["topic"], "event": message["event"]}))

    async def disconnect(self, code) -> None:
        self.closing = True
        self.gateway_runtime.reload_unwatch(self._key_recheck_soon)
        for handle in (self.timer, self.expiry):
            if handle is not None:
                handle.cancel()
        runs = [task for task, _ in self.runs.values()]
        for task in runs:
            task.cancel()  # the client left: stop the upstream calls, bill what was produced
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)


async def refuse_socket(scope, receive, send) -> None:
    """Any other WebSocket path: refuse the handshake (403)."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})
