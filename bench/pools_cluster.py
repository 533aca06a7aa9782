"""Two gateway replicas sharing one deployment pool through Redis, against providers' rate limits.

    python bench/pools_cluster.py [--minutes 2] [--per-minute 250] [--rpm 100] [--strategy most_headroom]
                                  [--write docs/benchmarks.md]

Starts the simulated upstream with ``--rpm`` (each upstream model takes that many requests per
wall-clock minute, then answers 429 with a Retry-After to the minute's end) and two Switchyard
processes on the development database and the Redis at ``REDIS_URL``. One model is served by
three deployments (three providers, three upstream ids on the simulator), each with that RPM.
``--per-minute`` requests a minute are offered for ``--minutes`` minutes from the start of a
wall-clock minute, open loop (evenly spaced, whatever the answers take), alternately to each
replica.

It reports what reached the client (every status; the goal is no 429), what each deployment took
per minute (the simulator refuses past its limit, so none takes more) and how many requests the
deployments refused (what the shared pool sent past a limit before it knew). Exits non-zero when
a 429 reached the client or a deployment took more than its limit in a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import PY, REPO, free_port, start, stop, wait_http
from bench.report import section_write, uvloop_install

SETUP = """
from decimal import Decimal
from apps.catalog.models import Deployment, Model, Provider
from apps.tenants.models import Tenant
from apps.tenants.services import key_create, tenant_create
from apps.usage.models import RequestLog
RequestLog.objects.filter(tenant__slug="bench-pool-rpm").delete()
Tenant.objects.filter(slug="bench-pool-rpm").delete()
tenant = tenant_create(name="bench pool rpm", slug="bench-pool-rpm")
tenant.cache_enabled = False
tenant.save()
Deployment.objects.filter(model__name="bench-pool-rpm").delete()
Model.objects.filter(name="bench-pool-rpm").delete()
providers = [Provider.objects.update_or_create(name=f"bench-rpm-{i}", defaults={
    "kind": "simulated", "base_url": UPSTREAM, "timeout_seconds": 10})[0] for i in range(3)]
model = Model.objects.create(name="bench-pool-rpm", upstream_id="rpm", provider=providers[0],
                             pool_strategy=STRATEGY, input_price_per_million=Decimal("0.15"),
                             output_price_per_million=Decimal("0.60"))
for i, provider in enumerate(providers):
    Deployment.objects.create(model=model, provider=provider, upstream_id=f"rpm-{i}", region=f"r{i}", rpm=RPM)
print("KEY", key_create(tenant=tenant, name="bench").secret)
"""


def _key(upstream_v1: str, strategy: str, rpm: int) -> str:
    code = f"UPSTREAM = {upstream_v1!r}\nSTRATEGY = {strategy!r}\nRPM = {rpm}\n" + SETUP
    done = subprocess.run([PY, "manage.py", "shell", "-c", code], cwd=REPO, check=True, capture_output=True,
                          text=True)
    return re.search(r"KEY (\S+)", done.stdout).group(1)


def _redis_clean(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for name in client.scan_iter("sy:pool:*", count=1000):
        client.delete(name)
    client.close()


async def run(args) -> tuple[str, bool]:
    logs = Path(tempfile.mkdtemp(prefix="sy-pools-cluster-"))
    procs = []
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20",
                            "--chunks", "20", "--rpm", str(args.rpm)], log=logs / "upstream.log"))
        upstream = f"http://127.0.0.1:{up_port}"
        await wait_http(upstream + "/v1/models")
        _redis_clean(args.redis_url)
        key = _key(upstream + "/v1", args.strategy, args.rpm)
        urls = []
        for name in ("web1", "web2"):
            port = free_port()
            procs.append(start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                                str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                               env={"HF_HUB_OFFLINE": "1", "DEBUG": "0", "REDIS_URL": args.redis_url},
                               log=logs / f"{name}.log"))
            urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
        headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
        for url in urls:
            await wait_http(url.replace("/chat/completions", "/models"), headers=headers)
        async with aiohttp.ClientSession(headers=headers) as session:
            statuses: Counter = Counter()
            by_deployment: Counter = Counter()

            async def one(i: int) -> None:
                body = {"model": "bench-pool-rpm", "messages": [{"role": "user", "content": f"request {i}"}]}
                try:
                    async with session.post(urls[i % 2], json=body) as response:
                        await response.read()
                        statuses[response.status] += 1
                        by_deployment[response.headers.get("x-switchyard-deployment", "-")] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

            async with aiohttp.ClientSession() as control:
                await control.post(upstream + "/_sim/reset")
            total = int(args.minutes * args.per_minute)
            gap = 60.0 / args.per_minute
            # Start on a minute's first second: each wall-clock minute (the simulator's window) is
            # then offered the full --per-minute.
            await asyncio.sleep(60 - time.time() % 60)
            began = time.monotonic()
            tasks = []
            for i in range(total):
                await asyncio.sleep(max(began + i * gap - time.monotonic(), 0))
                tasks.append(asyncio.ensure_future(one(i)))
                if i and i % args.per_minute == 0:
                    print(f"{i} requests offered, statuses so far {dict(statuses)}", file=sys.stderr)
            await asyncio.gather(*tasks)
            async with aiohttp.ClientSession() as control, control.get(upstream + "/_sim/stats") as response:
                stats = await response.json()
        per_minute = stats["per_minute"]
        refused = stats["rate_limited"]
        worst = max((n for minutes in per_minute.values() for n in minutes.values()), default=0)
        lines = [
            f"Offered: {total} requests over {args.minutes:g} minutes ({args.per_minute} a minute), alternately "
            f"to two replicas; three deployments of {args.rpm} requests/minute each; strategy `{args.strategy}`.",
            "",
            "| what | figure |",
            "|---|---|",
            "| answers by status | " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)) + " |",
            "| 429s that reached the client | " + str(statuses.get(429, 0)) + " |",
            "| answers by deployment | " + ", ".join(f"{k}: {v}" for k, v in sorted(by_deployment.items())) + " |",
            "| requests each deployment took, by minute | " + "; ".join(
                f"{model}: " + ", ".join(str(n) for _, n in sorted(minutes.items())) for model, minutes in
                sorted(per_minute.items())) + " |",
            f"| most any deployment took in a minute | {worst} (limit {args.rpm}) |",
            "| requests the deployments refused (429 to the gateway, moved to another) | "
            + (", ".join(f"{k}: {v}" for k, v in sorted(refused.items())) or "none") + " |",
        ]
        ok = statuses.get(429, 0) == 0 and worst <= args.rpm and statuses.get(200, 0) == total
        return "\n".join(lines) + "\n", ok
    finally:
        for proc in reversed(procs):
            stop(proc)


def write(path: Path, body: str, args) -> None:
    start_marker, end_marker = "<!-- bench/pools_cluster.py:start -->", "<!-- bench/pools_cluster.py:end -->"
    section = (
        f"{start_marker}\n## Deployment pools across two replicas (`bench/pools_cluster.py`)\n\n"
        f"Command: `python bench/pools_cluster.py --minutes {args.minutes:g} --per-minute {args.per_minute} "
        f"--rpm {args.rpm} --strategy {args.strategy} --write {path}`. Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"on {os.cpu_count()} cores, Python {platform.python_version()}; simulated upstream 20 ms to first token "
        f"with a per-model rate limit; two gateway processes sharing the pool through Redis.\n\n"
        f"{body}\n{end_marker}\n"
    )
    section_write(path, "bench/pools_cluster.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--per-minute", type=int, default=250)
    parser.add_argument("--rpm", type=int, default=100)
    parser.add_argument("--strategy", default="most_headroom",
                        choices=("weighted", "least_busy", "lowest_latency", "most_headroom"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    uvloop_install()
    body, ok = asyncio.run(run(args))
    print(body)
    if args.write:
        write(args.write, body, args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
