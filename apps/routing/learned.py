"""Which model is enough for a prompt, learned from the outcomes of similar prompts.

An :class:`Outcomes` table holds past prompts (their unit embeddings, the same vectors the
semantic cache computes) and, per candidate model, how acceptable that model's answer was: a
score in [0, 1], or unknown (NaN) when that model never answered it. A tenant only learns the
outcome of the model it was served, so most cells are unknown.

:class:`NeighbourRouter` estimates, for a new prompt, each model's chance of an acceptable answer
from its nearest past prompts: a similarity-weighted mean of the known outcomes among the
``k`` nearest, shrunk toward a prior (``prior_weight`` pseudo-observations of the prior's
value). The prior is the model's mean outcome, or another router's estimate for the same prompt
(a tenant with little data leans on a router trained on everyone's). Nothing here touches the
database or the network; the gateway and ``bench/routing.py`` run the same code.

:func:`model_pick` turns estimates into a choice: the cheapest model expected to keep at least
``target`` of the best model's quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Chosen on the tuning half of the shared MMLU subjects (``bench/routing.py --tune``): 100
# neighbours weighted by their similarity itself did best (APGR 0.655; 50: 0.645; 20: 0.646; 200:
# 0.635; sharper weights, similarity ** 8 or ** 32, 0.57-0.62), and a ridge regression on the
# embeddings did worse (0.60-0.62), alone or blended.
DEFAULT_K = 100
DEFAULT_POWER = 1.0  # weights are similarity ** power
DEFAULT_PRIOR_WEIGHT = 0.5
MIN_NEIGHBOURS = 5


@dataclass(frozen=True)
class Outcomes:
    vectors: np.ndarray  # (n, d) float32, unit rows
    scores: np.ndarray  # (n, m) float32 in [0, 1]; NaN where the model's outcome is unknown
    models: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.scores.shape != (self.vectors.shape[0], len(self.models)):
            raise ValueError("vectors (n, d) and scores (n, models) must describe the same prompts")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def means(self) -> np.ndarray:
        """Each model's mean known outcome (0.5 where nothing is known)."""
        known = ~np.isnan(self.scores)
        totals = np.where(known, self.scores, 0.0).sum(axis=0)
        counts = known.sum(axis=0)
        return np.where(counts > 0, totals / np.maximum(counts, 1), 0.5).astype(np.float64)


class NeighbourRouter:
    """Per-model chance of an acceptable answer, from the ``k`` nearest past prompts."""

    def __init__(self, outcomes: Outcomes, *, k: int = DEFAULT_K, power: float = DEFAULT_POWER,
                 prior_weight: float = DEFAULT_PRIOR_WEIGHT) -> None:
        self.outcomes = outcomes
        self.models = outcomes.models
        self.k = k
        self.power = power
        self.prior_weight = prior_weight
        self._vectors = np.ascontiguousarray(outcomes.vectors, dtype=np.float32)
        self._known = ~np.isnan(outcomes.scores)
        self._scores = np.where(self._known, outcomes.scores, 0.0).astype(np.float32)
        self.means = outcomes.means()

    def estimate_many(self, vectors: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """(q, models) estimates for ``vectors`` (q, d); ``prior`` (q, models) or None for the means."""
        return self.estimate_with_evidence(vectors, prior)[0]

    def estimate_with_evidence(self, vectors: np.ndarray,
                               prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The estimates and, per model, the evidence behind them: the summed weight of the known
        outcomes among the neighbours (0 where nothing near is known: the estimate is the prior)."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        base = np.broadcast_to(self.means if prior is None else prior, (queries.shape[0], len(self.models)))
        n = self._vectors.shape[0]
        if n == 0:
            return np.array(base, dtype=np.float64), np.zeros(base.shape)
        sims = queries @ self._vectors.T
        # While little is known the neighbourhood shrinks with it (at most a quarter of the table):
        # ten close prompts say more than those ten plus thirty unrelated ones.
        k = min(self.k, max(MIN_NEIGHBOURS, n // 4), n)
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
        weights = np.maximum(np.take_along_axis(sims, nearest, axis=1), 0.0).astype(np.float64) ** self.power
        known = self._known[nearest]  # (q, k, models)
        scores = self._scores[nearest]
        weighted = weights[:, :, None] * known
        totals = (weighted * scores).sum(axis=1)
        mass = weighted.sum(axis=1)
        # Pseudo-observations of the prior, scaled to the weight of one close neighbour.
        unit = np.max(weights, axis=1, initial=0.0)[:, None]
        unit = np.where(unit > 0, unit, 1.0)
        strength = self.prior_weight * unit
        return (totals + strength * base) / (mass + strength), mass

    def estimate(self, vector: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        return self.estimate_many(vector[None, :], None if prior is None else prior[None, :])[0]


# A global prior counts as this many of the tenant's own outcomes of that model: a new tenant
# follows what everyone's feedback says of each model, and its own feedback outweighs that once
# it has a few dozen outcomes.
PRIOR_OUTCOMES = 20


def prior_blend(own_mean: float | None, own_count: int, global_mean: float | None, *,
                weight: float = PRIOR_OUTCOMES) -> float | None:
    """A model's prior for a tenant: its own mean outcome shrunk toward the global prior (the
    global prior alone with no own outcomes; the own mean alone with no global prior; None with
    neither)."""
    if global_mean is None:
        return own_mean if own_count > 0 else None
    if own_count <= 0 or own_mean is None:
        return global_mean
    return (own_mean * own_count + global_mean * weight) / (own_count + weight)


def model_pick(estimates: np.ndarray, costs: np.ndarray, *, target: float) -> int:
    """The index of the cheapest model whose estimate is at least ``target`` of the best one's."""
    best = float(np.max(estimates))
    enough = np.flatnonzero(estimates >= target * best - 1e-12)
    return int(enough[np.argmin(costs[enough])])


def apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, *, seed: int = 0) -> tuple[float, np.ndarray]:
    """Average performance gap recovered by routing on ``scores`` (higher: send to the strong model).

    Prompts go to the strong model in order of score, from none to all; at each share, the
    accuracy reached is placed between the weak model's (0) and the strong model's (1); the mean
    over every share is the APGR (random routing: 0.5). Ties are broken by a seeded shuffle.
    Returns the APGR and the curve (n + 1 points, share i/n)."""
    scores, weak, strong = (np.asarray(a, dtype=np.float64) for a in (scores, weak, strong))
    shuffle = np.random.default_rng(seed).permutation(len(scores))
    order = shuffle[np.argsort(-scores[shuffle], kind="stable")]
    gained = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])
    accuracy = (weak.sum() + gained) / len(scores)
    low, high = weak.mean(), strong.mean()
    curve = (accuracy - low) / (high - low) if high != low else np.zeros_like(accuracy)
    return float(curve.mean()), curve


def strong_share_for(curve: np.ndarray, recovered: float) -> float:
    """CPT: the smallest share of prompts sent to the strong model that recovers ``recovered``
    of the gap (1.0 if never)."""
    reached = np.flatnonzero(curve >= recovered)
    return float(reached[0] / (len(curve) - 1)) if len(reached) else 1.0
