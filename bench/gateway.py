"""Gateway overhead, side by side in one run.

    python bench/gateway.py [--duration 8] [--rounds 3] [--write docs/benchmarks.md]
    python bench/gateway.py --install-litellm      # once: LiteLLM proxy into var/litellm-venv
    python bench/gateway.py --tracing [--baseline REF]  # also gateways tracing and keeping bodies

Starts the simulated upstream (20 ms to first token, 20 chunks), the thinnest Python proxy
(bench/thin_proxy.py), Switchyard (uvicorn + uvloop + httptools, a real tenant key from the
database, usage logging on) and, when installed, the LiteLLM proxy (2 workers, no database).
A closed loop (each of ``concurrency`` workers sends its next request when the previous one
ends) runs against each target in turn, rounds interleaved so machine noise hits every target
alike. Reports req/s, p50/p95/p99 latency, time to first byte of a stream, each as a ratio to
the thinnest proxy, then Switchyard's resident memory before and after 20,000 requests.

With ``--tracing``, the gateway runs four ways side by side, rounds interleaved: both off (the
Switchyard row), OpenTelemetry tracing on for every request (exporting over OTLP/HTTP to a local
sink, bench/otlp_sink.py, which keeps the posts during a round and decodes and counts every span
when asked between rounds, as a collector on another machine would take its CPU off these cores),
request bodies kept (a tenant with
``store_bodies`` on, bodies redacted and written by the usage buffer), and both on. Each is its
own process; the off and the bodies-off ones are driven with a key of a plain tenant, the others
with a key of a tenant that keeps bodies, both made afresh for the run. Resident memory is read
before and after 20,000 more requests for both off and both on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import baseline_checkout, baseline_env, baseline_rows, section_write, uvloop_install  # noqa: E402

LITELLM_VENV = REPO / "var" / "litellm-venv"
PY = sys.executable


BENCH_TENANTS = """
from apps.tenants.models import Tenant
from apps.tenants.services import key_create, tenant_create
from apps.usage.models import RequestBody, RequestLog
for slug in ("bench-plain", "bench-bodies"):
    RequestBody.objects.filter(tenant__slug=slug).delete()
    RequestLog.objects.filter(tenant__slug=slug).delete()  # its keys' rows protect them from deletion
    Tenant.objects.filter(slug=slug).delete()
plain = tenant_create(name="bench plain", slug="bench-plain", cache_enabled=False)
bodies = tenant_create(name="bench bodies", slug="bench-bodies", cache_enabled=False, store_bodies=True)
print("PLAIN", key_create(tenant=plain, name="bench").secret)
print("BODIES", key_create(tenant=bodies, name="bench").secret)
"""


def bench_keys() -> tuple[str, str]:
    """Keys of two fresh tenants alike but for ``store_bodies``: (plain, keeping bodies)."""
    done = subprocess.run([PY, "manage.py", "shell", "-c", BENCH_TENANTS], cwd=REPO, check=True,
                          capture_output=True, text=True)
    return re.search(r"PLAIN (\S+)", done.stdout).group(1), re.search(r"BODIES (\S+)", done.stdout).group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_http(url: str, timeout: float = 90, headers: dict | None = None,
                    proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            try:
                async with session.get(url, headers=headers or {}) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Target:
    name: str
    url: str  # full chat completions URL
    headers: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    model: str = "sim-mini"


@dataclass
class Sample:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    summaries: list[tuple[float, float, float, float]] = field(default_factory=list)  # (weight, p50, p95, p99)
    summary: tuple[float, float, float] | None = None
    overhead: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds of CPU the target's process spent (threads included), when it is ours

    def add(self, other: Sample) -> None:
        self.cpu += other.cpu
        if other.summary is not None:
            self.summaries.append((other.ok, *other.summary))
        self.overhead += other.overhead
        self.ok += other.ok
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.ttfb += other.ttfb

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


def pct(values, q: float) -> float:
    if isinstance(values, Sample):
        if values.summaries:
            # wrk rounds: the request-weighted mean of each round's percentile
            index = {50: 1, 95: 2, 99: 3}[q]
            total = sum(s[0] for s in values.summaries) or 1
            return sum(s[0] * s[index] for s in values.summaries) / total * 1000
        values = values.latencies
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q / 100 * len(ordered)), len(ordered) - 1)] * 1000


async def closed_loop(target: Target, *, concurrency: int, duration: float, stream: bool, warmup: float,
                      counter: list[int]) -> Sample:
    sample = Sample()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=target.headers) as session:
        start_measure = time.perf_counter() + warmup
        stop = start_measure + duration

        async def worker(worker_id: int) -> None:
            n = 0
            while True:
                now = time.perf_counter()
                if now >= stop:
                    return
                n += 1
                body = {"model": target.model, "messages": [
                    {"role": "user", "content": f"Benchmark prompt {worker_id}-{n}"}]}
                if stream:
                    body["stream"] = True
                t0 = time.perf_counter()
                first = None
                try:
                    async with session.post(target.url, json=body) as response:
                        if stream:
                            async for _chunk in response.content.iter_any():
                                if first is None:
                                    first = time.perf_counter() - t0
                        else:
                            await response.read()
                        good = response.status == 200
                except aiohttp.ClientError:
                    good = False
                t1 = time.perf_counter()
                counter[0] += 1
                spent = response.headers.get("x-switchyard-overhead-ms") if good else None
                if t0 < start_measure:
                    continue
                if good:
                    if spent is not None:
                        sample.overhead.append(float(spent) / 1000)
                    sample.ok += 1
                    sample.latencies.append(t1 - t0)
                    if first is not None:
                        sample.ttfb.append(first)
                else:
                    sample.errors += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        sample.elapsed = duration
    return sample


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil,
    '{"model":"sim-mini","messages":[{"role":"user","content":"Benchmark prompt ' .. n .. '"}]}')
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%f %%f %%f %%f\\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
"""


def wrk_available() -> bool:
    return subprocess.run(["which", "wrk"], capture_output=True).returncode == 0


async def wrk_loop(target: Target, *, concurrency: int, duration: float, scripts: Path) -> Sample:
    """Non-stream closed loop with wrk (C): the load generator takes far less CPU than Python."""
    auth = "".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
    script = scripts / f"wrk-{abs(hash(auth))}.lua"
    script.write_text(WRK_SCRIPT % {"auth": auth})
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "-s", str(script), target.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    line = next(line for line in out.decode().splitlines() if line.startswith("RESULT"))
    requests, errors, micros, p50, p95, p99, _mean = (float(x) for x in line.split()[1:])
    sample = Sample(ok=int(requests - errors), errors=int(errors), elapsed=micros / 1e6)
    # wrk reports percentiles, not samples: keep them as a three-point summary
    sample.summary = (p50 / 1e6, p95 / 1e6, p99 / 1e6)
    return sample


def cpu_seconds(proc: subprocess.Popen | None) -> float:
    """CPU time (user and system, every thread) a target's process has used so far; 0 for none."""
    if proc is None:
        return 0.0
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 1024 / 1024


def start(cmd: list[str], env: dict | None = None, log: Path | None = None, cwd: Path = REPO) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def litellm_config(upstream_v1: str, path: Path) -> None:
    path.write_text(
        "model_list:\n"
        "  - model_name: sim-mini\n"
        "    litellm_params:\n"
        "      model: openai/sim-mini\n"
        f"      api_base: {upstream_v1}\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
    )


async def run(args) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sy-bench-"))
    procs: list[subprocess.Popen] = []
    targets: list[Target] = []
    trees = contextlib.ExitStack()
    try:
        up_port = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up_port), "--ttft-ms", "20",
                            "--chunks", "20"], log=logs / "upstream.log"))
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(upstream_v1 + "/models")
        targets.append(Target("upstream direct", upstream_v1 + "/chat/completions"))

        thin_port = free_port()
        procs.append(start([PY, "bench/thin_proxy.py", "--port", str(thin_port), "--upstream",
                            f"http://127.0.0.1:{up_port}"], log=logs / "thin.log"))
        await wait_http(f"http://127.0.0.1:{thin_port}/")
        targets.append(Target("thinnest proxy", f"http://127.0.0.1:{thin_port}/v1/chat/completions"))

        seeded = subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream_v1], cwd=REPO,
                                capture_output=True, text=True, check=True)
        key = re.search(r"demo API key:\s+(\S+)", seeded.stdout).group(1)
        bodies_key = None
        if args.tracing:
            key, bodies_key = bench_keys()
        sy_port = free_port()
        switchyard = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                            str(sy_port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                           env={"HF_HUB_OFFLINE": "1", "DEBUG": "0"}, log=logs / "switchyard.log")
        procs.append(switchyard)
        # The overhead benchmark measures the proxy path: the cache is bypassed (its own figures are in
        # bench/cache_quality.py and bench/cache_perf.py).
        auth = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
        await wait_http(f"http://127.0.0.1:{sy_port}/v1/models", headers=auth)
        targets.append(Target("Switchyard", f"http://127.0.0.1:{sy_port}/v1/chat/completions", auth, switchyard))
        sink = None
        if args.tracing:
            sink_port = free_port()
            procs.append(start([PY, "bench/otlp_sink.py", "--port", str(sink_port)], log=logs / "sink.log"))
            sink = f"http://127.0.0.1:{sink_port}"
            await wait_http(sink + "/stats")
            tracing_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "switchyard-bench"}
            bodies_auth = {"Authorization": f"Bearer {bodies_key}", "Cache-Control": "no-store"}
            for name, env, headers in ((TRACED, tracing_env, auth), (BODIES, {}, bodies_auth),
                                       (BOTH, tracing_env, bodies_auth)):
                port = free_port()
                proc = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                              str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                             env={"HF_HUB_OFFLINE": "1", "DEBUG": "0", **env},
                             log=logs / f"switchyard-{len(procs)}.log")
                procs.append(proc)
                await wait_http(f"http://127.0.0.1:{port}/v1/models", headers=headers, proc=proc)
                targets.append(Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", headers, proc))
        if args.baseline:
            before, base_port = await baseline_start(args.baseline, trees, logs, auth)
            procs.append(before)
            targets.append(Target(baseline_name(args), f"http://127.0.0.1:{base_port}/v1/chat/completions", auth,
                                  before))

        litellm_bin = LITELLM_VENV / "bin" / "litellm"
        if litellm_bin.exists() and "litellm" in args.targets:
            ll_port = free_port()
            config = logs / "litellm.yaml"
            litellm_config(upstream_v1, config)
            master = "sk-bench-" + os.urandom(16).hex()  # LiteLLM refuses to start without a master key
            ll = start([str(litellm_bin), "--config", str(config), "--port", str(ll_port), "--num_workers", "2"],
                       env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": master}, log=logs / "litellm.log")
            procs.append(ll)
            try:
                await wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", timeout=180, proc=ll)
                targets.append(Target("LiteLLM proxy", f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                                      {"Authorization": f"Bearer {master}"}, ll))
            except RuntimeError:
                print(f"LiteLLM did not start; see {logs / 'litellm.log'}", file=sys.stderr)

        scenarios = [s for s in (("json", 20), ("json", 100), ("stream", 20))
                     if f"{s[0]}{s[1]}" in args.scenarios]
        results = {(t.name, s): Sample() for t in targets for s in scenarios}
        counter = [0]
        rss_start: dict[str, float] = {}
        use_wrk = wrk_available() and not args.python_load
        # Warm every target (connections, caches) before measuring anything.
        for target in targets:
            await closed_loop(target, concurrency=10, duration=1.0, stream=False, warmup=0.5, counter=counter)
        for round_index in range(args.rounds):
            for scenario in scenarios:
                order = targets[round_index % len(targets):] + targets[: round_index % len(targets)]
                for target in order:
                    cpu_before = cpu_seconds(target.proc)
                    if scenario[0] == "json" and use_wrk:
                        sample = await wrk_loop(target, concurrency=scenario[1], duration=args.duration,
                                                scripts=logs)
                        counter[0] += sample.ok + sample.errors
                    else:
                        sample = await closed_loop(target, concurrency=scenario[1], duration=args.duration,
                                                   stream=scenario[0] == "stream", warmup=1.0, counter=counter)
                    sample.cpu = cpu_seconds(target.proc) - cpu_before
                    results[(target.name, scenario)].add(sample)
                    if sink is not None and target.name in (TRACED, BOTH):
                        await _sink_count(sink)  # the sink decodes what it kept, between timed rounds
                    if target.name in (SY, BOTH) and target.name not in rss_start:
                        rss_start[target.name] = rss_mb(target.proc)
                    p50 = sample.summary[0] * 1000 if sample.summary else pct(sample.latencies, 50)
                    print(f"round {round_index + 1} {scenario[0]} c={scenario[1]} {target.name}: "
                          f"{sample.rps:.0f} req/s, p50 {p50:.1f} ms, errors {sample.errors}", file=sys.stderr)

        if sink is not None:
            args.sink = await _sink_stats(sink)
        memory = {}
        if args.memory_requests:
            for target in targets:
                if target.name in rss_start:
                    settled = rss_mb(target.proc)
                    done = await _send_n(target, args.memory_requests)
                    memory[target.name] = (rss_start[target.name], settled, rss_mb(target.proc), done)
        return report(targets, scenarios, results, memory, args, "wrk" if use_wrk else "Python aiohttp client")
    finally:
        for proc in reversed(procs):
            stop(proc)
        trees.close()


async def baseline_start(ref: str, trees: contextlib.ExitStack, logs: Path,
                         headers: dict) -> tuple[subprocess.Popen, int]:
    """A second gateway from ``ref``'s code (a temporary work tree on this checkout's data),
    answering; its process and port."""
    tree = trees.enter_context(baseline_checkout(ref))
    port = free_port()
    proc = start([PY, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                  "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                 env={"HF_HUB_OFFLINE": "1", "DEBUG": "0", **baseline_env()}, log=logs / "baseline.log", cwd=tree)
    await wait_http(f"http://127.0.0.1:{port}/v1/models", headers=headers, proc=proc)
    return proc, port


SY = "Switchyard"
TRACED = "Switchyard, tracing on"
BODIES = "Switchyard, bodies kept"
BOTH = "Switchyard, tracing on and bodies kept"


async def _sink_count(sink: str) -> None:
    """Have the sink decode and count the posts it has kept so far."""
    async with aiohttp.ClientSession() as session, session.get(sink + "/stats") as response:
        await response.read()


async def _sink_stats(sink: str, settle: float = 10.0) -> SimpleNamespace:
    """What the sink received, once the traced gateway's batches have stopped arriving."""
    async with aiohttp.ClientSession() as session:
        last, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:
            async with session.get(sink + "/stats") as response:
                stats = await response.json()
            if stats == last:
                break
            last = stats
            await asyncio.sleep(settle)
    return SimpleNamespace(**stats)


def baseline_name(args) -> str:
    return f"Switchyard @{args.baseline}"


async def _send_n(target: Target, total: int, concurrency: int = 50) -> int:
    sent = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=target.headers) as session:
        async def worker(worker_id: int) -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                body = {"model": target.model, "messages": [{"role": "user", "content": f"memory {worker_id}-{sent}"}]}
                async with session.post(target.url, json=body) as response:
                    await response.read()

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return sent


def report(targets, scenarios, results, memory, args, json_load: str) -> str:
    lines = [f"\nNon-stream load from {json_load}; streams from a Python aiohttp client (it times the first "
             "byte). `in-process overhead` is Switchyard's own `x-switchyard-overhead-ms` header (time spent in "
             "Switchyard itself, upstream wait excluded).\n"]
    base_name = "thinnest proxy"
    direct = "upstream direct"
    for scenario in scenarios:
        kind, conc = scenario
        lines.append(f"\n**{'Streaming' if kind == 'stream' else 'Non-stream'}, concurrency {conc}**\n")
        head = "| target | req/s | x thinnest | p50 ms | p95 ms | p99 ms | added p50 vs direct ms |"
        sep = "|---|---|---|---|---|---|---|"
        if kind == "stream":
            head += " TTFB p50 ms | TTFB p95 ms | added TTFB p50 ms |"
            sep += "---|---|---|"
        head += " errors |"
        sep += "---|"
        lines += [head, sep]
        base = results[(base_name, scenario)]
        ref = results[(direct, scenario)]
        for target in targets:
            s = results[(target.name, scenario)]
            row = (f"| {target.name} | {s.rps:.0f} | {s.rps / base.rps:.2f} | {pct(s, 50):.1f} | "
                   f"{pct(s, 95):.1f} | {pct(s, 99):.1f} | {pct(s, 50) - pct(ref, 50):+.1f} |")
            if kind == "stream":
                row += (f" {pct(s.ttfb, 50):.1f} | {pct(s.ttfb, 95):.1f} | "
                        f"{pct(s.ttfb, 50) - pct(ref.ttfb, 50):+.1f} |")
            row += f" {s.errors} |"
            lines.append(row)

    checks = []
    sy = "Switchyard"
    if ("json", 100) in scenarios:
        s, b = results[(sy, ("json", 100))], results[(base_name, ("json", 100))]
        checks.append(("req/s at c=100 >= 50% of the thinnest proxy", s.rps / b.rps >= 0.5,
                       f"{s.rps / b.rps:.2f}x"))
    if ("json", 20) in scenarios:
        s, d = results[(sy, ("json", 20))], results[(direct, ("json", 20))]
        added = pct(s, 50) - pct(d, 50)
        checks.append(("added p50 at c=20 <= 3 ms over direct", added <= 3, f"{added:+.1f} ms"))
        b = results[(base_name, ("json", 20))]
        thin_added = pct(b, 50) - pct(d, 50)
        checks.append(("(context) the thinnest proxy's own added p50 at c=20", thin_added <= 3,
                       f"{thin_added:+.1f} ms"))
        checks.append(("req/s at c=20 >= 50% of the thinnest proxy", s.rps / b.rps >= 0.5, f"{s.rps / b.rps:.2f}x"))
    if ("stream", 20) in scenarios:
        s, d = results[(sy, ("stream", 20))], results[(direct, ("stream", 20))]
        added = pct(s.ttfb, 50) - pct(d.ttfb, 50)
        checks.append(("streaming TTFB p50 <= 3 ms over direct", added <= 3, f"{added:+.1f} ms"))
    if any(t.name == "LiteLLM proxy" for t in targets):
        for scenario in scenarios:
            s, ll = results[(sy, scenario)], results[("LiteLLM proxy", scenario)]
            ratio = s.rps / ll.rps if ll.rps else float("inf")
            checks.append((f">= 10x LiteLLM req/s ({scenario[0]} c={scenario[1]})", ratio >= 10, f"{ratio:.1f}x"))
    overhead = [v for scenario in scenarios for v in results[(sy, scenario)].overhead]
    if overhead:
        lines.append(f"\n**In-process overhead** (Switchyard's `x-switchyard-overhead-ms`, all Python-client "
                     f"requests): p50 {pct(overhead, 50):.2f} ms, p95 {pct(overhead, 95):.2f} ms, "
                     f"p99 {pct(overhead, 99):.2f} ms.\n")
    for name, (first, settled, after, sent) in memory.items():
        growth = after / settled - 1
        lines.append(f"\n**Memory** ({name}): RSS {first:.0f} MB after its first measured round, {settled:.0f} MB "
                     f"after all rounds, {after:.0f} MB after {sent:,} more requests ({growth:+.1%}).\n")
        checks.append((f"memory flat within 10% over {sent:,} requests ({name})", abs(growth) <= 0.10,
                       f"{growth:+.1%}"))
    if ("json", 100) in scenarios:
        s, b = results[(sy, ("json", 100))], results[(base_name, ("json", 100))]
        checks.append(("p99 at c=100 <= 1.3x the thinnest proxy's", pct(s, 99) <= 1.3 * pct(b, 99),
                       f"{pct(s, 99) / pct(b, 99):.2f}x ({pct(s, 99):.1f} vs {pct(b, 99):.1f} ms)"))
    if args.baseline:
        pairs = [(f"{kind} c={conc}", results[(sy, (kind, conc))].rps, results[(baseline_name(args), (kind, conc))].rps,
                  pct(results[(sy, (kind, conc))], 50), pct(results[(baseline_name(args), (kind, conc))], 50))
                 for kind, conc in scenarios]
        table, ok = baseline_rows(pairs)
        lines.append(f"\n**Against the baseline** (`--baseline {args.baseline}`, the same run, rounds interleaved):\n")
        lines += table
        checks.append((f"within 3% of {args.baseline}'s req/s and 0.5 ms of its p50", ok, "see the table above"))
    if args.tracing:
        table, ok = tracing_rows(results, scenarios, args.sink)
        lines.append("\n**Tracing and kept bodies against both off** (`--tracing`: three more gateways, one tracing "
                     "every request to a local OTLP/HTTP sink, one driven by a tenant that keeps request bodies, one "
                     "both; the same run, rounds interleaved):\n")
        lines += table
        checks.append(("tracing and bodies on within 10% of both off's req/s in every scenario", ok,
                       "see the table above"))
    lines.append("\n| target | result | measured |\n|---|---|---|")
    for name, ok, value in checks:
        lines.append(f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |")
    return "\n".join(lines) + "\n"


def tracing_rows(results, scenarios, sink) -> tuple[list[str], bool]:
    """Tracing on, bodies kept, and both, against both off per scenario, and whether both on stays
    within 10% of off's req/s."""
    lines = ["| scenario | on | req/s off | req/s on | ratio | p50 ms off | p50 ms on | p50 change ms "
             "| CPU us/request off | CPU us/request on |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ok = True
    for kind, conc in scenarios:
        off = results[(SY, (kind, conc))]
        for name, label in ((TRACED, "tracing"), (BODIES, "bodies"), (BOTH, "both")):
            on = results[(name, (kind, conc))]
            ratio = on.rps / off.rps if off.rps else float("nan")
            ok = ok and (name != BOTH or ratio >= 0.90)
            lines.append(f"| {kind} c={conc} | {label} | {off.rps:.0f} | {on.rps:.0f} | {ratio:.3f} | "
                         f"{pct(off, 50):.2f} | {pct(on, 50):.2f} | {pct(on, 50) - pct(off, 50):+.2f} | "
                         f"{off.cpu / max(off.ok, 1) * 1e6:.0f} | {on.cpu / max(on.ok, 1) * 1e6:.0f} |")
    lines.append(f"\nThe sink received {sink.spans:,} spans in {sink.posts:,} exports ({sink.bytes / 1e6:.1f} MB) from "
                 f"both traced gateways: {sink.roots:,} requests, {sink.spans / max(sink.roots, 1):.2f} spans each "
                 "(the request, its upstream attempt and its usage write; the cache is bypassed)"
                 + (f"; {sink.bad} posts could not be decoded" if getattr(sink, "bad", 0) else "") + ".\n")
    return lines, ok


def write(path: Path, body: str, args) -> None:
    marker_start, marker_end = "<!-- bench/gateway.py:start -->", "<!-- bench/gateway.py:end -->"
    cpu = platform.processor() or platform.machine()
    section = (
        f"{marker_start}\n## Gateway overhead (`bench/gateway.py`)\n\n"
        f"Command: `python bench/gateway.py --duration {args.duration:g} --rounds {args.rounds} "
        + (f"--baseline {args.baseline} " if args.baseline else "")
        + ("--tracing " if args.tracing else "")
        + f"--write {path}` (with LiteLLM installed by `--install-litellm`).\n\n"
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}. Simulated upstream: 20 ms to first token, 20 chunks. Closed loop, "
        f"targets interleaved, {args.rounds} rounds of {args.duration:g} s each per target and scenario; "
        "the load generator runs on the same two cores.\n"
        f"{body}\n{marker_end}\n"
    )
    section_write(path, "bench/gateway.py", section)


def install_litellm() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "litellm[proxy]"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per target, scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default="json20,json100,stream20")
    parser.add_argument("--targets", default="litellm", help="'litellm' to include it when installed, '' not")
    parser.add_argument("--memory-requests", type=int, default=20000)
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, no memory run")
    parser.add_argument("--python-load", action="store_true", help="use the Python client even when wrk exists")
    parser.add_argument("--install-litellm", action="store_true")
    parser.add_argument("--baseline", default=None, help="a git ref to run beside the current code (its own gateway)")
    parser.add_argument("--tracing", action="store_true",
                        help="also run a gateway with OpenTelemetry tracing on, exporting to a local sink")
    args = parser.parse_args()
    if args.install_litellm:
        install_litellm()
        return
    if args.quick:
        args.duration, args.rounds, args.memory_requests = 2.0, 1, 0
    uvloop_install()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write(args.write, body, args)


if __name__ == "__main__":
    main()
