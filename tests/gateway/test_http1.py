"""The lean HTTP/1.1 client streams go through, against a real aiohttp server over TCP: keep-alive
reuse, bodies in pieces, big bodies, and every way a connection can fail."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from apps.providers.http1 import (
    Http1Pool,
    ReadTimeout,
    UpstreamConnectError,
    UpstreamConnectionError,
    UpstreamDisconnected,
)
from tests.live import free_port

BIG = 3 * 1024 * 1024


class Server:
    """A provider whose handlers misbehave on request; it records each connection it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.peers: list[tuple] = []
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None

    async def start(self, keepalive_timeout: float = 75.0) -> None:
        app = web.Application()
        app.router.add_post("/v1/{kind}", self.handle)
        self.runner = web.AppRunner(app, keepalive_timeout=keepalive_timeout)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername"))
        self.bodies.append(await request.read())
        kind = request.match_info["kind"]
        if kind == "status":
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "7"})
        if kind == "silent":
            await asyncio.sleep(2)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if kind == "big":
            await response.write(b"x" * BIG)
        else:
            for n in range(3):
                await response.write(f"data: {n}\n\n".encode())
                await asyncio.sleep(0.02)
            if kind == "cut":
                request.transport.close()
                return response
            if kind == "stall":
                await asyncio.sleep(2)
        await response.write_eof()
        return response

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
async def server():
    running = Server()
    await running.start()
    yield running
    await running.runner.cleanup()


async def _post(pool: Http1Pool, path: str, *, read_timeout: float = 5.0, headers: dict | None = None):
    return await pool.post(path, b'{"q": 1}', headers or {"Content-Type": "application/json"}, connect_timeout=2,
                           first_byte_timeout=read_timeout, read_timeout=read_timeout)


async def test_it_streams_pieces_and_reuses_the_connection(server):
    pool = Http1Pool(server.base)
    for _ in range(3):
        response = await _post(pool, "/events")
        assert response.status == 200 and response.headers.get("Content-Type") == "text/event-stream"
        pieces = []
        while piece := await response.content.readany():
            pieces.append(piece)
        assert len(pieces) >= 2, "the body arrives as it is written, not at the end"
        assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        response.release()
    assert server.bodies == [b'{"q": 1}'] * 3
    assert len(set(server.peers)) == 1, "one kept-alive connection for sequential requests"
    pool.close()


async def test_it_reads_a_big_body_whole_and_an_error_answer_with_its_headers(server):
    pool = Http1Pool(server.base)
    response = await _post(pool, "/big")
    assert len(await response.read()) == BIG
    response.release()
    refused = await _post(pool, "/status")
    assert refused.status == 503 and refused.headers.get("retry-after") == "7"
    assert await refused.read() == b'{"error": "busy"}'
    refused.release()
    assert len(set(server.peers)) == 1
    pool.close()


async def test_it_closes_a_connection_released_before_its_answer_ended(server):
    pool = Http1Pool(server.base)
    response = await _post(pool, "/stall")
    assert await response.readany()
    response.release()  # the reader left mid-stream
    again = await _post(pool, "/events")
    await again.read()
    again.release()
    assert len(set(server.peers)) == 2, "a half-read connection is never reused"
    pool.close()


async def test_it_sends_again_on_a_new_connection_when_the_server_closed_the_kept_one():
    server = Server()
    await server.start(keepalive_timeout=0.2)
    try:
        pool = Http1Pool(server.base)
        first = await _post(pool, "/events")
        await first.read()
        first.release()
        await asyncio.sleep(0.6)  # the server closes the idle connection
        second = await _post(pool, "/events")
        assert await second.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        second.release()
        assert len(set(server.peers)) == 2 and len(server.bodies) == 2
        pool.close()
    finally:
        await server.runner.cleanup()


async def test_it_raises_a_connection_error_when_the_answer_is_cut(server):
    pool = Http1Pool(server.base)
    response = await _post(pool, "/cut")
    with pytest.raises(UpstreamDisconnected):
        while await response.readany():
            pass
    response.release()
    pool.close()


async def test_it_times_out_on_silence_before_and_after_the_first_byte(server):
    pool = Http1Pool(server.base)
    with pytest.raises(ReadTimeout):
        await _post(pool, "/silent", read_timeout=0.3)
    response = await _post(pool, "/stall", read_timeout=0.3)
    assert await response.readany()
    with pytest.raises(ReadTimeout):
        while await response.readany():
            pass
    response.release()
    pool.close()


async def test_it_refuses_what_it_cannot_send():
    pool = Http1Pool(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamConnectError):
        await _post(pool, "/events")
    with pytest.raises(UpstreamConnectionError):
        await _post(pool, "/events", headers={"X-Injected": "a\r\nHost: elsewhere"})
