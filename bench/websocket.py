"""The WebSocket door, measured in one run against the simulated upstream.

    python bench/websocket.py [--rounds 3] [--duration 6] [--streams 500] [--write docs/benchmarks.md]

Starts the simulated upstream and Switchyard (uvicorn + uvloop + httptools, the demo tenant's
key, usage logging on, the cache bypassed with no-store) and measures:

1. time to first token over WebSocket against SSE (``POST /v1/chat/completions``), side by side:
   closed loops of ``--concurrency`` clients, the two doors interleaved round by round; for both
   the clock stops at the first non-empty content delta;
2. ``--streams`` WebSocket streams held open at once (one socket each, a 2 s answer each);
3. resident memory per idle authenticated socket (server RSS before and after opening them);
4. back-pressure: one client reads a very long answer slowly, and the server's RSS is sampled.

Everything shares the machine's cores: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gateway import free_port, pct, rss_mb, start, stop, wait_http  # noqa: E402  (pct answers in ms)
from bench.report import section_write, uvloop_install  # noqa: E402

PY = sys.executable


def _body(i: int) -> dict:
    return {"model": "sim-mini", "messages": [{"role": "user", "content": f"Tell me about harbours {i}"}]}


async def sse_ttft(session: aiohttp.ClientSession, url: str, auth: dict, i: int) -> float:
    started = time.perf_counter()
    first = None
    async with session.post(url, json={**_body(i), "stream": True}, headers=auth) as response:
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line \
                    and b'"content":""' not in line:
                first = time.perf_counter() - started
    return first


async def ws_ttft(ws, i: int) -> float:
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "chat.request", "id": str(i), "cache_control": "no-store", "body": _body(i)}))
    first = None
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "delta" and first is None:
            first = time.perf_counter() - started
        elif event["type"] in ("done", "error"):
            if event["type"] == "error":
                raise RuntimeError(event)
            return first


async def ttft_loop(kind: str, base: str, key: str, *, concurrency: int, duration: float) -> list[float]:
    samples: list[float] = []
    counter = [0]
    deadline = time.perf_counter() + duration
    auth = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}

    async def worker() -> None:
        if kind == "sse":
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                while time.perf_counter() < deadline:
                    counter[0] += 1
                    samples.append(await sse_ttft(session, base + "/v1/chat/completions", auth, counter[0]))
        else:
            async with websockets.connect(base.replace("http", "ws") + "/ws/v1/chat",
                                          additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                await ws.recv()  # ready
                while time.perf_counter() < deadline:
                    counter[0] += 1
                    samples.append(await ws_ttft(ws, counter[0]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def open_sockets(url: str, key: str, n: int) -> list:
    async def one():
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                                      open_timeout=60, ping_interval=None)
        await ws.recv()
        return ws

    sockets = []
    for batch in range(0, n, 50):
        sockets += await asyncio.gather(*(one() for _ in range(min(50, n - batch))))
    return sockets


async def held_open(sockets: list) -> dict:
    """Every socket sends one request at once; each answer lasts about two seconds."""
    started = time.perf_counter()

    async def one(i: int, ws) -> tuple[float, float]:
        t0 = time.perf_counter()
        first = await ws_ttft(ws, i)
        return first, time.perf_counter() - t0

    results = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    return {"ok": len(ok), "errors": len(results) - len(ok), "wall": time.perf_counter() - started,
            "ttft": [r[0] for r in ok], "total": [r[1] for r in ok]}


async def slow_reader(url: str, key: str, server, *, seconds: float, rate: int) -> dict:
    """Read one very long answer at ``rate`` bytes/s for ``seconds``, sampling the server's RSS."""
    # A small receive buffer, as on a slow mobile link: otherwise the kernel's autotuned buffers
    # (up to tcp_rmem's maximum, 32 MB here) would hold much of the answer before the server
    # ever sees the socket as full.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((urlsplit(url).hostname, urlsplit(url).port))
    sock.setblocking(False)
    async with websockets.connect(url, sock=sock, additional_headers={"Authorization": f"Bearer {key}"},
                                  max_queue=4, ping_interval=None) as ws:
        await ws.recv()
        before = rss_mb(server)
        await ws.send(json.dumps({"type": "chat.request", "id": "slow", "cache_control": "no-store",
                                  "body": {"model": "sim-mini", "messages": [{"role": "user", "content": "Go"}]}}))
        peak, received, finished = before, 0, None
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            message = await asyncio.wait_for(ws.recv(), 30)
            received += len(message)
            event = json.loads(message)
            if event["type"] in ("done", "error"):
                finished = event
                break
            peak = max(peak, rss_mb(server))
            await asyncio.sleep(len(message) / rate)
        if finished is None:
            await ws.send(json.dumps({"type": "cancel", "id": "slow"}))
            while finished is None:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] == "done":
                    finished = event
        return {"before": before, "peak": peak, "received_kb": received / 1024,
                "produced": finished["usage"]["completion_tokens"], "finish": finished.get("finish_reason")}


async def run(args) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sy-ws-bench-"))
    procs = []
    try:
        up_port = free_port()
        upstream_cmd = [PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20", "--chunks", "20"]
        upstream = start(upstream_cmd, log=logs / "upstream.log")
        procs.append(upstream)
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=REPO, check=True)
        seeded = subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO,
                                capture_output=True, text=True, check=True)
        key = re.search(r"demo API key:\s+(\S+)", seeded.stdout).group(1)
        # 500 streams at once: let the simulated provider take them all (its default limit is 100).
        subprocess.run([PY, "manage.py", "shell", "-c", "from apps.catalog.models import Provider; "
                        f"Provider.objects.filter(base_url='{upstream_v1}').update(max_concurrency=2000)"],
                       cwd=REPO, check=True, capture_output=True)
        port = free_port()
        server = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                        "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                       env={"HF_HUB_OFFLINE": "1", "DEBUG": "0"}, log=logs / "switchyard.log")
        procs.append(server)
        base = f"http://127.0.0.1:{port}"
        ws_url = base.replace("http", "ws") + "/ws/v1/chat"
        await wait_http(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        # The local embedding model loads in the background at start: measure once it is there.
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            for _ in range(240):
                async with session.get(base + "/v1/cache/stats") as response:
                    if (await response.json()).get("semantic_ready"):
                        break
                await asyncio.sleep(0.5)
        await ttft_loop("sse", base, key, concurrency=5, duration=1.0)  # warm both doors
        await ttft_loop("ws", base, key, concurrency=5, duration=1.0)

        levels = [int(c) for c in str(args.concurrency).split(",")]
        ttft = {(kind, c): [] for kind in ("sse", "ws") for c in levels}
        cpu = dict.fromkeys(ttft, 0.0)  # the server's CPU seconds (user + system) per door and level
        for round_index in range(args.rounds):
            for c in levels:
                for kind in (("sse", "ws") if round_index % 2 == 0 else ("ws", "sse")):
                    cpu_before = sum(psutil.Process(server.pid).cpu_times()[:2])
                    samples = await ttft_loop(kind, base, key, concurrency=c, duration=args.duration)
                    cpu[(kind, c)] += sum(psutil.Process(server.pid).cpu_times()[:2]) - cpu_before
                    ttft[(kind, c)] += samples
                    print(f"round {round_index + 1} c={c} {kind}: {len(samples)} requests, TTFT p50 "
                          f"{pct(samples, 50):.2f} ms", file=sys.stderr)

        rss_before = rss_mb(server)
        sockets = await open_sockets(ws_url, key, args.streams)
        await asyncio.sleep(2.0)
        rss_idle = rss_mb(server)
        per_socket_kb = (rss_idle - rss_before) * 1024 / args.streams
        print(f"{args.streams} idle sockets: RSS {rss_before:.1f} -> {rss_idle:.1f} MB", file=sys.stderr)

        # Hold them all open on a 1 s answer each: restart the upstream with 50 ms between chunks.
        stop(upstream)
        upstream = start([*upstream_cmd, "--chunk-delay-ms", "100"], log=logs / "upstream-held.log")
        procs.append(upstream)
        await wait_http(upstream_v1 + "/models")
        held = await held_open(sockets)
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{up_port}/_sim/stats") as r:
            upstream_peak = (await r.json())["max_in_flight"]
        rss_held = rss_mb(server)
        print(f"held open: {held['ok']} ok, {held['errors']} errors, upstream peak in flight {upstream_peak}",
              file=sys.stderr)
        for ws in sockets:
            await ws.close()

        # Back-pressure: a 1,000,000-word answer sent as fast as the upstream can, read slowly.
        stop(upstream)
        upstream = start([*upstream_cmd[:-1], "1000000"], log=logs / "upstream-long.log")
        procs.append(upstream)
        await wait_http(upstream_v1 + "/models")
        slow = await slow_reader(ws_url, key, server, seconds=args.slow_seconds, rate=args.slow_rate)
        print(f"slow reader: {slow}", file=sys.stderr)

        lines = [
            "",
            f"**Time to first token**, closed loops, {args.rounds} rounds of {args.duration:g} s per door and "
            "concurrency, the doors interleaved (20 ms upstream TTFT, 20 chunks; the clock stops at the first "
            "non-empty content delta):",
            "",
            "| door | clients | requests | TTFT p50 ms | p95 ms | p99 ms | p50 over SSE ms | server CPU ms/request |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in levels:
            for kind, label in (("sse", "SSE `POST /v1/chat/completions`"), ("ws", "WebSocket `/ws/v1/chat`")):
                s = ttft[(kind, c)]
                lines.append(f"| {label} | {c} | {len(s)} | {pct(s, 50):.2f} | {pct(s, 95):.2f} | "
                             f"{pct(s, 99):.2f} | {pct(s, 50) - pct(ttft[('sse', c)], 50):+.2f} | "
                             f"{cpu[(kind, c)] * 1000 / max(len(s), 1):.2f} |")
        lines += [
            "",
            f"**{args.streams} streams held open at once** (one socket each, 20 chunks 100 ms apart, so about "
            f"2 s per answer): {held['ok']} answered, {held['errors']} errors, upstream peak in flight "
            f"{upstream_peak}, all done in {held['wall']:.2f} s; TTFT p50 {pct(held['ttft'], 50):.1f} ms, "
            f"p95 {pct(held['ttft'], 95):.1f} ms; answer p50 {pct(held['total'], 50):.0f} ms. "
            f"Server RSS {rss_held:.0f} MB with them in flight.",
            "",
            f"**Memory per idle socket**: server RSS {rss_before:.1f} MB before, {rss_idle:.1f} MB with "
            f"{args.streams} idle authenticated sockets open: **{per_socket_kb:.0f} KB per socket**.",
            "",
            f"**Back-pressure**: one client (64 KB receive buffer) reads a 1,000,000-word answer (about 130 MB of "
            f"SSE from the upstream, "
            f"which sends as fast as it can) at {args.slow_rate / 1000:g} KB/s for {args.slow_seconds:g} s, "
            f"then cancels. Server RSS {slow['before']:.1f} MB before, {slow['peak']:.1f} MB at most while "
            f"reading (+{slow['peak'] - slow['before']:.1f} MB); the client had read {slow['received_kb']:.0f} KB "
            f"of events; the request ended '{slow['finish']}' with {slow['produced']} of the 1,000,000 tokens "
            "taken from the upstream (and billed): the slow socket paused the upstream read instead of the "
            "server buffering the answer.",
        ]
        return "\n".join(lines) + "\n"
    finally:
        for proc in reversed(procs):
            stop(proc)


def write(path: Path, body: str, args) -> None:
    marker_start, marker_end = "<!-- bench/websocket.py:start -->", "<!-- bench/websocket.py:end -->"
    section = (
        f"{marker_start}\n## WebSocket door (`bench/websocket.py`)\n\n"
        f"Command: `python bench/websocket.py --rounds {args.rounds} --duration {args.duration:g} "
        f"--concurrency {args.concurrency} "
        f"--streams {args.streams} --write {path}`.\n\n"
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; the clients, "
        "the upstream and Switchyard share those cores.\n"
        f"{body}\n{marker_end}\n"
    )
    section_write(path, "bench/websocket.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per door and round")
    parser.add_argument("--concurrency", default="2,10", help="client counts, comma-separated")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--slow-rate", type=int, default=20_000, help="bytes per second the slow client reads")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))  # the children inherit it
    uvloop_install()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write(args.write, body, args)


if __name__ == "__main__":
    main()
