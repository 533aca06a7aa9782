"""A small TCP balancer for the local cluster: round robin over web replicas that answer
``/readyz``.

It balances connections, not requests: bytes are copied both ways untouched, so HTTP
keep-alive, SSE and WebSocket upgrades pass through as they are. A replica is checked every
``--check-every`` seconds and taken out of the rotation while its ``/readyz`` does not answer
200; a replica that refuses a connection is taken out at once and the connection tries the
next one. With no replica ready the client gets a plain 503.

Production deployments put nginx (``deploy/nginx.conf``) or a cloud balancer here instead; this
one exists so ``make cluster`` needs nothing but Python.

    python -m apps.devtools.balancer --listen 127.0.0.1:8000 \
        --backend 127.0.0.1:8101 --backend 127.0.0.1:8102
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import socket

logger = logging.getLogger("switchyard.balancer")

_UNAVAILABLE_BODY = b'{"error": {"message": "No replica is ready.", "type": "server_error", "code": "no_replica"}}'
_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(_UNAVAILABLE_BODY), _UNAVAILABLE_BODY))
_CHUNK = 65536


class Backend:
    """One web replica."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.ready = True  # until the first check says otherwise
        self.connections = 0

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Balancer:
    def __init__(self, backends: list[Backend], *, check_every: float = 1.0, connect_timeout: float = 2.0) -> None:
        self.backends = backends
        self.check_every = check_every
        self.connect_timeout = connect_timeout
        self._order = itertools.cycle(range(len(backends)))

    def _candidates(self) -> list[Backend]:
        """Every backend once, ready ones first, starting at the next in the rotation."""
        start = next(self._order)
        ring = self.backends[start:] + self.backends[:start]
        return [b for b in ring if b.ready] + [b for b in ring if not b.ready]

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        _nodelay(client_writer)
        for backend in self._candidates():
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(backend.host, backend.port), self.connect_timeout)
            except (OSError, TimeoutError):
                if backend.ready:
                    logger.warning("replica %s refused a connection; out of rotation", backend)
                backend.ready = False
                continue
            _nodelay(upstream_writer)
            backend.connections += 1
            try:
                await asyncio.gather(_copy(client_reader, upstream_writer), _copy(upstream_reader, client_writer))
            finally:
                backend.connections -= 1
                for writer in (upstream_writer, client_writer):
                    writer.close()
            return
        client_writer.write(_UNAVAILABLE)
        with contextlib.suppress(OSError):
            await client_writer.drain()
        client_writer.close()

    async def check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(backend) for backend in self.backends))
            await asyncio.sleep(self.check_every)

    async def _check(self, backend: Backend) -> None:
        ready = False
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(backend.host, backend.port), 2)
            writer.write(f"GET /readyz HTTP/1.1\r\nHost: {backend}\r\nConnection: close\r\n\r\n".encode())
            status_line = await asyncio.wait_for(reader.readline(), 5)
            ready = status_line.split(b" ")[1:2] == [b"200"]
            writer.close()
        except (OSError, TimeoutError, IndexError):
            ready = False
        if ready != backend.ready:
            logger.warning("replica %s %s", backend, "back in rotation" if ready else "not ready; out of rotation")
        backend.ready = ready


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; at its end, pass the half-close on so the other side can finish."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(listen: str, backends: list[str], *, check_every: float) -> None:
    balancer = Balancer([Backend(address) for address in backends], check_every=check_every)
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(balancer.handle, host or "127.0.0.1", int(port), backlog=1024,
                                        reuse_address=True)
    checks = asyncio.create_task(balancer.check_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.warning("balancing %s over %s", listen, ", ".join(backends))
    await stop.wait()
    checks.cancel()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Round-robin TCP balancer over ready web replicas.")
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--backend", action="append", required=True, help="host:port of a replica (repeat)")
    parser.add_argument("--check-every", type=float, default=1.0, help="seconds between /readyz checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s balancer %(message)s")
    try:
        import uvloop  # optional: the asyncio loop serves where it is missing

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.listen, args.backend, check_every=args.check_every))


if __name__ == "__main__":
    main()
