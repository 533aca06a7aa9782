"""A lean Redis client for the counters' two scripts: one pipelined connection per process.

Every request reserves and settles through a Lua script, so the client's own cost is paid
twice a request. A general client (redis-py) spends most of a request's limits time in its
connection pool, retry and observability layers and its reply parser; this one only does
what the scripts need:

- one connection, commands written back to back without waiting for replies (Redis answers
  them in order): the first command of an event-loop turn is written at once (a reservation
  waits for nothing), the turn's others in one write when it ends;
- ``EVALSHA`` with the script loaded when the connection opens, ``EVAL`` once if the server
  has forgotten it (``NOSCRIPT``);
- a command is sent at most once: a connection lost, or a reply later than ``timeout``, fails
  every command waiting on it with :class:`RedisUnavailable` (the caller decides what an
  unknown outcome means) and the next command opens a new connection.

Only RESP2 replies of the kinds the scripts return (integers, strings, arrays, errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from urllib.parse import unquote, urlparse


class RedisUnavailable(Exception):
    """The command's outcome is unknown: the connection failed, or the reply was too late."""


class RedisReplyError(Exception):
    """Redis answered the command with an error."""


def encode_args(args) -> bytes:
    """Arguments (``int``, ``str`` or ``bytes``) as RESP bulk strings, without the array header:
    parts of a command can be encoded once and joined."""
    out = []
    for arg in args:
        kind = type(arg)
        data = b"%d" % arg if kind is int else arg.encode() if kind is str else arg
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def _encode(args) -> bytes:
    return b"*%d\r\n" % len(args) + encode_args(args)


_INCOMPLETE = object()


def _parse(buf: bytearray, pos: int):
    """One reply from ``buf`` at ``pos``: ``(value, next position)``, or ``_INCOMPLETE``."""
    if buf[pos] == 42:  # the scripts' replies: flat arrays of integers, read without recursion
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return _INCOMPLETE
        count, at, items = int(buf[pos + 1:end]), end + 2, []
        if count < 0:
            return None, at
        for _ in range(count):
            end = buf.find(b"\r\n", at)
            if end < 0:
                return _INCOMPLETE
            if buf[at] != 58:
                return _parse_any(buf, pos)
            items.append(int(buf[at + 1:end]))
            at = end + 2
        return items, at
    return _parse_any(buf, pos)


def _parse_any(buf: bytearray, pos: int):
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind, line = buf[pos], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == 58:  # ':' integer
        return int(line), pos
    if kind == 42:  # '*' array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            parsed = _parse_any(buf, pos)
            if parsed is _INCOMPLETE:
                return _INCOMPLETE
            item, pos = parsed
            items.append(item)
        return items, pos
    if kind == 36:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return _INCOMPLETE
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == 43:  # '+' simple string
        return line, pos
    if kind == 45:  # '-' error
        return RedisReplyError(line.decode(errors="replace")), pos
    raise RedisUnavailable(f"unexpected reply type {chr(kind)!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.outgoing: list[bytes] = []
        self.flush_soon = False
        self.flush_later: asyncio.TimerHandle | None = None
        self.lost: BaseException | None = None
        self.suspect: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, command: bytes, *, defer: float = 0.0) -> asyncio.Future:
        """Send ``command``: the first of an event-loop turn at once, the others of the turn
        together when it ends; with ``defer``, within that many seconds, along with the next
        command that cannot wait."""
        if self.lost is not None:
            raise RedisUnavailable("connection lost") from self.lost
        future = self.link.loop.create_future()
        self.waiting.append((future, time.monotonic()))
        self.outgoing.append(command)
        if not defer:
            if not self.flush_soon:
                self._flush()
                self.flush_soon = True
                self.link.loop.call_soon(self._flush)
        elif self.flush_later is None and not self.flush_soon:
            self.flush_later = self.link.loop.call_later(defer, self._flush)
        return future

    def _flush(self) -> None:
        self.flush_soon = False
        if self.flush_later is not None:
            self.flush_later.cancel()
            self.flush_later = None
        if self.outgoing and self.lost is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        waiting = self.waiting
        try:
            while pos < len(buf):
                parsed = _parse(buf, pos)
                if parsed is _INCOMPLETE:
                    break
                value, pos = parsed
                if not waiting:
                    raise RedisUnavailable("a reply nobody asked for")
                future, _sent = waiting.popleft()
                if not future.done():
                    if isinstance(value, RedisReplyError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except (RedisUnavailable, ValueError) as exc:
            self.fail(exc)
            return
        del buf[:pos]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fail(exc or ConnectionResetError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """Fail every command still waiting for its reply, and close the connection."""
        if self.lost is None:
            self.lost = exc
        self.link.forget(self)
        while self.waiting:
            future, _sent = self.waiting.popleft()
            if not future.done():
                error = RedisUnavailable(f"Redis connection failed: {exc!r}")
                error.__cause__ = exc
                future.set_exception(error)
        if self.flush_later is not None:
            self.flush_later.cancel()
            self.flush_later = None
        self.outgoing.clear()
        if self.transport is not None:
            self.transport.abort()

    def overdue(self, timeout: float) -> bool:
        """The oldest command has waited over ``timeout``, and still did at the previous check:
        a reply that arrived while the event loop was busy is read before it is given up on."""
        if not self.waiting or time.monotonic() - self.waiting[0][1] <= timeout:
            self.suspect = None
            return False
        oldest = self.waiting[0][0]
        if self.suspect is oldest:
            return True
        self.suspect = oldest
        return False


class Script:
    """A Lua script run by its SHA1 once loaded."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()  # Redis names scripts by SHA1
        self._evalsha = b"$7\r\nEVALSHA\r\n$40\r\n" + self.sha + b"\r\n"
        self._eval = b"$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (len(self.source), self.source)

    def evalsha(self, count: int, body: bytes) -> bytes:
        """The ``EVALSHA`` command of ``body``: ``count`` encoded arguments (key count, keys, args)."""
        return b"*%d\r\n" % (count + 2) + self._evalsha + body

    def eval(self, count: int, body: bytes) -> bytes:
        return b"*%d\r\n" % (count + 2) + self._eval + body


class RedisLink:
    """One pipelined connection to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""

    def __init__(self, url: str, *, scripts: tuple[Script, ...] = (), timeout: float = 5.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self.scheme = parsed.scheme
        self.host, self.port, self.path = parsed.hostname or "127.0.0.1", parsed.port or 6379, parsed.path
        query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
        db = query.get("db") or (parsed.path.lstrip("/") if parsed.scheme != "unix" else "") or "0"
        self.db = int(db)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.scripts = scripts
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Future | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            # A connection belongs to the event loop that opened it: another loop opens its own.
            self.loop, self._protocol, self._opening, self._watchdog = loop, None, None, None
        protocol = self._protocol
        if protocol is not None:
            return protocol
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _open(self) -> _Protocol:
        loop = self.loop
        try:
            if self.scheme == "unix":
                _t, protocol = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: _Protocol(self), self.path), self.timeout)
            else:
                context = ssl.create_default_context() if self.scheme == "rediss" else None
                _t, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=context), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to Redis: {exc!r}") from exc
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        setup += [("SCRIPT", "LOAD", script.source) for script in self.scripts]
        try:
            await asyncio.wait_for(asyncio.gather(*[protocol.send(_encode(args)) for args in setup]), self.timeout)
        except BaseException as exc:
            protocol.fail(exc)
            raise RedisUnavailable(f"Redis refused the connection's setup: {exc!r}") from exc
        self._protocol = protocol
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 2, self._watch)
        return protocol

    def _watch(self) -> None:
        """A reply later than ``timeout`` (seen at two checks in a row, ``timeout / 2`` apart)
        means the connection is stuck: give up on it."""
        self._watchdog = None
        protocol = self._protocol
        if protocol is None:
            return
        if protocol.overdue(self.timeout):
            protocol.fail(TimeoutError(f"no reply from Redis in {self.timeout:g} s"))
            return
        self._watchdog = self.loop.call_later(self.timeout / 2, self._watch)

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def evalsha(self, script: Script, keys, args, *, defer: float = 0.0) -> object:
        """Run ``script`` with ``keys`` and ``args``; raises :class:`RedisUnavailable` or
        :class:`RedisReplyError`."""
        return await self.run(script, 1 + len(keys) + len(args), encode_args([len(keys), *keys, *args]),
                              defer=defer)

    async def run(self, script: Script, count: int, body: bytes, *, defer: float = 0.0) -> object:
        """Run ``script`` on ``body``, ``count`` arguments already encoded (key count, keys,
        args). With ``defer``, the command may wait up to that many seconds to share a write
        with the next one (its place among the commands stays the same)."""
        protocol = self._protocol
        if protocol is None or self.loop is not asyncio.get_running_loop():
            protocol = await self._connection()
        try:
            return await protocol.send(script.evalsha(count, body), defer=defer)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        protocol = await self._connection()
        return await protocol.send(script.eval(count, body))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
