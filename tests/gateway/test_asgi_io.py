"""A response's head and its first body piece leave in one socket write under uvicorn.

The app runs inside uvicorn's own HTTP protocols (httptools and h11), fed a request as bytes;
only the transport under them is a recorder, so what is asserted is each write the server
would make on the socket.
"""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from apps.gateway.asgi_io import SSE_HEADERS, chunks_send, json_send, response_begin

REQUEST = b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n"
PROTOCOLS = [pytest.param(HttpToolsProtocol, "httptools", id="httptools"), pytest.param(H11Protocol, "h11", id="h11")]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        if data:  # an empty write (h11's end of a sized body) sends nothing
            self.writes.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def serve_one(app, protocol_class, http: str, *, request: bytes = REQUEST) -> list[bytes]:
    """Feed one request to a uvicorn protocol running ``app``; the transport's writes."""
    done = asyncio.Event()

    async def wrapped(scope, receive, send):
        try:
            await app(scope, receive, send)
        finally:
            done.set()

    config = Config(app=wrapped, http=http, lifespan="off", access_log=False, log_level="warning")
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    return transport.writes


def _head_and_body(write: bytes) -> tuple[bytes, bytes]:
    head, _, body = write.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(("protocol_class", "http"), PROTOCOLS)
async def test_a_json_answer_leaves_in_one_write(protocol_class, http):
    async def app(scope, receive, send):
        await json_send(send, 200, b'{"ok":true}', [(b"request-id", b"r1")])

    writes = await serve_one(app, protocol_class, http)

    assert len(writes) == 1
    head, body = _head_and_body(writes[0])
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-type: application/json" in head.lower() and b"request-id: r1" in head
    assert b"content-length: 11" in head.lower() and b"chunked" not in head.lower()
    assert body == b'{"ok":true}'


@pytest.mark.parametrize(("protocol_class", "http"), PROTOCOLS)
async def test_a_stream_sends_its_head_with_the_first_piece_then_one_write_per_piece(protocol_class, http):
    async def app(scope, receive, send):
        await response_begin(send, 200, SSE_HEADERS, b"data: 1\n\n", more=True)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    writes = await serve_one(app, protocol_class, http)

    head, first = _head_and_body(writes[0])
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
    assert first == b"9\r\ndata: 1\n\n\r\n"  # chunked: the first piece's chunk, in the head's write
    assert writes[1] == b"9\r\ndata: 2\n\n\r\n"
    assert b"".join(writes[2:]) == b"0\r\n\r\n"


async def test_a_cache_replay_sends_its_head_with_the_first_chunk():
    async def app(scope, receive, send):
        await chunks_send(send, [], [b"event: a\n\n", b"event: b\n\n"])

    writes = await serve_one(app, HttpToolsProtocol, "httptools")

    assert len(writes) == 3
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(b"a\r\nevent: a\n\n\r\n")
    assert writes[1] == b"a\r\nevent: b\n\n\r\n" and writes[2] == b"0\r\n\r\n"


async def test_a_head_request_gets_its_head_and_no_body():
    async def app(scope, receive, send):
        await json_send(send, 200, b'{"ok":true}')

    writes = await serve_one(app, HttpToolsProtocol, "httptools",
                             request=b"HEAD /x HTTP/1.1\r\nHost: example\r\n\r\n")

    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(b"\r\n\r\n")


async def test_a_client_gone_before_the_answer_gets_nothing_written():
    gone: list[bytes] = []

    async def app_gone(scope, receive, send):
        send.__self__.disconnected = True  # what uvicorn sets when the connection is lost
        await json_send(send, 200, b'{"ok":true}')
        gone.append(b"returned")

    writes = await serve_one(app_gone, HttpToolsProtocol, "httptools")
    assert writes == [] and gone == [b"returned"]


async def test_under_another_server_the_messages_are_sent_as_they_are():
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await json_send(send, 201, b"{}", [(b"x-a", b"1")])

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 201 and (b"x-a", b"1") in sent[0]["headers"]
    assert sent[1]["body"] == b"{}" and sent[1]["more_body"] is False
