"""How close the verifier's training-only prompts come to the prompts it is measured on.

    python bench/verifier_pairs_check.py [--cosine 0.85] [--drop]

For each training-only file (``bench/verifier_train.py``'s ``EXTRA_FILES``): how many of its
triples have a prompt (the prompt, its rewording or its near miss) within ``--cosine`` of any
prompt of a reported file (the two prompt sets of ``bench/cache_quality.py`` and the workloads of
``bench/cache_workload.py``; of a prompt set, its held-out half), by the local model, and each such
prompt with its closest reported one. A triple that close
was meant to be left out when the file was written (each file's header says against which
reported files it was checked); a file written before a reported file existed was not checked
against it, and this shows what that leaves. ``--drop`` rewrites each file without those triples
(its comments kept), which is how a file is cleaned when a new reported file comes in.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.cache.embedder import LocalEmbedder  # noqa: E402
from bench.cache_quality import own_pairs, question_pairs, split, triple_pairs  # noqa: E402
from bench.cache_workload import WORKLOADS, intents_load  # noqa: E402

COSINE = 0.85


def check_embedder() -> LocalEmbedder:
    """The local model's fp32 graph: its vectors do not move with the other texts of a batch as the
    int8 graph's do (whose activations are scaled per batch), so a check near ``COSINE`` reads the
    same whatever else is checked."""
    return LocalEmbedder(backend="onnx", precision="fp32")


def reported_sources() -> dict[str, str]:
    """Each reported prompt and where it comes from: a prompt set's held-out half (the halves the
    verifier is tuned on are not counted) or a workload."""
    source: dict[str, str] = {}
    for name, pairs in (("own", own_pairs()), ("questions", question_pairs())):
        for pair in split(pairs)[1]:
            source[pair.a] = source[pair.b] = f"{name}, held-out half"
    for workload, path in WORKLOADS.items():
        for wordings in intents_load(path).values():
            source.update((wording, f"workload {workload}") for wording in wordings)
    return source


def closest_reported(texts: list[str], embedder: LocalEmbedder) -> dict[str, tuple[float, str]]:
    """For each of ``texts``, the cosine to the closest reported prompt, and that prompt."""
    reported = sorted(reported_sources())
    cosines = np.asarray(embedder.embed_sync(texts)) @ np.asarray(embedder.embed_sync(reported)).T
    return {text: (float(row.max()), reported[int(row.argmax())]) for text, row in zip(texts, cosines, strict=True)}


def near_groups(pairs: list, closest: dict[str, tuple[float, str]], cosine: float = COSINE) -> set[int]:
    """The groups (triples) of ``pairs`` with a prompt within ``cosine`` of a reported prompt
    (``closest``: :func:`closest_reported` of their texts)."""
    return {pair.group for pair in pairs if max(closest[pair.a][0], closest[pair.b][0]) >= cosine}


def main() -> None:
    from bench.verifier_train import EXTRA_FILES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cosine", type=float, default=COSINE)
    parser.add_argument("--drop", action="store_true", help="rewrite each file without its near triples")
    args = parser.parse_args()
    source = reported_sources()
    files = {name: triple_pairs(name) for name in EXTRA_FILES}
    every_text = sorted({text for pairs in files.values() for pair in pairs for text in (pair.a, pair.b)})
    closest = closest_reported(every_text, check_embedder())  # the reported prompts embedded once
    for name, pairs in files.items():
        near = near_groups(pairs, closest, args.cosine)
        print(f"{name}: {len({p.group for p in pairs})} triples, {len(near)} with a prompt within cosine "
              f"{args.cosine} of a reported prompt")
        texts = sorted({text for pair in pairs for text in (pair.a, pair.b)})
        for text in sorted((t for t in texts if closest[t][0] >= args.cosine), key=lambda t: -closest[t][0]):
            value, other = closest[text]
            print(f"  {value:.3f} {text!r} ~ {other!r} ({source[other]})")
        if args.drop and near:
            triples_drop(REPO / "bench" / "data" / name, near)


def triples_drop(path: Path, groups: set[int]) -> None:
    """Rewrite a triples file without the triples numbered ``groups`` (as ``triple_pairs`` numbers
    them: data lines after the header, from 0)."""
    kept, row = [], -1
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.strip() and not line.startswith("#"):
            row += 1
            if row - 1 in groups:  # row 0 is the header
                continue
        kept.append(line)
    path.write_text("".join(kept), encoding="utf-8")
    print(f"  dropped {len(groups)} triples from {path.name}")


if __name__ == "__main__":
    main()
