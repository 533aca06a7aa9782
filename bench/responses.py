"""Streaming ``/v1/responses``, side by side in one run.

    python bench/responses.py [--duration 8] [--rounds 3] [--concurrency 20] [--write docs/benchmarks.md]

Starts the simulated upstream (20 ms to first token, 64 text deltas per answer) and Switchyard
(uvicorn + uvloop + httptools, the demo tenant's key, usage logging on, the cache bypassed
with ``Cache-Control: no-store`` so every request goes upstream; ``store: false`` unless
``--store``), then runs a closed loop of streaming Responses requests against:

    simulator direct            the simulator's own ``/v1/responses`` (typed events)
    thinnest proxy              bench/thin_proxy.py: aiohttp relaying the bytes, nothing else (the
                                cost of one more HTTP hop on the same cores)
    Switchyard, pass-through    ``/v1/responses`` to a model on a provider serving the Responses
                                API (the simulator's ``/v1/responses``): events relayed
    Switchyard, translated      ``/v1/responses`` to a model on an OpenAI-compatible chat provider
                                (the simulator's ``/v1/chat/completions``): chat chunks rewritten
                                as Responses events

Rounds are interleaved so machine noise hits every target alike. Reported: time to first
``response.output_text.delta`` p50/p95/p99, full response p50/p95, requests/s, output tokens/s
(text deltas received per second) and each proxy's CPU time per answer; the checks compare each
Switchyard path with the thinnest proxy of the same run (first delta within 3 ms, tokens/s at
least 0.9x).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import PY, REPO, baseline_start, free_port, pct, start, stop, wait_http
from report import baseline_rows, section_write, uvloop_install

DELTAS = 64
PASS_THROUGH = "Switchyard, pass-through (provider serving the Responses API)"
TRANSLATED = "Switchyard, translated (chat-completions provider)"
THIN = "thinnest proxy (aiohttp passthrough)"
DELTA = b"event: response.output_text.delta"
NATIVE_SETUP = """
from decimal import Decimal
from apps.catalog.models import Model, Provider
provider, _ = Provider.objects.update_or_create(
    name="simulated-responses", defaults={"kind": Provider.Kind.SIMULATED, "base_url": "%(upstream)s",
                                          "responses_api": True})
Model.objects.update_or_create(name="sim-responses", defaults={
    "upstream_id": "sim-mini", "provider": provider, "tier": Model.Tier.SIMPLE,
    "input_price_per_million": Decimal("0.15"), "cached_input_price_per_million": Decimal("0.075"),
    "output_price_per_million": Decimal("0.60")})
"""


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None  # the proxy whose CPU per request is reported


@dataclass
class Sample:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    deltas: int = 0
    reads: int = 0  # the client's socket reads over the measured answers
    first: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    answered: int = 0  # warm-up included: what the proxy's CPU time is divided by
    cpu: float = 0.0  # the proxy process's CPU seconds over the whole loop

    def add(self, other: Sample) -> None:
        self.answered += other.answered
        self.cpu += other.cpu
        self.ok += other.ok
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.deltas += other.deltas
        self.reads += other.reads
        self.first += other.first
        self.full += other.full


async def closed_loop(target: Target, *, concurrency: int, duration: float, warmup: float,
                      store: bool = False) -> Sample:
    sample = Sample()
    cpu_before = _cpu(target.proc)
    headers = {"content-type": "application/json", **target.headers}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        start_measure = time.perf_counter() + warmup
        stop_at = start_measure + duration

        async def worker(worker_id: int) -> None:
            n = 0
            while time.perf_counter() < stop_at:
                n += 1
                body = {"model": target.model, "stream": True, "input": f"Benchmark prompt {worker_id}-{n}",
                        "store": store}
                t0 = time.perf_counter()
                first = None
                deltas = 0
                reads = 0
                good = False
                try:
                    async with session.post(target.url, json=body) as response:
                        async for chunk in response.content.iter_any():
                            reads += 1
                            found = chunk.count(DELTA)
                            if found and first is None:
                                first = time.perf_counter() - t0
                            deltas += found
                        good = response.status == 200 and deltas == DELTAS
                except aiohttp.ClientError:
                    good = False
                t1 = time.perf_counter()
                sample.answered += good
                if t0 < start_measure:
                    continue
                if good:
                    sample.ok += 1
                    sample.deltas += deltas
                    sample.reads += reads
                    sample.first.append(first)
                    sample.full.append(t1 - t0)
                else:
                    sample.errors += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        sample.elapsed = duration
    sample.cpu = _cpu(target.proc) - cpu_before
    return sample


def _cpu(proc: subprocess.Popen | None) -> float:
    if proc is None:
        return 0.0
    process = psutil.Process(proc.pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):  # LiteLLM's workers too
        times = each.cpu_times()
        total += times.user + times.system
    return total


async def run(args) -> tuple[str, list[str]]:
    logs = Path(tempfile.mkdtemp(prefix="sy-bench-responses-"))
    procs: list[subprocess.Popen] = []
    notes: list[str] = []
    trees = contextlib.ExitStack()
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20",
                            "--chunks", str(DELTAS)], log=logs / "upstream.log"))
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        targets = [Target("simulator direct", upstream_v1 + "/responses", "sim-mini")]
        thin_port = free_port()
        thin = start([PY, "bench/thin_proxy.py", "--port", str(thin_port), "--upstream",
                      f"http://127.0.0.1:{up_port}"], log=logs / "thin.log")
        procs.append(thin)
        await wait_http(f"http://127.0.0.1:{thin_port}/")
        targets.append(Target(THIN, f"http://127.0.0.1:{thin_port}/v1/responses",
                              "sim-mini", proc=thin))

        subprocess.run([PY, "manage.py", "migrate", "--noinput"], cwd=REPO, capture_output=True, check=True)
        seeded = subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO,
                                capture_output=True, text=True, check=True)
        key = re.search(r"demo API key:\s+(\S+)", seeded.stdout).group(1)
        subprocess.run([PY, "manage.py", "shell", "-c", NATIVE_SETUP % {"upstream": upstream_v1}], cwd=REPO,
                       capture_output=True, check=True)
        sy_port = free_port()
        switchyard = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                            str(sy_port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                           env={"HF_HUB_OFFLINE": "1", "DEBUG": "0"}, log=logs / "switchyard.log")
        procs.append(switchyard)
        auth = {"Authorization": f"Bearer {key}", "cache-control": "no-store"}
        await wait_http(f"http://127.0.0.1:{sy_port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        sy = f"http://127.0.0.1:{sy_port}/v1/responses"
        targets += [Target(PASS_THROUGH, sy, "sim-responses", auth, proc=switchyard),
                    Target(TRANSLATED, sy, "sim-mini", auth, proc=switchyard)]
        if args.baseline:
            before, base_port = await baseline_start(args.baseline, trees, logs, {"Authorization": f"Bearer {key}"})
            procs.append(before)
            base = f"http://127.0.0.1:{base_port}/v1/responses"
            targets.append(Target(f"Switchyard @{args.baseline}, translated", base, "sim-mini", auth, proc=before))

        results = {t.name: Sample() for t in targets}
        for target in targets:  # warm connections, the key cache, the tokenizer
            await closed_loop(target, concurrency=5, duration=1.0, warmup=0.5)
        for round_index in range(args.rounds):
            order = targets[round_index % len(targets):] + targets[: round_index % len(targets)]
            for target in order:
                sample = await closed_loop(target, concurrency=args.concurrency, duration=args.duration, warmup=1.0,
                                           store=args.store)
                results[target.name].add(sample)
                print(f"round {round_index + 1} {target.name}: {sample.ok / sample.elapsed:.0f} req/s, first delta "
                      f"p50 {pct(sample.first, 50):.1f} ms, errors {sample.errors}", file=sys.stderr)
        return report(targets, results, args), notes
    finally:
        for proc in reversed(procs):
            stop(proc)
        trees.close()


def report(targets, results, args) -> str:
    thin = results[THIN]
    lines = [f"\n**Streaming `/v1/responses`, {DELTAS} text deltas per answer, concurrency {args.concurrency}**\n",
             "| target | req/s | output tokens/s | x thinnest proxy tokens/s | first delta p50 ms | p95 ms | p99 ms | "
             "added first delta p50 ms (vs thinnest proxy) | full p50 ms | full p95 ms | proxy CPU ms/request | "
             "client reads/answer | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    thin_tps = thin.deltas / thin.elapsed
    for target in targets:
        s = results[target.name]
        rps = s.ok / s.elapsed if s.elapsed else 0.0
        tps = s.deltas / s.elapsed if s.elapsed else 0.0
        lines.append(f"| {target.name} | {rps:.0f} | {tps:,.0f} | {tps / thin_tps:.2f} | {pct(s.first, 50):.1f} | "
                     f"{pct(s.first, 95):.1f} | {pct(s.first, 99):.1f} | "
                     f"{pct(s.first, 50) - pct(thin.first, 50):+.1f} | {pct(s.full, 50):.1f} | "
                     f"{pct(s.full, 95):.1f} | {_cpu_cell(target, s)} | "
                     f"{s.reads / s.ok if s.ok else 0:.1f} | {s.errors} |")
    if args.baseline:
        now, before = results[TRANSLATED], results[f"Switchyard @{args.baseline}, translated"]
        table, ok = baseline_rows([("translated, tokens/s", now.deltas / now.elapsed, before.deltas / before.elapsed,
                                    pct(now.first, 50), pct(before.first, 50))])
        lines.append(f"\n**Against the baseline** (`--baseline {args.baseline}`, the same run; req/s here is output "
                     "tokens/s, p50 is the first delta's):\n")
        lines += table
    lines.append("\n| check (against the thinnest proxy of this run) | result | measured |\n|---|---|---|")
    if args.baseline:
        lines.append(f"| within 3% of {args.baseline}'s tokens/s and 0.5 ms of its first-delta p50 | "
                     f"{'PASS' if ok else 'FAIL'} | see the table above |")
    for name in (TRANSLATED, PASS_THROUGH):
        s = results[name]
        added = pct(s.first, 50) - pct(thin.first, 50)
        ratio = (s.deltas / s.elapsed) / thin_tps
        lines.append(f"| {name}: first delta p50 within 3 ms of the thinnest proxy | "
                     f"{'PASS' if added <= 3 else 'FAIL'} | {added:+.1f} ms |")
        lines.append(f"| {name}: tokens/s >= 0.9x the thinnest proxy | {'PASS' if ratio >= 0.9 else 'FAIL'} "
                     f"| {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def _cpu_cell(target: Target, s: Sample) -> str:
    if target.proc is None or not s.answered:
        return "-"
    return f"{1000 * s.cpu / s.answered:.2f}"


def write(path: Path, body: str, notes: list[str], args) -> None:
    marker_start, marker_end = "<!-- bench/responses.py:start -->", "<!-- bench/responses.py:end -->"
    cpu = platform.processor() or platform.machine()
    section = (
        f"{marker_start}\n## Responses API streaming (`bench/responses.py`)\n\n"
        f"Command: `python bench/responses.py --duration {args.duration:g} --rounds {args.rounds} "
        f"--concurrency {args.concurrency} " + ("--store " if args.store else "")
        + (f"--baseline {args.baseline} " if args.baseline else "")
        + f"--write {path}`.\n\n"
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), load average "
        f"{args.load:.1f} at the start, Python {platform.python_version()}. Simulated upstream: 20 ms to "
        f"first token, {DELTAS} text deltas. Closed loop "
        f"from a Python aiohttp client, targets interleaved, {args.rounds} rounds of {args.duration:g} s each; the "
        "load generator, the simulator and Switchyard share the same two cores. Switchyard runs with usage logging "
        "and cost on and its cache bypassed (`Cache-Control: no-store`); requests send "
        + ("`store: true`: Switchyard stores each response in Postgres before its last event. " if args.store else
           "`store: false`, so Switchyard keeps no stored response (it would write one row to Postgres per request, "
           "which the proxies compared do not). ")
        + "\"Proxy CPU\" is the proxy process's own "
        "CPU time (user and system, its threads included, Postgres's not) over its loops, divided by the answers "
        "it gave: the figure the shared cores make least noisy. \"Client reads\" is how many pieces the load "
        "generator's socket reads took to bring one answer in: a proxy that relays several upstream writes in one "
        "write saves the client reads (and CPU on the shared cores) that direct answers cost it.\n"
        + "".join(f"\n{note}\n" for note in notes)
        + f"{body}\n{marker_end}\n"
    )
    section_write(path, "bench/responses.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--store", action="store_true",
                        help="let Switchyard store each response (the API's default; off: the proxies compared "
                             "do the same work)")
    parser.add_argument("--baseline", default=None, help="a git ref to run beside the current code (its own gateway)")
    args = parser.parse_args()
    uvloop_install()
    args.load = os.getloadavg()[0]
    body, notes = asyncio.run(run(args))
    print("".join(f"\n{note}\n" for note in notes) + body)
    if args.write:
        write(args.write, body, notes, args)


if __name__ == "__main__":
    main()
