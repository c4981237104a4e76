"""Per-name statistics of an atlas: shrunk covariances of the residuals, and which names move together."""

from __future__ import annotations

import numpy as np


def shrunk_covariances(res, idx, W, m, dim, nu, prior=None, fitted=0.0):
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
        raise ValueError("samples: cannot estimate the spread of the names: no name occurs in two samples "
                         "with weight (robust down-weighting removed every repeated name; try robust=False)")
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


def relations(res, idx, W, mu, *, neighbours, partners, n0, ridge, per_axis=False, min_samples=4):
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
