"""What rate limits and budgets cost per request, side by side in one run.

    python bench/limits.py [--duration 6] [--rounds 3] [--write docs/benchmarks.md]

Starts the simulated upstream (20 ms to first token) and two Switchyard processes on the
development database: one with ``REDIS_URL`` (limits counted by Lua scripts in Redis) and one
without (limits counted by Postgres functions). Three targets, interleaved round by round:

- no limits: a tenant and key with no limit set (the limiter is skipped),
- Redis counters: a key with requests/minute, tokens/minute, concurrency and a USD budget on a
  tenant with a budget, so every request reserves and settles in both scopes,
- Postgres counters: the same key on the process without Redis.

For each it reports Switchyard's own time per request (``x-switchyard-overhead-ms``, which
includes the reservation) one request at a time, and req/s and p50 at 20 concurrent clients.
Needs a Redis (``REDIS_URL``, default redis://127.0.0.1:6379/0).
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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import PY, REPO, Sample, Target, closed_loop, free_port, pct, start, stop, wait_http
from bench.report import section_write, uvloop_install

SETUP = """
from decimal import Decimal
from apps.tenants.models import Tenant
from apps.tenants.services import key_create, tenant_create
from apps.usage.models import RequestLog
for slug in ("bench-free", "bench-limited"):
    RequestLog.objects.filter(tenant__slug=slug).delete()  # its keys' rows protect them from deletion
    Tenant.objects.filter(slug=slug).delete()
free = tenant_create(name="bench free", slug="bench-free")
limited = tenant_create(name="bench limited", slug="bench-limited")
limited.budget_usd, limited.budget_period, limited.cache_enabled = Decimal("1000000"), "month", False
limited.save()
free.cache_enabled = False
free.save()
print("FREE", key_create(tenant=free, name="bench").secret)
print("LIMITED", key_create(tenant=limited, name="bench", rpm_limit=10_000_000, tpm_limit=2_000_000_000,
                            concurrency_limit=1000, budget_usd=Decimal("1000000")).secret)
"""


def _keys(upstream_v1: str) -> tuple[str, str]:
    subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO, check=True,
                   capture_output=True)
    done = subprocess.run([PY, "manage.py", "shell", "-c", SETUP], cwd=REPO, check=True, capture_output=True,
                          text=True)
    return (re.search(r"FREE (\S+)", done.stdout).group(1), re.search(r"LIMITED (\S+)", done.stdout).group(1))


async def run(args) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sy-limits-"))
    procs = []
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20",
                            "--chunks", "20"], log=logs / "upstream.log"))
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        free_key, limited_key = _keys(upstream_v1)
        bases = {}
        for name, redis_url in (("redis", args.redis_url), ("postgres", "")):
            port = free_port()
            env = {"HF_HUB_OFFLINE": "1", "DEBUG": "0", "REDIS_URL": redis_url}
            procs.append(start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                                str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                               env=env, log=logs / f"switchyard-{name}.log"))
            bases[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
        def auth(key: str) -> dict:
            return {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}

        targets = [
            Target("no limits", bases["redis"], auth(free_key)),
            Target("Redis counters", bases["redis"], auth(limited_key)),
            Target("Postgres counters", bases["postgres"], auth(limited_key)),
        ]
        for target in targets:
            await wait_http(target.url.replace("/chat/completions", "/models"), headers=target.headers)
        single = {t.name: Sample() for t in targets}
        loaded = {t.name: Sample() for t in targets}
        counter = [0]
        for target in targets:  # warm connections, snapshots and counters
            await closed_loop(target, concurrency=5, duration=1.0, stream=False, warmup=0.5, counter=counter)
        for round_index in range(args.rounds):
            order = targets[round_index % 3:] + targets[:round_index % 3]
            for target in order:
                one = await closed_loop(target, concurrency=1, duration=args.duration, stream=False, warmup=0.5,
                                        counter=counter)
                many = await closed_loop(target, concurrency=20, duration=args.duration, stream=False, warmup=1.0,
                                         counter=counter)
                single[target.name].add(one)
                loaded[target.name].add(many)
                print(f"round {round_index + 1} {target.name}: overhead p50 {pct(one.overhead, 50):.2f} ms, "
                      f"c=20 {many.rps:.0f} req/s, errors {one.errors + many.errors}", file=sys.stderr)
        lines = [
            "| target | Switchyard's own time p50 ms (one client) | p95 ms | req/s at c=20 | p50 ms at c=20 | errors |",
            "|---|---|---|---|---|---|",
        ]
        for target in targets:
            one, many = single[target.name], loaded[target.name]
            lines.append(f"| {target.name} | {pct(one.overhead, 50):.2f} | {pct(one.overhead, 95):.2f} | "
                         f"{many.rps:.0f} | {pct(many.latencies, 50):.1f} | {one.errors + many.errors} |")
        free_rps = loaded["no limits"].rps or 1
        lines.append("")
        lines.append(f"Throughput at c=20 relative to no limits: Redis counters "
                     f"{loaded['Redis counters'].rps / free_rps:.2f}x, Postgres counters "
                     f"{loaded['Postgres counters'].rps / free_rps:.2f}x.")
        return "\n".join(lines) + "\n"
    finally:
        for proc in reversed(procs):
            stop(proc)


def write(path: Path, body: str, args) -> None:
    start_marker, end_marker = "<!-- bench/limits.py:start -->", "<!-- bench/limits.py:end -->"
    section = (
        f"{start_marker}\n## Limits and budgets (`bench/limits.py`)\n\n"
        f"Command: `python bench/limits.py --duration {args.duration:g} --rounds {args.rounds} --write {path}`. "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; simulated upstream 20 ms to first token; targets interleaved, "
        f"{args.rounds} rounds of {args.duration:g} s per target and load; the load generator shares the cores.\n\n"
        f"{body}\n{end_marker}\n"
    )
    section_write(path, "bench/limits.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    uvloop_install()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write(args.write, body, args)


if __name__ == "__main__":
    main()
