"""The verifier's training-only pairs stay apart from every prompt it is measured on."""

from __future__ import annotations

from bench.cache_quality import triple_pairs
from bench.verifier_pairs_check import COSINE, check_embedder, closest_reported
from bench.verifier_train import EXTRA_FILES


def test_no_training_triple_comes_near_a_reported_prompt():
    # A training prompt within COSINE of a held-out half's or a workload's prompt would make that
    # figure a training figure; `python bench/verifier_pairs_check.py --drop` removes such triples.
    texts = sorted({text for name in EXTRA_FILES for pair in triple_pairs(name) for text in (pair.a, pair.b)})
    closest = closest_reported(texts, check_embedder())
    near = {text: closest[text] for text in texts if closest[text][0] >= COSINE}
    assert len(texts) > 2000
    assert near == {}
