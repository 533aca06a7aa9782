"""Semantic cache quality: is a served hit the same question?

    python bench/cache_quality.py [--write docs/benchmarks.md] [--data-dir ../shared/data]

Embeds every prompt with the cache's own local embedder (all-MiniLM-L6-v2), then, for each
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

from apps.cache.embedder import LocalEmbedder  # noqa: E402
from apps.cache.verify import candidate_verify  # noqa: E402

THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]


@dataclass
class Pair:
    a: str
    b: str
    duplicate: bool
    kind: str


def own_pairs() -> list[Pair]:
    pairs = []
    with open(REPO / "bench" / "data" / "prompt_triples.tsv", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip() and not line.startswith("#")]
    for dup_kind, miss_kind, prompt, duplicate, miss in rows[1:]:
        pairs.append(Pair(prompt, duplicate, True, dup_kind))
        pairs.append(Pair(prompt, miss, False, miss_kind))
    return pairs


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
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    middle = len(shuffled) // 2
    return shuffled[:middle], shuffled[middle:]


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


def evaluate(name: str, pairs: list[Pair], embedder: LocalEmbedder, *, min_precision: float) -> tuple[str, dict]:
    started = time.perf_counter()
    tune, report = split(pairs)
    sims_tune, sims_report = similarities(tune, embedder), similarities(report, embedder)
    verdicts_tune = [candidate_verify(p.a, p.b) for p in tune]
    verdicts_report = [candidate_verify(p.a, p.b) for p in report]
    # The lowest threshold whose served precision on the tuning half reaches the goal, with verification.
    chosen = next((t for t in THRESHOLDS if score(tune, sims_tune, t, verdicts_tune).precision >= min_precision),
                  THRESHOLDS[-1])
    lines = [f"\n**{name}**: {len(pairs):,} pairs ({sum(p.duplicate for p in pairs):,} duplicates); tuned on "
             f"{len(tune):,}, reported on the other {len(report):,}. Threshold chosen on the tuning half "
             f"(lowest reaching precision {min_precision:.2f} with verification): **{chosen:.2f}**.\n",
             "| threshold | cosine only: precision | recall | false hits | with verification: precision | recall "
             "| false hits |", "|---|---|---|---|---|---|---|"]
    for threshold in THRESHOLDS:
        plain = score(report, sims_report, threshold, None)
        checked = score(report, sims_report, threshold, verdicts_report)
        mark = " (chosen)" if threshold == chosen else ""
        lines.append(f"| {threshold:.2f}{mark} | {plain.precision:.3f} | {plain.recall:.3f} | "
                     f"{plain.false_hit_rate:.3f} | {checked.precision:.3f} | {checked.recall:.3f} | "
                     f"{checked.false_hit_rate:.3f} |")
    reasons = Counter(v.reason for v, s in zip(verdicts_report, sims_report, strict=True)
                      if not v.ok and s >= chosen)
    if reasons:
        lines.append("\nRejected candidates above the chosen threshold, by reason: "
                     + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) + ".")
    final = score(report, sims_report, chosen, verdicts_report)
    kinds = Counter(p.kind for p, s, v in zip(report, sims_report, verdicts_report, strict=True)
                    if p.duplicate and (s < chosen or not v.ok))
    if name.startswith("Switchyard") and kinds:
        lines.append("Duplicates missed at the chosen threshold, by kind: "
                     + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()) + ".")
    lines.append(f"({time.perf_counter() - started:.0f} s)\n")
    return "\n".join(lines), {"threshold": chosen, "precision": final.precision, "recall": final.recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--skip-public", action="store_true")
    args = parser.parse_args()
    embedder = LocalEmbedder()
    sections, results = [], {}
    text, results["own"] = evaluate("Switchyard prompt pairs", own_pairs(), embedder, min_precision=0.97)
    sections.append(text)
    if not args.skip_public and args.data_dir.exists():
        text, results["paws"] = evaluate("PAWS-Wiki (dev)", paws_pairs(args.data_dir), embedder, min_precision=0.90)
        sections.append(text)
        text, results["mrpc"] = evaluate("MRPC (train)", mrpc_pairs(args.data_dir), embedder, min_precision=0.90)
        sections.append(text)
    checks = [
        ("own pairs: precision >= 0.97", results["own"]["precision"] >= 0.97, f"{results['own']['precision']:.3f}"),
        ("own pairs: recall >= 0.60", results["own"]["recall"] >= 0.60, f"{results['own']['recall']:.3f}"),
    ]
    if "paws" in results:
        checks.append(("PAWS held-out half: precision >= 0.90", results["paws"]["precision"] >= 0.90,
                       f"{results['paws']['precision']:.3f} (recall {results['paws']['recall']:.3f})"))
    body = "\n".join(sections) + "\n| target | result | measured |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks) + "\n"
    print(body)
    if args.write:
        marker_start, marker_end = "<!-- bench/cache_quality.py:start -->", "<!-- bench/cache_quality.py:end -->"
        section = (f"{marker_start}\n## Semantic cache quality (`bench/cache_quality.py`)\n\n"
                   f"Command: `python bench/cache_quality.py --write {args.write}`. Run "
                   f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Embedder: all-MiniLM-L6-v2 (local). A pair is a "
                   "served hit when its cosine similarity reaches the threshold and, in the verified columns, "
                   "`apps.cache.verify.candidate_verify` accepts it.\n" + body + f"\n{marker_end}\n")
        section_write(args.write, "bench/cache_quality.py", section)


if __name__ == "__main__":
    main()
