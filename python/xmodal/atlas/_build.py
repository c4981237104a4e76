"""Building an :class:`~xmodal.atlas.Atlas` from annotated samples.

    annotated samples (points + names [+ features])
      -> pose of every sample: robust Procrustes on the shared names onto a growing mean, starting
         from the sample that shares most names with the others (proper rotations; a mirror image
         only with ``allow_reflection``)
      -> generalised Procrustes: mean position per name over the samples that have it <-> each
         sample re-registered to the mean (rigid / similarity / affine least squares on its names,
         Tukey-reweighted so that mislabelled cells do not pull), until the mean stops moving
      -> frame: centroid and principal axes of the mean shape
      -> per name: mean, covariance (shrunk towards the pooled covariance for names seen in few
         samples), feature mean and covariance, presence frequency
      -> calibration of the confidence: leave one sample out, identify it against an atlas of the
         others, choose the temperature of the posterior marginals that fits the outcomes best
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._validation import choice, describe, positive_float, positive_int
from ._identify import SINKHORN
from ._fit import procrustes, robust_fit
from ._inputs import check_features, check_names, check_sample_points, normalise_features
from ._model import Atlas

_KINDS = ("rigid", "similarity", "affine")
_PARAMS = {"rigid": lambda d: d * (d + 1) // 2, "similarity": lambda d: d * (d + 1) // 2 + 1,
           "affine": lambda d: d * (d + 1)}


def _check_inputs(samples, names, features, feature_names):
    if isinstance(samples, np.ndarray) or not isinstance(samples, (list, tuple)):
        raise TypeError(f"samples: expected a list of (n_i, d) point arrays, got {describe(samples)}")
    if len(samples) < 2:
        raise ValueError(f"samples: an atlas needs at least 2 annotated samples, got {len(samples)}")
    if isinstance(names, np.ndarray) and names.dtype != object or not isinstance(names, (list, tuple, np.ndarray)):
        raise TypeError(f"names: expected a list of name arrays (one per sample), got {describe(names)}")
    if len(names) != len(samples):
        raise ValueError(f"names: expected {len(samples)} name arrays (one per sample), got {len(names)}")
    pts, nms = [], []
    d = None
    for i, (p, nm) in enumerate(zip(samples, names)):
        q = check_sample_points(p, f"samples[{i}]", d)
        d = q.shape[1]
        if len(q) < d + 1:
            raise ValueError(f"samples[{i}]: expected at least {d + 1} points, got {len(q)}")
        pts.append(q)
        nms.append(check_names(nm, len(q), f"names[{i}]"))
    feats = None
    if features is not None:
        if not isinstance(features, (list, tuple)) or len(features) != len(samples):
            raise ValueError(f"features: expected a list of {len(samples)} (n_i, f) arrays (one per sample), "
                             f"got {describe(features)}")
        feats = []
        nf = None
        for i, (f, q) in enumerate(zip(features, pts)):
            a = check_features(f, len(q), f"features[{i}]", nf)
            nf = a.shape[1]
            feats.append(a)
        if feature_names is None:
            feature_names = [f"feature_{j}" for j in range(nf)]
        feature_names = [str(x) for x in feature_names]
        if len(feature_names) != nf:
            raise ValueError(f"feature_names: expected {nf} names, got {len(feature_names)}")
    elif feature_names is not None:
        raise ValueError("feature_names: given without features")
    return pts, nms, feats, feature_names


def _tukey(r, scale, c=3.0):
    u = r / (c * scale)
    return np.where(u < 1, (1 - u * u) ** 2, 0.0)


def _gpa(pts, idx, m, kind, allow_reflection, robust, max_iter, tol):
    """Generalised Procrustes analysis with known correspondences (name indices ``idx``).

    Returns aligned points, per-sample (A, t), per-point weights, the mean (m, d) and iterations.
    """
    S = len(pts)
    d = pts[0].shape[1]
    counts = np.zeros(m, np.int64)
    for ix in idx:
        counts[ix] += 1
    sets = [set(ix.tolist()) for ix in idx]
    overlap = np.array([sum(len(sets[a] & sets[b]) for b in range(S) if b != a) for a in range(S)])
    ref = int(np.argmax(overlap))
    init_kind = "rigid" if kind == "rigid" else "similarity"

    def fit_one(p, target, have, kind_, refl, scale=None, start=None):
        if robust:
            A, t, w = robust_fit(p[have], target, kind=kind_, allow_reflection=refl, scale=scale, start=start)
        else:
            A, t = procrustes(p[have], target, kind=kind_, allow_reflection=refl)
            w = np.ones(int(have.sum()))
        return A, t, w

    # initial poses: greedy, each sample onto the running mean of those placed so far
    acc = np.zeros((m, d))
    cnt = np.zeros(m)
    A_s = [None] * S
    t_s = [None] * S
    refl_s = [False] * S
    c_ref = pts[ref].mean(0)
    A_s[ref], t_s[ref] = np.eye(d), -c_ref
    acc[idx[ref]] += pts[ref] - c_ref
    cnt[idx[ref]] += 1
    placed = {ref}
    while len(placed) < S:
        covered = cnt > 0
        cand = [s for s in range(S) if s not in placed]
        shared = [int(covered[idx[s]].sum()) for s in cand]
        s = cand[int(np.argmax(shared))]
        have = covered[idx[s]]
        if have.sum() < d + 1:
            raise ValueError(f"names: sample {s} shares only {int(have.sum())} names with the other samples; "
                             f"at least {d + 1} shared names are needed to place it")
        target = acc[idx[s][have]] / cnt[idx[s][have]][:, None]
        A, t, w = fit_one(pts[s], target, have, init_kind, False)
        if allow_reflection:
            A2, t2, w2 = fit_one(pts[s] * np.r_[np.ones(d - 1), -1.0], target, have, init_kind, False)
            r1 = np.median(np.linalg.norm(pts[s][have] @ A.T + t - target, axis=1))
            mir = pts[s][have] * np.r_[np.ones(d - 1), -1.0]
            r2 = np.median(np.linalg.norm(mir @ A2.T + t2 - target, axis=1))
            if r2 < r1:
                A, t, refl_s[s] = A2 @ np.diag(np.r_[np.ones(d - 1), -1.0]), t2, True
        A_s[s], t_s[s] = A, t
        acc[idx[s]] += pts[s] @ A.T + t
        cnt[idx[s]] += 1
        placed.add(s)

    X = [p @ A.T + t for p, A, t in zip(pts, A_s, t_s)]
    W = [np.ones(len(p)) for p in pts]
    target_rms = float(np.mean([np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) for p in pts]))
    D = np.r_[np.ones(d - 1), -1.0]
    # Stage 1 rigid / similarity to convergence; stage 2 (affine only) with the mean's second-moment
    # matrix held at that of the stage-1 mean (the gauge of affine GPA, which otherwise flattens).
    stages = [init_kind] + (["affine"] if kind == "affine" else [])
    mu = None
    it_total = 0
    for stage in stages:
        gauge = None if stage != "affine" else _sqrtm(np.cov(mu.T))
        prev = None
        for it in range(1, max_iter + 1):
            it_total += 1
            new = _weighted_mean(X, idx, W, counts, m, d)
            new = new - new.mean(0)
            if gauge is not None:
                new = new @ (gauge @ _inv_sqrtm(np.cov(new.T))).T
            elif stage != "rigid":
                rms = float(np.sqrt((new ** 2).sum(1).mean()))
                if rms > 0:
                    new *= target_rms / rms
            moved = math.inf if prev is None else float(np.sqrt(((new - prev) ** 2).sum(1).max()))
            mu = prev = new
            if moved < tol * target_rms:
                break
            gscale = None
            if robust:
                # one residual scale for all samples: a sample whose labels are partly wrong keeps
                # only its consistent cells instead of widening its own tolerance
                allres = np.concatenate([np.linalg.norm(x - mu[ix], axis=1)[w > 0] for x, ix, w in zip(X, idx, W)])
                gscale = 1.4826 * float(np.median(allres))
            for s in range(S):
                use = counts[idx[s]] >= 2  # names seen once carry no information on the pose
                if use.sum() < d + 2:
                    use = np.ones(len(idx[s]), bool)
                p = pts[s] * D if refl_s[s] else pts[s]
                start = None
                if gscale is not None:
                    A0 = A_s[s] * D[None, :] if refl_s[s] else A_s[s]
                    start = (A0, t_s[s])
                A, t, w = fit_one(p, mu[idx[s][use]], use, stage, False, gscale, start)
                if stage == "affine" and np.linalg.det(A) <= 0:
                    # an affine map must not mirror the sample (that is what allow_reflection decides)
                    A, t = (A_s[s] * D[None, :] if refl_s[s] else A_s[s]), t_s[s]
                    w = W[s][use]
                if refl_s[s]:
                    A = A * D[None, :]
                A_s[s], t_s[s] = A, t
                X[s] = pts[s] @ A.T + t
                ww = np.ones(len(idx[s]))
                ww[use] = w
                W[s] = ww
    return X, A_s, t_s, refl_s, W, mu, it_total


def _weighted_mean(X, idx, W, counts, m, d):
    acc = np.zeros((m, d))
    wsum = np.zeros(m)
    plain = np.zeros((m, d))
    for x, ix, w in zip(X, idx, W):
        np.add.at(acc, ix, x * w[:, None])
        np.add.at(wsum, ix, w)
        np.add.at(plain, ix, x)
    # a name whose every occurrence was down-weighted keeps its plain mean
    ok = wsum > 1e-9
    return np.where(ok[:, None], acc / np.where(ok, wsum, 1.0)[:, None], plain / np.maximum(counts, 1)[:, None])


def _sqrtm(c):
    ev, V = np.linalg.eigh(0.5 * (c + c.T))
    return (V * np.sqrt(np.clip(ev, 0, None))) @ V.T


def _inv_sqrtm(c):
    ev, V = np.linalg.eigh(0.5 * (c + c.T))
    return (V / np.sqrt(np.clip(ev, ev.max() * 1e-12, None))) @ V.T


def _frame(mu, counts):
    """Centroid and principal axes of the mean shape; sign of each axis by the third moment."""
    d = mu.shape[1]
    c = mu.mean(0)
    x = mu - c
    var, E = np.linalg.eigh(np.cov(x.T))
    E = E[:, np.argsort(var)[::-1]]
    proj = x @ E
    for j in range(d - 1):
        if (proj[:, j] ** 3).sum() < 0:
            E[:, j] *= -1
    if np.linalg.det(E) < 0:
        E[:, -1] *= -1
    return c, E


def _shrunk_covariances(res, idx, W, m, dim, nu, prior=None, fitted=0.0):
    """Per-name covariance of residuals, shrunk to the pooled covariance with ``nu`` pseudo-samples,
    times (1 + 1/n) for the uncertainty of the mean. ``fitted``: residual degrees of freedom (per
    coordinate) used up by the per-sample transforms. Returns (covs, pooled, effective counts)."""
    scat = np.zeros((m, dim, dim))
    n_eff = np.zeros(m)
    for r, ix, w in zip(res, idx, W):
        np.add.at(scat, ix, w[:, None, None] * r[:, :, None] * r[:, None, :])
        np.add.at(n_eff, ix, w)
    dof = np.maximum(n_eff - 1.0, 0.0)
    if dof.sum() > 1e-9:
        # the per-sample fits absorb part of the spread: correct for it (at most by a factor 2)
        pooled = scat.sum(0) / max(dof.sum() - fitted, 0.5 * dof.sum())
    elif prior is not None:
        pooled = np.asarray(prior, np.float64)
    else:
        raise ValueError("samples: cannot estimate the spread of the names: no name occurs in two samples")
    pooled = 0.5 * (pooled + pooled.T)
    # with few residuals, the shape of the pooled covariance is noise: shrink it towards its
    # isotropic part with 10 pseudo-degrees of freedom
    n_res = max(float(dof.sum()) - fitted, 0.0)
    pooled = (n_res * pooled + 10.0 * np.trace(pooled) / dim * np.eye(dim)) / (n_res + 10.0)
    # keep the pooled covariance well conditioned
    ev = np.linalg.eigvalsh(pooled)
    floor = max(ev.max(), 1e-300) * 1e-6
    pooled = pooled + np.eye(dim) * max(0.0, floor - ev.min())
    covs = (scat + nu * pooled) / (dof + nu)[:, None, None]
    covs *= (1.0 + 1.0 / np.maximum(n_eff, 1.0))[:, None, None]
    return covs, pooled, n_eff


def _relations(res, idx, W, mu, *, neighbours, partners, n0, ridge, per_axis=False, min_samples=4):
    """Which names move together: for every name, the ``partners`` among its ``neighbours``
    nearest names whose residuals (after the group-wise registration) correlate most with its own,
    and the regression weights that predict its residual from theirs.

    Correlations are over the samples that have both names (at least ``min_samples``), per axis of
    the atlas frame (``per_axis``) or of the whole residual vectors, shrunk by
    (n - 1) / (n - 1 + n0); residuals beyond 3 × the median norm are clipped (annotation errors).
    The weights solve the ridge-regularised normal equations of the partners' correlation matrix;
    ``factor`` is the share of the variance left once the partners are known (at least 0.2).
    Returns a dict: ``partners`` (m, p) atlas rows (-1 = none), ``weights`` (m, p, d),
    ``factor`` (m, d), ``scale`` (m, d) residual RMS per name and axis (per-axis values equal
    when ``per_axis`` is False).
    """
    from scipy.spatial import cKDTree

    S = len(res)
    m, d = mu.shape
    R = np.zeros((S, m, d))
    M = np.zeros((S, m))
    for s, (r, ix) in enumerate(zip(res, idx)):
        R[s, ix] = r
        M[s, ix] = 1.0
    nrm = np.linalg.norm(R, axis=2)
    cap = 3.0 * float(np.median(nrm[M > 0])) if (M > 0).any() else 0.0
    if cap > 0:
        R *= np.minimum(1.0, cap / np.maximum(nrm, 1e-300))[:, :, None]
    cnt = np.maximum(M.sum(0), 1.0)
    if per_axis:
        scale = np.sqrt((M[:, :, None] * R ** 2).sum(0) / cnt[:, None])
    else:
        scale = np.repeat(np.sqrt((M * (R ** 2).sum(2)).sum(0) / cnt / d)[:, None], d, 1)
    scale = np.where(scale > 0, scale, max(float(scale.max()), 1e-12))
    p = min(partners, m - 1)
    out = {"partners": -np.ones((m, max(p, 0)), np.int64), "weights": np.zeros((m, max(p, 0), d)),
           "factor": np.ones((m, d)), "scale": scale}
    if p <= 0 or S < min_samples:
        return out

    def rho(a, b):
        """(E, d) correlations (per axis, or the vector correlation repeated)."""
        both = M[:, a] * M[:, b]
        n = both.sum(0)
        ra, rb = R[:, a], R[:, b]
        num = (both[:, :, None] * ra * rb).sum(0)
        da = (both[:, :, None] * ra * ra).sum(0)
        db = (both[:, :, None] * rb * rb).sum(0)
        if not per_axis:
            num, da, db = (np.repeat(v.sum(1, keepdims=True), d, 1) for v in (num, da, db))
        r = num / np.sqrt(np.maximum(da * db, 1e-300))
        shrink = np.where(n >= min_samples, (n - 1) / (n - 1 + n0), 0.0)
        return r * shrink[:, None]

    nn = min(neighbours, m - 1)
    _, nb = cKDTree(mu).query(mu, k=nn + 1)
    nb = nb[:, 1:].reshape(m, nn)
    rk = rho(np.repeat(np.arange(m), nn), nb.ravel()).reshape(m, nn, d)
    order = np.argsort(-np.abs(rk).mean(2), axis=1, kind="stable")[:, :p]
    J = np.take_along_axis(nb, order, 1)
    kJ = np.take_along_axis(rk, order[:, :, None], 1)  # (m, p, d)
    a_idx = np.repeat(J[:, :, None], p, 2).ravel()
    b_idx = np.repeat(J[:, None, :], p, 1).ravel()
    K = rho(a_idx, b_idx).reshape(m, p, p, d).transpose(0, 3, 1, 2)  # (m, d, p, p)
    K[:, :, np.arange(p), np.arange(p)] = 1.0
    w = np.linalg.solve(K + ridge * np.eye(p), kJ.transpose(0, 2, 1)[..., None])[..., 0]  # (m, d, p)
    w = w.transpose(0, 2, 1)
    out["partners"] = J
    out["weights"] = w
    out["factor"] = np.clip(1.0 - (kJ * w).sum(1), 0.2, 1.0)
    return out


def _build(pts, nms, feats, feature_names, *, transform, allow_reflection, robust, shrinkage,
           feature_normalization, max_iter, tol, relations=(10, 5, False), prior=None, prior_features=None):
    S = len(pts)
    d = pts[0].shape[1]
    universe = np.array(sorted(set().union(*[set(n.tolist()) for n in nms])), dtype=str)
    lookup = {n: i for i, n in enumerate(universe.tolist())}
    idx = [np.array([lookup[x] for x in n.tolist()], np.int64) for n in nms]
    m = len(universe)
    counts = np.zeros(m, np.int64)
    for ix in idx:
        counts[ix] += 1
    # affine only when the samples can support it: at least 10 residual degrees of freedom per
    # coordinate left after the per-name means and the per-sample transforms
    dof = float(np.maximum(counts - 1, 0).sum())
    requested = transform
    if transform == "affine" and dof - S * _PARAMS["affine"](d) / d < 10.0:
        transform = "similarity"
    X, A_s, t_s, refl_s, W, mu, iters = _gpa(pts, idx, m, transform, allow_reflection, robust, max_iter, tol)
    c, E = _frame(mu, counts)
    mu = (mu - c) @ E
    X = [(x - c) @ E for x in X]
    A_s = [E.T @ A for A in A_s]
    t_s = [E.T @ (t - c) for t in t_s]
    res = [x - mu[ix] for x, ix in zip(X, idx)]
    covs, pooled, n_eff = _shrunk_covariances(res, idx, W, m, d, shrinkage, prior,
                                              fitted=S * _PARAMS[transform](d) / d)
    presence = (counts + 0.5) / (S + 1.0)

    fmeans = fcovs = fpooled = None
    if feats is not None:
        F = [normalise_features(f, feature_normalization) for f in feats]
        nf = F[0].shape[1]
        acc = np.zeros((m, nf))
        wsum = np.zeros(m)
        for f, ix, w in zip(F, idx, W):
            np.add.at(acc, ix, f * w[:, None])
            np.add.at(wsum, ix, w)
        plain = np.zeros((m, nf))
        for f, ix in zip(F, idx):
            np.add.at(plain, ix, f)
        fmeans = np.where(wsum[:, None] > 1e-9, acc / np.maximum(wsum, 1e-300)[:, None], plain / counts[:, None])
        fres = [f - fmeans[ix] for f, ix in zip(F, idx)]
        fcovs, fpooled, _ = _shrunk_covariances(fres, idx, W, m, nf, shrinkage, prior_features)

    rel = _relations(res, idx, W, mu, neighbours=relations[0], partners=relations[1], per_axis=relations[2],
                     n0=2.0, ridge=0.3)
    transforms = [{"matrix": A.tolist(), "translation": t.tolist(), "reflected": bool(r)}
                  for A, t, r in zip(A_s, t_s, refl_s)]
    return Atlas(names=universe, means=mu, covariances=covs, counts=counts, presence=presence, n_samples=S,
                 transform=transform, pooled_covariance=pooled, feature_names=feature_names,
                 feature_means=fmeans, feature_covariances=fcovs, pooled_feature_covariance=fpooled,
                 feature_normalization=feature_normalization, sample_transforms=transforms,
                 relations=rel, parameters={"gpa_iterations": iters, "requested_transform": requested})


def build_atlas(samples, *, names, features=None, feature_names=None, transform: str = "affine",
                allow_reflection: bool = False, robust: bool = True, shrinkage: float = 4.0,
                feature_normalization: str = "sample", relations=(10, 5, False), calibrate: bool = True,
                calibration: str = "temperature", identify_options=None,
                max_iter: int = 100, tol: float = 1e-6) -> Atlas:
    """Build an atlas of named cells from two or more annotated samples.

    Parameters
    ----------
    samples : list of (n_i, d) arrays
        Cell positions of each annotated sample (d = 2 or 3), physical units, any pose: the samples
        are registered to each other through their shared names.
    names : list of (n_i,) sequences of str
        The name of every cell; unique within a sample, non-empty. Names need not occur in every
        sample (presence frequencies are kept), but every sample must share at least d + 1 names
        with the others.
    features : list of (n_i, f) arrays, optional
        Per-cell features (colour channels, volume, intensity, ...), same columns in every sample.
    feature_names : list of str, optional
        Names of the feature columns (default ``feature_0``, ...).
    transform : {"rigid", "similarity", "affine"}
        Transform class of the group-wise registration (each sample onto the mean). "affine" (the
        default) also absorbs differences in overall shape (e.g. a specimen compressed under the
        coverslip), so that the per-name covariances describe the cells' own variability. When the
        samples share too few names for it (fewer than 10 residual degrees of freedom per
        coordinate), "similarity" is used instead (``atlas.transform`` says which).
    allow_reflection : bool
        Allow a sample to be the mirror image of the others (decided per sample by which of the two
        fits the shared names better). Off by default: a mirror image of a bilateral animal is a
        different animal.
    robust : bool
        Tukey-reweighted fits: a cell further than about 7 standard deviations from its name's mean
        (an annotation error) does not pull the registration or the statistics.
    shrinkage : float >= 0
        Pseudo-samples of the pooled covariance in each name's covariance (and feature covariance).
    feature_normalization : {"sample", "none"}
        "sample": standardise each feature within each sample (median, 1.4826 × MAD) first.
    calibrate : bool
        Leave one sample out, identify it against an atlas of the others (with ``identify_options``)
        and choose the temperature of the confidence that fits those outcomes (binary log loss of
        "the given name is right"). The figures go to ``atlas.calibration``.
    calibration : {"temperature", "platt"}
        "temperature": one temperature of the posterior marginals; "platt": then also a Platt
        scaling (two more parameters) of the confidences. On the embryos (leave one embryo out,
        atlases of 7) the temperature alone calibrated as well or better (ECE 0.053 against 0.061).
    identify_options : dict, optional
        Keyword arguments of :func:`identify` used by the calibration (use the same later).
    max_iter, tol : generalised Procrustes iterations and the stopping tolerance (largest change of
        a name mean, relative to the size of the mean shape).

    Returns
    -------
    Atlas
    """
    t_all = time.perf_counter()
    choice(transform, "transform", _KINDS)
    choice(feature_normalization, "feature_normalization", ("sample", "none"))
    choice(calibration, "calibration", ("temperature", "platt"))
    shrinkage = positive_float(shrinkage, "shrinkage", allow_zero=True)
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive_float(tol, "tol")
    for flag, label in ((allow_reflection, "allow_reflection"), (robust, "robust"), (calibrate, "calibrate")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{label}: expected True or False, got {describe(flag)}")
    if identify_options is not None and not isinstance(identify_options, dict):
        raise TypeError(f"identify_options: expected a dict or None, got {describe(identify_options)}")
    pts, nms, feats, feature_names = _check_inputs(samples, names, features, feature_names)
    opts = dict(transform=transform, allow_reflection=bool(allow_reflection), robust=bool(robust),
                shrinkage=shrinkage, feature_normalization=feature_normalization, max_iter=max_iter, tol=tol,
                relations=tuple(relations))
    atlas = _build(pts, nms, feats, feature_names, **opts)
    t_build = time.perf_counter() - t_all
    atlas.parameters = {**{k: v for k, v in opts.items()}, "gpa_iterations": atlas.parameters["gpa_iterations"],
                        "calibration": calibration, "identify_options": dict(identify_options or {})}
    if atlas.transform != transform:
        atlas.parameters["transform_note"] = (f"{transform} asked for, {atlas.transform} used: too few names shared "
                                              "between the samples for the per-sample fits")
    if calibrate:
        atlas.calibration = _calibrate(pts, nms, feats, feature_names, atlas, opts, dict(identify_options or {}),
                                       platt=calibration == "platt")
    atlas.parameters["seconds"] = {"build": t_build, "total": time.perf_counter() - t_all}
    return atlas


# --------------------------------------------------------------------------- calibration
def leave_one_out(pts, nms, feats, feature_names, opts, identify_options, prior=None, prior_features=None):
    """Identify every sample against an atlas of the others; per sample the raw material of the
    calibration (candidate graph, relative costs, the assignment, the true atlas rows)."""
    from ._identify import identify

    out = []
    for s in range(len(pts)):
        rest = [i for i in range(len(pts)) if i != s]
        sub = _build([pts[i] for i in rest], [nms[i] for i in rest],
                     None if feats is None else [feats[i] for i in rest], feature_names,
                     prior=prior, prior_features=prior_features, **opts)
        dbg = {}
        io = {k: v for k, v in identify_options.items() if k != "temperature"}
        r = identify(pts[s], sub, features=None if feats is None else feats[s], temperature=1.0, _debug=dbg,
                     **io)
        truth = sub.index(nms[s])
        out.append({"sample": s, "index": r.index, "truth": truth, **dbg,
                    "seconds": r.diagnostics["timings"]["total"]})
    return out


def confidence_at(rec, T):
    """Confidence of the given names (and the probability of the truth) at temperature ``T``."""
    from ._sinkhorn import sinkhorn_marginals

    rows, cols = rec["rows"], rec["cols"]
    n, m = rec["shape"]
    p, p_un, _, _ = sinkhorn_marginals(rows, cols, rec["rel"], (n, m), temperature=T, **SINKHORN)
    key = {(int(a), int(b)): float(v) for a, b, v in zip(rows, cols, p)}
    idx = rec["index"]
    return np.array([key.get((i, int(idx[i])), 0.0) if idx[i] >= 0 else float(p_un[i]) for i in range(n)])


def calibration_figures(conf, correct, bins=10):
    """ECE (equal-width bins), accuracy and share of cells at confidence >= 0.9, reliability table."""
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    table = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap = abs(conf[sel].mean() - correct[sel].mean())
            ece += sel.mean() * gap
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(sel.sum()),
                          "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    hi = conf >= 0.9
    return {"ece": float(ece), "accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "accuracy_at_0.9": float(correct[hi].mean()) if hi.any() else None,
            "share_at_0.9": float(hi.mean()) if len(conf) else 0.0, "reliability": table, "n": int(len(conf))}


def fit_temperature(records, grid=None):
    """Temperature minimising the binary log loss of "the given name is right" over ``records``:
    a log-spaced grid from 0.25 to 16, then a finer one around the best."""
    correct = np.concatenate([r["index"] == r["truth"] for r in records]).astype(float)

    def loss_at(T):
        conf = np.concatenate([confidence_at(r, T) for r in records])
        c = np.clip(conf, 1e-6, 1 - 1e-6)
        return -float(np.mean(correct * np.log(c) + (1 - correct) * np.log(1 - c))), conf

    grid = np.exp(np.linspace(np.log(0.25), np.log(16.0), 13)) if grid is None else np.asarray(grid, float)
    results = {float(T): loss_at(T) for T in grid}
    if len(grid) > 2:
        best = min(results, key=lambda T: results[T][0])
        step = float(np.log(grid[1] / grid[0]))
        for f in (-0.5, -0.25, 0.25, 0.5):
            T = float(best * np.exp(f * step))
            results[T] = loss_at(T)
    T = min(results, key=lambda T: results[T][0])
    return T, results[T][0], results[T][1], correct


def _logit(c):
    c = np.clip(c, 1e-6, 1 - 1e-6)
    return np.log(c) - np.log1p(-c)


def apply_platt(conf, platt):
    """``sigmoid(a * logit(conf) + b)`` for ``platt = (a, b)`` (identity for (1, 0))."""
    a, b = platt
    return 1.0 / (1.0 + np.exp(-(a * _logit(np.asarray(conf, float)) + b)))


def fit_platt(conf, correct, prior=1.0):
    """Platt scaling of the tempered confidences: (a, b) minimising the binary log loss of
    ``sigmoid(a * logit(conf) + b)``, with a weak Gaussian prior (``prior`` pseudo-observations)
    towards the identity (1, 0); a in [0.25, 4], b in [-4, 4]."""
    from scipy.optimize import minimize

    z = _logit(conf)
    y = np.asarray(correct, float)

    def loss(v):
        a, b = v
        q = a * z + b
        # log(1 + exp(-q)) for y = 1, log(1 + exp(q)) for y = 0, summed stably
        return float(np.sum(np.logaddexp(0.0, -q) * y + np.logaddexp(0.0, q) * (1 - y))
                     + 0.5 * prior * ((a - 1.0) ** 2 + b ** 2))

    res = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.25, 4.0), (-4.0, 4.0)])
    return float(res.x[0]), float(res.x[1])


def _calibrate(pts, nms, feats, feature_names, atlas, opts, identify_options, platt=False):
    t0 = time.perf_counter()
    recs = leave_one_out(pts, nms, feats, feature_names, opts, identify_options, prior=atlas.pooled_covariance,
                         prior_features=atlas.pooled_feature_covariance)
    T, loss, conf, correct = fit_temperature(recs)
    out = {"temperature": T, "log_loss": loss,
           "method": "leave-one-sample-out: temperature of the marginals (binary log loss)"}
    if platt:
        ab = fit_platt(conf, correct)
        conf = apply_platt(conf, ab)
        out.update(platt=list(ab), method=out["method"] + ", then Platt scaling")
    figs = calibration_figures(conf, correct)
    per = []
    start = 0
    for r in recs:
        n = len(r["index"])
        per.append(float(correct[start:start + n].mean()))
        start += n
    return {**out, "loo_accuracy_per_sample": per, "loo_mean_accuracy": float(np.mean(per)),
            "loo_worst_accuracy": float(np.min(per)), **{"loo_" + k: v for k, v in figs.items()},
            "seconds": time.perf_counter() - t0}
