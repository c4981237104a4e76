"""Gradient-boosted decision trees for edge classification (numpy, no extra dependency).

The multicut pipelines of ilastik / elf weight region-graph edges with a tree ensemble; this is a
small, deterministic version of the second-order (Newton) boosting of XGBoost / LightGBM for the
binary log-loss:

- features are binned once into at most ``n_bins`` quantile bins (split candidates are bin
  edges, the histogram method of LightGBM);
- trees grow level by level to ``depth``; a node splits where the gain
  ``G_L^2/(H_L+l2) + G_R^2/(H_R+l2) - G^2/(H+l2)`` is largest and positive and both children
  keep a hessian mass of at least ``min_child_weight``; a leaf predicts ``-learning_rate * G/(H+l2)``;
- no row or column subsampling, so a fit is a pure function of its input.

Trees are stored as flat arrays of a complete binary tree of ``2^(depth+1) - 1`` nodes (children of
node ``i``: ``2i+1`` left, ``2i+2`` right); ``feature == -1`` marks a leaf. A sample goes left when
``x[feature] <= threshold``. NaN features are not accepted (the feature matrix has none).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_trees", "predict_trees"]


def _bin_edges(x, n_bins):
    """Per feature, the sorted candidate thresholds (interior quantiles, unique)."""
    edges = []
    levels = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    for f in range(x.shape[1]):
        q = np.unique(np.quantile(x[:, f], levels))
        edges.append(q[q < x[:, f].max()] if q.size else q)
    return edges


def _best_splits(codes, node, n_nodes, g, h, n_bins, l2, min_child_weight):
    """For each of ``n_nodes`` nodes: (gain, feature, bin) of its best split (gain <= 0: none)."""
    n, nf = codes.shape
    idx = ((node[:, None] * nf + np.arange(nf)) * n_bins + codes).ravel()
    size = n_nodes * nf * n_bins
    G = np.bincount(idx, weights=np.repeat(g, nf), minlength=size).reshape(n_nodes, nf, n_bins)
    H = np.bincount(idx, weights=np.repeat(h, nf), minlength=size).reshape(n_nodes, nf, n_bins)
    GL, HL = np.cumsum(G, axis=2)[:, :, :-1], np.cumsum(H, axis=2)[:, :, :-1]
    Gt, Ht = G.sum(axis=2)[:, :, None], H.sum(axis=2)[:, :, None]
    GR, HR = Gt - GL, Ht - HL
    gain = GL ** 2 / (HL + l2) + GR ** 2 / (HR + l2) - Gt ** 2 / (Ht + l2)
    gain = np.where((HL >= min_child_weight) & (HR >= min_child_weight), gain, -np.inf)
    flat = gain.reshape(n_nodes, -1)
    best = np.argmax(flat, axis=1) if flat.shape[1] else np.zeros(n_nodes, np.int64)
    best_gain = flat[np.arange(n_nodes), best] if flat.shape[1] else np.full(n_nodes, -np.inf)
    return best_gain, best // max(n_bins - 1, 1), best % max(n_bins - 1, 1)


def _grow_tree(x, codes, edges, g, h, *, depth, n_bins, l2, min_child_weight, learning_rate):
    n_total = 2 ** (depth + 1) - 1
    feature = np.full(n_total, -1, np.int64)
    threshold = np.zeros(n_total)
    value = np.zeros(n_total)
    node = np.zeros(x.shape[0], np.int64)  # global node id of every sample
    active = np.ones(x.shape[0], bool)  # samples still at a node of the current level
    for level in range(depth + 1):
        first = 2 ** level - 1
        local = node - first
        n_level = 2 ** level
        Gn = np.bincount(local[active], weights=g[active], minlength=n_level)
        Hn = np.bincount(local[active], weights=h[active], minlength=n_level)
        value[first:first + n_level] = -learning_rate * Gn / (Hn + l2)
        if level == depth:
            break
        gain, f, k = _best_splits(codes[active], local[active], n_level, g[active], h[active], n_bins, l2,
                                  min_child_weight)
        split = gain > 1e-12
        for j in np.flatnonzero(split):
            if k[j] >= len(edges[f[j]]):  # a bin past the last edge: no real threshold
                split[j] = False
                continue
            feature[first + j] = f[j]
            threshold[first + j] = edges[f[j]][k[j]]
        go = active & split[np.clip(local, 0, n_level - 1)]
        right = x[np.arange(x.shape[0]), np.clip(feature[node], 0, None)] > threshold[node]
        node = np.where(go, 2 * node + 1 + right, node)
        active = go
    return feature, threshold, value


def fit_trees(x, y, w, *, n_trees, depth, learning_rate, l2, min_child_weight, n_bins=32):
    """Boosted trees for P(y = 1) on ``x`` (E, F) with labels ``y`` in {0, 1} and weights ``w``.

    Returns a dict of numpy arrays: ``base`` (log-odds offset), ``feature``/``threshold``/``value``
    of shape (n_trees, 2^(depth+1)-1).
    """
    t = np.asarray(y, dtype=np.float64)
    p0 = np.clip(np.average(t, weights=w), 1e-6, 1 - 1e-6)
    base = float(np.log(p0 / (1 - p0)))
    edges = _bin_edges(x, n_bins)
    codes = np.stack([np.searchsorted(e, x[:, f], side="left") for f, e in enumerate(edges)], axis=1)
    score = np.full(x.shape[0], base)
    trees = []
    for _ in range(int(n_trees)):
        p = 1.0 / (1.0 + np.exp(-np.clip(score, -50, 50)))
        g, h = w * (p - t), w * p * (1 - p)
        tree = _grow_tree(x, codes, edges, g, h, depth=depth, n_bins=n_bins, l2=l2,
                          min_child_weight=min_child_weight, learning_rate=learning_rate)
        trees.append(tree)
        score += _predict_tree(x, *tree, depth)
    return {"base": base, "feature": np.stack([tr[0] for tr in trees]),
            "threshold": np.stack([tr[1] for tr in trees]), "value": np.stack([tr[2] for tr in trees])}


def _predict_tree(x, feature, threshold, value, depth):
    node = np.zeros(x.shape[0], np.int64)
    rows = np.arange(x.shape[0])
    for _ in range(depth):
        f = feature[node]
        leaf = f < 0
        right = x[rows, np.clip(f, 0, None)] > threshold[node]
        node = np.where(leaf, node, 2 * node + 1 + right)
    return value[node]


def predict_trees(x, base, feature, threshold, value):
    """Log-odds of the ensemble for the rows of ``x``."""
    depth = int(np.log2(feature.shape[1] + 1)) - 1
    score = np.full(x.shape[0], float(base))
    for i in range(feature.shape[0]):
        score += _predict_tree(x, feature[i], threshold[i], value[i], depth)
    return score
