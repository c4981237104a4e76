"""Generalised Procrustes analysis of annotated samples with known correspondences (names), and the
reference frame of the mean shape."""

from __future__ import annotations

import math

import numpy as np

from ._fit import procrustes, robust_fit


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


def frame(mu, counts):
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


def _fit_one(p, target, have, kind, robust, scale=None, start=None):
    """Fit ``p[have]`` onto ``target`` (proper maps only); returns (A, t, per-point weights)."""
    if robust:
        return robust_fit(p[have], target, kind=kind, allow_reflection=False, scale=scale, start=start)
    A, t = procrustes(p[have], target, kind=kind, allow_reflection=False)
    return A, t, np.ones(int(have.sum()))


def _initial_poses(pts, idx, m, kind, allow_reflection, robust):
    """Greedy initial poses: starting from the sample that shares most names with the others, each
    sample onto the running mean of those placed so far (a mirror image too when
    ``allow_reflection``, kept when it fits the shared names better). Returns (A_s, t_s, refl_s)."""
    S = len(pts)
    d = pts[0].shape[1]
    sets = [set(ix.tolist()) for ix in idx]
    overlap = np.array([sum(len(sets[a] & sets[b]) for b in range(S) if b != a) for a in range(S)])
    ref = int(np.argmax(overlap))
    D = np.r_[np.ones(d - 1), -1.0]
    acc = np.zeros((m, d))
    cnt = np.zeros(m)
    A_s, t_s, refl_s = [None] * S, [None] * S, [False] * S
    c_ref = pts[ref].mean(0)
    A_s[ref], t_s[ref] = np.eye(d), -c_ref
    acc[idx[ref]] += pts[ref] - c_ref
    cnt[idx[ref]] += 1
    placed = {ref}
    while len(placed) < S:
        covered = cnt > 0
        cand = [s for s in range(S) if s not in placed]
        s = cand[int(np.argmax([int(covered[idx[s]].sum()) for s in cand]))]
        have = covered[idx[s]]
        if have.sum() < d + 1:
            raise ValueError(f"names: sample {s} shares only {int(have.sum())} names with the other samples; "
                             f"at least {d + 1} shared names are needed to place it")
        target = acc[idx[s][have]] / cnt[idx[s][have]][:, None]
        A, t, _ = _fit_one(pts[s], target, have, kind, robust)
        if allow_reflection:
            A2, t2, _ = _fit_one(pts[s] * D, target, have, kind, robust)
            r1 = np.median(np.linalg.norm(pts[s][have] @ A.T + t - target, axis=1))
            r2 = np.median(np.linalg.norm((pts[s][have] * D) @ A2.T + t2 - target, axis=1))
            if r2 < r1:
                A, t, refl_s[s] = A2 @ np.diag(D), t2, True
        A_s[s], t_s[s] = A, t
        acc[idx[s]] += pts[s] @ A.T + t
        cnt[idx[s]] += 1
        placed.add(s)
    return A_s, t_s, refl_s


def _next_mean(X, idx, W, counts, m, d, gauge, stage, target_rms):
    """Weighted mean shape, centred; its scale fixed (similarity) or its second moments held at
    ``gauge`` (affine: the gauge of affine Procrustes, which otherwise flattens the mean)."""
    new = _weighted_mean(X, idx, W, counts, m, d)
    new = new - new.mean(0)
    if gauge is not None:
        return new @ (gauge @ _inv_sqrtm(np.cov(new.T))).T
    if stage != "rigid":
        rms = float(np.sqrt((new ** 2).sum(1).mean()))
        if rms > 0:
            new *= target_rms / rms
    return new


def gpa(pts, idx, m, kind, allow_reflection, robust, max_iter, tol):
    """Generalised Procrustes analysis with known correspondences (name indices ``idx``).

    Stage 1 rigid / similarity to convergence; stage 2 (affine only) with the mean's second-moment
    matrix held at that of the stage-1 mean. Robust fits use one residual scale for all samples: a
    sample whose labels are partly wrong keeps only its consistent cells instead of widening its
    own tolerance. Returns aligned points, per-sample A, t, reflection flags, per-point weights, the
    mean (m, d) and the iterations.
    """
    S = len(pts)
    d = pts[0].shape[1]
    counts = np.zeros(m, np.int64)
    for ix in idx:
        counts[ix] += 1
    init_kind = "rigid" if kind == "rigid" else "similarity"
    A_s, t_s, refl_s = _initial_poses(pts, idx, m, init_kind, allow_reflection, robust)
    X = [p @ A.T + t for p, A, t in zip(pts, A_s, t_s)]
    W = [np.ones(len(p)) for p in pts]
    target_rms = float(np.mean([np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) for p in pts]))
    D = np.r_[np.ones(d - 1), -1.0]
    mu = None
    it_total = 0
    for stage in [init_kind] + (["affine"] if kind == "affine" else []):
        gauge = None if stage != "affine" else _sqrtm(np.cov(mu.T))
        prev = None
        for _ in range(max_iter):
            it_total += 1
            mu = _next_mean(X, idx, W, counts, m, d, gauge, stage, target_rms)
            moved = math.inf if prev is None else float(np.sqrt(((mu - prev) ** 2).sum(1).max()))
            prev = mu
            if moved < tol * target_rms:
                break
            gscale = None
            if robust:
                allres = np.concatenate([np.linalg.norm(x - mu[ix], axis=1)[w > 0] for x, ix, w in zip(X, idx, W)])
                gscale = 1.4826 * float(np.median(allres))
            for s in range(S):
                use = counts[idx[s]] >= 2  # names seen once carry no information on the pose
                if use.sum() < d + 2:
                    use = np.ones(len(idx[s]), bool)
                p = pts[s] * D if refl_s[s] else pts[s]
                A0 = A_s[s] * D[None, :] if refl_s[s] else A_s[s]
                A, t, w = _fit_one(p, mu[idx[s][use]], use, stage, robust, gscale,
                                   (A0, t_s[s]) if gscale is not None else None)
                if stage == "affine" and np.linalg.det(A) <= 0:
                    # an affine map must not mirror the sample (that is what allow_reflection decides)
                    A, t, w = A0, t_s[s], W[s][use]
                A_s[s], t_s[s] = (A * D[None, :] if refl_s[s] else A), t
                X[s] = pts[s] @ A_s[s].T + t
                W[s] = np.ones(len(idx[s]))
                W[s][use] = w
            if robust and S == 2:
                W = _pair_weights(W, idx, m)
    return X, A_s, t_s, refl_s, W, mu, it_total


def _pair_weights(W, idx, m):
    """Two samples: a name's two positions are right or wrong together (no third sample says which
    one is off), so both get the smaller of their two weights. Otherwise the weighted mean drifts
    towards the sample fitted with higher weights, the other's weights fall, and the residual scale
    collapses to zero."""
    low = np.ones(m)
    for w, ix in zip(W, idx):
        np.minimum.at(low, ix, w)
    return [low[ix] for ix in idx]
