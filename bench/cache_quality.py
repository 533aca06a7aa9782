"""Semantic cache quality: is a served hit the same question?

    python bench/cache_quality.py [--write docs/benchmarks.md] [--data-dir ../shared/data] [--model static]

Embeds every prompt with the cache's own local embedder (all-MiniLM-L6-v2, or with ``--model
static`` the static table distilled from it: ``CACHE_EMBED_MODEL``), then, for each
similarity threshold, counts what the cache would serve with cosine alone and with the
verification step (``apps.cache.verify``):

    precision   served hits that are true duplicates / served hits
    recall      true duplicates served / true duplicates
    false hits  non-duplicates served / non-duplicates

Data: this project's own prompt pairs (``bench/data/prompt_triples.tsv``: rewordings, typos,
filler, casing and punctuation as duplicates; entity, number, order, negation, task and topic
changes as near misses), and the public pairs in ``../shared/data`` (MRPC, PAWS-Wiki). Each set
is split in two halves by a fixed seed: the threshold is chosen on the tuning half and every
figure reported is from the other half.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import section_write  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.cache.embedder import MODELS, LocalEmbedder  # noqa: E402
from apps.cache.verify import DEFAULT_PRECISION, candidate_verify  # noqa: E402
from bench.verify_rules import candidate_verify as rules_verify  # noqa: E402

THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
DEFAULT_THRESHOLD = 0.80  # apps.tenants.models.Tenant.cache_similarity_threshold
PRECISION_TARGETS = (0.90, 0.95, 0.97, 0.98, 0.99)  # apps.tenants.models.Tenant.cache_verify_precision


@dataclass
class Pair:
    a: str
    b: str
    duplicate: bool
    kind: str
    group: int = -1  # pairs built from one prompt share a group and land in the same half


def triple_pairs(name: str) -> list[Pair]:
    """Pairs from a file of (prompt, duplicate, near miss) triples under bench/data."""
    pairs = []
    with open(REPO / "bench" / "data" / name, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip() and not line.startswith("#")]
    for group, (dup_kind, miss_kind, prompt, duplicate, miss) in enumerate(rows[1:]):
        pairs.append(Pair(prompt, duplicate, True, dup_kind, group))
        pairs.append(Pair(prompt, miss, False, miss_kind, group))
    return pairs


def own_pairs() -> list[Pair]:
    return triple_pairs("prompt_triples.tsv")


def question_pairs() -> list[Pair]:
    return triple_pairs("prompt_questions.tsv")


def mrpc_pairs(data: Path) -> list[Pair]:
    with open(data / "mrpc_train.tsv", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [Pair(r[3], r[4], r[0] == "1", "mrpc") for r in reader if len(r) >= 5]


def paws_pairs(data: Path) -> list[Pair]:
    with open(data / "paws_wiki_dev.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [Pair(r[1], r[2], r[3].strip() == "1", "paws") for r in reader if len(r) >= 4 and r[0] != "id"]


def split(pairs: list[Pair], seed: int = 7) -> tuple[list[Pair], list[Pair]]:
    """(tuning half, held-out half), by a fixed seed; pairs of one group stay together."""
    groups = sorted({p.group if p.group >= 0 else -1 - i for i, p in enumerate(pairs)})
    random.Random(seed).shuffle(groups)
    tuning = set(groups[:len(groups) // 2])
    keyed = [(p.group if p.group >= 0 else -1 - i, p) for i, p in enumerate(pairs)]
    return [p for g, p in keyed if g in tuning], [p for g, p in keyed if g not in tuning]


def similarities(pairs: list[Pair], embedder: LocalEmbedder) -> np.ndarray:
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), 256):
        batch = texts[start:start + 256]
        for text, vector in zip(batch, embedder.embed_sync(batch), strict=True):
            vectors[text] = vector
    return np.array([float(np.dot(vectors[p.a], vectors[p.b])) for p in pairs])


@dataclass
class Score:
    precision: float
    recall: float
    false_hit_rate: float
    served: int


def score(pairs: list[Pair], sims: np.ndarray, threshold: float, verdicts: list | None) -> Score:
    served_true = served_false = 0
    for index, pair in enumerate(pairs):
        if sims[index] < threshold:
            continue
        if verdicts is not None and not verdicts[index].ok:
            continue
        if pair.duplicate:
            served_true += 1
        else:
            served_false += 1
    duplicates = sum(p.duplicate for p in pairs) or 1
    negatives = sum(not p.duplicate for p in pairs) or 1
    served = served_true + served_false
    return Score(served_true / served if served else float("nan"), served_true / duplicates,
                 served_false / negatives, served)


def verdict_timings(pairs: list[Pair]) -> np.ndarray:
    """Milliseconds per ``candidate_verify`` call, neither prompt's parse cached (the worst case)."""
    from apps.cache.pair_features import prompt_parse

    times = []
    for pair in pairs:
        prompt_parse.cache_clear()
        started = time.perf_counter()
        candidate_verify(pair.a, pair.b)
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


def evaluate(name: str, pairs: list[Pair], embedder: LocalEmbedder, *, tuning: bool = False) -> tuple[str, dict]:
    """Old (rule list) and new (learned) verifier side by side on the held-out half of ``pairs``
    (with ``tuning``, on the tuning half)."""
    started = time.perf_counter()
    tune, report = split(pairs)
    report = tune if tuning else report
    sims = similarities(report, embedder)
    old = [rules_verify(p.a, p.b) for p in report]
    new = [candidate_verify(p.a, p.b) for p in report]
    lines = [f"\n**{name}**: {len(pairs):,} pairs ({sum(p.duplicate for p in pairs):,} duplicates); "
             f"reported on the {'tuning' if tuning else 'held-out'} half: {len(report):,} pairs "
             f"({sum(p.duplicate for p in report):,} "
             "duplicates). Default policy: threshold 0.80, verifier at its default precision.\n",
             "| threshold | cosine only: precision | recall | rule list: precision | recall | false hits "
             "| learned: precision | recall | false hits |", "|---|---|---|---|---|---|---|---|---|"]
    for threshold in THRESHOLDS:
        plain = score(report, sims, threshold, None)
        rules = score(report, sims, threshold, old)
        learned = score(report, sims, threshold, new)
        mark = " (default)" if threshold == DEFAULT_THRESHOLD else ""
        lines.append(f"| {threshold:.2f}{mark} | {plain.precision:.3f} | {plain.recall:.3f} | "
                     f"{rules.precision:.3f} | {rules.recall:.3f} | {rules.false_hit_rate:.3f} | "
                     f"{learned.precision:.3f} | {learned.recall:.3f} | {learned.false_hit_rate:.3f} |")
    reasons = Counter(v.reason for v, s in zip(new, sims, strict=True) if not v.ok and s >= DEFAULT_THRESHOLD)
    if reasons:
        lines.append("\nLearned verifier, candidates rejected at the default threshold, by reason: "
                     + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) + ".")
    kinds = Counter(p.kind for p, s, v in zip(report, sims, new, strict=True)
                    if p.group >= 0 and s >= DEFAULT_THRESHOLD and v.ok != p.duplicate)
    if kinds:
        lines.append("Its errors at the default threshold, by kind of pair (a duplicate kind is a missed "
                     "rewording, a near-miss kind a false hit): "
                     + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()) + ".")
    targets = []
    for target in PRECISION_TARGETS:
        chosen = new if target == DEFAULT_PRECISION else [candidate_verify(p.a, p.b, precision=target) for p in report]
        measured = score(report, sims, DEFAULT_THRESHOLD, chosen)
        targets.append(f"{target:.2f}: {measured.precision:.3f} / {measured.recall:.3f}")
    lines.append("The precision a tenant chooses (*semantic hit precision*) against what it gets here, at the "
                 "default threshold, as target: precision / recall: " + "; ".join(targets) + ".")
    lines.append(f"({time.perf_counter() - started:.0f} s)\n")
    at_default = score(report, sims, DEFAULT_THRESHOLD, new)
    rules_default = score(report, sims, DEFAULT_THRESHOLD, old)
    return "\n".join(lines), {"precision": at_default.precision, "recall": at_default.recall,
                              "rules_precision": rules_default.precision, "rules_recall": rules_default.recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--skip-public", action="store_true")
    parser.add_argument("--model", choices=MODELS, default="minilm", help="the local model (CACHE_EMBED_MODEL)")
    parser.add_argument("--tuning", action="store_true", help="report the tuning halves instead (to choose a "
                        "threshold for a model; never used to report quality)")
    args = parser.parse_args()
    embedder = LocalEmbedder(model=args.model)
    print(f"Embedder: {embedder.name}" + (" (TUNING halves)" if args.tuning else ""))
    sections, results = [], {}
    sets = [("Switchyard prompt pairs", "own", own_pairs()),
            ("Support-queue and Q&A prompt pairs", "questions", question_pairs())]
    if not args.skip_public and args.data_dir.exists():
        sets += [("PAWS-Wiki (dev)", "paws", paws_pairs(args.data_dir)),
                 ("MRPC (train)", "mrpc", mrpc_pairs(args.data_dir))]
    for title, key, pairs in sets:
        text, results[key] = evaluate(title, pairs, embedder, tuning=args.tuning)
        sections.append(text)
    timings = verdict_timings(split(question_pairs())[1] + split(own_pairs())[1])
    sections.append(f"\nLearned verifier time per candidate (neither prompt's parse cached, {len(timings)} pairs): "
                    f"p50 {np.percentile(timings, 50):.2f} ms, p99 {np.percentile(timings, 99):.2f} ms.\n")
    checks = []
    for key, result in results.items():
        checks.append((f"{key}: precision >= 0.97", result["precision"] >= 0.97,
                       f"{result['precision']:.3f} (rule list {result['rules_precision']:.3f})"))
        if key in ("own", "questions", "paws"):
            checks.append((f"{key}: recall >= 0.60", result["recall"] >= 0.60,
                           f"{result['recall']:.3f} (rule list {result['rules_recall']:.3f})"))
        else:
            checks.append((f"{key}: recall (reported, no target)", True,
                           f"{result['recall']:.3f} (rule list {result['rules_recall']:.3f})"))
    checks.append(("verification p50 <= 2 ms", float(np.percentile(timings, 50)) <= 2.0,
                   f"{np.percentile(timings, 50):.2f} ms"))
    halves = "TUNING" if args.tuning else "held-out"
    rows = "\n".join(f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks)
    body = "\n".join(sections) + f"\n| target ({halves} halves, default policy) | result | measured |\n" \
        + "|---|---|---|\n" + rows + "\n"
    print(body)
    if args.write and (args.tuning or args.model != "minilm"):
        parser.error("--write records the default model's held-out figures only")
    if args.write:
        marker_start, marker_end = "<!-- bench/cache_quality.py:start -->", "<!-- bench/cache_quality.py:end -->"
        section = (f"{marker_start}\n## Semantic cache quality (`bench/cache_quality.py`)\n\n"
                   f"Command: `python bench/cache_quality.py --write {args.write}`. Run "
                   f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Embedder: all-MiniLM-L6-v2 (local). A pair is a "
                   "served hit when its cosine similarity reaches the threshold and, in the verified columns, the "
                   "verifier accepts it: the former rule list (`bench/verify_rules.py`) or the learned verifier "
                   "(`apps.cache.verify.candidate_verify`, trained by `bench/verifier_train.py` on the other "
                   "halves only). Every figure is from held-out halves (fixed seed; a prompt's rewording and "
                   "near miss stay in the same half).\n" + body + f"\n{marker_end}\n")
        section_write(args.write, "bench/cache_quality.py", section)


if __name__ == "__main__":
    main()
