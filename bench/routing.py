"""Routing quality: does the learned router send the strong model the prompts that need it?

    python bench/routing.py [--data ../shared/data/routing] [--write docs/benchmarks.md]
    python bench/routing.py --train FILES --test FILES
    python bench/routing.py --live [--stream 1300] [--write docs/benchmarks.md]

Data: per-prompt outcomes in RouteLLM's CSV format (``prompt`` and one True/False column per
model: did it answer correctly). The weaker model (lower mean) is the cheap one, the other the
strong one. Prompts that RouteLLM found in public router training data
(``mmlu_contaminated_prompts.jsonl``) are left out, as its evaluation does.

Each router gives every test prompt a score (higher: the strong model is needed more); sending
the top share of prompts to the strong model, from none to all, traces how much of the two
models' accuracy gap is recovered: APGR is its mean (random routing: 0.5), CPT(50%) and CPT(80%)
the strong-model share needed to recover half and 80% of the gap.

    random       a seeded random score
    complexity   the gateway's default classifier (apps.routing.engine) with the demo's indicator
                 phrases: complex before moderate before simple
    learned      apps.routing.learned.NeighbourRouter on the local model's embeddings (the ones
                 the cache computes): estimated strong minus weak chance of a right answer

Without ``--train``/``--test`` the subjects are split in two by a fixed seed: the router's
parameters were chosen on the first half (``--tune`` prints that grid); every figure written is
from the second half, by 5-fold cross-validation inside it (the router learns from four folds of
those subjects and routes the fifth), and across halves (it learns from the tuning subjects and
routes the held-out ones: a router trained elsewhere).

``--live`` runs the loop through the gateway itself: a simulator that answers the held-out
subjects' prompts right or wrong as the file says (``apps.simulator.outcomes``; sim-mini as the
weak model, sim-premium as the strong one), a gateway on the dev database, a new tenant with
the cache off and a learned rule over the two models, and a stream of ``--stream`` held-out
prompts sent one at a time in a fixed shuffled order. After each answer the client grades it and
sends ``POST /v1/feedback``: the router learns only from the answers it served. Each prompt's
score is the router's own, read from ``x-switchyard-route-estimates`` as it routed (strong minus
weak; 0 while a model has no outcome yet); the APGR is over the stream's second half.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.routing.engine import complexity_classify  # noqa: E402
from apps.routing.learned import NeighbourRouter, Outcomes, apgr, strong_share_for  # noqa: E402
from bench.report import section_write  # noqa: E402

csv.field_size_limit(sys.maxsize)
CONTAMINATED = "mmlu_contaminated_prompts.jsonl"
TIER_ORDER = {"simple": 0, "moderate": 1, "complex": 2}
CACHE_DIR = REPO / "var" / "bench"


@dataclass
class Table:
    prompts: list[str]
    groups: list[str]  # the file (subject) each prompt came from
    weak: np.ndarray
    strong: np.ndarray
    names: tuple[str, str]  # (weak model, strong model)

    def take(self, rows: np.ndarray) -> Table:
        return Table([self.prompts[i] for i in rows], [self.groups[i] for i in rows], self.weak[rows],
                     self.strong[rows], self.names)


def table_load(files: list[Path]) -> Table:
    contaminated: set[str] = set()
    for folder in {f.parent for f in files}:
        path = folder / CONTAMINATED
        if path.exists():
            contaminated |= {json.loads(line)["eval_prompt"] for line in path.read_text().splitlines() if line}
    prompts, groups, columns = [], [], None
    outcomes: list[list[bool]] = []
    for path in files:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            models = [name for name in reader.fieldnames if name != "prompt"]
            if columns is None:
                columns = models
            elif models != columns:
                raise SystemExit(f"{path}: columns {models} differ from {columns}")
            for row in reader:
                if row["prompt"] in contaminated:
                    continue
                prompts.append(row["prompt"])
                groups.append(path.stem)
                outcomes.append([row[name].strip().lower() == "true" for name in models])
    if columns is None or len(columns) != 2:
        raise SystemExit("the files must have a prompt column and two model columns")
    values = np.asarray(outcomes, dtype=np.float64)
    weak_index = int(np.argmin(values.mean(axis=0)))
    strong_index = 1 - weak_index
    return Table(prompts, groups, values[:, weak_index], values[:, strong_index],
                 (columns[weak_index], columns[strong_index]))


def vectors_for(prompts: list[str]) -> np.ndarray:
    """The local model's embeddings (kept under var/bench, keyed by the prompts' digest)."""
    digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]
    path = CACHE_DIR / f"routing-vectors-{digest}.npy"
    if path.exists():
        return np.load(path)
    from apps.cache.embedder import LocalEmbedder

    embedder = LocalEmbedder(threads=2)
    started = time.perf_counter()
    vectors = []
    # Short prompts first: a batch pads to its longest prompt.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), 32):
        batch = order[start:start + 32]
        vectors.extend(zip(batch, embedder.embed_sync([prompts[i] for i in batch]), strict=True))
    result = np.stack([vector for _, vector in sorted(vectors, key=lambda pair: pair[0])])
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(path, result)
    print(f"embedded {len(prompts)} prompts in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return result


def complexity_scores(prompts: list[str]) -> np.ndarray:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()  # the demo's phrases are defined next to the models; nothing here opens the database
    from apps.core.demo import DEFAULT_INDICATORS
    from apps.gateway.snapshot import _phrases_pattern

    simple = _phrases_pattern(list(DEFAULT_INDICATORS["simple"]))
    complex_ = _phrases_pattern(list(DEFAULT_INDICATORS["complex"]))
    return np.array([TIER_ORDER[complexity_classify(p, simple, complex_)] for p in prompts], dtype=np.float64)


def learned_scores(train: Table, train_vectors: np.ndarray, test_vectors: np.ndarray, **params) -> np.ndarray:
    outcomes = Outcomes(vectors=train_vectors, scores=np.stack([train.weak, train.strong], axis=1).astype(np.float32),
                        models=train.names)
    estimates = NeighbourRouter(outcomes, **params).estimate_many(test_vectors)
    return estimates[:, 1] - estimates[:, 0]


def cross_validated(table: Table, vectors: np.ndarray, *, folds: int = 5, seed: int = 11, **params) -> np.ndarray:
    """Each prompt's learned score from a router that learned from the other folds."""
    fold = np.random.default_rng(seed).permutation(len(table.prompts)) % folds
    scores = np.zeros(len(table.prompts))
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        scores[test] = learned_scores(table.take(train), vectors[train], vectors[test], **params)
    return scores


def summary(scores: np.ndarray, table: Table) -> dict:
    value, curve = apgr(scores, table.weak, table.strong)
    return {"apgr": value, "cpt50": strong_share_for(curve, 0.5), "cpt80": strong_share_for(curve, 0.8)}


def subjects_split(table: Table, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    subjects = sorted(set(table.groups))
    random.Random(seed).shuffle(subjects)
    tuning = set(subjects[: len(subjects) // 2])
    rows = np.arange(len(table.groups))
    mask = np.array([g in tuning for g in table.groups])
    return rows[mask], rows[~mask]


def estimate_timing(table: Table, vectors: np.ndarray, rows: int | None = None) -> tuple[float, float, int]:
    """Per-prompt estimate time with the table grown to ``rows`` outcomes (one model known per row)."""
    from apps.gateway.learned_routers import LearnedRouters

    rows = LearnedRouters().max_rows if rows is None else rows
    repeat = -(-rows // len(table.prompts))
    big = np.tile(vectors, (repeat, 1))[:rows]
    scores = np.full((rows, 2), np.nan, dtype=np.float32)
    source = np.tile(np.arange(len(table.prompts)), repeat)[:rows]
    scores[::2, 0] = table.weak[source[::2]]
    scores[1::2, 1] = table.strong[source[1::2]]
    router = NeighbourRouter(Outcomes(big, scores, table.names))
    times = []
    for vector in vectors[:500]:
        started = time.perf_counter()
        router.estimate_with_evidence(vector)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), rows


GRID = [{"k": k, "power": p, "prior_weight": a} for k in (20, 50, 100, 200) for p in (1.0, 8.0, 32.0)
        for a in (0.5, 2.0)]


def tune(table: Table, vectors: np.ndarray) -> None:
    for params in GRID:
        scores = cross_validated(table, vectors, **params)
        print(params, f"APGR {summary(scores, table)['apgr']:.3f}")


def live(table: Table, stream: int, *, quality_target: float = 0.95, explore: float = 0.1,
         seed: int = 17) -> tuple[list[str], dict]:
    """The learned router in the gateway, learning from the feedback of the answers it served."""
    import asyncio
    import re
    import subprocess
    import tempfile

    import django
    import httpx

    from bench.gateway import free_port, start, stop, wait_http

    rows = np.random.default_rng(seed).permutation(len(table.prompts))[:stream]
    chosen = table.take(rows)
    logs = Path(tempfile.mkdtemp(prefix="sy-routing-"))
    outcomes = logs / "outcomes.csv"
    with outcomes.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "weak", "strong"])
        for prompt, weak, strong in zip(chosen.prompts, chosen.weak, chosen.strong, strict=True):
            writer.writerow([prompt, bool(weak), bool(strong)])
    procs = []
    try:
        up = free_port()
        procs.append(start([sys.executable, "-m", "apps.simulator.server", "--port", str(up), "--ttft-ms", "0",
                            "--chunks", "8", "--outcomes", str(outcomes), "--outcome-model", "sim-mini=weak",
                            "--outcome-model", "sim-premium=strong"], log=logs / "upstream.log"))
        upstream = f"http://127.0.0.1:{up}/v1"
        asyncio.run(wait_http(upstream + "/models"))
        subprocess.run([sys.executable, "manage.py", "seed_demo", "--upstream-url", upstream], cwd=REPO,
                       capture_output=True, text=True, check=True)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        django.setup()
        from apps.catalog.models import Model
        from apps.routing.models import RoutingFallback, RoutingRule
        from apps.tenants.services import key_create, tenant_create

        run = os.urandom(3).hex()
        tenant = tenant_create(name=f"Routing bench {run}", slug=f"routing-bench-{run}")
        tenant.cache_enabled = False  # every prompt is routed and answered, none served from another's answer
        tenant.save()
        key = key_create(tenant=tenant, name="bench").secret
        rule = RoutingRule.objects.create(tenant=tenant, name="learned bench", match_model="learned-bench",
                                          priority=1, target=Model.objects.get(name="sim-premium"), learned=True,
                                          quality_target=quality_target, explore_share=explore)
        RoutingFallback.objects.create(rule=rule, model=Model.objects.get(name="sim-mini"), position=0)
        port = free_port()
        procs.append(start([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port),
                            "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
                           env={"DEBUG": "0", "USAGE_FLUSH_INTERVAL": "0.05"}, log=logs / "switchyard.log"))
        base = f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {key}"}
        asyncio.run(wait_http(base + "/models", headers=auth))
        client = httpx.Client(headers=auth, timeout=60)
        deadline = time.monotonic() + 180
        while not client.get(base + "/cache/stats").json().get("semantic_ready"):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's embedding model never loaded")
            time.sleep(0.5)
        scores, strong_served, right, reasons = [], [], [], {}
        started = time.perf_counter()
        for prompt in chosen.prompts:
            answer = client.post(base + "/chat/completions", json={
                "model": "learned-bench", "messages": [{"role": "user", "content": prompt}]})
            answer.raise_for_status()
            estimates = dict(item.split("=") for item in answer.headers.get("x-switchyard-route-estimates", "")
                             .split(";") if "=" in item)
            scores.append(float(estimates["sim-premium"]) - float(estimates["sim-mini"])
                          if {"sim-premium", "sim-mini"} <= set(estimates) else 0.0)
            strong_served.append(answer.headers["x-switchyard-model"] == "sim-premium")
            correct = answer.json()["choices"][0]["message"]["content"].startswith("[correct]")
            right.append(correct)
            reason = re.sub(r"[\d.]+", "N", answer.headers.get("x-switchyard-route-reason", ""))
            reason = reason.split(" expected")[0].split(",")[0].split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
            feedback = client.post(base + "/feedback", json={
                "request_id": answer.headers["x-switchyard-request-id"], "score": 1.0 if correct else 0.0})
            feedback.raise_for_status()
        elapsed = time.perf_counter() - started
    finally:
        for proc in reversed(procs):
            stop(proc)
    spend, kept = _honest_savings(tenant.pk)
    half = stream // 2
    second = chosen.take(np.arange(half, stream))
    value, curve = apgr(np.array(scores[half:]), second.weak, second.strong)
    served_strong = np.array(strong_served[half:])
    figures = {"apgr": value, "cpt50": strong_share_for(curve, 0.5), "cpt80": strong_share_for(curve, 0.8),
               "strong_share": float(served_strong.mean()), "accuracy": float(np.mean(right[half:])),
               "weak": float(second.weak.mean()), "strong": float(second.strong.mean())}
    lines = [f"Live: {stream:,} held-out prompts through the gateway in {elapsed:.0f} s, one at a time, each "
             f"graded and fed back; learned rule over sim-mini (weak) and sim-premium (strong), quality target "
             f"{quality_target}, explore share {explore}. Second half ({stream - half} prompts):\n",
             "| measure | value |", "|---|---|",
             f"| APGR of the router's scores as it routed | {value:.3f} |",
             f"| CPT(50%) / CPT(80%) | {figures['cpt50']:.1%} / {figures['cpt80']:.1%} |",
             f"| served by the strong model | {figures['strong_share']:.1%} |",
             f"| accuracy served | {figures['accuracy']:.3f} (weak only {figures['weak']:.3f}, strong only "
             f"{figures['strong']:.3f}) |",
             f"| spend, and without routing (every answer on the best candidate) | ${spend[0]:.4f} / "
             f"${spend[1]:.4f} ({1 - spend[0] / spend[1]:.1%} saved) |" if spend[1] else "| spend | none |",
             f"| the dashboard's quality behind it: rated answers' mean score, quality kept | "
             f"{kept.mean_score:.3f}, {kept.kept:.3f} |" if kept.kept is not None else "| quality kept | none |",
             "| how it chose, whole stream | " + ", ".join(f"{k or '(none)'} {v}" for k, v in sorted(reasons.items()))
             + " |"]
    return lines, figures


def _honest_savings(tenant_id: int):
    """What the dashboard shows for the tenant: its spend against spend without routing, and the
    measured quality of the routed answers (the bench rated every one) against the best candidate."""
    from datetime import timedelta

    from django.db.models import Sum

    from apps.routing.selectors import learned_quality
    from apps.usage.models import RequestLog

    totals = RequestLog.objects.filter(tenant_id=tenant_id).aggregate(cost=Sum("cost"), saved=Sum("routing_saved_cost"))
    cost, saved = float(totals["cost"] or 0), float(totals["saved"] or 0)
    now = datetime.now(UTC)
    return (cost, cost + saved), learned_quality(tenant_id=tenant_id, start=now - timedelta(days=1),
                                                 end=now + timedelta(hours=1))


def row(name: str, figures: dict, share_strong: float | None = None) -> str:
    return f"| {name} | {figures['apgr']:.3f} | {figures['cpt50']:.1%} | {figures['cpt80']:.1%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "routing")
    parser.add_argument("--train", type=Path, nargs="*")
    parser.add_argument("--test", type=Path, nargs="*")
    parser.add_argument("--tune", action="store_true", help="print the parameter grid on the tuning subjects")
    parser.add_argument("--live", action="store_true", help="the loop through a live gateway")
    parser.add_argument("--stream", type=int, default=1300, help="prompts in the live stream")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    lines = []
    if args.train or args.test:
        if not (args.train and args.test):
            parser.error("--train and --test go together")
        train, test = table_load(args.train), table_load(args.test)
        train_vectors, test_vectors = vectors_for(train.prompts), vectors_for(test.prompts)
        lines.append(f"Trained on {len(train.prompts)} prompts, routed {len(test.prompts)}.\n")
        lines += ["| router | APGR | CPT(50%) | CPT(80%) |", "|---|---|---|---|"]
        rng = np.random.default_rng(3)
        lines.append(row("random", summary(rng.random(len(test.prompts)), test)))
        lines.append(row("complexity", summary(complexity_scores(test.prompts), test)))
        lines.append(row("learned", summary(learned_scores(train, train_vectors, test_vectors), test)))
        print("\n".join(lines))
        return
    table = table_load(sorted(args.data.glob("*.csv")))
    tuning_rows, held_rows = subjects_split(table)
    tuning, held = table.take(tuning_rows), table.take(held_rows)
    if args.live:
        live_lines, figures = live(held, args.stream)
        live_lines += ["", "| target | result | measured |", "|---|---|---|",
                       f"| live APGR >= 0.58 over the stream's second half | "
                       f"{'PASS' if figures['apgr'] >= 0.58 else 'FAIL'} | {figures['apgr']:.3f} |"]
        text = f"Command: `python bench/routing.py --live --write docs/benchmarks.md`. Run " \
               f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n" + "\n".join(live_lines)
        print(text)
        if args.write:
            section_write(args.write, "bench/routing.py:live", "<!-- bench/routing.py:live:start -->\n"
                          "### Learned routing, live\n\n" + text + "\n<!-- bench/routing.py:live:end -->\n")
        return
    vectors = vectors_for(table.prompts)
    if args.tune:
        tune(tuning, vectors[tuning_rows])
        return
    held_vectors = vectors[held_rows]
    random_scores = np.random.default_rng(3).random(len(held.prompts))
    lines.append(f"Command: `python bench/routing.py --write docs/benchmarks.md`. Run "
                 f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Data: `../shared/data/routing/` ({len(table.prompts):,} "
                 f"prompts of {len(set(table.groups))} MMLU subjects, contaminated prompts left out); weak model "
                 f"`{table.names[0]}` (accuracy {table.weak.mean():.3f}), strong `{table.names[1]}` "
                 f"({table.strong.mean():.3f}). The router's parameters were chosen on "
                 f"{len(set(tuning.groups))} subjects ({len(tuning.prompts):,} prompts); every figure is on the "
                 f"other {len(set(held.groups))} ({len(held.prompts):,} prompts: weak {held.weak.mean():.3f}, "
                 f"strong {held.strong.mean():.3f}).\n")
    lines += ["| router (held-out subjects) | APGR | CPT(50%) | CPT(80%) |", "|---|---|---|---|"]
    lines.append(row("random", summary(random_scores, held)))
    lines.append(row("complexity classifier (the default rules)", summary(complexity_scores(held.prompts), held)))
    cv = summary(cross_validated(held, held_vectors), held)
    lines.append(row("learned, 5-fold inside the held-out subjects (the tenant's own traffic)", cv))
    across = summary(learned_scores(tuning, vectors[tuning_rows], held_vectors), held)
    lines.append(row("learned from the tuning subjects only (trained elsewhere)", across))
    lines.append("")
    p50, p99, rows = estimate_timing(held, held_vectors)
    lines.append(f"Choosing a model (the neighbour estimate for one prompt, as the gateway runs it, against "
                 f"{rows:,} outcomes, the most a tenant's router holds): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                 f"over 500 prompts, one thread.\n")
    lines += ["| target | result | measured |", "|---|---|---|",
              f"| offline APGR >= 0.65 on held-out folds | {'PASS' if cv['apgr'] >= 0.65 else 'FAIL'} | "
              f"{cv['apgr']:.3f} |",
              f"| routing under 1 ms p50 beyond the embedding | {'PASS' if p50 < 1.0 else 'FAIL'} | {p50:.2f} ms |"]
    lines.append(f"\n({time.perf_counter() - started:.0f} s)")
    text = "\n".join(lines)
    print(text)
    if args.write:
        section_write(args.write, "bench/routing.py", "<!-- bench/routing.py:start -->\n"
                      "## Routing quality (`bench/routing.py`)\n\n" + text + "\n<!-- bench/routing.py:end -->\n")


if __name__ == "__main__":
    main()
