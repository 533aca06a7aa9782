"""A big batch against the simulated upstream: wall time against the concurrency limit's ideal,
and the worker's peak memory.

    python bench/batches.py [--lines 10000] [--latency-ms 200] [--concurrency 50] [--no-cache]
                            [--write docs/benchmarks.md]

Starts the simulated upstream (every chat answer after ``--latency-ms``), one Celery worker
(solo pool, ``BATCH_TENANT_CONCURRENCY=--concurrency``) and submits a batch of ``--lines``
distinct prompts through the services the API uses, as a tenant of its own in the development
database (created once, reused; its cache is purged before each run, so that a run with the cache
on embeds, looks up and stores every line instead of finding the last run's answers). The ideal
wall time is ``lines x latency / concurrency``: every slot busy all the time. The worker's
resident memory (with its children) and the development database's CPU time are sampled every
200 ms. The simulator's peak in-flight count is checked against the limit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import section_write  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _cpu(proc: psutil.Process) -> float:
    """CPU seconds of the worker and its children so far (less moved by other load than wall time)."""
    try:
        return sum(sum(p.cpu_times()[:2]) for p in (proc, *proc.children(recursive=True)))
    except psutil.Error:
        return 0.0


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of each process of the development database (the postmaster's children)."""
    from django.conf import settings

    try:
        postmaster = psutil.Process(int((settings.VAR_DIR / "pg" / "postmaster.pid").read_text().split()[0]))
        times = {}
        for child in postmaster.children():
            try:
                times[child.pid] = sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return times
    except (OSError, ValueError, psutil.Error):
        return {}


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss + sum(child.memory_info().rss for child in proc.children(recursive=True))
    except psutil.Error:
        return 0


def _tenant(upstream_v1: str, *, cache: bool):
    from decimal import Decimal

    from apps.cache.services import cache_purge
    from apps.catalog.models import Model, Provider
    from apps.tenants.models import Tenant
    from apps.tenants.services import key_create, tenant_create

    tenant = Tenant.objects.filter(slug="bench-batches").first() or tenant_create(name="Bench batches",
                                                                                  slug="bench-batches")
    tenant.cache_enabled = cache
    tenant.save()
    cache_purge(tenant_id=tenant.pk)
    provider, _ = Provider.objects.update_or_create(name="bench-batches-sim", defaults={
        "kind": Provider.Kind.SIMULATED, "base_url": upstream_v1, "max_concurrency": 1000, "timeout_seconds": 30})
    Model.objects.update_or_create(name="bench-batch-mini", defaults={
        "upstream_id": "sim-mini", "provider": provider, "input_price_per_million": Decimal("0.15"),
        "output_price_per_million": Decimal("0.60"), "batch_discount_percent": Decimal("50")})
    return tenant, key_create(tenant=tenant, name=f"bench {datetime.now(UTC):%Y%m%d%H%M%S}").api_key


def run(args) -> dict:
    import django

    django.setup()
    from django.core.files import File as DjangoFile

    from apps.batches.models import BatchJob
    from apps.batches.services import batch_create, file_create

    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=REPO, check=True)
    port = _free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port), "--ttft-ms",
                                  str(args.latency_ms), "--chunks", "12"], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    worker = None
    try:
        _wait(base + "/v1/models", simulator)
        tenant, key = _tenant(base + "/v1", cache=not args.no_cache)
        env = {**os.environ, "BATCH_TENANT_CONCURRENCY": str(args.concurrency), "PYTHONUNBUFFERED": "1"}
        log = open(REPO / "var" / "bench-batches-worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
                                   "--loglevel", "WARNING"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(worker.pid)
        time.sleep(3)
        idle_rss = _rss(watched)
        data = b"".join(json.dumps({
            "custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "bench-batch-mini", "messages": [{"role": "user", "content": f"Describe item {n} of "
                                                                f"the bench catalogue in one line."}]},
        }).encode() + b"\n" for n in range(args.lines))
        upload = file_create(tenant=tenant, content=DjangoFile(io.BytesIO(data), name="bench.jsonl"),
                             filename="bench.jsonl")
        _get(base + "/_sim/stats")
        urllib.request.urlopen(urllib.request.Request(base + "/_sim/reset", data=b"{}", method="POST"), timeout=10)
        submitted = time.monotonic()
        cpu_start = _cpu(watched)
        postgres_start = _postgres_cpu()
        postgres_seen = dict(postgres_start)  # sampled while the job runs: its connections close at its end
        job = batch_create(tenant=tenant, api_key=key, input_file_id=upload.pk, endpoint="/v1/chat/completions")
        peak = idle_rss
        last_print = 0.0
        cpu = 0.0
        while True:
            peak = max(peak, _rss(watched))
            cpu = _cpu(watched) or cpu
            postgres_seen.update(_postgres_cpu())
            job.refresh_from_db()
            if job.status in ("completed", "failed", "expired", "cancelled"):
                break
            if worker.poll() is not None:
                raise RuntimeError("the worker died; see var/bench-batches-worker.log")
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(f"  {job.status} {job.completed + job.failed}/{job.total} "
                      f"{time.monotonic() - submitted:.0f}s rss {peak / 2**20:.0f} MB", flush=True)
            time.sleep(0.2)
        wall = time.monotonic() - submitted
        indexed_after = None
        if not args.no_cache:
            # The worker writes the job's cache entries (into the HNSW index) after the job ends.
            from apps.cache.models import CacheEntry

            written = CacheEntry.objects.filter(tenant=tenant, embedding__isnull=False)
            last, steady = -1, time.monotonic()
            while time.monotonic() - submitted < wall + 600:  # every line's entry, or no more for 5 s
                count = written.count()
                if count != last:
                    last, steady = count, time.monotonic()
                if count >= job.completed or (count and time.monotonic() - steady > 5):
                    break
                postgres_seen.update(_postgres_cpu())
                cpu = _cpu(watched) or cpu
                time.sleep(0.2)
            indexed_after = time.monotonic() - submitted - wall
        postgres_seen.update(_postgres_cpu())
        postgres_cpu = sum(seconds - postgres_start.get(pid, 0.0) for pid, seconds in postgres_seen.items())
        stats = _get(base + "/_sim/stats")
        job = BatchJob.objects.get(pk=job.pk)
        running = (job.finalizing_at - job.in_progress_at).total_seconds()
        ideal = args.lines * args.latency_ms / 1000 / args.concurrency
        return {"lines": args.lines, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
                "cache": not args.no_cache, "status": job.status, "completed": job.completed, "failed": job.failed,
                "wall_s": wall, "in_progress_s": running,
                "finalizing_s": (job.completed_at - job.finalizing_at).total_seconds(), "ideal_s": ideal,
                "upstream_requests": stats["requests"], "max_in_flight": stats["max_in_flight"],
                "idle_rss_mb": idle_rss / 2**20, "peak_rss_mb": peak / 2**20, "worker_cpu_s": cpu - cpu_start,
                "postgres_cpu_s": postgres_cpu, "indexed_after_s": indexed_after,
                "load_average": os.getloadavg()[0]}
    finally:
        for proc in (worker, simulator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _section(results: list[dict]) -> str:
    rows = "\n".join(
        f"| {r['lines']:,} | {r['latency_ms']} ms | {r['concurrency']} | {'on' if r['cache'] else 'off'} | "
        f"{r['ideal_s']:.1f} s | {r['in_progress_s']:.1f} s ({r['ideal_s'] / r['in_progress_s']:.0%} of ideal "
        f"speed) | {r['finalizing_s']:.1f} s | {r['wall_s']:.1f} s | {r['max_in_flight']} | "
        f"{r['idle_rss_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {r['worker_cpu_s']:.1f} s | "
        f"{r['postgres_cpu_s']:.1f} s | "
        f"{'-' if r.get('indexed_after_s') is None else format(r['indexed_after_s'], '.1f') + ' s'} | "
        f"{r['load_average']:.1f} |" for r in results)
    return ("<!-- bench/batches.py:start -->\n## Batch jobs (`bench/batches.py`)\n\n"
            f"Command: `python bench/batches.py --both --write docs/benchmarks.md`. Run "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, one Celery worker (solo pool), "
            f"broker {'Redis' if os.environ.get('REDIS_URL') else 'Postgres'}.\n\n"
            "Ideal: lines x upstream latency / concurrency limit (every slot busy all the time). "
            "*Running* is from `in_progress` to `finalizing`; *wall* from the submit to `completed` "
            "(validation and writing the output file included). Peak in flight is the simulator's count; "
            "memory is the worker's resident set with its children, before the job and at its peak; worker "
            "CPU is its CPU time during the job, database CPU that of the development database's processes "
            "(sampled while the job runs), both until the job's cache entries are in the HNSW index; *indexed* "
            "is how long after `completed` that took (the worker writes a job's cache entries after the "
            "job: docs/batches.md); the load average is the machine's at the end of the job "
            "(other work shares the cores).\n\n"
            "| lines | upstream latency | concurrency | cache | ideal | running | finalizing | wall | "
            "peak in flight | worker RSS idle | worker RSS peak | worker CPU | database CPU | indexed | "
            "load average |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"{rows}\n<!-- bench/batches.py:end -->\n")


def _write(path: Path, section: str) -> None:
    section_write(path, "bench/batches.py", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-cache", action="store_true", help="turn the bench tenant's cache off")
    parser.add_argument("--both", action="store_true", help="run with the cache on, then off")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for no_cache in ((False, True) if args.both else (args.no_cache,)):
        args.no_cache = no_cache
        result = run(args)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    if args.write:
        _write(args.write, _section(results))


if __name__ == "__main__":
    main()
