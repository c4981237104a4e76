"""Learned edge weights for the region graph: per-edge features -> merge probability.

The multicut / GASP workflows of ilastik and PlantSeg weight the edges of a superpixel graph by a
classifier trained on edge features instead of one raw statistic. This module is that step, small
and dependency-free:

- :func:`edge_feature_matrix`: one row of :data:`FEATURE_NAMES`-style features per region-graph
  edge, from affinities (merge probabilities, xmodal convention): statistics of the boundary
  ``1 - a`` over the attractive links across each face (mean, min, max, quantiles 10/25/50/75/90
  %), the mean and median over the long-range links across the edge per offset length (the face
  mean where an edge has none), ``log(1 + face samples)`` and ``log(1 + size)`` of the smaller and
  the larger region; with ``ranks=True`` also each boundary statistic's rank among the image's
  edges (invariant to a change of contrast of the network output; measured, not used by default).
- :func:`edge_labels_from_ground_truth`: training labels, 1 where the two superpixels' majority
  ground-truth segments are the same (ground-truth label 0 ignored), with a validity mask.
- :func:`fit_edge_classifier`: L2-regularised logistic regression (Newton's method, numpy) on
  standardised features, weighted samples.
- :class:`EdgeClassifier`: the fitted model, a few numbers that round-trip through JSON
  (:meth:`EdgeClassifier.to_dict`, :meth:`EdgeClassifier.from_dict`); stored with the shipped EM
  model as ``segmentation_defaults["gasp"]["edge_model"]`` (fitted with ``l2=1``).
- :func:`fit_boosted_edge_classifier` / :class:`BoostedEdgeClassifier`: gradient-boosted decision
  trees (numpy, :mod:`xmodal.segmentation._edge_trees`), the classic classifier of multicut
  pipelines, as JSON too; on the ISBI tuning slices it was not better than the logistic regression
  (``docs/segmentation_graph.md``). :func:`edge_classifier_from_dict` reads either by ``kind``.

:func:`xmodal.segmentation.superpixel_agglomeration` takes ``edge_model=`` and then agglomerates
with the edge boundary ``1 - p_merge``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .._validation import describe
from .rag import edge_features, region_adjacency_graph

__all__ = ["EdgeClassifier", "BoostedEdgeClassifier", "edge_classifier_from_dict", "edge_feature_matrix",
           "edge_feature_names", "edge_labels_from_ground_truth", "fit_edge_classifier",
           "fit_boosted_edge_classifier"]

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
_N_SIZE = 3  # the last columns of the plain features: log_face, log_size_min, log_size_max
_SHAPE = ("shared_min", "shared_max")  # the columns of shape=True


def _image_ranks(X, count):
    """Per column, the mid-rank of every edge among the image's edges with samples, in [0, 1]
    (ties share their average rank; edges without samples get 0.5)."""
    R = np.full(X.shape, 0.5)
    ok = count > 0
    n = int(ok.sum())
    if n < 2:
        return R
    for j in range(X.shape[1]):
        v = X[ok, j]
        s = np.sort(v)
        mid = (np.searchsorted(s, v, side="left") + np.searchsorted(s, v, side="right") - 1) / 2.0
        R[ok, j] = mid / (n - 1)
    return R


def _long_range_groups(offsets, n_attractive):
    """Channel indices of the long-range channels grouped by offset length (Chebyshev), ascending."""
    o = np.asarray(offsets)[n_attractive:]
    lengths = np.abs(o).max(axis=1) if o.size else np.zeros(0, np.int64)
    return [(int(L), (np.flatnonzero(lengths == L) + n_attractive).tolist()) for L in np.unique(lengths)]


def edge_feature_names(offsets, n_attractive, *, ranks=False, shape=False) -> list[str]:
    """Names of the columns of :func:`edge_feature_matrix` for these affinity channels (with
    ``ranks=True``, followed by ``rank_<name>`` for every boundary statistic; with ``shape=True``,
    then by ``shared_min`` and ``shared_max``)."""
    names = ["mean", "min", "max"] + [f"q{round(100 * q):d}" for q in _QUANTILES]
    for length, _ in _long_range_groups(offsets, n_attractive):
        names += [f"long{length}_mean", f"long{length}_median"]
    ranked = [f"rank_{n}" for n in names] if ranks else []
    return names + ["log_face", "log_size_min", "log_size_max"] + ranked + (list(_SHAPE) if shape else [])


def edge_feature_matrix(superpixels, affinities, offsets, *, n_attractive, rag=None, ranks=False, shape=False):
    """Features of every edge of the superpixels' region adjacency graph (background 0 ignored).

    Parameters
    ----------
    superpixels : ndarray of int, 2D or 3D
        Label image (0 = background, no edges).
    affinities : ndarray of float, shape (C, *superpixels.shape)
        Merge probabilities (1 = same object) for ``offsets``.
    offsets : array_like of int, shape (C, ndim)
    n_attractive : int
        The first ``n_attractive`` channels are the short-range (face) links.
    rag : RegionAdjacencyGraph, optional
        The graph of ``superpixels`` (built here when not given; face edges only).
    ranks : bool
        Append, for every boundary statistic, its rank among this image's edges (mid-rank of the
        edges with samples, scaled to [0, 1]): features that a global shift or stretch of the
        network's output (another microscope, another contrast) leaves unchanged.
    shape : bool
        Append ``shared_min`` / ``shared_max``: the smaller and the larger of the two fractions of
        each region's face samples (with all its neighbours) that lie on this edge. 1 for a region
        enclosed by the other (an organelle inside a cell, in 2D), small for a region with many
        neighbours; measured on the tuning slices (``docs/segmentation_graph.md``).

    Returns
    -------
    rag : RegionAdjacencyGraph
    X : ndarray of float64, shape (E, len(edge_feature_names(offsets, n_attractive)))
    count : ndarray of int64, shape (E,)
        Attractive link samples per edge (0: no face evidence; such edges should be dropped).
    """
    from .mws import _check_affinities, _check_n_attractive, _check_offsets

    a = _check_affinities(affinities)
    sp = np.asarray(superpixels)
    if a.shape[1:] != sp.shape:
        raise ValueError(f"affinities: expected shape (C, *{sp.shape}), got {a.shape}")
    o = _check_offsets(offsets, a.shape[0], a.ndim - 1)
    na = _check_n_attractive(n_attractive, a.shape[0], a.ndim - 1)
    if na == 0:
        raise ValueError("n_attractive: expected at least one attractive channel, got 0")
    if rag is None:
        rag = region_adjacency_graph(sp, ignore_label=0)
    b = (1.0 - a).astype(np.float32)
    f = edge_features(rag, sp, affinities=b[:na], offsets=o[:na], quantiles=_QUANTILES)
    cols = [f.mean, f.min, f.max] + [f.quantiles[:, i] for i in range(len(_QUANTILES))]
    for _, ch in _long_range_groups(o, na):
        g = edge_features(rag, sp, affinities=b[ch], offsets=o[ch], quantiles=(0.5,))
        has = g.count > 0
        cols += [np.where(has, g.mean, f.mean), np.where(has, g.quantiles[:, 0], f.mean)]
    uv = rag.edges.astype(np.int64)
    sizes = np.bincount(sp.ravel().astype(np.int64), minlength=rag.n_nodes).astype(np.float64)
    s1, s2 = sizes[uv[:, 0]], sizes[uv[:, 1]]
    cols += [np.log1p(f.count.astype(np.float64)), np.log1p(np.minimum(s1, s2)), np.log1p(np.maximum(s1, s2))]
    X = np.nan_to_num(np.stack(cols, axis=1).astype(np.float64), nan=1.0)
    count = f.count.astype(np.int64)
    if ranks:
        X = np.hstack([X, _image_ranks(X[:, :-_N_SIZE], count)])
    if shape:
        total = np.bincount(uv.ravel(), weights=np.repeat(count.astype(np.float64), 2), minlength=rag.n_nodes)
        cf = count.astype(np.float64)
        fu, fv = cf / np.maximum(total[uv[:, 0]], 1.0), cf / np.maximum(total[uv[:, 1]], 1.0)
        X = np.hstack([X, np.minimum(fu, fv)[:, None], np.maximum(fu, fv)[:, None]])
    return rag, X, count


def edge_labels_from_ground_truth(superpixels, ground_truth, edges):
    """``(labels, valid)`` per edge: 1.0 where both superpixels have the same majority ground-truth
    segment, else 0.0; ``valid`` is False where either has no ground-truth pixel (label 0 ignored).
    """
    sp = np.asarray(superpixels)
    gt = np.asarray(ground_truth)
    if sp.shape != gt.shape:
        raise ValueError(f"ground_truth: expected the superpixels' shape {sp.shape}, got {gt.shape}")
    if not np.issubdtype(gt.dtype, np.integer) or (gt.size and gt.min() < 0):
        raise ValueError(f"ground_truth: expected non-negative integer labels, got {describe(ground_truth)}")
    uv = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n = int(max(int(sp.max(initial=0)), int(uv.max(initial=0)))) + 1
    fg = gt > 0
    k = int(gt.max(initial=0)) + 1
    key, cnt = np.unique(sp[fg].astype(np.int64) * k + gt[fg].astype(np.int64), return_counts=True)
    sid, gid = key // k, key % k
    order = np.lexsort((-cnt, sid))  # per superpixel, the most frequent ground-truth label first
    first = np.unique(sid[order], return_index=True)[1]
    majority = np.full(n, -1, np.int64)
    majority[sid[order][first]] = gid[order][first]
    lu, lv = majority[uv[:, 0]], majority[uv[:, 1]]
    return (lu == lv).astype(np.float64), (lu >= 0) & (lv >= 0)


@dataclass
class EdgeClassifier:
    """Logistic regression on standardised edge features: ``p_merge = sigmoid(z . coef + intercept)``
    with ``z = (x - mean) / scale``.

    Attributes
    ----------
    feature_names : tuple of str
        Columns of :func:`edge_feature_matrix` it was trained on (checked at prediction).
    mean, scale, coef : ndarray of float64, one value per feature
    intercept : float
    """

    feature_names: tuple
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def merge_probability(self, X, names=None) -> np.ndarray:
        """Merge probability of every row of ``X`` (shape (E, n_features); with ``names``, the
        names of ``X``'s columns, of which the classifier's are picked)."""
        x = _select(names, X, self.feature_names)
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def to_dict(self) -> dict:
        """JSON-ready form (lists of floats)."""
        return {"kind": "logistic_regression", "feature_names": list(self.feature_names),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": float(self.intercept)}

    @classmethod
    def from_dict(cls, d) -> EdgeClassifier:
        """The classifier from :meth:`to_dict`'s form; ValueError / TypeError for a malformed one."""
        if isinstance(d, EdgeClassifier):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"edge_model: expected an EdgeClassifier or its dict form, got {describe(d)}")
        if d.get("kind") != "logistic_regression":
            raise ValueError(f"edge_model: expected kind 'logistic_regression', got {d.get('kind')!r}")
        missing = [k for k in ("feature_names", "mean", "scale", "coef", "intercept") if k not in d]
        if missing:
            raise ValueError(f"edge_model: missing {missing}")
        names = tuple(str(v) for v in d["feature_names"])
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
        for k, v in zip(("mean", "scale", "coef"), arrays):
            if v.shape != (len(names),) or not np.isfinite(v).all():
                raise ValueError(f"edge_model: {k} must be {len(names)} finite numbers, got shape {v.shape}")
        if (arrays[1] <= 0).any():
            raise ValueError("edge_model: scale must be positive")
        if isinstance(d["intercept"], bool) or not isinstance(d["intercept"], numbers.Real):
            raise TypeError(f"edge_model: intercept must be a number, got {describe(d['intercept'])}")
        return cls(names, *arrays, float(d["intercept"]))


def _check_training_data(X, y, feature_names, weights):
    """Validated ``(x, t, w, names)`` of a classifier fit (ValueError naming the bad argument)."""
    x = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"X: expected a non-empty (E, F) array, got shape {x.shape}")
    names = tuple(str(v) for v in feature_names)
    if len(names) != x.shape[1]:
        raise ValueError(f"feature_names: expected {x.shape[1]} names, got {len(names)}")
    if t.shape != (x.shape[0],) or not np.isin(t, (0.0, 1.0)).all():
        raise ValueError(f"y: expected {x.shape[0]} labels in {{0, 1}}, got {describe(y)}")
    if not np.isfinite(x).all():
        raise ValueError("X: expected finite features")
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != t.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: expected {x.shape[0]} non-negative finite weights with a positive sum")
    return x, t, w, names


def fit_edge_classifier(X, y, *, feature_names, weights=None, l2: float = 1e-2, iterations: int = 50):
    """Fit an :class:`EdgeClassifier` (L2-regularised logistic regression, Newton's method).

    Parameters
    ----------
    X : (E, F) float features (:func:`edge_feature_matrix`)
    y : (E,) labels in {0, 1} (1 = merge)
    feature_names : sequence of F str
    weights : (E,) non-negative sample weights, optional (default 1)
    l2 : float >= 0
        Penalty on the coefficients of the standardised features (not the intercept).
    iterations : int >= 1
        Newton steps (it converges in ~10 on well-posed data).
    """
    x, t, w, names = _check_training_data(X, y, feature_names, weights)
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not l2 >= 0:
        raise ValueError(f"l2: expected a non-negative number, got {describe(l2)}")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations: expected a positive integer, got {describe(iterations)}")
    mean = np.average(x, axis=0, weights=w)  # weighted, so that a zero weight equals leaving a sample out
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale[scale < 1e-12] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
    penalty = np.full(z.shape[1], float(l2))
    penalty[-1] = 0.0
    beta = np.zeros(z.shape[1])
    for _ in range(int(iterations)):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -50.0, 50.0)))
        grad = z.T @ (w * (p - t)) + penalty * beta
        hess = (z * (w * p * (1.0 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return EdgeClassifier(names, mean, scale, beta[:-1].copy(), float(beta[-1]))


def _select(names, x, own):
    """The columns ``own`` of ``x`` whose columns are ``names`` (or ``x`` itself when they agree)."""
    x = np.asarray(x, dtype=np.float64)
    if names is None or tuple(names) == tuple(own):
        if x.ndim != 2 or x.shape[1] != len(own):
            raise ValueError(f"X: expected shape (E, {len(own)}), got {x.shape}")
        return x
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in own if n not in index]
    if missing:
        raise ValueError(f"edge_model: trained on features {list(own)}, these features lack {missing}")
    return x[:, [index[n] for n in own]]


@dataclass
class BoostedEdgeClassifier:
    """Gradient-boosted decision trees on edge features (:mod:`xmodal.segmentation._edge_trees`):
    ``p_merge = sigmoid(base + sum of the trees' leaf values)``.

    Attributes
    ----------
    feature_names : tuple of str
        Columns it was trained on (selected by name at prediction).
    base : float
        Log-odds offset.
    feature, threshold, value : ndarray, shape (n_trees, 2^(depth+1)-1)
        Complete binary trees: split feature (-1: leaf), threshold (go left when ``x <= t``) and
        node value (log-odds contribution where the sample stops).
    """

    feature_names: tuple
    base: float
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    def merge_probability(self, X, names=None) -> np.ndarray:
        """Merge probability of every row of ``X`` (columns ``names``, default ``feature_names``)."""
        from ._edge_trees import predict_trees

        x = _select(names, X, self.feature_names)
        z = predict_trees(x, self.base, self.feature, self.threshold, self.value)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def to_dict(self) -> dict:
        """JSON-ready form (lists of numbers)."""
        return {"kind": "boosted_trees", "feature_names": list(self.feature_names), "base": float(self.base),
                "feature": self.feature.tolist(), "threshold": self.threshold.tolist(), "value": self.value.tolist()}

    @classmethod
    def from_dict(cls, d) -> BoostedEdgeClassifier:
        """The classifier from :meth:`to_dict`'s form; ValueError for a malformed one."""
        if isinstance(d, BoostedEdgeClassifier):
            return d
        if not isinstance(d, dict) or d.get("kind") != "boosted_trees":
            raise ValueError(f"edge_model: expected a dict of kind 'boosted_trees', got {describe(d)}")
        missing = [k for k in ("feature_names", "base", "feature", "threshold", "value") if k not in d]
        if missing:
            raise ValueError(f"edge_model: missing {missing}")
        names = tuple(str(v) for v in d["feature_names"])
        feat = np.asarray(d["feature"], dtype=np.int64)
        thr, val = np.asarray(d["threshold"], dtype=np.float64), np.asarray(d["value"], dtype=np.float64)
        n_nodes = feat.shape[1] if feat.ndim == 2 else 0
        complete = n_nodes >= 1 and not (n_nodes + 1) & n_nodes
        if feat.ndim != 2 or not complete or thr.shape != feat.shape or val.shape != feat.shape:
            raise ValueError("edge_model: feature / threshold / value must be equal (n_trees, 2^k - 1) arrays")
        if (feat < -1).any() or (feat >= len(names)).any() or not (np.isfinite(thr).all() and np.isfinite(val).all()):
            raise ValueError("edge_model: tree features must index feature_names and values be finite")
        base = float(d["base"])
        if not np.isfinite(base):
            raise ValueError("edge_model: base must be finite")
        return cls(names, base, feat, thr, val)


def edge_classifier_from_dict(d):
    """An :class:`EdgeClassifier` or :class:`BoostedEdgeClassifier` from its dict form (by ``kind``)."""
    if isinstance(d, (EdgeClassifier, BoostedEdgeClassifier)):
        return d
    if isinstance(d, dict) and d.get("kind") == "boosted_trees":
        return BoostedEdgeClassifier.from_dict(d)
    return EdgeClassifier.from_dict(d)


def fit_boosted_edge_classifier(X, y, *, feature_names, weights=None, n_trees: int = 100, depth: int = 3,
                                learning_rate: float = 0.1, l2: float = 1.0, min_child_weight: float = 1.0):
    """Fit a :class:`BoostedEdgeClassifier` (second-order gradient boosting of the weighted log-loss,
    histogram splits on at most 32 quantile bins per feature; deterministic).

    Parameters
    ----------
    X, y, feature_names, weights : as :func:`fit_edge_classifier`
    n_trees : int >= 1
    depth : int in [1, 8]
        Levels of splits per tree.
    learning_rate : float in (0, 1]
        Shrinkage of every tree's leaf values.
    l2 : float >= 0
        Penalty on the leaf values.
    min_child_weight : float >= 0
        Least hessian mass (sum of ``w p (1 - p)``) of a child for a split.
    """
    from ._edge_trees import fit_trees

    x, t, w, names = _check_training_data(X, y, feature_names, weights)
    for name, v, lo, hi in (("n_trees", n_trees, 1, 10_000), ("depth", depth, 1, 8)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
            raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {describe(v)}")
    for name, v, ok in (("learning_rate", learning_rate, lambda u: 0 < u <= 1), ("l2", l2, lambda u: u >= 0),
                        ("min_child_weight", min_child_weight, lambda u: u >= 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not ok(v):
            raise ValueError(f"{name}: expected a number in its range, got {describe(v)}")
    m = fit_trees(x, t, w, n_trees=int(n_trees), depth=int(depth), learning_rate=float(learning_rate), l2=float(l2),
                  min_child_weight=float(min_child_weight))
    return BoostedEdgeClassifier(names, m["base"], m["feature"], m["threshold"], m["value"])
