"""A lean HTTP/1.1 client for upstream calls, JSON and streams: keep-alive connections per
provider, requests written in one piece, responses parsed by httptools (the C parser uvicorn
uses) straight from the protocol's ``data_received``.

aiohttp's client builds a request object, a timer context, a header multidict, a stream reader
and a payload writer per request; under load that was the largest share of the gateway's own
CPU on a stream, and about a third of its time on a JSON answer. This client does what a call to
a provider needs and nothing else:

    Http1Pool.post(...)          connect or reuse, write the request, wait for the status line
                              and headers (the first-byte timeout), return an Http1Response
    Http1Response.readany()      the body bytes that have arrived (b"" at the end); a silence
                              longer than the read timeout (or the one given) raises TimeoutError
    Http1Response.end_wait(s)    after a stream's last event: at most ``s`` seconds for the
                              answer's end, so that the connection can be kept alive
    Http1Response.read()         the whole body (a JSON answer, or an error answer)
    Http1Response.release()      the connection back to the pool when the answer was read to its
                              end and the server keeps it alive; closed otherwise

Connection failures raise :class:`UpstreamConnectError` or :class:`UpstreamDisconnected`,
subclasses of aiohttp's ``ClientConnectionError``, so callers handle both clients' failures
alike; a silence past the read timeout raises :class:`ReadTimeout`, a ``TimeoutError``. Bodies are not
compressed (no ``Accept-Encoding`` is sent). A request on a reused connection that the server
closed before answering a byte is sent again once on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import aiohttp
import httptools

_READ_HIGH = 1 << 20  # stop reading the socket past this many unread body bytes
_IDLE_SECONDS = 4.0  # an idle connection older than this is closed rather than reused


class UpstreamConnectionError(aiohttp.ClientConnectionError):
    """The connection failed."""


class UpstreamConnectError(UpstreamConnectionError):
    """The connection could not be made."""


class UpstreamDisconnected(UpstreamConnectionError):
    """The connection was lost (or the answer was not HTTP) before the answer ended."""


class ReadTimeout(TimeoutError):
    """The upstream said nothing for longer than the read timeout."""


class _Headers(dict):
    """Response headers by lower-case name; ``get`` takes any case."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class _Connection(asyncio.Protocol):
    __slots__ = ("_body", "_buffered", "_done", "_error", "_header_name", "_headers_ready", "_loop", "_paused",
                 "_waiter", "complete", "headers", "idle_since", "keep_alive", "parser", "received", "status",
                 "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers = _Headers()
        self._header_name = b""
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._headers_ready = False
        self._error: Exception | None = None
        self._done = False  # the connection is gone
        self.complete = False  # the current answer was read to its end by the parser
        self.keep_alive = False
        self.received = False  # any byte of the current answer arrived

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDisconnected(f"invalid HTTP from upstream: {exc}"))
            self.transport.close()

    def eof_received(self):
        return None  # close the transport

    def connection_lost(self, exc) -> None:
        self._done = True
        if not self.complete:
            self._fail(UpstreamDisconnected("connection lost before the answer ended"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name.decode("latin-1").lower()
            self.headers[self._header_name] = value.decode("latin-1")
        else:  # a value continued across reads
            self.headers[self._header_name] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self._headers_ready = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # the reader's side
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def wait(self, seconds: float | None) -> None:
        """Until the parser has something new, the connection fails, or ``seconds`` pass."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        timer = None
        if seconds is not None:
            timer = self._loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        if not self._body:
            return b""
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def usable(self) -> bool:
        return not self._done and self.transport is not None and not self.transport.is_closing()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout())


class Http1Response:
    """An answer whose status line and headers have arrived."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "released", "status")

    def __init__(self, pool: Http1Pool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.headers = conn.headers
        self.released = False

    @property
    def content(self) -> Http1Response:
        return self  # the attribute aiohttp's readers are found on

    async def readany(self, seconds: float | None = None) -> bytes:
        """What has arrived, waiting for it at most ``seconds`` (default: the read timeout)."""
        conn = self._conn
        timeout = self._read_timeout if seconds is None else seconds
        while True:
            data = conn.take()
            if data or conn.complete:
                return data
            await conn.wait(timeout)

    async def end_wait(self, seconds: float) -> None:
        """The stream's last event has been read: wait at most ``seconds`` for the answer's end
        (usually right behind it), never longer. A provider that holds the answer open past its
        last event then loses the connection at :meth:`release` rather than keeping the caller."""
        conn = self._conn
        if conn.complete or conn._error is not None or not conn.usable:
            return
        try:
            await conn.wait(seconds)
        except (ReadTimeout, UpstreamConnectionError):
            pass

    async def iter_any(self):
        while data := await self.readany():
            yield data

    async def read(self) -> bytes:
        parts = []
        while piece := await self.readany():
            parts.append(piece)
        return b"".join(parts)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.usable and not conn._body:
            self._pool._idle_put(conn)
        elif conn.transport is not None:
            conn.transport.close()


class Http1Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        self._host_line = b"Host: " + host_header.encode("idna") + b"\r\n"
        self._ssl = ssl.create_default_context() if self.https else None
        self._idle: deque[_Connection] = deque()

    def _idle_put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conn._reset()
        conn.parser = httptools.HttpResponseParser(conn)
        self._idle.append(conn)

    def _idle_get(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            if conn.usable and now - conn.idle_since < _IDLE_SECONDS:
                return conn
            conn.transport.close()
        return None

    async def _connect(self, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(loop), self.host, self.port, ssl=self._ssl,
                server_hostname=self.host if self.https else None), seconds)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [b"POST " + (self.prefix + path).encode() + b" HTTP/1.1\r\n", self._host_line,
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise UpstreamConnectionError(f"header {name!r} holds a line break")
            lines.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    async def post(self, path: str, body: bytes, headers: dict[str, str], *, connect_timeout: float,
                   first_byte_timeout: float | None, read_timeout: float | None) -> Http1Response:
        """Send the request; return once the answer's headers are here."""
        request = self._request(path, body, headers)
        conn = self._idle_get()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(connect_timeout)
            try:
                conn.transport.write(request)
                while not conn._headers_ready:
                    await conn.wait(first_byte_timeout)
                return Http1Response(self, conn, read_timeout)
            except UpstreamConnectionError:
                conn.transport.close()
                if reused and not conn.received:
                    conn, reused = None, False  # a kept-alive connection the server had closed
                    continue
                raise
            except BaseException:
                conn.transport.close()
                raise

    def close(self) -> None:
        while self._idle:
            self._idle.pop().transport.close()
