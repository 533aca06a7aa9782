"""The cross-encoder (``bench/cross_encoder.py``) beside the current verifier, on held-out halves.

    python bench/verifier_cross_eval.py [--model var/models/verifier_cross.onnx] [--precision 0.97]
        [--save scores.npz | --load scores.npz] [--workload THRESHOLD]

Every pair of the calibration third of the tuning halves (``bench/verifier_cross_train.py``) and
of the held-out halves (``bench.cache_quality.split``) is scored by cosine (the local embedder),
the guards, the current verifier's model and the cross-encoder (in both orders). For each way of
combining them, one accept score is calibrated on the calibration third alone (the strictest
threshold over the four sets that reaches ``--precision`` among candidates at cosine 0.80 that
pass the guards), then applied to the held-out halves. Reported there, at cosine 0.80 (the
default policy), as in ``bench/cache_quality.py``: precision / recall per set, the AUC of each
score among candidates that pass the guards, the cross-encoder's time per pair, and with
``--workload`` the repeated-intent workload with the cross-encoder in place of the verifier.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.cache import verify  # noqa: E402
from apps.cache.pair_features import pair_align, prompt_parse  # noqa: E402
from bench import cross_encoder  # noqa: E402
from bench.cache_quality import mrpc_pairs, own_pairs, paws_pairs, question_pairs, split  # noqa: E402
from bench.verifier_cross_train import CALIBRATION_FOLD, fold_of, tuning_sets  # noqa: E402
from bench.verifier_train import DEFAULT_THRESHOLD, cosines, operating_points  # noqa: E402

SETS = ("own", "questions", "paws", "mrpc")
COLUMNS = ("duplicate", "cosine", "trivial", "guarded", "current", "long", "cross", "cross_reversed")


def pairs_score(pairs, model: cross_encoder.CrossEncoder) -> np.ndarray:
    rows = []
    for pair, cosine in zip(pairs, cosines(pairs), strict=True):
        a, b = prompt_parse(pair.a), prompt_parse(pair.b)
        trivial = (pair.a.strip().lower() == pair.b.strip().lower()
                   or ([w.text for w in a.words] == [w.text for w in b.words] and a.quotes == b.quotes))
        alignment = pair_align(a, b)
        long = (max(len(a.words), len(b.words)) >= verify.LONG_WORDS
                and (bool(alignment.left_content) or not alignment.in_order))
        candidate = cosine >= DEFAULT_THRESHOLD
        rows.append((float(pair.duplicate), cosine, float(trivial), float(bool(verify.guards_check(a, b))),
                     verify.candidate_score(pair.a, pair.b), float(long),
                     model.score(pair.a, pair.b) if candidate else 0.0,
                     model.score(pair.b, pair.a) if candidate else 0.0))
    return np.array(rows)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def combined(rows: np.ndarray) -> dict[str, np.ndarray]:
    current, cross, reverse = rows[:, 4], rows[:, 6], rows[:, 7]
    both = (cross + reverse) / 2
    return {"cross": cross, "cross, both orders": both,
            "cross + current (mean logit)": 1 / (1 + np.exp(-(_logit(cross) + _logit(current)) / 2)),
            "min(cross, current)": np.minimum(cross, current)}


def served(rows: np.ndarray, score: np.ndarray, threshold: float, *, guards: bool, long: bool) -> np.ndarray:
    ok = score >= threshold
    if guards:
        ok &= rows[:, 3] == 0
    if long:
        ok &= rows[:, 5] == 0
    return (ok | (rows[:, 2] == 1)) & (rows[:, 1] >= DEFAULT_THRESHOLD)


def cascade_served(rows: np.ndarray, current: float, veto: float, floor: float, rescue: float) -> np.ndarray:
    """The current model decides, the cross-encoder (both orders) vetoes its accepts below ``veto``
    and accepts what it scores ``rescue`` or more among pairs the current model scores ``floor`` or more."""
    cross = (rows[:, 6] + rows[:, 7]) / 2
    accept = ((rows[:, 4] >= current) & (cross >= veto)) | ((rows[:, 4] >= floor) & (cross >= rescue))
    return served(rows, accept.astype(float), 0.5, guards=True, long=True)


def cascade_choose(scored: dict, current: float, precision: float) -> tuple[float, float, float] | None:
    """The cascade with the most prompt-pair recall on the calibration third whose precision reaches
    ``precision`` on each set there (the held-out halves are not read)."""
    best, chosen = -1.0, None
    for veto in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        for floor in (0.3, 0.5, 0.7, current):
            for rescue in (0.9, 0.95, 0.98, 1.01):
                figures = []
                for s in SETS:
                    rows = scored[f"calibration_{s}"]
                    ok, duplicate = cascade_served(rows, current, veto, floor, rescue), rows[:, 0] == 1
                    figures.append(((ok & duplicate).sum() / max(1, ok.sum()) if ok.sum() else 1.0,
                                    (ok & duplicate).sum() / max(1, duplicate.sum())))
                recall = figures[0][1] + figures[1][1]
                if min(p for p, _ in figures) >= precision and recall > best:
                    best, chosen = recall, (veto, floor, rescue)
    return chosen


def precision_recall(rows: np.ndarray, ok: np.ndarray) -> str:
    duplicate = rows[:, 0] == 1
    count = int(ok.sum())
    precision = (ok & duplicate).sum() / count if count else float("nan")
    return f"{precision:.3f} / {(ok & duplicate).sum() / max(1, duplicate.sum()):.3f}"


def auc(score: np.ndarray, labels: np.ndarray) -> float:
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / max(1, positives * negatives))


def workload(model: cross_encoder.CrossEncoder, threshold: float) -> None:
    """``bench/cache_workload.py`` with the guards, the cross-encoder at ``threshold`` and the long
    rule in place of the verifier."""
    from bench import cache_workload

    def cross_verify(query: str, cached: str) -> verify.Verdict:
        a, b = prompt_parse(query), prompt_parse(cached)
        if query.strip().lower() == cached.strip().lower() or (
                [w.text for w in a.words] == [w.text for w in b.words] and a.quotes == b.quotes):
            return verify.Verdict(True)
        reason = verify.guards_check(a, b)
        if reason:
            return verify.Verdict(False, reason)
        score = model.score(query, cached)
        alignment = pair_align(a, b)
        if score < threshold or (max(len(a.words), len(b.words)) >= verify.LONG_WORDS
                                 and (alignment.left_content or not alignment.in_order)):
            return verify.Verdict(False, "model", score)
        return verify.Verdict(True, score=score)

    cache_workload.candidate_verify = cross_verify
    sys.argv = [sys.argv[0]]
    print(f"\nworkload with guards, the cross-encoder at {threshold:.3f} and the long rule:\n")
    cache_workload.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=cross_encoder.MODEL_FILE)
    parser.add_argument("--precision", type=float, default=verify.DEFAULT_PRECISION)
    parser.add_argument("--save", type=Path, default=None, help="keep the scored pairs here (.npz)")
    parser.add_argument("--load", type=Path, default=None, help="read the scored pairs from a --save file")
    parser.add_argument("--workload", type=float, default=None, metavar="THRESHOLD",
                        help="also run bench/cache_workload.py with the cross-encoder at this threshold")
    args = parser.parse_args()
    model = cross_encoder.CrossEncoder(args.model)
    held = {"own": split(own_pairs())[1], "questions": split(question_pairs())[1],
            "paws": split(paws_pairs(args.data_dir))[1], "mrpc": split(mrpc_pairs(args.data_dir))[1]}
    calibration = {name: [p for p, key in rows if fold_of(key) == CALIBRATION_FOLD]
                   for name, rows in tuning_sets(args.data_dir).items()}
    if args.load:
        with np.load(args.load) as saved:
            scored = {key: saved[key] for key in saved.files if key != "columns"}
    else:
        scored = {f"{part}_{name}": pairs_score(pairs, model)
                  for part, sets in (("calibration", calibration), ("held", held)) for name, pairs in sets.items()}
    if args.save:
        np.savez(args.save, columns=np.array(COLUMNS), **scored)

    current = verify.model_load().threshold(args.precision)
    print(f"held-out halves, cosine >= {DEFAULT_THRESHOLD}, target precision {args.precision}: precision / recall\n")
    print("| verifier | threshold | " + " | ".join(SETS) + " |\n|---|---|" + "---|" * len(SETS))
    print(f"| current (guards, model, long rule) | {current:.3f} | " + " | ".join(
        precision_recall(scored[f"held_{s}"], served(scored[f"held_{s}"], scored[f"held_{s}"][:, 4], current,
                                                     guards=True, long=True)) for s in SETS) + " |")
    for guards in (True, False):
        for name in combined(scored["calibration_own"]):
            threshold = 0.0
            for s in SETS:
                rows = scored[f"calibration_{s}"]
                keep = (rows[:, 1] >= DEFAULT_THRESHOLD) & (rows[:, 2] == 0) & ((rows[:, 3] == 0) | (not guards))
                points = operating_points(combined(rows)[name][keep], rows[keep, 0])
                threshold = max(threshold, points[f"{args.precision:.2f}"])
            for long in (False, True):
                label = f"{'guards, ' if guards else ''}{name}{', long rule' if long else ''}"
                cells = []
                for s in SETS:
                    rows = scored[f"held_{s}"]
                    cells.append(precision_recall(rows, served(rows, combined(rows)[name], threshold,
                                                               guards=guards, long=long)))
                print(f"| {label} | {threshold:.3f} | " + " | ".join(cells) + " |")
    cascade = cascade_choose(scored, current, args.precision)
    if cascade:
        veto, floor, rescue = cascade
        label = (f"current, vetoed when cross < {veto}; or current >= {floor} and cross >= {rescue} "
                 "(guards, long rule)")
        cells = [precision_recall(scored[f"held_{s}"], cascade_served(scored[f"held_{s}"], current, *cascade))
                 for s in SETS]
        print(f"| {label} | - | " + " | ".join(cells) + " |")
    print("\nAUC among held-out candidates (cosine >= 0.80) that pass the guards, not trivially equal:\n")
    print("| score | " + " | ".join(SETS) + " |\n|---|" + "---|" * len(SETS))
    for column, label in ((4, "current model"), (6, "cross-encoder")):
        cells = []
        for s in SETS:
            rows = scored[f"held_{s}"]
            keep = (rows[:, 1] >= DEFAULT_THRESHOLD) & (rows[:, 2] == 0) & (rows[:, 3] == 0)
            cells.append(f"{auc(rows[keep, column], rows[keep, 0]):.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    timings = []
    for pair in held["questions"] + held["own"]:
        started = time.perf_counter()
        model.score(pair.a, pair.b)
        timings.append((time.perf_counter() - started) * 1000)
    print(f"\ncross-encoder time per pair ({len(timings)} prompt pairs, one thread): "
          f"p50 {np.percentile(timings, 50):.2f} ms, p99 {np.percentile(timings, 99):.2f} ms")
    if args.workload is not None:
        workload(model, args.workload)


if __name__ == "__main__":
    main()
