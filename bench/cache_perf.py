"""Semantic cache speed, measured side by side.

    python bench/cache_perf.py [--write docs/benchmarks.md] [--rows 1000000] [--shape prompts|embeddings|isotropic]
    python bench/cache_perf.py --parts nn --rows 1000000      # one part: hits, embedding or nn
    python bench/cache_perf.py --parts hits --precisions fp32,int8   # hits with each graph, one after the other
    python bench/cache_perf.py --parts hits --models minilm,static   # hits with each CACHE_EMBED_MODEL

1. Hit latency through Switchyard with a slow upstream (500 ms to first token): an exact hit
   and a semantic hit (a reworded prompt) at concurrency 20, against the overhead of a plain
   proxied request (Switchyard latency minus direct latency, cache bypassed).
2. Embedding throughput of the local model: one prompt per call against the micro-batcher
   fed by 64 concurrent callers, torch, both ONNX graphs (fp32, int8) and the static table
   (``CACHE_EMBED_MODEL=static``) side by side, and how close the int8 graph's vectors are to
   the fp32 graph's. The torch rows need PyTorch in the virtualenv
   (``.venv/bin/pip install -r requirements-export.txt``; the runtime does not carry it).
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
from bench.report import section_write  # noqa: E402

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


async def hit_latency(n: int = 400, precision: str | None = None, model: str | None = None) -> str:
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
                            "--http", "httptools", "--no-access-log"],
                           env={"DEBUG": "0", **({"CACHE_EMBED_PRECISION": precision} if precision else {}),
                                **({"CACHE_EMBED_MODEL": model} if model else {})},
                           log=logs / "sy.log"))
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
        # A proxied request's overhead: pairs of the same request, straight to the upstream and
        # through Switchyard (cache bypassed), one at a time; the median of the differences.
        differences = []
        for prompt in prompts[:60]:
            (direct_ms, _), = await timed_requests(upstream + "/chat/completions", {}, [body(prompt)], 1)
            (plain_ms, _), = await timed_requests(base + "/chat/completions", {**auth, "Cache-Control": "no-store"},
                                                   [body(prompt)], 1)
            differences.append(plain_ms - direct_ms)
    finally:
        for proc in reversed(procs):
            stop(proc)
    exact_ms = [ms for ms, kind in exact if kind == "hit-exact"]
    semantic_ms = [ms for ms, kind in semantic if kind == "hit-semantic"]
    exact1_ms = [ms for ms, kind in exact1 if kind == "hit-exact"]
    semantic1_ms = [ms for ms, kind in semantic1 if kind == "hit-semantic"]
    overhead = statistics.median(differences)
    graph = (f", {precision} graph" if precision else "") + (f", CACHE_EMBED_MODEL={model}" if model else "")
    lines = [
        f"| exact hit, one request at a time{graph} | {pct(exact1_ms, 50):.2f} | {pct(exact1_ms, 95):.2f} | "
        f"{len(exact1_ms)}/{len(exact1)} hit |",
        f"| semantic hit, one request at a time{graph} | {pct(semantic1_ms, 50):.2f} | "
        f"{pct(semantic1_ms, 95):.2f} | {len(semantic1_ms)}/{len(semantic1)} hit |",
        f"| exact hit, 20 concurrent{graph} | {pct(exact_ms, 50):.2f} | {pct(exact_ms, 95):.2f} | "
        f"{len(exact_ms)}/{len(exact)} hit |",
        f"| semantic hit (reworded prompt), 20 concurrent{graph} | {pct(semantic_ms, 50):.2f} | "
        f"{pct(semantic_ms, 95):.2f} | {len(semantic_ms)}/{len(semantic)} hit |",
        f"| plain proxied request: Switchyard minus direct, 60 pairs one at a time (cache bypassed){graph} | "
        f"{overhead:.2f} | {pct(differences, 95):.2f} | |",
    ]
    checks = [
        (f"exact hit p50 (one at a time) within 2 ms of a proxied request's overhead{graph}",
         pct(exact1_ms, 50) <= overhead + 2, f"{pct(exact1_ms, 50):.2f} ms vs {overhead:.2f} ms"),
        (f"semantic hit p50 under 20 ms at c=20{graph}", pct(semantic_ms, 50) < 20, f"{pct(semantic_ms, 50):.2f} ms"),
        (f"semantic hit p50 under 60 ms at c=20 (the learned verifier's issue){graph}", pct(semantic_ms, 50) < 60,
         f"{pct(semantic_ms, 50):.2f} ms"),
    ]
    return "\n".join(lines), checks


def _backend_memory(backend: str, precision: str = "fp32") -> float:
    """Resident MiB of a fresh process that loaded the model on ``backend`` and embedded once."""
    code = ("import sys, psutil; sys.path.insert(0, '.'); from apps.cache.embedder import LocalEmbedder; "
            f"e = LocalEmbedder(backend='{backend}', precision='{precision}'); "
            "e.embed_sync(['one prompt to warm up'] * 16); print(psutil.Process().memory_info().rss / 2**20)")
    out = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return float(out.stdout.strip().splitlines()[-1])


async def embedding_throughput(n: int = 512) -> tuple[str, list]:
    """Prompts per second: each backend (and ONNX graph) one prompt per call, then each ONNX graph
    behind the micro-batcher fed by 64 concurrent callers, the graphs taking turns; and the
    cosine between the int8 and the fp32 graph's vectors of the same texts."""
    from apps.cache.embedder import LocalEmbedder, MicroBatcher
    from apps.cache.export import can_export_here

    texts = [f"How do I configure feature number {i} of the product?" for i in range(n)]
    # sentence-transformers is not in the project's virtualenv (`make install` uses it once, to export
    # the graph); without it the torch rows are left out rather than the part failing.
    with_torch = can_export_here()
    variants = {**({"torch": ("torch", "fp32")} if with_torch else {}), "fp32": ("onnx", "fp32"),
                "int8": ("onnx", "int8"), "static": ("onnx", "int8")}
    single: dict[str, float] = {}
    embedders = {}
    for name, (backend, precision) in variants.items():
        embedder = embedders[name] = LocalEmbedder(backend=backend, precision=precision,
                                                   model="static" if name == "static" else "minilm")
        embedder.load()
        embedder.embed_sync(texts[:8])  # warm up
        t0 = time.perf_counter()
        for text in texts[: n // 4]:
            await embedder.embed([text])
        single[name] = (n // 4) / (time.perf_counter() - t0)
    batched: dict[str, list[float]] = {"fp32": [], "int8": [], "static": []}
    sizes: dict[str, list[int]] = {"fp32": [], "int8": [], "static": []}
    for _round in range(2):  # in turns, so that a change in the machine's load falls on both
        for name in batched:
            batcher = MicroBatcher(embedders[name], max_batch=64, max_wait_ms=3)
            t0 = time.perf_counter()
            await asyncio.gather(*(batcher.embed_one(text) for text in texts))
            batched[name].append(n / (time.perf_counter() - t0))
            sizes[name] += batcher.batch_sizes
    rate = {name: statistics.mean(values) for name, values in batched.items()}
    probe = texts[:64] + [pair.a for pair in _paraphrase_pairs()[:192]] if DATA.exists() else texts
    agreement = np.sum(np.array(embedders["int8"].embed_sync(probe)) * np.array(embedders["fp32"].embed_sync(probe)),
                       axis=1)
    ratio = rate["int8"] / single["int8"]
    # A short text is embedded at once by the static table (no batch, no hand-off to its thread).
    static_batches = (f"batches of {statistics.mean(sizes['static']):.0f} on average" if sizes["static"]
                      else "each embedded at once, no batch")
    if with_torch:
        rows = (f"| embedding, one prompt per call, sentence-transformers (torch) | {single['torch']:.0f} prompts/s |\n"
                f"| embedding, one prompt per call, ONNX Runtime fp32 graph | {single['fp32']:.0f} prompts/s "
                f"({single['fp32'] / single['torch']:.1f}x torch) |\n")
        against_torch = f", {rate['int8'] / single['torch']:.1f}x torch one at a time"
        torch_memory = (f"| resident memory of a process with the model loaded, torch | "
                        f"{_backend_memory('torch'):.0f} MiB |\n")
    else:
        rows = (f"| embedding, one prompt per call, ONNX Runtime fp32 graph | {single['fp32']:.0f} prompts/s "
                "(torch rows left out: `.venv/bin/pip install -r requirements-export.txt` adds them) |\n")
        against_torch = torch_memory = ""
    text = (rows +
            f"| embedding, one prompt per call, ONNX Runtime int8 graph (the default) | {single['int8']:.0f} "
            f"prompts/s ({single['int8'] / single['fp32']:.2f}x fp32) |\n"
            f"| embedding, ONNX Runtime fp32 micro-batched (64 concurrent callers, batches of "
            f"{statistics.mean(sizes['fp32']):.0f} on average) | {rate['fp32']:.0f} prompts/s "
            f"({' and '.join(f'{v:.0f}' for v in batched['fp32'])} in two turns) |\n"
            f"| embedding, ONNX Runtime int8 micro-batched (64 concurrent callers, batches of "
            f"{statistics.mean(sizes['int8']):.0f} on average) | {rate['int8']:.0f} prompts/s "
            f"({' and '.join(f'{v:.0f}' for v in batched['int8'])}; {rate['int8'] / rate['fp32']:.2f}x fp32 "
            f"batched, {ratio:.1f}x int8 one at a time{against_torch}) |\n"
            f"| embedding, one prompt per call, static table distilled from the model (CACHE_EMBED_MODEL=static) "
            f"| {single['static']:.0f} prompts/s |\n"
            f"| embedding, static table through the micro-batcher (64 concurrent callers; "
            f"{static_batches}) | {rate['static']:.0f} prompts/s "
            f"({' and '.join(f'{v:.0f}' for v in batched['static'])} in two turns) |\n"
            f"| cosine between the int8 and fp32 graphs' vectors of the same text ({len(probe)} texts) | "
            f"mean {agreement.mean():.4f}, least {agreement.min():.4f} |\n"
            + torch_memory +
            f"| resident memory of a process with the model loaded, ONNX Runtime fp32 | "
            f"{_backend_memory('onnx', 'fp32'):.0f} MiB |\n"
            f"| resident memory of a process with the model loaded, ONNX Runtime int8 | "
            f"{_backend_memory('onnx', 'int8'):.0f} MiB |")
    return text, [("micro-batching at least 3x one-at-a-time", ratio >= 3, f"{ratio:.1f}x"),
                  ("int8 vectors at least 0.975 cosine of fp32's", float(agreement.min()) >= 0.975,
                   f"{agreement.min():.4f}")]


def _vectors_copy(conn, rows: list[tuple[int, str, np.ndarray]], *, label: str = "bench") -> None:
    """Binary COPY of (tenant, request_hash, vector) rows, all live until 2100."""
    now, expires = datetime.now(UTC), datetime(2100, 1, 1, tzinfo=UTC)
    with conn.cursor() as cursor, cursor.copy(
            "COPY cache_cacheentry (tenant_id, namespace, request_hash, context_hash, prompt_text, embedding, "
            "response, model_name, input_tokens, output_tokens, cost, created_at, expires_at, hit_count) "
            "FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["bigint", "varchar", "varchar", "varchar", "text", "vector", "jsonb", "varchar", "integer",
                        "integer", "numeric", "timestamptz", "timestamptz", "integer"])
        for tenant_id, request_hash, vector in rows:
            copy.write_row([tenant_id, "", request_hash, "", label, vector, "{}", "", 0, 0, 0, now, expires, 0])


DATA = Path(os.environ.get("SWITCHYARD_SHARED_DATA", REPO.parent / "shared" / "data"))


def _paraphrase_pairs() -> list:
    from bench.cache_quality import mrpc_pairs, paws_pairs

    return mrpc_pairs(DATA) + paws_pairs(DATA)


def _real_sentences() -> list[str]:
    return sorted({text for pair in _paraphrase_pairs() for text in (pair.a, pair.b)})


def _embedded(name: str, texts: list[str]) -> np.ndarray:
    """The local model's vectors for ``texts``, computed once and kept under var/bench/."""
    cached = REPO / "var" / "bench" / f"{name}.npy"
    if cached.exists():
        return np.load(cached)
    from apps.cache.embedder import LocalEmbedder

    embedder = LocalEmbedder()
    vectors = np.vstack([np.array(embedder.embed_sync(texts[i:i + 64])) for i in range(0, len(texts), 64)])
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors)
    return vectors


def _real_embeddings() -> np.ndarray:
    """The local model's vectors for every distinct sentence of the public paraphrase files (13,547)."""
    return _embedded("paraphrase-sentences", _real_sentences())


# What a prompt asks of a text: the "prompts" shape pairs each with each sentence.
INSTRUCTIONS = [
    "Summarise this:", "Summarize in one line:", "Translate into French:", "Translate into German:",
    "Translate into Spanish:", "Translate into Japanese:", "Is the following true?", "Fact-check this claim:",
    "Rewrite this more formally:", "Rewrite this for a child:", "Make this shorter:", "Expand on this:",
    "What is the sentiment of this?", "Classify the topic of this sentence:", "Extract the names in this:",
    "Extract the numbers in this:", "Write a headline for this:", "Write a tweet about this:",
    "Explain this to a beginner:", "What does this mean?", "Give three questions about this:",
    "Correct the grammar:", "Paraphrase this:", "Turn this into a bullet list:", "Write an email about this:",
    "What happened here?", "Who is involved in this?", "When did this happen?", "Where did this happen?",
    "Why might this matter?", "Give a counterargument to this:", "Write a poem about this:",
    "Summarise for an executive:", "Draft a press release based on this:", "Rate how surprising this is:",
    "Identify the main claim:", "List the key facts:", "Find any contradictions in this:",
    "Write a follow-up question:", "Make this sound more exciting:", "Simplify the wording:",
    "Convert this to passive voice:", "Convert this to active voice:", "What is the tone of this?",
    "Continue this story:", "Write a title for this:", "Describe this in five words:",
    "Translate into Italian:", "Translate into Portuguese:", "Translate into Chinese:", "Translate into Korean:",
    "Is this sentence ambiguous?", "Detect the language:", "Answer briefly: what is this about?",
    "Generate keywords for this:", "Give a one-word summary:", "Which industry is this about?",
    "Is this news or opinion?", "Rewrite as a question:", "Explain the background of this:",
    "What would an expert say about this?", "Summarise the legal implications:", "Explain the economics here:",
    "Write a children's story based on this:", "Turn this into a quiz question:", "Critique this sentence:",
    "Make this polite:", "Make this persuasive:", "Write a caption for this:", "Describe the people in this:",
    "Predict what happens next:", "Find the cause and effect:", "Explain any jargon in this:",
    "Give an example related to this:", "Compare this with a similar event:", "State the obvious question:",
    "Write a limerick about this:", "Estimate the date of this:", "Outline an essay on this:",
]


def _instruction_offsets(sentences: list[str], vectors: np.ndarray) -> np.ndarray:
    """Per instruction, the mean move of a sentence's vector when the instruction is put before it
    (measured with the model on 48 sentences each)."""
    rng = np.random.default_rng(7)
    sample = rng.choice(len(sentences), 48, replace=False)
    texts = [f"{instruction} {sentences[i]}" for instruction in INSTRUCTIONS for i in sample]
    prefixed = _embedded("instruction-prefixed", texts).reshape(len(INSTRUCTIONS), len(sample), -1)
    return (prefixed - vectors[sample][None, :, :]).mean(axis=1)


class VectorShape:
    """Where the synthetic rows come from.

    "embeddings": a Gaussian with the mean and covariance of the local model's vectors for
    13,547 real sentences, so the rows spread over the directions real prompts use (the top 64
    of 384 directions carry 55% of their variance, the top 128 77%); a query is a row moved by noise
    of the same shape (a reworded prompt moves along the same directions), about 0.9 cosine
    from it. "isotropic": 2,000 random centres in all 384 directions, a row is a centre plus
    noise (cosine about 0.74 within a topic); a query is a row plus noise in every direction.
    The second is far harder for any graph index than prompts are. Both have no structure
    beyond their covariance: real prompts cluster by topic and by task, which a graph index
    navigates far better.
    "prompts": the model's own vectors for 13,547 real sentences, each combined with each of 79
    instructions ("Summarise this:", "Translate into French:", ...): the sentence's vector plus
    the instruction's mean offset (measured with the model on 48 sentences each), so one tenant
    holds a million prompts made of real text and real tasks. 700 sentences whose paraphrase is
    stored are held out; a query is a held-out sentence under a random instruction, the way a
    reworded prompt arrives.
    """

    def __init__(self, kind: str, rng) -> None:
        self.kind, self.rng, self.dims = kind, rng, 384
        if kind == "embeddings":
            real = _real_embeddings().astype(np.float64)
            self.mean = real.mean(axis=0)
            values, vectors = np.linalg.eigh(np.cov(real, rowvar=False))
            self.transform = (vectors * np.sqrt(np.clip(values, 0, None))).T  # z @ transform ~ N(0, cov)
        elif kind == "prompts":
            sentences = _real_sentences()
            self.sentence_vectors = _real_embeddings()
            self.offsets = _instruction_offsets(sentences, self.sentence_vectors)
            index = {text: i for i, text in enumerate(sentences)}
            pairs = [(index[p.a], index[p.b]) for p in _paraphrase_pairs() if p.duplicate and p.a != p.b]
            held: set[int] = set()
            for kept, out in (pairs[i] for i in np.random.default_rng(11).permutation(len(pairs))):
                if len(held) == 700:
                    break
                if kept not in held:
                    held.add(out)
            self.held_out = np.array(sorted(held))
            stored = np.setdiff1d(np.arange(len(sentences)), self.held_out)
            combos = len(stored) * len(INSTRUCTIONS)
            order = np.random.default_rng(5).permutation(combos)
            self.combos = np.stack([stored[order // len(INSTRUCTIONS)], order % len(INSTRUCTIONS)], axis=1)
            self.next_combo = 0
        else:
            self.centres = rng.standard_normal((2000, self.dims)).astype(np.float32)

    @property
    def capacity(self) -> int:
        return len(self.combos) if self.kind == "prompts" else 1 << 62

    def _prompt(self, sentences: np.ndarray, instructions: np.ndarray) -> np.ndarray:
        vectors = self.sentence_vectors[sentences] + self.offsets[instructions]
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def queries(self, count: int, stored_sample: list[np.ndarray]) -> list[np.ndarray]:
        """``count`` query vectors: held-out prompts for "prompts", stored rows moved otherwise."""
        if self.kind == "prompts":
            rng = np.random.default_rng(13)
            sentences = rng.choice(self.held_out, count, replace=count > len(self.held_out))
            return list(self._prompt(sentences, rng.integers(0, len(INSTRUCTIONS), count)))
        return [self.moved(vector) for vector in stored_sample[:count]]

    def rows(self, count: int) -> np.ndarray:
        if self.kind == "prompts":
            combos = self.combos[self.next_combo:self.next_combo + count]
            self.next_combo += count
            return self._prompt(combos[:, 0], combos[:, 1])
        if self.kind == "embeddings":
            vectors = self.mean + self.rng.standard_normal((count, self.dims)) @ self.transform
        else:
            vectors = self.centres[self.rng.integers(0, len(self.centres), count)] + 0.6 * self.rng.standard_normal(
                (count, self.dims))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def moved(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` moved to about 0.9 cosine."""
        if self.kind == "embeddings":
            noise = self.rng.standard_normal(self.dims) @ self.transform
        else:
            noise = self.rng.standard_normal(self.dims)
        noise *= 0.48 / np.linalg.norm(noise)  # 1 / sqrt(1 + 0.48^2) = 0.90
        query = vector + noise
        return (query / np.linalg.norm(query)).astype(np.float32)


def _nn_load(conn, rows: int, big_id: int, small_id: int, shape: VectorShape) -> None:
    """``rows`` unit vectors for the big tenant, ten for the small one, then the index."""
    rng, dims = shape.rng, shape.dims
    conn.execute("DELETE FROM cache_cacheentry WHERE tenant_id IN (%s, %s)", [big_id, small_id])
    started = time.perf_counter()
    # Bulk load without the index, then build it once (same name and definition as the migration).
    conn.execute("DROP INDEX IF EXISTS cache_entry_embedding_hnsw")
    for start_row in range(0, rows, 20_000):
        count = min(20_000, rows - start_row)
        _vectors_copy(conn, [(big_id, f"{start_row + i:064d}", v) for i, v in enumerate(shape.rows(count))],
                      label=f"bench:{shape.kind}")
    small = rng.standard_normal((10, dims)).astype(np.float32)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    _vectors_copy(conn, [(small_id, f"{i:064d}", v) for i, v in enumerate(small)])
    loaded = time.perf_counter() - started
    print(f"loaded {rows:,} rows in {loaded:.0f} s", file=sys.stderr)


def _index_params(conn) -> tuple[int, int] | None:
    row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'cache_entry_embedding_hnsw'").fetchone()
    if row is None:
        return None
    found = dict(re.findall(r"(m|ef_construction)='?(\d+)", row[0]))
    return int(found.get("m", 16)), int(found.get("ef_construction", 64))


def _index_build(conn, m: int, ef_construction: int) -> float:
    """(Re)build the HNSW index (the migration's definition unless told otherwise); seconds taken."""
    started = time.perf_counter()
    conn.execute("DROP INDEX IF EXISTS cache_entry_embedding_hnsw")
    conn.execute("SET maintenance_work_mem = '4GB'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    conn.execute(f"CREATE INDEX cache_entry_embedding_hnsw ON cache_cacheentry USING hnsw "
                 f"(embedding vector_cosine_ops) WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")
    conn.execute("VACUUM ANALYZE cache_cacheentry")
    built = time.perf_counter() - started
    print(f"index (m {m}, ef_construction {ef_construction}) built in {built:.0f} s", file=sys.stderr)
    return built


def _exact_nearest(conn, tenant_id: int, queries: np.ndarray) -> list[tuple[int, float]]:
    """The exact nearest row (id, cosine distance) of each query among the tenant's rows,
    computed here over every row's vector (a sequential scan per query in SQL takes seconds at a
    million rows)."""
    ids, vectors = [], []
    with conn.transaction(), conn.cursor(name="all_vectors") as cursor:
        cursor.itersize = 20_000
        cursor.execute("SELECT id, embedding FROM cache_cacheentry WHERE tenant_id = %s AND namespace = '' "
                       "AND context_hash = '' AND expires_at > now() AND embedding IS NOT NULL", [tenant_id])
        for row_id, vector in cursor:
            ids.append(row_id)
            vectors.append(vector.to_numpy())
    matrix = np.vstack(vectors)
    del vectors
    best_similarity = np.full(len(queries), -2.0)
    best_row = np.zeros(len(queries), dtype=np.int64)
    for offset in range(0, len(matrix), 100_000):
        similarity = queries @ matrix[offset:offset + 100_000].T
        row = similarity.argmax(axis=1)
        value = similarity[np.arange(len(queries)), row]
        better = value > best_similarity
        best_similarity[better], best_row[better] = value[better], row[better] + offset
    return [(ids[row], 1 - float(sim)) for row, sim in zip(best_row, best_similarity, strict=True)]


def nearest_neighbour(rows: int, shape_kind: str = "embeddings", queries: int = 500,
                      ef_values: tuple[int, ...] = (40, 100, 200, 400), index: tuple[int, int] | None = None
                      ) -> tuple[str, list]:
    import django

    django.setup()
    import psycopg
    from django.conf import settings
    from pgvector.psycopg import register_vector

    from apps.gateway.database import conninfo
    from apps.tenants.models import Tenant

    big, _ = Tenant.objects.get_or_create(slug="bench-big", defaults={"name": "Bench (big)"})
    small, _ = Tenant.objects.get_or_create(slug="bench-small", defaults={"name": "Bench (small)"})
    shape = VectorShape(shape_kind, np.random.default_rng(42))
    if rows > shape.capacity:
        raise SystemExit(f"the {shape_kind} shape holds at most {shape.capacity:,} rows")
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        register_vector(conn)
        have = conn.execute("SELECT count(*), count(*) FILTER (WHERE prompt_text = %s) FROM cache_cacheentry "
                            "WHERE tenant_id = %s", [f"bench:{shape_kind}", big.pk]).fetchone()
        if have != (rows, rows):
            _nn_load(conn, rows, big.pk, small.pk, shape)
        from apps.cache.models import LOCAL_MODEL, CacheEntry

        model_index = next(i for i in CacheEntry._meta.indexes if i.name == "cache_entry_embedding_hnsw")
        index = index or (model_index.m, model_index.ef_construction)
        build_seconds = None
        if _index_params(conn) != index:
            build_seconds = _index_build(conn, *index)
        shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
        # Queries are held-out prompts, or rows of the table moved by noise (a reworded prompt
        # lands near, not on, the stored one); warm-up queries are separate from the measured ones.
        sample = [] if shape.kind == "prompts" else conn.execute(
            "SELECT embedding FROM cache_cacheentry WHERE tenant_id = %s ORDER BY random() LIMIT %s",
            [big.pk, queries + 200]).fetchall()
        moved = shape.queries(queries + 200, [vector.to_numpy() for (vector,) in sample])
        warmup, queries_big = moved[:200], moved[200:]
        truth = _exact_nearest(conn, big.pk, np.array(queries_big))
        small_queries = [v.to_numpy() for (v,) in conn.execute(
            "SELECT embedding FROM cache_cacheentry WHERE tenant_id = %s", [small.pk]).fetchall()]

    async def timed(ef_search: int) -> tuple[list[float], list, list[float], int]:
        from apps.cache.store import CacheStore

        store = CacheStore(conninfo(), max_size=2, ef_search=ef_search)
        await store.open()
        try:
            for query in warmup:
                await store.nearest(tenant_id=big.pk, namespace="", context_hash="", vector=query, max_age=None,
                                    embedding_model=LOCAL_MODEL, limit=1)
            timings, found = [], []
            for query in queries_big:
                t0 = time.perf_counter()
                answer = await store.nearest(tenant_id=big.pk, namespace="", context_hash="", vector=query,
                                             embedding_model=LOCAL_MODEL, max_age=None, limit=1)
                timings.append((time.perf_counter() - t0) * 1000)
                found.append((answer[0].id, 1 - answer[0].similarity) if answer else (-1, 2.0))
            small_times, small_found = [], 0
            for query in small_queries * 5:
                t0 = time.perf_counter()
                answer = await store.nearest(tenant_id=small.pk, namespace="", context_hash="", vector=query,
                                             embedding_model=LOCAL_MODEL, max_age=None, limit=1)
                small_times.append((time.perf_counter() - t0) * 1000)
                small_found += bool(answer) and answer[0].similarity > 0.999
            return timings, found, small_times, small_found
        finally:
            await store.close()

    lines = [f"| index | HNSW m {index[0]}, ef_construction {index[1]}"
             + (f", built in {build_seconds:,.0f} s" if build_seconds is not None else "")
             + f"; Postgres shared_buffers {shared_buffers} |"]
    checks = []
    for ef_search in sorted(set(ef_values) | {settings.CACHE_EF_SEARCH}):
        timings, found, small_times, small_found = asyncio.run(timed(ef_search))
        # Right when it is the exact answer's row, or a row exactly as close (a tie).
        right = sum(got_id == true_id or got_distance <= true_distance + 1e-5
                    for (got_id, got_distance), (true_id, true_distance) in zip(found, truth, strict=True))
        recall = right / len(truth)
        # A miss whose row is within 0.01 cosine of the exact answer's: as good a candidate for the cache.
        close = sum(got_distance <= true_distance + 0.01
                    for (_, got_distance), (_, true_distance) in zip(found, truth, strict=True)) / len(truth)
        default = " (the default)" if ef_search == settings.CACHE_EF_SEARCH else ""
        lines.append(f"| nearest neighbour, {rows:,} rows in one tenant, ef_search {ef_search}{default} | p50 "
                     f"{pct(timings, 50):.2f} ms, p99 {pct(timings, 99):.2f} ms, recall@1 {recall:.3f}, "
                     f"within 0.01 cosine of the best {close:.3f} ({len(truth)} queries) |")
        if default:
            lines.append(f"| nearest neighbour, tenant with 10 rows beside it, ef_search {ef_search} | p50 "
                         f"{pct(small_times, 50):.2f} ms, p99 {pct(small_times, 99):.2f} ms, found its own row "
                         f"{small_found}/{len(small_times)} |")
            checks += [(f"NN p99 under 10 ms with {rows:,} rows", pct(timings, 99) < 10, f"{pct(timings, 99):.2f} ms"),
                       ("recall@1 at least 0.98", recall >= 0.98, f"{recall:.3f}"),
                       ("the small tenant finds its own rows", small_found == len(small_times),
                        f"{small_found}/{len(small_times)}")]
    return "\n".join(lines), checks


PART_TITLES = {"hits": "Cache hit latency", "embedding": "Embedding throughput",
               "nn": "Nearest neighbour at scale"}


def _section(part: str, command: str, text: str, checks: list) -> str:
    """One part's figures and targets between its own markers, so a part run alone (the
    nearest-neighbour part takes tens of minutes at a million rows) replaces only its own."""
    targets = "\n".join(f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks)
    return (f"<!-- bench/cache_perf.py:{part}:start -->\n### {PART_TITLES[part]}\n\nCommand: `{command}`. Run "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores.\n\n{text}\n\n"
            f"| target | result | measured |\n|---|---|---|\n{targets}\n<!-- bench/cache_perf.py:{part}:end -->\n")


def _write(path: Path, part: str, section: str) -> None:
    section_write(path, f"bench/cache_perf.py:{part}", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parts", default="hits,embedding,nn")
    parser.add_argument("--shape", choices=("prompts", "embeddings", "isotropic"), default="prompts",
                        help="where the nearest-neighbour rows come from (see VectorShape)")
    parser.add_argument("--ef-search", default="40,100,200,400", help="values of hnsw.ef_search to measure, "
                        "besides the default (CACHE_EF_SEARCH)")
    parser.add_argument("--queries", type=int, default=500, help="nearest-neighbour queries per ef_search value")
    parser.add_argument("--index", default=None, metavar="M,EF_CONSTRUCTION",
                        help="build the HNSW index with these parameters instead of the migration's")
    parser.add_argument("--precisions", default=None, metavar="fp32,int8",
                        help="hits: run the gateway with each of these graphs (CACHE_EMBED_PRECISION) in turn")
    parser.add_argument("--models", default=None, metavar="minilm,static",
                        help="hits: run the gateway with each of these cache embedding models (CACHE_EMBED_MODEL) in "
                        "turn")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    parts = [part for part in PART_TITLES if part in args.parts.split(",")]
    for part in parts:
        command = f"python bench/cache_perf.py --parts {part}"
        if part == "hits":
            texts, checks = [], []
            for precision in args.precisions.split(",") if args.precisions else [None]:
                for model in args.models.split(",") if args.models else [None]:
                    text, part_checks = asyncio.run(hit_latency(precision=precision, model=model))
                    texts.append(text)
                    checks += part_checks
            text = ("| measure (upstream 500 ms to first token; closed loop) | p50 ms | p95 ms | share |\n"
                    "|---|---|---|---|\n" + "\n".join(texts))
            command += f" --precisions {args.precisions}" if args.precisions else ""
            command += f" --models {args.models}" if args.models else ""
        elif part == "embedding":
            text, checks = asyncio.run(embedding_throughput())
            text = "| measure | result |\n|---|---|\n" + text
        else:
            index = tuple(int(n) for n in args.index.split(",")) if args.index else None
            ef_values = tuple(int(n) for n in args.ef_search.split(","))
            text, checks = nearest_neighbour(args.rows, args.shape, index=index, ef_values=ef_values,
                                             queries=args.queries)
            text = "| measure | result |\n|---|---|\n" + text
            command += (f" --rows {args.rows} --shape {args.shape} --queries {args.queries}"
                        + (f" --index {args.index}" if args.index else ""))
        section = _section(part, command + (f" --write {args.write}" if args.write else ""), text, checks)
        print(section)
        if args.write:
            _write(args.write, part, section)


if __name__ == "__main__":
    main()
