"""Soak: mixed load through two restarts, then every answer accounted for.

    python bench/soak.py [--requests 100000] [--concurrency 100] [--restarts 2] [--write docs/benchmarks.md]

Starts the simulated upstream and one Switchyard process (uvicorn + uvloop + httptools, 10 s of
graceful shutdown), makes a fresh tenant with its own key, and sends ``--requests`` answered
requests from ``--concurrency`` clients in a closed loop, mixed: JSON completions with unique
prompts, SSE streams, JSON requests drawn from 50 repeated prompts (exact cache hits after the
first), and WebSocket requests (one socket per client, opened again after a restart). At even
fractions of the run the server gets SIGTERM; clients keep going (their connections are refused
until the new process listens) and a new process starts on the same port once the old one has
drained and exited.

An answer counts when the client has all of it: a JSON body, a stream through ``[DONE]``, a
WebSocket ``done`` event; each carries its request id and cost. Afterwards (the last process
stopped the same way, so its buffer is flushed), the tenant's RequestLog rows are read back:

- rows == answered: the same request ids on both sides, none missing, none extra;
- spend: the sum of the rows' costs equals the sum of the costs the clients were told, request
  by request, and the usage rollups (summed by the same job the dashboard reads) agree;
- memory: the last process's resident memory at the end against where it settled (after a
  quarter of its requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import psutil
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gateway import free_port, start, stop, wait_http  # noqa: E402
from bench.report import section_write, uvloop_install  # noqa: E402

PY = sys.executable
MIX = (("json", 40), ("stream", 25), ("cache", 25), ("websocket", 10))
REPEATED = [f"Soak question number {n}: what does a switchyard do?" for n in range(50)]
PENNY = Decimal("0.0000000001")

SETUP = """
from apps.tenants.services import key_create, tenant_create
tenant = tenant_create(name="soak {stamp}", slug="soak-{stamp}")
print("TENANT", tenant.pk)
print("KEY", key_create(tenant=tenant, name="soak").secret)
"""

READ_BACK = """
import json
from django.db.models import Sum
from apps.reporting.models import UsageRollup
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from django.db import transaction


def step():
    with transaction.atomic():
        return usage_rollup()


step()  # the first run only marks where the log ends
while step():
    pass
logged = RequestLog.objects.filter(tenant_id={tenant})
rows = dict((rid, str(cost)) for rid, cost in logged.values_list("request_id", "cost"))
rollup = UsageRollup.objects.filter(tenant_id={tenant}, period="tday").aggregate(total=Sum("cost"))["total"]
statuses = list(RequestLog.objects.filter(tenant_id={tenant}).values_list("status_code", flat=True))
with open({path!r}, "w") as out:
    json.dump({{"rows": rows, "rollup": str(rollup or 0), "statuses": statuses}}, out)
"""


class Restarting(Exception):
    """The server said it is shutting down: not an answer, the request goes again."""


@dataclass
class Tally:
    answered: dict[str, Decimal] = field(default_factory=dict)  # request id -> cost the client was told
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    refused: int = 0  # attempts that found no server listening (restarts)
    cut: int = 0  # attempts that lost their connection mid-way
    unidentified: int = 0  # answers without a request id (should stay 0)
    attempts: int = 0
    elapsed: float = 0.0

    def answer(self, kind: str, request_id: str | None, cost: str | None, status: int) -> None:
        self.statuses[status] += 1
        if not request_id:
            self.unidentified += 1
            return
        self.answered[request_id] = Decimal(cost or "0")
        self.kinds[kind] += 1


class Server:
    """The Switchyard process under test, restarted in place."""

    def __init__(self, port: int, logs: Path, *, semantic: bool) -> None:
        self.port = port
        self.semantic = semantic
        self.logs = logs
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.samples: list[list[tuple[int, float]]] = []  # per process: (answered so far, RSS MB)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, key: str) -> None:
        self.generation += 1
        self.proc = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                           str(self.port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                           "--timeout-graceful-shutdown", "10"],
                          env={"HF_HUB_OFFLINE": "1", "DEBUG": "0",
                               "CACHE_LOCAL_EMBEDDER": "1" if self.semantic else "0"},
                          log=self.logs / f"switchyard-{self.generation}.log")
        await wait_http(self.base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, proc=self.proc)
        self.samples.append([])

    async def terminate(self) -> float:
        """SIGTERM, then wait for the process to drain and exit; returns the seconds it took."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            await asyncio.sleep(0.05)
        return time.monotonic() - began

    def sample(self, answered: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                rss = psutil.Process(self.proc.pid).memory_info().rss / 1024 / 1024
            except psutil.NoSuchProcess:
                return
            self.samples[-1].append((answered, rss))


def _body(kind: str, n: int) -> dict:
    if kind == "cache":
        prompt = REPEATED[n % len(REPEATED)]
    else:
        prompt = f"Soak {kind} request {n}: {random.random()}"  # unique: a cache miss
    return {"model": "auto", "messages": [{"role": "user", "content": prompt}]}


_COST_COMMENT = re.compile(rb": x-switchyard-cost ([0-9.]+)")


async def _http(session: aiohttp.ClientSession, base: str, kind: str, n: int, tally: Tally) -> None:
    body = _body(kind, n)
    if kind == "stream":
        body["stream"] = True
    async with session.post(base + "/v1/chat/completions", json=body) as response:
        raw = await response.read()
        request_id = response.headers.get("x-switchyard-request-id")
        cost = response.headers.get("x-switchyard-cost")
        if kind == "stream" and response.status == 200:
            if not raw.rstrip().endswith(b"data: [DONE]"):
                tally.cut += 1  # the stream ended without finishing: not an answer
                return
            if cost == "deferred":
                found = _COST_COMMENT.search(raw)
                cost = found.group(1).decode() if found else None
        tally.answer(kind, request_id, cost, response.status)


async def _websocket(client: dict, base: str, key: str, n: int, tally: Tally) -> None:
    socket = client.get("ws")
    if socket is None:
        socket = client["ws"] = await websockets.connect(base.replace("http", "ws") + "/ws/v1/chat",
                                                         max_size=None, open_timeout=10)
        await socket.send(json.dumps({"type": "auth", "api_key": key}))
        ready = json.loads(await socket.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"websocket refused: {ready}")
    await socket.send(json.dumps({"type": "chat.request", "id": str(n), "body": _body("websocket", n)}))
    while True:
        event = json.loads(await socket.recv())
        if event["type"] == "done":
            tally.answer("websocket", event.get("request_id"), event.get("cost"), 200)
            return
        if event["type"] == "error":
            if event["error"].get("code") == "server_shutdown":
                raise Restarting  # this server takes no more requests: reconnect, send again
            tally.answer("websocket", event.get("request_id"), "0", event["error"].get("status", 500))
            return


async def load(args, server: Server, key: str, tally: Tally) -> list[float]:
    """Send until ``args.requests`` answers have come back, restarting the server on the way."""
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    counter = iter(range(10 ** 9))
    restarts_at = [args.requests * (i + 1) // (args.restarts + 1) for i in range(args.restarts)]
    downtimes: list[float] = []

    async def client(index: int) -> None:
        ws_client: dict = {}
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {key}"},
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            while len(tally.answered) + tally.unidentified < args.requests:
                n = next(counter)
                kind = kinds[(n * 7919 + index) % len(kinds)]
                tally.attempts += 1
                try:
                    if kind == "websocket":
                        await _websocket(ws_client, server.base, key, n, tally)
                    else:
                        await _http(session, server.base, kind, n, tally)
                except (aiohttp.ClientConnectorError, Restarting):
                    tally.refused += 1
                    if ws_client.get("ws") is not None:
                        await ws_client.pop("ws").close()
                    await asyncio.sleep(0.05)
                except (TimeoutError, aiohttp.ClientError, websockets.WebSocketException, OSError):
                    tally.cut += 1
                    if ws_client.get("ws") is not None:
                        ws_client.pop("ws")
                    await asyncio.sleep(0.05)
            if ws_client.get("ws") is not None:
                await ws_client["ws"].close()

    async def conductor() -> None:
        for mark in restarts_at:
            while len(tally.answered) < mark:
                await asyncio.sleep(0.05)
            began = time.monotonic()
            drained = await server.terminate()
            await server.start(key)
            downtimes.append(time.monotonic() - began)
            print(f"restart at {mark} answers: drained in {drained:.1f} s, down {downtimes[-1]:.1f} s",
                  file=sys.stderr)

    async def sampler() -> None:
        while True:
            server.sample(len(tally.answered))
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(sampler())
    started = time.monotonic()
    try:
        await asyncio.gather(conductor(), *(client(i) for i in range(args.concurrency)))
    finally:
        watcher.cancel()
    tally.elapsed = time.monotonic() - started
    return downtimes


def settled_and_end(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """RSS once a quarter of the process's answers were served, and at its end."""
    first, last = samples[0][0], samples[-1][0]
    quarter = first + (last - first) // 4
    settled = next(rss for answered, rss in samples if answered >= quarter)
    return settled, samples[-1][1]


async def run(args) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sy-soak-"))
    procs = []
    server = None
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "10",
                            "--chunks", "12"], log=logs / "upstream.log"))
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        subprocess.run([PY, "manage.py", "migrate", "--noinput"], cwd=REPO, check=True, capture_output=True)
        subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO, check=True,
                       capture_output=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        made = subprocess.run([PY, "manage.py", "shell", "-c", SETUP.format(stamp=stamp)], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        tenant = int(re.search(r"TENANT (\d+)", made).group(1))
        key = re.search(r"KEY (\S+)", made).group(1)

        server = Server(free_port(), logs, semantic=args.semantic)
        await server.start(key)
        tally = Tally()
        downtimes = await load(args, server, key, tally)
        server.sample(len(tally.answered))
        final_drain = await server.terminate()

        out = logs / "rows.json"
        subprocess.run([PY, "manage.py", "shell", "-c", READ_BACK.format(tenant=tenant, path=str(out))], cwd=REPO,
                       check=True, capture_output=True, text=True)
        found = json.loads(out.read_text())
        rows = {rid: Decimal(cost) for rid, cost in found["rows"].items()}
        return report(args, tally, rows, Decimal(found["rollup"] or "0"), Counter(found["statuses"]), server,
                      downtimes, final_drain)
    finally:
        if server is not None:
            stop(server.proc)
        for proc in procs:
            stop(proc)


def report(args, tally: Tally, rows: dict[str, Decimal], rollup: Decimal, row_statuses: Counter, server: Server,
           downtimes: list[float], final_drain: float) -> str:
    answered = set(tally.answered)
    logged = set(rows)
    missing, extra = answered - logged, logged - answered
    mismatched = sum(1 for rid in answered & logged if rows[rid].quantize(PENNY) != tally.answered[rid].quantize(PENNY))
    told = sum(tally.answered.values(), Decimal(0))
    billed = sum(rows.values(), Decimal(0))
    memory = [settled_and_end(s) for s in server.samples if len(s) >= 2]
    settled, end = memory[-1]
    growth = (end - settled) / settled * 100
    checks = [
        ("RequestLog rows = answered requests", len(logged) == len(answered) and not missing and not extra),
        ("every row's cost = the cost its client was told", mismatched == 0),
        ("sum of row costs = sum told to clients", billed.quantize(PENNY) == told.quantize(PENNY)),
        ("usage rollups = sum of row costs", rollup.quantize(PENNY) == billed.quantize(PENNY)),
        ("RSS at the end within 10 % of where it settled", abs(growth) <= 10),
    ]
    lines = [
        "<!-- bench/soak.py:start -->",
        "## Soak through restarts (`bench/soak.py`)",
        "",
        f"`python bench/soak.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--restarts {args.restarts} --write docs/benchmarks.md`, run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} with {psutil.cpu_count()} cores "
        f"(load generator, simulated upstream, Postgres and Switchyard on the same cores).",
        "",
        f"- Answered: **{len(answered):,}** requests in {tally.elapsed:.0f} s "
        f"({len(answered) / tally.elapsed:.0f} /s) at concurrency {args.concurrency}: "
        + ", ".join(f"{kind} {tally.kinds[kind]:,}" for kind, _ in MIX)
        + f"; HTTP statuses {dict(sorted(tally.statuses.items()))}.",
        f"- Restarts by SIGTERM: {len(downtimes)}, each down "
        + ", ".join(f"{d:.1f} s" for d in downtimes)
        + f" (drain, exit, start, ready); the last process drained in {final_drain:.1f} s. Attempts refused "
        f"while no process listened: {tally.refused:,}; connections lost mid-way: {tally.cut:,}; answers "
        f"without a request id: {tally.unidentified}.",
        f"- RequestLog rows for the tenant: **{len(logged):,}** (statuses {dict(sorted(row_statuses.items()))}); "
        f"answered but not logged: **{len(missing)}**; logged but not answered: **{len(extra)}**; "
        f"rows whose cost differs from what the client was told: **{mismatched}**.",
        f"- Spend: told to clients ${told:.6f}, sum of rows ${billed:.6f}, usage rollups ${rollup:.6f}.",
        "- Resident memory per process (settled after a quarter of its requests -> end): "
        + "; ".join(f"#{i + 1} {s:.0f} -> {e:.0f} MB" for i, (s, e) in enumerate(memory))
        + f"; the last one **{growth:+.1f} %**.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in checks),
        "<!-- bench/soak.py:end -->",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--semantic", action="store_true",
                        help="load the local embedding model (semantic lookups: about 100 misses/s on 2 cores)")
    parser.add_argument("--write", type=Path, help="replace the soak section of this markdown file")
    args = parser.parse_args()
    uvloop_install()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        section_write(args.write, "bench/soak.py", body)


if __name__ == "__main__":
    main()
