"""Per-cell features (colour channels, volume, intensity) in the matching of
:func:`xmodal.pipelines.register_cells`.

Each feature column is put on a common scale **within each set** by its normal scores: the
value of rank r (1 = smallest, ties averaged) among n becomes ``Phi^-1((r - 0.5) / n)``, so every
column of both sets is standard normal whatever its units, gain, offset or tails (a nucleus far
brighter than the rest is "the brightest", not 20 MADs away). Two individuals or two microscopes
rarely share a gain, and reporter intensities are heavy-tailed: with a pooled median / MAD scale the
Gaussian model below over-weighted the features and lost 0.034 in accuracy on the embryo pairs,
with normal scores it gains 0.013 (docs/identity.md). A constant column drops out. The cost of a
candidate pair is then an effective distance in physical units,

    c_ij = sqrt(|x_i - y_j|^2 + (w · nn)^2 · |f_i - g_j|^2),

with ``nn`` the median nearest-neighbour distance within the fixed cells and ``w`` the dimensionless
``feature_weight`` (0: positions only). The candidate pairs stay the spatial k-nearest neighbours,
and the unmatched cost keeps its meaning.

``feature_weight="auto"`` reads the weight off a probabilistic model of the pairs of the
positions-only matching, chosen out of sample (:func:`select_feature_weight`): a right pair's
positions differ by an isotropic Gaussian of variance sigma^2 and its standardised features by one of
variance tau^2; a wrong pair's features are unrelated. tau is fitted on the pairs of a random 80 % of
the fixed cells; on the other 20 % the model must give the feature differences a higher likelihood
than "unrelated" does, else the weight is 0. The weight is sigma / (tau · nn): the cost above is then
proportional to the negative log-likelihood of a right pair.
"""

from __future__ import annotations

import numpy as np


def check_features(fixed_features, moving_features, n_fixed: int, n_moving: int):
    """Both feature arrays as float ``(n, f)`` arrays (a 1-D array is one feature), or None when
    neither is given; clear errors for one missing, wrong row counts, different columns, NaN."""
    if fixed_features is None and moving_features is None:
        return None
    if fixed_features is None or moving_features is None:
        missing = "fixed_features" if fixed_features is None else "moving_features"
        raise ValueError(f"{missing}: features are needed for both sets (or neither), got only the other set's")
    out = []
    for name, f, n in (("fixed_features", fixed_features, n_fixed), ("moving_features", moving_features, n_moving)):
        a = np.asarray(f)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric (n, f) array, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ValueError(f"{name}: expected an (n, f) array with f >= 1, got shape {a.shape}")
        if a.shape[0] != n:
            raise ValueError(f"{name}: expected {n} rows (one per {name.split('_')[0]} cell), got {a.shape[0]}")
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            raise ValueError(f"{name}: features must be finite; row {int(np.flatnonzero(bad)[0])} is "
                             f"{a[np.flatnonzero(bad)[0]].tolist()}")
        out.append(a)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"moving_features: expected {out[0].shape[1]} columns (as fixed_features), "
                         f"got {out[1].shape[1]}")
    return out[0], out[1]


def check_weight(feature_weight):
    """"auto" or a finite float >= 0."""
    if isinstance(feature_weight, str):
        if feature_weight != "auto":
            raise ValueError(f"feature_weight: expected 'auto' or a number >= 0, got {feature_weight!r}")
        return feature_weight
    try:
        w = float(feature_weight)
    except (TypeError, ValueError):
        raise TypeError(f"feature_weight: expected 'auto' or a number >= 0, got {feature_weight!r}") from None
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"feature_weight: expected 'auto' or a number >= 0, got {feature_weight!r}")
    return w


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Per column, the normal scores of the values (see the module); a constant column becomes 0."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    n = values.shape[0]
    out = np.zeros_like(values, dtype=np.float64)
    for j in range(values.shape[1]):
        col = values[:, j]
        if n > 1 and np.ptp(col) > 0:
            out[:, j] = ndtri((rankdata(col) - 0.5) / n)
    return out


def standardise(fixed_features: np.ndarray, moving_features: np.ndarray):
    """Normal scores of each set's features (see the module); returns both and a record."""
    f, m = normal_scores(fixed_features), normal_scores(moving_features)
    informative = [bool(np.ptp(fixed_features[:, j]) > 0 or np.ptp(moving_features[:, j]) > 0)
                   for j in range(fixed_features.shape[1])]
    return f, m, {"normalisation": "normal scores within each set", "informative_columns": informative}


def _gauss_logpdf(diff2: np.ndarray, var: float, dim: int) -> np.ndarray:
    return -0.5 * diff2 / var - 0.5 * dim * np.log(2 * np.pi * var)


def _fit_pairs(diff2: np.ndarray, f: int, iterations: int = 100) -> tuple[float, float]:
    """EM for the squared feature differences of matched pairs: a share ``pi`` of right pairs,
    difference ~ N(0, tau^2 I), and wrong ones, difference ~ N(0, 2 I) (two unrelated cells, each
    feature standard normal). Returns (pi, tau)."""
    pi, tau2 = 0.5, 0.25
    wrong = _gauss_logpdf(diff2, 2.0, f)
    for _ in range(iterations):
        right = np.log(pi) + _gauss_logpdf(diff2, tau2, f)
        resp = np.exp(right - np.logaddexp(right, np.log1p(-pi) + wrong))
        pi = float(np.clip(resp.mean(), 1e-3, 1 - 1e-3))
        tau2 = float(np.clip(np.sum(resp * diff2) / max(f * resp.sum(), 1e-12), 1e-4, 2.0))
    return pi, float(np.sqrt(tau2))


def select_feature_weight(fg, mg, mi, fi, *, nn: float, sigma2: float, seed: int, fraction: float = 0.2):
    """``feature_weight="auto"``: (weight, record). ``fg``, ``mg``: standardised features of the fixed
    and moving cells; (``mi``, ``fi``): the pairs of the positions-only matching, ``sigma2`` the
    variance of their displacement (physical units squared).

    The feature differences of the pairs are a mixture of right pairs (N(0, tau^2 I)) and wrong ones
    (N(0, 2 I)), fitted by EM on the pairs of a random 80 % of the fixed cells. The features enter
    only when the fitted mixture gives the pairs of the other 20 % a higher likelihood than "the
    features of a pair are unrelated" (N(0, 2 I)) does; the weight is then sigma / (tau · nn), so that
    the squared cost is sigma^2 × (|dx|^2 / sigma^2 + |df|^2 / tau^2)."""
    f = fg.shape[1]
    diff2 = ((fg[fi] - mg[mi]) ** 2).sum(1)
    rng = np.random.default_rng(seed)
    held = rng.random(len(fi)) < fraction
    if held.all() or not held.any():
        held = np.zeros(len(fi), bool)
        held[rng.choice(len(fi), max(1, int(round(fraction * len(fi)))), replace=False)] = True
    pi, tau = _fit_pairs(diff2[~held], f)
    mix = np.logaddexp(np.log(pi) + _gauss_logpdf(diff2[held], tau ** 2, f),
                       np.log1p(-pi) + _gauss_logpdf(diff2[held], 2.0, f))
    with_f, without = float(mix.mean()), float(_gauss_logpdf(diff2[held], 2.0, f).mean())
    weight = float(np.sqrt(sigma2) / (tau * nn)) if with_f > without else 0.0
    record = {"feature_weight": weight, "tau": tau, "right_share": pi,
              "criterion": "held-out log-likelihood of the matched pairs' feature differences (nats per pair)",
              "heldout_with_features": with_f, "heldout_without_features": without, "heldout_fraction": fraction,
              "seed": seed}
    return weight, record


def feature_match(moved, fixed, fg, mg, *, weight: float, nn: float, matching: str, k: int, radius,
                  unmatched_cost, reviewed=None):
    """Exact assignment on the spatial k-NN candidate graph with the effective-distance costs of the
    module (with ``reviewed``: its accepted pairs kept, its rejected ones never proposed). Returns
    the matched moving and fixed row indices and the pairs' spatial distances."""
    import scipy.sparse as sp

    from ..matching import cover_assignment, knn_graph, linear_assignment

    if reviewed is not None:
        from ._reviewed import constrained_match

        return constrained_match(moved, fixed, reviewed, k=k, radius=radius, unmatched_cost=unmatched_cost,
                                 cost_points=(augmented(moved, mg, weight, nn), augmented(fixed, fg, weight, nn)))

    g = knn_graph(moved, fixed, k=max(1, min(k, len(moved), len(fixed))), radius=radius).tocoo()
    rows, cols = g.row.astype(np.int64), g.col.astype(np.int64)
    d2 = ((moved[rows] - fixed[cols]) ** 2).sum(1) + (weight * nn) ** 2 * ((mg[rows] - fg[cols]) ** 2).sum(1)
    # a zero cost would be dropped by the sparse matrix: keep every candidate strictly positive
    cost = sp.csr_matrix((np.sqrt(d2) + 1e-12 * nn, (rows, cols)), shape=(len(moved), len(fixed)))
    if matching == "cover":
        r = cover_assignment(cost)
    else:
        r = linear_assignment(cost, unmatched_cost=unmatched_cost)
    mi, fi = np.asarray(r.rows, np.int64), np.asarray(r.cols, np.int64)
    return mi, fi, np.linalg.norm(moved[mi] - fixed[fi], axis=1)


def augmented(points: np.ndarray, features: np.ndarray, weight: float, nn: float) -> np.ndarray:
    """Points with the weighted features as extra coordinates: their Euclidean distances are the
    effective distances of the feature cost (what the match confidence sees)."""
    return np.hstack([points, (weight * nn) * features]) if weight > 0 else points


def match_with_features(moved, fixed, features, feature_weight, *, nn: float, matching: str, k: int, radius,
                        unmatched_cost, seed: int, spatial_match, reviewed=None):
    """The matching step of ``register_cells`` with features: standardise, choose the weight
    (``"auto"``: from the spatial matching ``spatial_match()`` -> (mi, fi, dist), see
    :func:`select_feature_weight`), match. Returns (mi, fi, distances, moved and fixed points
    augmented with the weighted features, a record for the result and the provenance)."""
    fg, mg, norm = standardise(*features)
    record = {"columns": int(fg.shape[1]), **norm}
    if feature_weight == "auto":
        mi, fi, dist = spatial_match()
        d = fixed.shape[1]
        chi2_median = {2: 1.3863, 3: 2.3660}.get(d, d * (1 - 2 / (9 * d)) ** 3)
        sigma2 = max(float(np.median(dist ** 2)) / chi2_median if len(dist) else nn ** 2, (1e-6 * nn) ** 2)
        weight, sel = select_feature_weight(fg, mg, mi, fi, nn=nn, sigma2=sigma2, seed=seed)
        record.update(selection=sel)
    else:
        weight = float(feature_weight)
    record["feature_weight"] = weight
    mi, fi, dist = feature_match(moved, fixed, fg, mg, weight=weight, nn=nn, matching=matching, k=k, radius=radius,
                                 unmatched_cost=unmatched_cost, reviewed=reviewed)
    return mi, fi, dist, augmented(moved, mg, weight, nn), augmented(fixed, fg, weight, nn), record
