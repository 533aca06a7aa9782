"""The learned router's arithmetic: neighbour estimates, the prior, the pick, APGR."""

from __future__ import annotations

import numpy as np
import pytest

from apps.routing.learned import NeighbourRouter, Outcomes, apgr, model_pick, strong_share_for


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _two_topics(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts near axis x, where only the strong model is right, and near axis y, where both are."""
    rng = np.random.default_rng(seed)
    hard = _unit(np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.05, (n, 3)))
    easy = _unit(np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.05, (n, 3)))
    scores = np.vstack([np.tile([0.0, 1.0], (n, 1)), np.tile([1.0, 1.0], (n, 1))]).astype(np.float32)
    return np.vstack([hard, easy]), scores


def test_it_estimates_each_model_from_the_nearest_prompts():
    vectors, scores = _two_topics()
    router = NeighbourRouter(Outcomes(vectors, scores, ("weak", "strong")), k=10)
    hard, easy = router.estimate_many(_unit([[1.0, 0.02, 0.0], [0.02, 1.0, 0.0]]))
    assert hard[0] < 0.3 and hard[1] > 0.9
    assert easy[0] > 0.9 and easy[1] > 0.9


def test_unknown_outcomes_fall_back_to_the_prior():
    vectors, scores = _two_topics()
    scores[:, 0] = np.nan  # the weak model never answered
    router = NeighbourRouter(Outcomes(vectors, scores, ("weak", "strong")), k=10)
    estimate = router.estimate(_unit([[1.0, 0.0, 0.0]])[0], prior=np.array([0.3, 0.5]))
    assert estimate[0] == pytest.approx(0.3)
    assert estimate[1] > 0.9
    assert router.means[0] == 0.5  # nothing known: no evidence either way


def test_an_empty_table_answers_the_prior():
    router = NeighbourRouter(Outcomes(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32), ("a", "b")))
    assert router.estimate(np.array([1.0, 0.0, 0.0]), prior=np.array([0.2, 0.7])).tolist() == [0.2, 0.7]


def test_it_picks_the_cheapest_model_that_keeps_the_target_share_of_the_best():
    costs = np.array([1.0, 10.0, 30.0])
    assert model_pick(np.array([0.85, 0.9, 0.95]), costs, target=0.85) == 0
    assert model_pick(np.array([0.6, 0.9, 0.95]), costs, target=0.9) == 1
    assert model_pick(np.array([0.6, 0.7, 0.95]), costs, target=0.99) == 2


def test_apgr_is_one_for_an_oracle_and_half_for_random_scores():
    rng = np.random.default_rng(4)
    weak = rng.random(4000) < 0.6
    strong = weak | (rng.random(4000) < 0.5)
    needs_strong = strong & ~weak
    oracle, curve = apgr(needs_strong.astype(float), weak, strong)
    # The gap closes linearly while the prompts that need the strong model go first, then stays closed.
    assert oracle == pytest.approx(1 - needs_strong.mean() / 2, abs=0.002)
    assert curve[0] == 0 and curve[-1] == pytest.approx(1.0)
    assert strong_share_for(curve, 0.5) == pytest.approx(needs_strong.mean() / 2, abs=0.002)
    assert apgr(rng.random(4000), weak, strong)[0] == pytest.approx(0.5, abs=0.03)
