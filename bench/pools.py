"""What a deployment pool's strategy costs a request, against a model with one deployment,
side by side in one run.

    python bench/pools.py [--duration 5] [--rounds 3] [--write docs/benchmarks.md]

Two parts:

- in process: the pool's own work for one request (expanding the chain into the strategy's
  order, and the four calls the transport makes: sent, measured, headers seen, done) for each
  strategy over three deployments, and for a model with no deployments (only the check that it
  has none), in microseconds, interleaved round by round;
- through a gateway (with ``REDIS_URL``, so the pools are shared by the exchange loop) on the
  simulated upstream (20 ms to first token): Switchyard's own time per request
  (``x-switchyard-overhead-ms``, which includes the expansion) one request at a time, and req/s
  at 20 concurrent clients, for a model with no deployments and a pooled model under each
  strategy (three deployments: three providers on the same simulator).

With ``--slow-ms N`` a third part: one of the three deployments (the one of weight 3) made slow
by the simulator (every answer's first byte N ms late), and the latency at 20 concurrent clients
of the weighted pool against the lowest-latency one, side by side: the tail a slow deployment
gives a pool that does not watch latency, and what the strategy that does takes off it.

Needs a Redis (``REDIS_URL``, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import PY, REPO, Sample, Target, closed_loop, free_port, pct, start, stop, wait_http
from bench.report import section_write, uvloop_install

STRATEGIES = ("weighted", "least_busy", "lowest_latency", "most_headroom")

SETUP = """
from decimal import Decimal
from apps.catalog.models import Deployment, Model, Provider
from apps.tenants.models import Tenant
from apps.tenants.services import key_create, tenant_create
from apps.usage.models import RequestLog
RequestLog.objects.filter(tenant__slug="bench-pools").delete()
Tenant.objects.filter(slug="bench-pools").delete()
tenant = tenant_create(name="bench pools", slug="bench-pools")
tenant.cache_enabled = False
tenant.save()
base = Provider.objects.get(name="simulated")
Deployment.objects.filter(model__name__startswith="bench-pool").delete()
Model.objects.filter(name__startswith="bench-pool").delete()
providers = [Provider.objects.update_or_create(name=f"bench-pool-{i}", defaults={
    "kind": "simulated", "base_url": base.base_url, "timeout_seconds": 10})[0] for i in range(3)]
Model.objects.create(name="bench-pool-single", upstream_id="sim-mini", provider=base,
                     input_price_per_million=Decimal("0.15"), output_price_per_million=Decimal("0.60"))
for strategy in STRATEGIES:
    model = Model.objects.create(name=f"bench-pool-{strategy}", upstream_id="sim-mini", provider=base,
                                 pool_strategy=strategy, input_price_per_million=Decimal("0.15"),
                                 output_price_per_million=Decimal("0.60"))
    for i, provider in enumerate(providers):
        Deployment.objects.create(model=model, provider=provider, upstream_id=f"sim-mini-{i}", weight=i + 1,
                                  rpm=1_000_000)
print("KEY", key_create(tenant=tenant, name="bench").secret)
"""


def _key(upstream_v1: str) -> str:
    subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO, check=True,
                   capture_output=True)
    done = subprocess.run([PY, "manage.py", "shell", "-c", f"STRATEGIES = {STRATEGIES!r}\n" + SETUP], cwd=REPO,
                          check=True, capture_output=True, text=True)
    return re.search(r"KEY (\S+)", done.stdout).group(1)


def in_process(rounds: int, iterations: int) -> dict[str, float]:
    """Microseconds of the pool's own work per request, by target (the median of the rounds)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from apps.gateway.snapshot import ModelInfo, ProviderInfo
    from apps.providers.pools import Pools

    def provider(pid: int) -> ProviderInfo:
        return ProviderInfo(id=pid, name=f"p{pid}", kind="openai", base_url="http://127.0.0.1:9/v1", credential="",
                            timeout=5.0, max_concurrency=100)

    single = ModelInfo(id=1, name="m", upstream_id="m", provider=provider(9), mode="chat", tier="moderate",
                       price_id=None, input_price=Decimal(1), cached_input_price=Decimal(1), output_price=Decimal(2),
                       context_window=1000, max_output_tokens=100)
    headers = {"x-ratelimit-remaining-requests": "900", "x-ratelimit-remaining-tokens": "90000"}
    models = {"one deployment": single}
    for strategy in STRATEGIES:
        model = replace(single, strategy=strategy)
        models[strategy] = replace(model, deployments=tuple(
            replace(model, provider=provider(i), upstream_id=f"m-{i}", deployment_id=i + 1, deployment_label=f"p{i}",
                    weight=i + 1, rpm=1_000_000) for i in range(3)))
    results: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            pools = Pools(rng=random.Random(1).random)
            chain = (model,)
            began = time.perf_counter()
            for _ in range(iterations):
                # What the call step and the transport do for one request.
                if any(m.deployments for m in chain):
                    first = pools.expand(chain)[0]
                    pools.sent(first)
                    pools.headers_seen(first, headers)
                    pools.measured(first, 20.0)
                    pools.done(first)
            results[name].append((time.perf_counter() - began) / iterations * 1e6)
    return {name: sorted(values)[len(values) // 2] for name, values in results.items()}


async def _slow_tail(args, upstream: str, url: str, headers: dict, counter: list) -> dict[str, Sample]:
    """c=20 latency of the weighted and the lowest-latency pools with deployment 2 made slow."""
    import httpx

    async with httpx.AsyncClient() as client:
        made = await client.post(upstream + "/_sim/faults", json={
            "model": "sim-mini-2", "mode": "slow", "delay": args.slow_ms / 1000, "count": -1})
        made.raise_for_status()
    targets = [Target(strategy, url, headers, model=f"bench-pool-{strategy}")
               for strategy in ("weighted", "lowest_latency")]
    tails = {t.name: Sample() for t in targets}
    try:
        for target in targets:  # the latency averages learn the slow one first
            await closed_loop(target, concurrency=5, duration=2.0, stream=False, warmup=0.5, counter=counter)
        for round_index in range(args.rounds):
            for target in targets[round_index % 2:] + targets[:round_index % 2]:
                tails[target.name].add(await closed_loop(target, concurrency=20, duration=args.duration,
                                                         stream=False, warmup=1.0, counter=counter))
                print(f"slow round {round_index + 1} {target.name}: p95 {pct(tails[target.name].latencies, 95):.1f} ms",
                      file=sys.stderr)
    finally:
        async with httpx.AsyncClient() as client:
            await client.post(upstream + "/_sim/reset", json={})
    return tails


async def through_gateway(args) -> tuple[dict[str, Sample], dict[str, Sample], dict[str, Sample]]:
    logs = Path(tempfile.mkdtemp(prefix="sy-pools-"))
    procs = []
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20",
                            "--chunks", "20"], log=logs / "upstream.log"))
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        key = _key(upstream_v1)
        port = free_port()
        procs.append(start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                            str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                           env={"HF_HUB_OFFLINE": "1", "DEBUG": "0", "REDIS_URL": args.redis_url},
                           log=logs / "switchyard.log"))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
        targets = [Target("one deployment", url, headers, model="bench-pool-single")] + [
            Target(strategy, url, headers, model=f"bench-pool-{strategy}") for strategy in STRATEGIES]
        await wait_http(url.replace("/chat/completions", "/models"), headers=headers)
        single = {t.name: Sample() for t in targets}
        loaded = {t.name: Sample() for t in targets}
        counter = [0]
        for target in targets:  # warm connections and the pools
            await closed_loop(target, concurrency=5, duration=1.0, stream=False, warmup=0.5, counter=counter)
        for round_index in range(args.rounds):
            shift = round_index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                one = await closed_loop(target, concurrency=1, duration=args.duration, stream=False, warmup=0.5,
                                        counter=counter)
                many = await closed_loop(target, concurrency=20, duration=args.duration, stream=False, warmup=1.0,
                                         counter=counter)
                single[target.name].add(one)
                loaded[target.name].add(many)
                print(f"round {round_index + 1} {target.name}: overhead p50 {pct(one.overhead, 50):.2f} ms, "
                      f"c=20 {many.rps:.0f} req/s, errors {one.errors + many.errors}", file=sys.stderr)
        tails = (await _slow_tail(args, f"http://127.0.0.1:{up_port}", url, headers, counter)
                 if args.slow_ms else {})
        return single, loaded, tails
    finally:
        for proc in reversed(procs):
            stop(proc)


def report(micro: dict[str, float], single: dict[str, Sample], loaded: dict[str, Sample],
           tails: dict[str, Sample] | None = None, slow_ms: float = 0.0) -> str:
    base_micro = micro["one deployment"] or 1e-9
    base_rps = loaded["one deployment"].rps or 1
    base_overhead = pct(single["one deployment"].overhead, 50) or 1e-9
    lines = [
        "| target | pool's own work µs/request (in process) | Switchyard's own time p50 ms (one client) | "
        "ratio to one deployment | req/s at c=20 | ratio to one deployment | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("one deployment", *STRATEGIES):
        one, many = single[name], loaded[name]
        overhead = pct(one.overhead, 50)
        lines.append(f"| {name} | {micro[name]:.2f} | {overhead:.2f} | {overhead / base_overhead:.2f} | "
                     f"{many.rps:.0f} | {many.rps / base_rps:.2f} | {one.errors + many.errors} |")
    lines.append("")
    lines.append(f"In process, one deployment costs {base_micro:.2f} µs (the check that the model has none); "
                 "a strategy over three deployments "
                 + ", ".join(f"{name} {micro[name]:.1f} µs" for name in STRATEGIES) + ".")
    if tails:
        lines += ["", f"One deployment of three (weight 3 of 6) answering {slow_ms:g} ms late, c=20:", "",
                  "| strategy | p50 ms | p95 ms | p99 ms | req/s | errors |", "|---|---|---|---|---|---|"]
        for name, sample in tails.items():
            lines.append(f"| {name} | {pct(sample.latencies, 50):.1f} | {pct(sample.latencies, 95):.1f} | "
                         f"{pct(sample.latencies, 99):.1f} | {sample.rps:.0f} | {sample.errors} |")
        weighted, fastest = pct(tails["weighted"].latencies, 95), pct(tails["lowest_latency"].latencies, 95)
        lines += ["", f"The lowest-latency pool's p95 is {fastest / weighted:.2f}x the weighted pool's."]
    return "\n".join(lines) + "\n"


def write(path: Path, body: str, args) -> None:
    start_marker, end_marker = "<!-- bench/pools.py:start -->", "<!-- bench/pools.py:end -->"
    section = (
        f"{start_marker}\n## Deployment pools (`bench/pools.py`)\n\n"
        f"Command: `python bench/pools.py --duration {args.duration:g} --rounds {args.rounds}"
        f"{f' --slow-ms {args.slow_ms:g}' if args.slow_ms else ''} --write {path}`. "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; simulated upstream 20 ms to first token; one gateway with Redis; targets "
        f"interleaved, {args.rounds} rounds of {args.duration:g} s per target and load; the load generator "
        f"shares the cores.\n\n{body}\n{end_marker}\n"
    )
    section_write(path, "bench/pools.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--slow-ms", type=float, default=0.0,
                        help="also measure the tail with one deployment this many ms late (weighted vs lowest latency)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    uvloop_install()
    micro = in_process(args.rounds * 3, args.iterations)
    single, loaded, tails = asyncio.run(through_gateway(args))
    body = report(micro, single, loaded, tails, args.slow_ms)
    print(body)
    if args.write:
        write(args.write, body, args)


if __name__ == "__main__":
    main()
