"""A big job through a provider's own batch API, with its worker killed mid-poll: it must end
once, with one provider batch, every line answered once, and the recorded cost exactly the
provider's batch price.

    python bench/provider_batches.py [--lines 10000] [--kind anthropic|openai] [--write docs/benchmarks.md]

Starts the simulated upstream and a Celery worker with beat (``BATCH_UPSTREAM_POLL_EVERY=1``),
as a tenant of its own in the development database (created once, reused) with a budget, whose
provider (a native Anthropic one by default, or an OpenAI-compatible one) has its batch API on.
Half the lines share a system prompt marked for the provider's prompt cache. The simulator holds
the provider's batch in progress; once the worker has polled it, the worker is killed
(``SIGKILL``, with its beat), another started, and the batch released. Checked at the end: the
job ``completed`` with every line answered once, the simulator created one batch, one usage row
per line, and the sum of their costs equal to the sum of each row's tokens priced by the model's
price row at its batch price (and exactly half the live price); the budget reservation was
settled to that sum.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.batches import _free_port, _rss, _wait  # noqa: E402
from bench.report import section_write  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = "bench-provider-batch"
SYSTEM = ("You answer questions about the bench catalogue: its items, their sizes, their colours and "
          "where each is kept. Keep every answer to one line.")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _tenant(upstream_v1: str, kind: str):
    from apps.catalog.models import Model, Provider
    from apps.tenants.models import Tenant
    from apps.tenants.services import key_create, tenant_create

    tenant = Tenant.objects.filter(slug="bench-provider-batches").first() or tenant_create(
        name="Bench provider batches", slug="bench-provider-batches")
    tenant.budget_usd, tenant.budget_period = Decimal("1000"), "never"
    tenant.save()
    provider, _ = Provider.objects.update_or_create(name="bench-provider-batches-sim", defaults={
        "kind": Provider.Kind.ANTHROPIC if kind == "anthropic" else Provider.Kind.SIMULATED,
        "base_url": upstream_v1, "credential": "sk-bench", "batch_api": True, "timeout_seconds": 30})
    model, _ = Model.objects.update_or_create(name=MODEL, defaults={
        "upstream_id": "sim-mini", "provider": provider, "input_price_per_million": Decimal("3"),
        "cached_input_price_per_million": Decimal("0.30"), "cache_write_price_per_million": Decimal("3.75"),
        "output_price_per_million": Decimal("15"), "max_output_tokens": 1024, "batch_discount_percent": Decimal("50")})
    return tenant, key_create(tenant=tenant, name=f"bench {datetime.now(UTC):%Y%m%d%H%M%S}").api_key, model


def _worker(n: int, log_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "BATCH_UPSTREAM_POLL_EVERY": "1", "BATCH_LEASE_SECONDS": "3", "BATCH_RESUME_EVERY": "1",
           "PYTHONUNBUFFERED": "1"}
    log = open(log_dir / f"bench-provider-batches-worker-{n}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
                             "--loglevel", "INFO", "--hostname", f"bench-pb{n}@%h", "--beat", "--schedule",
                             str(log_dir / f"bench-provider-batches-beat-{n}")],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _line(n: int) -> dict:
    messages = [{"role": "user", "content": f"Describe item {n} of the bench catalogue in one line."}]
    if n % 2:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": SYSTEM,
                                                            "cache_control": {"type": "ephemeral"}}]})
    return {"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": 64, "messages": messages}}


def run(args) -> dict:
    import django

    django.setup()
    from django.core.files import File as DjangoFile
    from django.db.models import Sum

    from apps.batches.models import BatchJob, BatchLine
    from apps.batches.services import batch_create, file_create
    from apps.limits.spec import nanos
    from apps.usage.models import RequestLog

    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=REPO, check=True)
    port = _free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port), "--ttft-ms",
                                  "0", "--chunks", "12", "--batch-delay-ms", "500"], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    log_dir = REPO / "var"
    workers: list[subprocess.Popen] = []
    try:
        _wait(base + "/v1/models", simulator)
        tenant, key, model = _tenant(base + "/v1", args.kind)
        # A run stopped half-way leaves its job active, and a tenant's jobs run one at a time.
        BatchJob.objects.filter(tenant=tenant, status__in=BatchJob.ACTIVE).update(status=BatchJob.Status.CANCELLED)
        data = b"".join(json.dumps(_line(n)).encode() + b"\n" for n in range(args.lines))
        upload = file_create(tenant=tenant, content=DjangoFile(io.BytesIO(data), name="bench.jsonl"),
                             filename="bench.jsonl")
        _post(base + "/_sim/reset", {})
        _post(base + "/_sim/batches", {"hold": True})
        workers.append(_worker(0, log_dir))
        started = time.monotonic()
        job = batch_create(tenant=tenant, api_key=key, input_file_id=upload.pk, endpoint="/v1/chat/completions")
        log0 = log_dir / "bench-provider-batches-worker-0.log"
        while f"batch job {job.pk}: waiting" not in log0.read_text(errors="replace"):
            if workers[0].poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"the first worker never polled the job; see {log0}")
            time.sleep(0.2)
        submitted = time.monotonic() - started
        job.refresh_from_db()
        provider_batch = job.upstream_batch_id
        peak_first = _rss(psutil.Process(workers[0].pid))
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=10)
        killed = time.monotonic()
        workers.append(_worker(1, log_dir))
        watched = psutil.Process(workers[1].pid)
        _post(base + "/_sim/batches", {"hold": False})
        peak = 0
        while True:
            peak = max(peak, _rss(watched))
            job.refresh_from_db()
            if job.status in ("completed", "failed", "expired", "cancelled"):
                break
            if workers[1].poll() is not None:
                raise RuntimeError("the second worker died; see var/bench-provider-batches-worker-1.log")
            time.sleep(0.2)
        done = time.monotonic()
        job = BatchJob.objects.get(pk=job.pk)
        control = _post(base + "/_sim/batches", {})
        rows = list(RequestLog.objects.filter(request_id__startswith=f"{job.pk}-"))
        price = model.prices.order_by("-effective_from", "-id").first()
        batch_priced = live_priced = Decimal(0)
        for row in rows:
            tokens = {"input_tokens": row.input_tokens, "cached_tokens": row.cached_tokens,
                      "cache_write_tokens": row.cache_write_tokens, "output_tokens": row.output_tokens}
            batch_priced += price.cost(**tokens, batch=True)
            live_priced += price.cost(**tokens)
        recorded = RequestLog.objects.filter(request_id__startswith=f"{job.pk}-").aggregate(s=Sum("cost"))["s"]
        budget = (job.upstream or {}).get("budget") or {}
        return {
            "kind": args.kind, "lines": args.lines, "status": job.status, "completed": job.completed,
            "failed": job.failed, "lines_recorded": BatchLine.objects.filter(job=job).count(),
            "distinct_lines": BatchLine.objects.filter(job=job).values("index").distinct().count(),
            "provider_batches": control["message_batches"] + control["batches"],
            "provider_batch_kept": job.upstream_batch_id == provider_batch,
            "usage_rows": len(rows), "cache_read_rows": sum(1 for r in rows if r.cached_tokens),
            "cache_write_rows": sum(1 for r in rows if r.cache_write_tokens),
            "recorded_cost": str(recorded), "batch_price_cost": str(batch_priced), "live_price_cost": str(live_priced),
            "cost_exact": recorded == batch_priced and recorded * 2 == live_priced,
            "reserved_usd": str(Decimal(budget.get("cost", 0)) / 10**9), "settled": bool(job.upstream.get("settled")),
            "settled_nanos_match": nanos(recorded) <= budget.get("cost", 0),
            "to_first_poll_s": submitted, "after_kill_to_completed_s": done - killed, "wall_s": done - started,
            "worker_rss_first_mb": peak_first / 2**20, "worker_rss_peak_mb": peak / 2**20,
            "load_average": os.getloadavg()[0]}
    finally:
        for proc in (*workers, simulator):
            if proc.poll() is None:
                if proc in workers:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _section(results: list[dict]) -> str:
    rows = "\n".join(
        f"| {r['kind']} | {r['lines']:,} | {r['status']} | {r['completed']:,} / {r['failed']} | "
        f"{r['distinct_lines']:,} of {r['lines_recorded']:,} | {r['provider_batches']} | {r['usage_rows']:,} "
        f"({r['cache_write_rows']} write, {r['cache_read_rows']:,} read the cache) | ${r['recorded_cost']} | "
        f"${r['batch_price_cost']} | ${r['live_price_cost']} | {'yes' if r['cost_exact'] else 'NO'} | "
        f"${r['reserved_usd']} | {'yes' if r['settled'] else 'no'} | {r['to_first_poll_s']:.1f} s | "
        f"{r['after_kill_to_completed_s']:.1f} s | {r['worker_rss_peak_mb']:.0f} MB | {r['load_average']:.1f} |"
        for r in results)
    return ("<!-- bench/provider_batches.py:start -->\n## Provider batch APIs (`bench/provider_batches.py`)\n\n"
            f"Command: `python bench/provider_batches.py --kind both --write docs/benchmarks.md`. Run "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores against the "
            "simulator (answers at once), one Celery worker with beat polling every second, killed with "
            "`SIGKILL` once it had polled the provider's batch (held in progress by the simulator), then "
            "another started and the batch released.\n\n"
            "*Lines* is the job's count of answered / failed lines; *recorded* how many distinct line indexes "
            "of how many line rows the job holds (one each: nothing answered twice); *provider batches* how "
            "many the simulator created. *Recorded cost* is the sum of the usage rows; *batch price* the same "
            "rows' tokens priced by the model's price row at its batch price, *live price* at its live price "
            "(exact: equal, and half). *Reserved* is the estimate held against the tenant's budget from the "
            "submission to the settlement. *To first poll* is from creating the job to the first worker's "
            "first poll; *after the kill* from the kill to `completed` (the second worker's start, its poll "
            "and mapping every line back).\n\n"
            "| provider | lines | status | answered / failed | recorded | provider batches | usage rows | "
            "recorded cost | batch price | live price | exact | reserved | settled | to first poll | "
            "after the kill | worker RSS peak | load average |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"{rows}\n<!-- bench/provider_batches.py:end -->\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--kind", choices=("anthropic", "openai", "both"), default="anthropic")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for kind in (("anthropic", "openai") if args.kind == "both" else (args.kind,)):
        args.kind = kind
        result = run(args)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
        if not (result["status"] == "completed" and result["provider_batches"] == 1 and result["cost_exact"]
                and result["distinct_lines"] == result["lines_recorded"] == args.lines):
            raise SystemExit(f"the {kind} run failed its checks")
    if args.write:
        section_write(args.write, "bench/provider_batches.py", _section(results))


if __name__ == "__main__":
    main()
