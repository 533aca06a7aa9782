"""Gradient-boosted decision trees for the cache verifier, in numpy (training only).

    trees = boost(x, y, w)        # a list of trees, each a dict of flat node arrays

Logistic loss, Newton steps: each tree is grown depth-first to ``depth`` levels on the gradient
and hessian of the current model, every split chosen exactly (all thresholds between distinct
values, the first best split on ties, so training is deterministic), and each leaf holds
``-learning_rate * G / (H + l2)``. A split must leave ``min_leaf`` pairs on each side, which keeps
a leaf from being fitted to a handful of pairs. The result is scored by
``apps.cache.verify``, which holds the same flat arrays.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 300
LEARNING_RATE = 0.05
DEPTH = 4
MIN_LEAF = 20
L2 = 1.0


def _best_split(x: np.ndarray, g: np.ndarray, h: np.ndarray, rows: np.ndarray, orders: list[np.ndarray],
                member: np.ndarray, min_leaf: int, l2: float) -> tuple[float, int, float]:
    """(gain, feature, threshold) of the best split of ``rows``; gain 0 when none is allowed."""
    total_g, total_h = g[rows].sum(), h[rows].sum()
    parent = total_g * total_g / (total_h + l2)
    best = (0.0, -1, 0.0)
    for feature, order in enumerate(orders):
        sorted_rows = order[member[order]]
        values = x[sorted_rows, feature]
        left_g = np.cumsum(g[sorted_rows])[:-1]
        left_h = np.cumsum(h[sorted_rows])[:-1]
        count = np.arange(1, len(sorted_rows))
        valid = (values[:-1] < values[1:]) & (count >= min_leaf) & (len(sorted_rows) - count >= min_leaf)
        if not valid.any():
            continue
        right_g, right_h = total_g - left_g, total_h - left_h
        gain = left_g * left_g / (left_h + l2) + right_g * right_g / (right_h + l2) - parent
        gain = np.where(valid, gain, -np.inf)
        index = int(np.argmax(gain))
        if gain[index] > best[0] + 1e-12:
            best = (float(gain[index]), feature, float((values[index] + values[index + 1]) / 2))
    return best


def _tree(x: np.ndarray, g: np.ndarray, h: np.ndarray, orders: list[np.ndarray], depth: int, min_leaf: int,
          l2: float, learning_rate: float) -> dict[str, list]:
    nodes: dict[str, list] = {"feature": [], "threshold": [], "left": [], "right": [], "value": []}

    def grow(rows: np.ndarray, level: int) -> int:
        node = len(nodes["feature"])
        for name, default in (("feature", -1), ("threshold", 0.0), ("left", -1), ("right", -1), ("value", 0.0)):
            nodes[name].append(default)
        split = (0.0, -1, 0.0)
        if level < depth and len(rows) >= 2 * min_leaf:
            member = np.zeros(len(x), dtype=bool)
            member[rows] = True
            split = _best_split(x, g, h, rows, orders, member, min_leaf, l2)
        if split[1] < 0:
            nodes["value"][node] = float(-learning_rate * g[rows].sum() / (h[rows].sum() + l2))
            return node
        _, feature, threshold = split
        goes_left = x[rows, feature] <= threshold
        nodes["feature"][node], nodes["threshold"][node] = feature, threshold
        nodes["left"][node] = grow(rows[goes_left], level + 1)
        nodes["right"][node] = grow(rows[~goes_left], level + 1)
        return node

    grow(np.arange(len(x)), 0)
    return nodes


def boost(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, rounds: int = ROUNDS, learning_rate: float = LEARNING_RATE,
          depth: int = DEPTH, min_leaf: int = MIN_LEAF, l2: float = L2) -> tuple[float, list[dict[str, list]]]:
    """(base log-odds, trees) fitted to labels ``y`` with sample weights ``w``."""
    x = np.asarray(x, dtype=np.float64)
    base = float(np.log((w * y).sum() / (w * (1 - y)).sum()))
    margin = np.full(len(x), base)
    orders = [np.argsort(x[:, f], kind="stable") for f in range(x.shape[1])]
    trees = []
    for _ in range(rounds):
        p = 1 / (1 + np.exp(-margin))
        tree = _tree(x, w * (p - y), w * p * (1 - p), orders, depth, min_leaf, l2, learning_rate)
        trees.append(tree)
        margin += tree_predict(tree, x)
    return base, trees


def flatten(base: float, trees: list[dict[str, list]], depth: int = DEPTH) -> dict:
    """The trees as one set of flat node arrays (children indexed into them), as the verifier loads them."""
    offsets = np.cumsum([0] + [len(tree["feature"]) for tree in trees])
    flat: dict = {"base": round(float(base), 9), "depth": depth, "roots": [int(o) for o in offsets[:-1]]}
    flat["feature"] = [int(f) for tree in trees for f in tree["feature"]]
    flat["threshold"] = [float(t) for tree in trees for t in tree["threshold"]]
    for key in ("left", "right"):
        flat[key] = [int(child + offsets[t]) if child >= 0 else -1
                     for t, tree in enumerate(trees) for child in tree[key]]
    flat["value"] = [round(float(v), 9) for tree in trees for v in tree["value"]]
    return flat


def tree_predict(tree: dict[str, list], x: np.ndarray) -> np.ndarray:
    feature = np.asarray(tree["feature"])
    threshold = np.asarray(tree["threshold"])
    left, right, value = np.asarray(tree["left"]), np.asarray(tree["right"]), np.asarray(tree["value"])
    node = np.zeros(len(x), dtype=np.int64)
    while True:
        inner = feature[node] >= 0
        if not inner.any():
            return value[node]
        rows = np.flatnonzero(inner)
        current = node[rows]
        go_left = x[rows, feature[current]] <= threshold[current]
        node[rows] = np.where(go_left, left[current], right[current])


def predict(base: float, trees: list[dict[str, list]], x: np.ndarray) -> np.ndarray:
    """Probabilities for the rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    margin = np.full(len(x), base)
    for tree in trees:
        margin += tree_predict(tree, x)
    return 1 / (1 + np.exp(-np.clip(margin, -40, 40)))
