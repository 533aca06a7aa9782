"""What the raw ASGI doors share: reading a request, writing JSON, and relaying a stream while
watching for the client leaving."""

from __future__ import annotations

import asyncio

from django.conf import settings

from apps.gateway.errors import PayloadTooLarge

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
    upstream call, billed for what was produced)."""
    pieces = stream.__aiter__()
    stream.ended_by_server = False  # unless the relay below is cancelled by the server
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    # The first bytes are already here: send them now, before any task is scheduled.
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": first, "more_body": True})

    async def relay() -> None:
        async for data in pieces:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    relay_task = asyncio.ensure_future(relay())
    disconnect_task = asyncio.ensure_future(_disconnect_wait(receive))
    try:
        await asyncio.wait({relay_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # Not the client: the server is ending the request (its graceful shutdown ran out).
        stream.ended_by_server = True
        raise
    finally:
        if not relay_task.done():
            relay_task.cancel()  # the client left: stop the upstream and bill what was produced
        disconnect_task.cancel()
        await asyncio.gather(relay_task, disconnect_task, return_exceptions=True)
        await pieces.aclose()


async def _disconnect_wait(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
