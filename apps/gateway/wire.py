"""What the raw ASGI doors share: reading a request, writing JSON, and relaying a stream while
watching for the client leaving."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from apps.gateway.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

JSON_HEADER = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def body_read(receive) -> bytes:
    limit = settings.GATEWAY_MAX_BODY_BYTES
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected while sending")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def json_send(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [JSON_HEADER, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def chunks_send(send, headers: list, chunks: list[bytes]) -> None:
    """A short stream already in memory (a cache replay), one body message per chunk."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def stream_relay(stream, receive, send, headers: list) -> None:
    """Send a pipeline stream's bytes as an SSE body; a client that leaves stops it (and the
    upstream call, billed for what was produced).

    The relay runs in the request's own task, so a piece that has arrived goes out without
    waiting for another task's turn on a busy loop; a small task watches for the client leaving
    and, when it does, cancels the relay. A cancellation from anywhere else is the server ending
    the request (its graceful shutdown ran out), which the stream tells from a draining server."""
    pieces = stream.__aiter__()
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    # The first bytes are already here: send them now, before any task is scheduled.
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": first, "more_body": True})

    task = asyncio.current_task()
    watching = True  # false once the body is complete (the server then reports a disconnect)
    left = False

    def client_left(watcher: asyncio.Future) -> None:
        nonlocal left
        if watching and not watcher.cancelled() and watcher.exception() is None:
            left = True
            stream.ended_by_server = False
            task.cancel()

    watcher = asyncio.ensure_future(_disconnect_wait(receive))
    watcher.add_done_callback(client_left)
    try:
        async for data in pieces:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        watching = False
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()  # the client left: this request ends here, normally
    except Exception:
        logger.exception("stream relay failed")
    finally:
        watching = False
        watcher.remove_done_callback(client_left)
        watcher.cancel()
        await pieces.aclose()


async def _disconnect_wait(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
