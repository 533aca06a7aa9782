"""Semantic cache speed, measured side by side.

    python bench/cache_perf.py [--write docs/benchmarks.md] [--rows 1000000]

1. Hit latency through Switchyard with a slow upstream (500 ms to first token): an exact hit
   and a semantic hit (a reworded prompt) at concurrency 20, against the overhead of a plain
   proxied request (Switchyard latency minus direct latency, cache bypassed).
2. Embedding throughput of the local model: one prompt per call against the micro-batcher
   fed by 64 concurrent callers.
3. Nearest-neighbour queries on the HNSW index with ``--rows`` entries in one tenant and ten in
   another: p50/p99 latency of the tenant-filtered query, and recall@1 against exact search.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from bench.gateway import free_port, start, stop, wait_http  # noqa: E402

PY = sys.executable


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q / 100 * len(ordered)), len(ordered) - 1)]


async def timed_requests(url: str, headers: dict, bodies: list[dict], concurrency: int) -> list[tuple[float, str]]:
    queue = list(bodies)
    results: list[tuple[float, str]] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    results.append(((time.perf_counter() - t0) * 1000, response.headers.get("x-switchyard-cache", "")))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def body(prompt: str) -> dict:
    return {"model": "sim-mini", "messages": [{"role": "user", "content": prompt}]}


async def hit_latency(n: int = 400) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sy-cache-"))
    procs = []
    try:
        up = free_port()
        procs.append(start([PY, "-m", "apps.simulator.server", "--port", str(up), "--ttft-ms", "500", "--chunks", "20"],
                           log=logs / "upstream.log"))
        upstream = f"http://127.0.0.1:{up}/v1"
        await wait_http(upstream + "/models")
        seeded = subprocess.run([PY, "manage.py", "seed_demo", "--upstream-url", upstream], cwd=REPO,
                                capture_output=True, text=True, check=True)
        key = re.search(r"demo API key:\s+(\S+)", seeded.stdout).group(1)
        port = free_port()
        procs.append(start([PY, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--loop", "uvloop",
                            "--http", "httptools", "--no-access-log"], env={"DEBUG": "0"}, log=logs / "sy.log"))
        base = f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {key}"}
        await wait_http(base + "/models", headers=auth)
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.post(base + "/cache/clear") as response:
                await response.read()
            for _ in range(240):
                async with session.get(base + "/cache/stats") as response:
                    if (await response.json()).get("semantic_ready"):
                        break
                await asyncio.sleep(0.5)
        run = os.urandom(3).hex()
        prompts = [f"What is the capital of country number {i} in list {run}?" for i in range(n)]
        # fill the cache (misses), then wait until every entry is written and embedded
        await timed_requests(base + "/chat/completions", auth, [body(p) for p in prompts], 50)
        import django

        django.setup()
        from apps.cache.models import CacheEntry

        for _ in range(600):
            ready = await asyncio.to_thread(lambda: CacheEntry.objects.filter(
                prompt_text__endswith=f"list {run}?", embedding__isnull=False).count())
            if ready >= n:
                break
            await asyncio.sleep(0.5)
        exact1 = await timed_requests(base + "/chat/completions", auth, [body(p) for p in prompts[:100]], 1)
        exact = await timed_requests(base + "/chat/completions", auth, [body(p) for p in prompts], 20)
        semantic1 = await timed_requests(base + "/chat/completions", auth,
                                         [body("Hey, " + p.lower()) for p in prompts[:100]], 1)
        semantic = await timed_requests(base + "/chat/completions", auth,
                                        [body("Hey, " + p.lower()) for p in prompts[100:]], 20)
        plain = await timed_requests(base + "/chat/completions", {**auth, "Cache-Control": "no-store"},
                                     [body(p) for p in prompts[:200]], 20)
        direct = await timed_requests(upstream + "/chat/completions", {}, [body(p) for p in prompts[:200]], 20)
    finally:
        for proc in reversed(procs):
            stop(proc)
    exact_ms = [ms for ms, kind in exact if kind == "hit-exact"]
    semantic_ms = [ms for ms, kind in semantic if kind == "hit-semantic"]
    exact1_ms = [ms for ms, kind in exact1 if kind == "hit-exact"]
    semantic1_ms = [ms for ms, kind in semantic1 if kind == "hit-semantic"]
    overhead = statistics.median(ms for ms, _ in plain) - statistics.median(ms for ms, _ in direct)
    lines = [
        "| measure (upstream 500 ms to first token; closed loop) | p50 ms | p95 ms | share |",
        "|---|---|---|---|",
        f"| exact hit, one request at a time | {pct(exact1_ms, 50):.2f} | {pct(exact1_ms, 95):.2f} | "
        f"{len(exact1_ms)}/{len(exact1)} hit |",
        f"| semantic hit, one request at a time | {pct(semantic1_ms, 50):.2f} | {pct(semantic1_ms, 95):.2f} | "
        f"{len(semantic1_ms)}/{len(semantic1)} hit |",
        f"| exact hit, 20 concurrent | {pct(exact_ms, 50):.2f} | {pct(exact_ms, 95):.2f} | "
        f"{len(exact_ms)}/{len(exact)} hit |",
        f"| semantic hit (reworded prompt), 20 concurrent | {pct(semantic_ms, 50):.2f} | "
        f"{pct(semantic_ms, 95):.2f} | {len(semantic_ms)}/{len(semantic)} hit |",
        f"| plain proxied request: Switchyard minus direct (cache bypassed) | {overhead:.2f} | | |",
    ]
    checks = [
        ("exact hit p50 (one at a time) within 2 ms of a proxied request's overhead",
         pct(exact1_ms, 50) <= overhead + 2, f"{pct(exact1_ms, 50):.2f} ms vs {overhead:.2f} ms"),
        ("semantic hit p50 under 20 ms at c=20", pct(semantic_ms, 50) < 20, f"{pct(semantic_ms, 50):.2f} ms"),
    ]
    return "\n".join(lines), checks


async def embedding_throughput(n: int = 512) -> tuple[str, list]:
    from apps.cache.embedder import LocalEmbedder, MicroBatcher

    embedder = LocalEmbedder()
    embedder.load()
    texts = [f"How do I configure feature number {i} of the product?" for i in range(n)]
    embedder.embed_sync(texts[:8])  # warm up
    t0 = time.perf_counter()
    for text in texts[: n // 4]:
        await embedder.embed([text])
    single = (n // 4) / (time.perf_counter() - t0)
    batcher = MicroBatcher(embedder, max_batch=64, max_wait_ms=3)
    t0 = time.perf_counter()
    await asyncio.gather(*(batcher.embed_one(text) for text in texts))
    batched = n / (time.perf_counter() - t0)
    mean_batch = statistics.mean(batcher.batch_sizes)
    text = (f"| embedding, one prompt per call | {single:.0f} prompts/s |\n"
            f"| embedding, micro-batched (64 concurrent callers, batches of {mean_batch:.0f} on average) | "
            f"{batched:.0f} prompts/s ({batched / single:.1f}x) |")
    return text, [("micro-batching at least 3x one-at-a-time", batched / single >= 3, f"{batched / single:.1f}x")]


def nearest_neighbour(rows: int, queries: int = 300) -> tuple[str, list]:
    import django

    django.setup()
    import psycopg
    from pgvector.psycopg import register_vector

    from apps.gateway.database import conninfo
    from apps.tenants.models import Tenant

    big, _ = Tenant.objects.get_or_create(slug="bench-big", defaults={"name": "Bench (big)"})
    small, _ = Tenant.objects.get_or_create(slug="bench-small", defaults={"name": "Bench (small)"})
    rng = np.random.default_rng(42)
    dims = 384
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        register_vector(conn)
        have = conn.execute("SELECT count(*) FROM cache_cacheentry WHERE tenant_id = %s", [big.pk]).fetchone()[0]
        if have != rows:
            conn.execute("DELETE FROM cache_cacheentry WHERE tenant_id IN (%s, %s)", [big.pk, small.pk])
            started = time.perf_counter()
            # Bulk load without the index, then build it once (same name and definition as the migration).
            conn.execute("DROP INDEX IF EXISTS cache_entry_embedding_hnsw")
            centres = rng.standard_normal((2000, dims)).astype(np.float32)
            with conn.cursor() as cursor, cursor.copy(
                    "COPY cache_cacheentry (tenant_id, namespace, request_hash, context_hash, prompt_text, embedding, "
                    "response, model_name, input_tokens, output_tokens, cost, created_at, expires_at, hit_count) "
                    "FROM STDIN") as copy:
                for start_row in range(0, rows, 10000):
                    count = min(10000, rows - start_row)
                    vectors = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal(
                        (count, dims)).astype(np.float32)
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                    for offset, vector in enumerate(vectors):
                        copy.write_row([big.pk, "", f"{start_row + offset:064d}", "", "bench", vector, "{}", "", 0, 0,
                                        0, datetime.now(UTC), datetime(2100, 1, 1, tzinfo=UTC), 0])
                small_vectors = rng.standard_normal((10, dims)).astype(np.float32)
                for offset, vector in enumerate(small_vectors / np.linalg.norm(small_vectors, axis=1, keepdims=True)):
                    copy.write_row([small.pk, "", f"{offset:064d}", "", "bench", vector, "{}", "", 0, 0, 0,
                                    datetime.now(UTC), datetime(2100, 1, 1, tzinfo=UTC), 0])
            loaded = time.perf_counter() - started
            conn.execute("SET maintenance_work_mem = '2GB'")
            conn.execute("SET max_parallel_maintenance_workers = 2")
            conn.execute("CREATE INDEX cache_entry_embedding_hnsw ON cache_cacheentry USING hnsw "
                         "(embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
            conn.execute("VACUUM ANALYZE cache_cacheentry")
            built = time.perf_counter() - started - loaded
            print(f"loaded {rows:,} rows in {loaded:.0f} s, index built in {built:.0f} s", file=sys.stderr)
        sample = conn.execute("SELECT embedding FROM cache_cacheentry WHERE tenant_id = %s ORDER BY random() LIMIT %s",
                              [big.pk, queries]).fetchall()
        queries_big = []
        for (vector,) in sample:
            query = vector.to_numpy() + 0.05 * rng.standard_normal(dims).astype(np.float32)
            queries_big.append(query / np.linalg.norm(query))
        exact_sql = ("SELECT id FROM cache_cacheentry WHERE tenant_id = %s AND namespace = '' AND context_hash = '' "
                     "AND expires_at > now() ORDER BY (embedding <=> %s) + 0 LIMIT 1")
        truth = [conn.execute(exact_sql, [big.pk, q]).fetchone()[0] for q in queries_big]
        small_queries = [v.to_numpy() for (v,) in conn.execute(
            "SELECT embedding FROM cache_cacheentry WHERE tenant_id = %s", [small.pk]).fetchall()]

    async def timed() -> tuple[list[float], list[int], list[float], int]:
        from apps.cache.store import CacheStore

        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            timings, found_ids = [], []
            for query in queries_big:
                t0 = time.perf_counter()
                found = await store.nearest(tenant_id=big.pk, namespace="", context_hash="", vector=query,
                                            max_age=None, limit=1)
                timings.append((time.perf_counter() - t0) * 1000)
                found_ids.append(found[0].id if found else -1)
            small_times, small_found = [], 0
            for query in small_queries * 5:
                t0 = time.perf_counter()
                found = await store.nearest(tenant_id=small.pk, namespace="", context_hash="", vector=query,
                                            max_age=None, limit=1)
                small_times.append((time.perf_counter() - t0) * 1000)
                small_found += bool(found) and found[0].similarity > 0.999
            return timings, found_ids, small_times, small_found
        finally:
            await store.close()

    timings, found_ids, small_times, small_found = asyncio.run(timed())
    hits = sum(a == b for a, b in zip(found_ids, truth, strict=True))
    sample = queries_big
    recall = hits / len(sample)
    text = (f"| nearest neighbour, {rows:,} rows in one tenant (HNSW, iterative scan) | p50 {pct(timings, 50):.2f} ms, "
            f"p99 {pct(timings, 99):.2f} ms, recall@1 {recall:.3f} |\n"
            f"| nearest neighbour, tenant with 10 rows beside it | p50 {pct(small_times, 50):.2f} ms, p99 "
            f"{pct(small_times, 99):.2f} ms, found its own row {small_found}/{len(small_times)} |")
    return text, [(f"NN p99 under 10 ms with {rows:,} rows", pct(timings, 99) < 10, f"{pct(timings, 99):.2f} ms"),
                  ("recall@1 at least 0.98", recall >= 0.98, f"{recall:.3f}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parts", default="hits,embedding,nn")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    sections, checks = [], []
    if "hits" in args.parts:
        text, part = asyncio.run(hit_latency())
        sections.append(text)
        checks += part
    if "embedding" in args.parts:
        text, part = asyncio.run(embedding_throughput())
        sections.append("| measure | result |\n|---|---|\n" + text)
        checks += part
    if "nn" in args.parts:
        text, part = nearest_neighbour(args.rows)
        sections.append("| measure | result |\n|---|---|\n" + text)
        checks += part
    body = "\n\n".join(sections) + "\n\n| target | result | measured |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks) + "\n"
    print(body)
    if args.write:
        marker_start, marker_end = "<!-- bench/cache_perf.py:start -->", "<!-- bench/cache_perf.py:end -->"
        section = (f"{marker_start}\n## Semantic cache speed (`bench/cache_perf.py`)\n\nCommand: `python "
                   f"bench/cache_perf.py --rows {args.rows} --parts {args.parts} --write {args.write}`. Run "
                   f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores.\n\n{body}\n{marker_end}\n")
        text = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
        if marker_start in text:
            text = re.sub(re.escape(marker_start) + r".*?" + re.escape(marker_end) + r"\n?", section, text, flags=re.S)
        else:
            text = text.rstrip() + "\n\n" + section
        args.write.write_text(text)


if __name__ == "__main__":
    main()
