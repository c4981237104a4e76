"""Calibrated confidence of the matches of :func:`xmodal.pipelines.register_cells`.

The confidence of a pair (moving ``i``, fixed ``j``) is the probability that the two cells are the
same cell, estimated in two steps:

1. **Features** of the pair (:func:`match_features`), all in units of the median nearest-neighbour
   distance ``nn`` within the fixed cells (so they do not depend on the physical unit):

   - ``logit_posterior``: logit of the pair's posterior marginal under a probabilistic model of the
     matching (:func:`posterior_marginals`: Gaussian displacement of a partner, uniform outliers,
     log-domain Sinkhorn on the k-NN candidate graph);
   - ``distance``: the pair's distance after registration / ``nn``;
   - ``margin``: (distance of the closest rival - the pair's distance) / ``nn``, where a rival is any
     other fixed cell near ``i`` or any other moving cell near ``j`` (how ambiguous the pair is);
   - ``consistency``: how far the pair's displacement (fixed minus registered moving position) is
     from the median displacement of the pairs of the 6 nearest matched fixed cells, / ``nn`` (a
     right pair moves with its neighbours; a wrong one is off by about a cell);
   - ``spread``: log of the root median squared distance of all matched pairs / ``nn``, one value
     per registration (how well the registration as a whole went: a failed registration leaves the
     matched pairs far apart, and then even an isolated pair is often wrong).

2. **A fixed calibration map**: logistic regression of "the pair is right" on the features, with the
   coefficients :data:`COEFFICIENTS` fitted ONCE on the training split of the built-in C. elegans
   embryo pairs (the 6 pairs among the first 4 of the 8 embryos of
   :func:`xmodal.datasets.celegans_embryos`, each registered by the defaults and by the rigid model;
   ``scripts/eval_confidence.py fit``). Nothing is fitted on the user's data at run time. The
   held-out embryo pairs and the Platynereis bilateral pairs report how well it carries over
   (``docs/identity.md``).
"""

from __future__ import annotations

import numpy as np

#: Names of the columns of :func:`match_features`, in order.
FEATURES = ("logit_posterior", "distance", "margin", "consistency", "spread")

#: Intercept and one coefficient per feature of the logistic calibration map, fitted once by
#: ``scripts/eval_confidence.py fit`` on the 6 training embryo pairs x 2 registrations (the current
#: defaults, transform="auto" with the scale-free grid of main abaf50d, and the rigid model; binary
#: log loss + 1e-3 x squared coefficients; 4,203 matches). Held-out figures: ``docs/identity.md`` and
#: ``benchmarks/results/register-confidence-refit-scalefree-2026-11-30.json`` (the previous fits, to
#: the registrations of earlier defaults: ``register-confidence-refit-auto-2026-11-30.json``,
#: ``register-confidence-refit-2026-11-30.json``).
COEFFICIENTS = {"intercept": -0.8496, "logit_posterior": 0.2287, "distance": 0.4518,
                "margin": 0.4279, "consistency": -1.1814, "spread": -0.8368}

#: The map used when the matching used per-cell features (``register_cells(fixed_features=...)``
#: with a weight > 0; the pair features are then taken in the feature-augmented space the matching
#: uses). Fitted once by ``scripts/eval_feature_confidence.py`` on the 6 training embryo pairs
#: registered by the defaults with nucleus diameter and reporter intensity, the CPD stages with
#: features (affine, deformable) included (the ABpl/ABpr name swap of embryo 20241009_L5 undone for
#: the fit; binary log loss + 1e-3 x squared coefficients). Held-out figures: ``docs/identity.md``,
#: ``benchmarks/results/register-confidence-features-2026-12-01-feature-cpd-v2.json`` (the maps
#: before: ``register-confidence-features-2026-12-01-feature-cpd.json``, a deformable stage only;
#: ``register-confidence-features-2026-12-01-map.json``, no CPD stage with features).
COEFFICIENTS_FEATURES = {"intercept": 0.8983, "logit_posterior": 0.3529, "distance": -0.8653,
                         "margin": -0.3791, "consistency": -1.1453, "spread": -0.3056}

#: Matched neighbours whose displacements give the local displacement of the ``consistency`` feature.
NEIGHBOURS = 6

#: Nearest neighbours on both sides forming the candidate graph of the posterior marginals.
CANDIDATES = 12


def _median_nn(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return 1.0
    d, _ = cKDTree(points).query(points, k=2)
    nn = float(np.median(d[:, 1]))
    return nn if nn > 0 else max(float(np.ptp(points, 0).max()), 1.0) * 1e-6


def _candidates(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (row of ``a``, row of ``b``) where either is among the other's ``k`` nearest, sorted
    (any dimension: the points may carry weighted features as extra coordinates)."""
    from scipy.spatial import cKDTree

    _, ab = cKDTree(b).query(a, k=k)
    _, ba = cKDTree(a).query(b, k=k)
    ab, ba = ab.reshape(len(a), k), ba.reshape(len(b), k)
    key = np.concatenate([np.repeat(np.arange(len(a)), k) * len(b) + ab.ravel(),
                          ba.ravel() * len(b) + np.repeat(np.arange(len(b)), k)])
    key = np.unique(key)
    return key // len(b), key % len(b)


def posterior_marginals(moved: np.ndarray, fixed: np.ndarray, mi: np.ndarray, fi: np.ndarray, *,
                        k: int = CANDIDATES, temperature: float = 1.0) -> np.ndarray:
    """Posterior marginal of every matched pair (moving ``mi``, fixed ``fi``) under a probabilistic model.

    A moving cell either has a partner, displaced from it by an isotropic Gaussian whose variance is
    that of the matched pairs (median squared distance over the median of a chi-square with d degrees
    of freedom, robust to wrong pairs), or is an outlier spread uniformly over the fixed cells'
    bounding box, at the rate of unmatched moving cells (0.01 to 0.5); a fixed cell has a partner at
    the rate of matched fixed cells. The marginals of the partial one-to-one assignment under that
    model, on the candidate graph of the ``k`` nearest neighbours both ways, come from log-domain
    Sinkhorn (the entropic relaxation at ``temperature``; see
    :func:`xmodal.atlas._sinkhorn.sinkhorn_marginals`). Uncalibrated: on real data it is far too sure
    (see :func:`match_confidence`).
    """
    from ..atlas._sinkhorn import sinkhorn_marginals

    n, m = len(moved), len(fixed)
    d = fixed.shape[1]
    if len(mi) == 0:
        return np.zeros(0)
    r2 = ((moved[mi] - fixed[fi]) ** 2).sum(1)
    chi2_median = {2: 1.3863, 3: 2.3660}.get(d, d * (1 - 2 / (9 * d)) ** 3)
    sigma2 = max(float(np.median(r2)) / chi2_median, 1e-12 * float(np.ptp(fixed, 0).max()) ** 2 + 1e-300)
    q = float(np.clip(1.0 - len(mi) / n, 0.01, 0.5))
    presence = float(np.clip(len(fi) / m, 0.01, 0.99))
    volume = float(np.prod(np.maximum(np.ptp(fixed, 0), 1e-12)))
    rows, cols = _candidates(moved, fixed, min(k, m, n))
    dist2 = ((moved[rows] - fixed[cols]) ** 2).sum(1)
    pair = 0.5 * dist2 / sigma2 + 0.5 * d * np.log(2 * np.pi * sigma2) - np.log(presence) - np.log1p(-q)
    rel = pair - (-np.log(q) + np.log(volume)) - (-np.log1p(-presence))
    p, _, _, _ = sinkhorn_marginals(rows, cols, rel, (n, m), temperature=temperature, tol=1e-5, max_iter=200)
    # the matched pairs' entries of the edge list (a pair outside the candidate graph gets 0)
    key = rows * m + cols
    order = np.argsort(key)
    want = np.asarray(mi, np.int64) * m + np.asarray(fi, np.int64)
    pos = np.clip(np.searchsorted(key[order], want), 0, len(key) - 1)
    hit = key[order][pos] == want
    return np.where(hit, p[order][pos], 0.0)


def match_features(moved: np.ndarray, fixed: np.ndarray, mi: np.ndarray, fi: np.ndarray, *,
                   k: int = CANDIDATES) -> np.ndarray:
    """The ``(len(mi), 5)`` features of the matched pairs, columns :data:`FEATURES` (see the module)."""
    from scipy.spatial import cKDTree

    moved, fixed = np.asarray(moved, np.float64), np.asarray(fixed, np.float64)
    mi, fi = np.asarray(mi, np.int64), np.asarray(fi, np.int64)
    if len(mi) == 0:
        return np.zeros((0, len(FEATURES)))
    nn = _median_nn(fixed)
    p = np.clip(posterior_marginals(moved, fixed, mi, fi, k=k), 1e-6, 1 - 1e-6)
    dist = np.linalg.norm(moved[mi] - fixed[fi], axis=1)
    rival = np.full(len(mi), np.inf)
    for a, b, own_a, own_b in ((moved, fixed, mi, fi), (fixed, moved, fi, mi)):
        # the closest cell of the other set that is not the partner
        kk = min(2, len(b))
        dd, ii = cKDTree(b).query(a[own_a], k=kk)
        dd, ii = dd.reshape(len(own_a), kk), ii.reshape(len(own_a), kk)
        other = np.where(ii[:, 0] == own_b, dd[:, -1] if kk > 1 else np.inf, dd[:, 0])
        rival = np.minimum(rival, other)
    rival = np.where(np.isfinite(rival), rival, dist + 10.0 * nn)
    spread = np.sqrt(float(np.median(dist ** 2))) / nn
    disp = fixed[fi] - moved[mi]
    kk = min(NEIGHBOURS + 1, len(fi))
    if kk > 1:
        _, nb = cKDTree(fixed[fi]).query(fixed[fi], k=kk)
        local = np.median(disp[nb[:, 1:]], axis=1)
        consistency = np.linalg.norm(disp - local, axis=1) / nn
    else:
        consistency = np.zeros(len(mi))
    return np.column_stack([np.log(p) - np.log1p(-p), dist / nn, np.clip((rival - dist) / nn, -10.0, 10.0),
                            np.minimum(consistency, 10.0), np.full(len(mi), np.log(max(spread, 1e-6)))])


def calibrate(features: np.ndarray, coefficients: dict | None = None) -> np.ndarray:
    """The calibration map: ``sigmoid(intercept + features @ coefficients)`` (:data:`COEFFICIENTS`)."""
    c = COEFFICIENTS if coefficients is None else coefficients
    f = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
    z = c["intercept"] + f @ np.array([c[name] for name in FEATURES])
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def match_confidence(moved: np.ndarray, fixed: np.ndarray, mi: np.ndarray, fi: np.ndarray, *,
                     k: int = CANDIDATES, coefficients: dict | None = None) -> np.ndarray:
    """Calibrated probability that each matched pair (moving ``mi``, fixed ``fi``) is right, in [0, 1]:
    :func:`calibrate` of :func:`match_features` (``coefficients``: default :data:`COEFFICIENTS`)."""
    if len(mi) == 0:
        return np.zeros(0)
    return calibrate(match_features(moved, fixed, mi, fi, k=k), coefficients)


def reliability(confidence, correct, bins: int = 10) -> dict:
    """Calibration figures of confidences against outcomes (1 = right, 0 = wrong).

    Returns the expected calibration error over ``bins`` equal-width bins of [0, 1] (``"ece"``: the
    share-weighted mean of |mean confidence - accuracy| per bin), the accuracy and the share of the
    pairs at confidence >= 0.9 (``"accuracy_at_0.9"`` is None when there are none), and per bin its
    edges, count, mean confidence and accuracy (``"bins"``; empty bins have count 0 and NaNs).
    """
    conf = np.asarray(confidence, np.float64).ravel()
    ok = np.asarray(correct, np.float64).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"correct: expected {conf.size} outcomes (one per confidence), got {ok.size}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=ok, minlength=bins) / count
    used = count > 0
    ece = float(np.sum(count[used] * np.abs(mean_conf[used] - accuracy[used])) / max(conf.size, 1))
    hi = conf >= 0.9
    return {"ece": ece, "n": int(conf.size), "accuracy": float(ok.mean()) if conf.size else float("nan"),
            "accuracy_at_0.9": float(ok[hi].mean()) if hi.any() else None,
            "share_at_0.9": float(hi.mean()) if conf.size else 0.0,
            "bins": {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean_conf.tolist(),
                     "accuracy": accuracy.tolist()}}
