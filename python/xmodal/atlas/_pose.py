"""Pose search of a sample against an atlas: principal axes, signed permutations of them, a short
EM of a rigid map per candidate, scored by a chamfer distance and then by the assignment objective."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..registration import farthest_point_centers
from ._mixture import assign


def _principal(points, weights=None):
    w = np.ones(len(points)) if weights is None else weights
    c = w @ points / w.sum()
    x = points - c
    cov = (x * w[:, None]).T @ x / w.sum()
    var, axes = np.linalg.eigh(cov)
    order = np.argsort(var)[::-1]
    var, axes = var[order], axes[:, order]
    if np.linalg.det(axes) < 0:
        axes[:, -1] *= -1
    return c, axes, var


def _signed_permutations(d, reflections):
    out = []
    for perm in itertools.permutations(range(d)):
        for signs in itertools.product((1.0, -1.0), repeat=d):
            m = np.zeros((d, d))
            m[np.arange(d), perm] = signs
            det = np.linalg.det(m)
            if det > 0 or reflections:
                out.append(m)
    return out


def candidate_rotations(d: int, *, orientations: str = "all", allow_reflection: bool = False,
                        in_plane: int = 3) -> list:
    """Orthogonal matrices Q relating the principal frame of a sample to that of the atlas.

    "all": every signed permutation of the axes (24 proper ones in 3D, 4 in 2D), each composed with
    ``in_plane`` rotations about the sample's first (longest) axis by multiples of 90° / in_plane
    (in 2D: the plane itself), so that a specimen whose two shorter axes have about the same
    length (and hence arbitrary principal directions) still gets a start within 15° of any pose.
    "flips": sign flips only; "none": the identity. With ``allow_reflection`` the improper
    matrices too (twice as many).
    """
    if orientations == "none":
        base = [np.eye(d)] + ([np.diag([1.0] * (d - 1) + [-1.0])] if allow_reflection else [])
    else:
        base = _signed_permutations(d, allow_reflection)
        if orientations == "flips":
            base = [m for m in base if np.allclose(np.abs(m), np.eye(d))]
    if orientations != "all" or in_plane <= 1:
        return base
    out = []
    for j in range(in_plane):
        a = math.radians(90.0 * j / in_plane)
        r = np.eye(d)
        i0, i1 = (d - 2, d - 1)  # rotate within the plane of the two last (shortest) axes
        r[i0, i0] = r[i1, i1] = math.cos(a)
        r[i0, i1], r[i1, i0] = -math.sin(a), math.sin(a)
        out.extend(q @ r for q in base)
    return out


def _em_rigid(x, mu, iso, log_pi, log_volume, A, t, *, iterations, q_out, s2_floor=0.0, tol=1e-5):
    """EM of a rigid map (rotation times the fixed scale of ``A``, proper or improper as ``A``) of
    ``x`` onto a Gaussian mixture: means ``mu``, isotropic variances ``iso + s2``, weights
    ``exp(log_pi)``, a uniform outlier of rate ``q_out`` over the atlas volume. Dense E-step in
    float32 (call it on subsamples). ``s2`` starts at the mean squared distance of all pairs, as
    in CPD, so that a far-off start still sees the whole shape. Returns (A, t, s2)."""
    d = x.shape[1]
    scale = abs(float(np.linalg.det(A))) ** (1.0 / d)
    improper = bool(np.linalg.det(A) < 0)
    log_out = math.log(q_out) - log_volume - math.log(1.0 - q_out)
    mu32 = mu.astype(np.float32)
    mu2 = (mu32 * mu32).sum(1)

    def dist2(A, t):
        y = (x @ A.T + t).astype(np.float32)
        return np.maximum((y * y).sum(1)[:, None] + mu2[None, :] - 2.0 * (y @ mu32.T), 0.0)

    d2 = dist2(A, t)
    s2 = float(d2.mean()) / d
    for _ in range(iterations):
        v = (iso + s2).astype(np.float32)
        lw = (log_pi - 0.5 * d * np.log(2 * math.pi * v)).astype(np.float32)
        logp = lw[None, :] - 0.5 * d2 / v[None, :]
        mx = np.maximum(logp.max(1), np.float32(log_out))
        E = np.exp(logp - mx[:, None])
        den = E.sum(1) + np.exp(np.float32(log_out) - mx)
        P = E / den[:, None]
        W = P / v[None, :]
        ws = W.sum(1, dtype=np.float64)
        wk = W.sum(0, dtype=np.float64)
        sw = float(ws.sum())
        if not sw > 0:
            break
        cs = ws @ x / sw
        cd = wk @ mu / sw
        cross = (mu - cd).T @ (W.T.astype(np.float64) @ (x - cs)) / sw
        u_, _, vt = np.linalg.svd(cross)
        dd = np.ones(d)
        if (np.linalg.det(u_ @ vt) < 0) != improper:
            dd[-1] = -1
        A_new = scale * (u_ * dd) @ vt
        t_new = cd - A_new @ cs
        change = float(np.abs(A_new - A).max()) / scale + float(np.abs(t_new - t).max()) / math.sqrt(s2 + 1e-300)
        A, t = A_new, t_new
        d2 = dist2(A, t)
        Pn = max(float(P.sum(dtype=np.float64)), 1e-300)
        s2 = max(float((P * d2).sum(dtype=np.float64)) / (d * Pn) - float(P.sum(0, dtype=np.float64) @ iso) / Pn,
                 s2_floor)
        if change < tol:
            break
    return A, t, s2


def pose_search(x, model, u, feats, k, q_out, *, orientations, allow_reflection, search_iter, keep,
                 search_points, in_plane, scale=True, coarse_points=120, coarse_iter=8):
    """Candidate poses -> a few EM iterations each on small subsamples, scored by a symmetric
    truncated chamfer distance -> the ``keep`` best continue (``search_iter`` iterations on larger
    subsamples) -> scored by the optimal assignment objective. Returns the poses sorted by it."""
    d = x.shape[1]
    cx, ex, vx = _principal(x)
    common = np.exp(model.log_pi) >= 0.5  # the frame of the names most samples have
    if common.sum() < d + 1:
        common = np.ones(len(model.mu), bool)
    ca, ea, va = _principal(model.mu[common])
    # the size of the sample from its spread (a rigid search keeps the sample's own units)
    s0 = math.sqrt(va.sum() / vx.sum()) if (scale and vx.sum() > 0) else 1.0
    cands = candidate_rotations(d, orientations=orientations, allow_reflection=allow_reflection, in_plane=in_plane)

    def subsample(n):
        xs = x if len(x) <= n else x[farthest_point_centers(x, n)]
        if len(model.mu) <= n:
            return xs, model.mu, model.iso, model.log_pi
        sel = farthest_point_centers(model.mu, n)
        # a subsampled atlas: each kept name stands for its neighbours
        return (xs, model.mu[sel], model.iso[sel] + model.nn ** 2,
                model.log_pi[sel] + math.log(len(model.mu) / len(sel)))

    floor = 1e-4 * model.nn ** 2
    cap2 = (2.0 * model.nn) ** 2
    xs, mus, isos, lps = subsample(coarse_points)
    from scipy.spatial import cKDTree

    tree = cKDTree(model.mu)
    coarse = []
    for j, q in enumerate(cands):
        A0 = s0 * ea @ q @ ex.T
        t0 = ca - A0 @ cx
        refl = bool(np.linalg.det(A0) < 0)
        A, t, _ = _em_rigid(xs, mus, isos, lps, model.log_volume, A0, t0, iterations=coarse_iter,
                            q_out=q_out, s2_floor=floor)
        # symmetric truncated chamfer distance on all cells and all names: unlike a one-way
        # distance it notices when many names crowd onto few cells
        y = x @ A.T + t
        d1, _ = tree.query(y)
        d2, _ = cKDTree(y).query(model.mu)
        score = float(np.minimum(d1 ** 2, cap2).mean() + np.minimum(d2 ** 2, cap2).mean())
        coarse.append((score, j, A, t, refl))
    coarse.sort(key=lambda c: c[0])
    xs, mus, isos, lps = subsample(search_points)
    fine = []
    for _, j, A, t, refl in coarse[:max(1, keep)]:
        A, t, _ = _em_rigid(xs, mus, isos, lps, model.log_volume, A, t, iterations=search_iter,
                            q_out=q_out, s2_floor=floor)
        obj = assign(x @ A.T + t, model, u, feats, k)[-1]
        fine.append((obj, j, A, t, refl))
    fine.sort(key=lambda c: c[0])
    return {"best": fine, "scores": [float(c[0]) for c in fine], "n_candidates": len(cands)}
