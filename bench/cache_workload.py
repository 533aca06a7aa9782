"""A repeated-intent workload through the semantic cache's lookup, in memory.

    python bench/cache_workload.py [--requests 800] [--write docs/benchmarks.md] [--model static]

``bench/data/workload_intents.tsv`` and ``workload_intents_b.tsv`` to ``workload_intents_d.tsv`` (b,
c and d each written later, independently of the others and of the verifier's training data) each
hold intents in several wordings; several intents differ from another by one slot. Each is run on
its own. Requests draw an intent by Zipf popularity (exponent ``ZIPF``, fixed seed) and one of
its wordings uniformly. Each request is looked up as the gateway does (``apps.gateway.caching``):
the five nearest stored prompts by cosine (the local embedder), in order, down to the tenant's
threshold; the first the verifier accepts is served. A miss stores the prompt. Reported:

    ideal hit rate   requests whose intent was asked before / requests
    hit rate         served hits / requests; right hits (served from the same intent) / ideal
    false hits       served hits whose stored prompt belongs to another intent
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.cache.embedder import MODELS, LocalEmbedder  # noqa: E402
from apps.cache.verify import candidate_verify  # noqa: E402
from bench.report import section_write  # noqa: E402

WORKLOADS = {"a": REPO / "bench" / "data" / "workload_intents.tsv",
             "b": REPO / "bench" / "data" / "workload_intents_b.tsv",
             "c": REPO / "bench" / "data" / "workload_intents_c.tsv",
             "d": REPO / "bench" / "data" / "workload_intents_d.tsv"}
THRESHOLD = 0.80  # apps.tenants.models.Tenant.cache_similarity_threshold
CANDIDATES = 5  # apps.cache.store's nearest(limit=5)
ZIPF = 1.1
SEED = 7


def intents_load(path: Path) -> dict[str, list[str]]:
    intents: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip() and not line.startswith("#")]
    for intent, wording in rows[1:]:
        intents.setdefault(intent, []).append(wording)
    return intents


def requests_draw(intents: dict[str, list[str]], count: int) -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    names = sorted(intents)
    rng.shuffle(names)  # popularity rank independent of the file's order
    weights = [1 / (rank + 1) ** ZIPF for rank in range(len(names))]
    drawn = rng.choices(names, weights=weights, k=count)
    return [(name, rng.choice(intents[name])) for name in drawn]


def run(requests: list[tuple[str, str]], vectors: dict[str, np.ndarray], verify: bool) -> dict:
    stored: list[tuple[str, str]] = []  # (intent, prompt)
    matrix = np.zeros((0, next(iter(vectors.values())).shape[0]), dtype=np.float32)
    seen: set[str] = set()
    hits = false_hits = ideal = 0
    wrong: list[tuple[str, str]] = []
    for intent, prompt in requests:
        ideal += intent in seen
        seen.add(intent)
        vector = vectors[prompt]
        served = None
        if len(stored):
            sims = matrix @ vector
            for index in np.argsort(-sims, kind="stable")[:CANDIDATES]:
                if sims[index] < THRESHOLD:
                    break
                if not verify or candidate_verify(prompt, stored[index][1]).ok:
                    served = stored[index]
                    break
        if served is None:
            stored.append((intent, prompt))
            matrix = np.vstack([matrix, vector[None, :]])
            continue
        hits += 1
        if served[0] != intent:
            false_hits += 1
            wrong.append((prompt, served[1]))
    return {"hits": hits, "false_hits": false_hits, "ideal": ideal, "wrong": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--model", choices=MODELS, default="minilm", help="the local model (CACHE_EMBED_MODEL)")
    args = parser.parse_args()
    if args.write and args.model != "minilm":
        parser.error("--write records the default model's figures only")
    embedder = LocalEmbedder(model=args.model)
    lines = []
    for workload, path in WORKLOADS.items():
        intents = intents_load(path)
        requests = requests_draw(intents, args.requests)
        texts = sorted({w for ws in intents.values() for w in ws})
        vectors = dict(zip(texts, embedder.embed_sync(texts), strict=True))
        lines += [f"**Workload {workload}** (`bench/data/{path.name}`). Embedder: {embedder.name}. {len(intents)} "
                  f"intents, {len(texts)} wordings, {args.requests} requests (Zipf {ZIPF}, seed {SEED}), threshold "
                  f"{THRESHOLD}, up to {CANDIDATES} candidates.\n",
                  "| lookup | hit rate | right hits / ideal | false hits |", "|---|---|---|---|"]
        for name, verify in (("cosine only", False), ("cosine + verifier (default policy)", True)):
            result = run(requests, vectors, verify)
            ideal = result["ideal"] / args.requests
            rate = result["hits"] / args.requests
            right = (result["hits"] - result["false_hits"]) / args.requests
            lines.append(f"| {name} | {rate:.3f} | {right / ideal:.3f} (ideal {ideal:.3f}) | {result['false_hits']} |")
            if verify:
                lines += ["", *(f"- false hit: {a!r} served {b!r}" for a, b in sorted(set(result["wrong"])))]
        lines.append("")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write:
        section_write(args.write, "bench/cache_workload.py",
                      "<!-- bench/cache_workload.py:start -->\n## Semantic cache on a repeated-intent workload "
                      f"(`bench/cache_workload.py`)\n\nCommand: `python bench/cache_workload.py --write {args.write}`. "
                      f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Intents and wordings in "
                      "`bench/data/workload_intents.tsv` and `workload_intents_b.tsv` to `workload_intents_d.tsv` "
                      "(each written before it was first measured; none used for training).\n\n"
                      + body + "\n<!-- bench/cache_workload.py:end -->\n")


if __name__ == "__main__":
    main()
