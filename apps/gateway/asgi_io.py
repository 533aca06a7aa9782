"""What the raw ASGI doors share: reading a request, writing JSON, and relaying a stream while
watching for the client leaving."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from apps.core.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

JSON_HEADER = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def header(scope, name: bytes) -> str | None:
    """A request header's value (latin-1, as HTTP carries it), or None."""
    for key, value in scope.get("headers") or ():
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


class _HeadKept:
    """Stands in for the server's transport while a response begins: what the server writes
    while ``holding`` (its status line and headers) is kept, and goes out in front of the next
    write (the first body piece), in the same write."""

    __slots__ = ("head", "holding", "transport")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.head = b""
        self.holding = True

    def write(self, data: bytes) -> None:
        if self.holding:
            self.head += data
            return
        head, self.head = self.head, b""
        self.transport.write(head + data)

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


def _server_cycle(send):
    """uvicorn's request cycle behind ``send``, when it is one (it writes through ``transport``)."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or not type(cycle).__module__.startswith("uvicorn.protocols.http."):
        return None
    return cycle if hasattr(getattr(cycle, "transport", None), "write") else None


async def response_begin(send, status: int, headers: list, body: bytes, *, more: bool) -> None:
    """Send a response's start and its first body piece in one socket write.

    uvicorn writes the status line and headers as soon as it is given them, and the body in a
    write of its own: one more system call per answer, and one more read for the client. Under
    uvicorn the head is kept for the first body write; under any other server, two messages."""
    start = {"type": "http.response.start", "status": status, "headers": headers}
    piece = {"type": "http.response.body", "body": body, "more_body": more}
    cycle = _server_cycle(send)
    if cycle is None:
        await send(start)
        await send(piece)
        return
    transport = cycle.transport
    kept = cycle.transport = _HeadKept(transport)
    try:
        await send(start)
        kept.holding = False
        await send(piece)
    finally:
        cycle.transport = transport
        if kept.head and not transport.is_closing():  # the body write did not happen
            transport.write(kept.head)


async def json_send(send, status: int, body: bytes, headers: list | None = None) -> None:
    """A whole JSON answer: with its length (not chunked), head and body in one write."""
    await response_begin(send, status, [JSON_HEADER, (b"content-length", str(len(body)).encode()), *(headers or [])],
                         body, more=False)


async def chunks_send(send, headers: list, chunks: list[bytes]) -> None:
    """A short stream already in memory (a cache replay), one body message per chunk."""
    if not chunks:
        await response_begin(send, 200, SSE_HEADERS + headers, b"", more=False)
        return
    await response_begin(send, 200, SSE_HEADERS + headers, chunks[0], more=True)
    for chunk in chunks[1:]:
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
    # The first bytes are already here: send them now, with the headers, before any task is
    # scheduled.
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        await response_begin(send, 200, SSE_HEADERS + headers, b"", more=False)
        return
    await response_begin(send, 200, SSE_HEADERS + headers, first, more=True)

    task = asyncio.current_task()
    watching = True  # false once the body is complete (the server then reports a disconnect)
    left = False

    def client_left(watcher: asyncio.Future) -> None:
        nonlocal left
        if watching and not watcher.cancelled() and watcher.exception() is None:
            left = True
            stream.client_left()
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


async def refusal_send(send, exc, headers: list) -> None:
    """A provider's own refusal of the request (a 4xx), passed on as it came."""
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", exc.content_type.encode()), *headers]})
    await send({"type": "http.response.body", "body": exc.body})
