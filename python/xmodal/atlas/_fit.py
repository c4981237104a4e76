"""Least-squares fits of point transforms from (weighted) correspondences.

All fits map ``src`` onto ``dst``: they return ``(A, t)`` with ``dst ≈ src @ A.T + t``.
"""

from __future__ import annotations

import numpy as np

def procrustes(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None, *, kind: str = "rigid",
               allow_reflection: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares ``(A, t)`` minimising ``sum_i w_i |A src_i + t - dst_i|^2``.

    ``kind`` "rigid" (A a rotation), "similarity" (a scaled rotation) or "affine" (any matrix).
    Rotations are proper (det +1) unless ``allow_reflection`` (then the best orthogonal matrix,
    which may have det -1). Umeyama's closed form for rigid / similarity.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n, d = src.shape
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    sw = w.sum()
    if not sw > 0:
        return np.eye(d), np.zeros(d)
    cs = w @ src / sw
    cd = w @ dst / sw
    a = src - cs
    b = dst - cd
    if kind == "affine":
        wa = a * w[:, None]
        m = wa.T @ a
        # a tiny ridge keeps degenerate (coplanar) sets solvable
        m += np.eye(d) * (1e-12 * np.trace(m) + 1e-300)
        A = np.linalg.solve(m, wa.T @ b).T
    else:
        cov = (b * w[:, None]).T @ a / sw
        u, s, vt = np.linalg.svd(cov)
        dd = np.ones(d)
        if not allow_reflection and np.linalg.det(u @ vt) < 0:
            dd[-1] = -1.0
        r = (u * dd) @ vt
        if kind == "similarity":
            var = (w * (a * a).sum(1)).sum() / sw
            scale = float((s * dd).sum() / var) if var > 0 else 1.0
            A = scale * r
        else:
            A = r
    return A, cd - A @ cs


def gls_affine(src: np.ndarray, dst: np.ndarray, precision: np.ndarray, w: np.ndarray | None = None, *,
               prior: tuple[np.ndarray, np.ndarray] | None = None, prior_weight: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Affine ``(A, t)`` minimising ``sum_i w_i r_i^T P_i r_i`` with ``r_i = A src_i + t - dst_i``.

    ``precision``: ``(n, d, d)`` per-pair inverse covariances (Mahalanobis residuals). ``prior``:
    an ``(A0, t0)`` the fit is pulled towards with ``prior_weight`` (in units of one unit-precision
    pair per parameter), which keeps fits from a handful of pairs sane.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n, d = src.shape
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    # centre for conditioning
    sw = max(w.sum(), 1e-300)
    cs = w @ src / sw
    a = src - cs
    # residual r = A a + t' - dst with t' = t + A cs; unknowns theta = [A row-major (d*d), t' (d)]
    p = d * d + d
    # J_i (d x p): J[r, r*d + c] = a_i[c]; J[r, d*d + r] = 1
    J = np.zeros((n, d, p))
    for r in range(d):
        J[:, r, r * d:(r + 1) * d] = a
        J[:, r, d * d + r] = 1.0
    WP = precision * w[:, None, None]
    JtP = np.einsum("nrp,nrs->nps", J, WP)
    H = np.einsum("nps,nsq->pq", JtP, J)
    g = np.einsum("nps,ns->p", JtP, dst)
    if prior is not None and prior_weight > 0:
        A0, t0 = prior
        theta0 = np.concatenate([np.asarray(A0, np.float64).ravel(), np.asarray(t0, np.float64) + A0 @ cs])
        scale = prior_weight * np.trace(H) / p
        H = H + scale * np.eye(p)
        g = g + scale * theta0
    H += np.eye(p) * (1e-12 * np.trace(H) + 1e-300)
    theta = np.linalg.solve(H, g)
    A = theta[:d * d].reshape(d, d)
    t = theta[d * d:] - A @ cs
    return A, t


def robust_fit(src, dst, *, kind: str, allow_reflection: bool = False, iterations: int = 10,
               c: float = 3.0, scale: float | None = None, start=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iteratively reweighted :func:`procrustes` with Tukey biweights on the residual distance.

    The residual scale is ``scale`` when given (e.g. pooled over many samples), else 1.4826 × the
    median residual; a pair further than ``c`` scales gets weight 0. ``start``: an ``(A, t)`` to
    compute the first weights from (default an unweighted fit). Returns ``(A, t, weights)``.
    Mislabelled correspondences (annotation errors) then do not pull the fit.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src))
    A, t = procrustes(src, dst, w, kind=kind, allow_reflection=allow_reflection) if start is None else start
    for _ in range(iterations):
        r = np.linalg.norm(src @ A.T + t - dst, axis=1)
        s = (1.4826 * np.median(r) if scale is None else scale) + 1e-12 * (np.abs(dst).max() + 1.0)
        u = r / (c * s)
        w_new = np.where(u < 1, (1 - u * u) ** 2, 0.0)
        if w_new.sum() < src.shape[1] + 1:
            break
        A_new, t_new = procrustes(src, dst, w_new, kind=kind, allow_reflection=allow_reflection)
        done = np.allclose(A_new, A, atol=1e-9) and np.allclose(t_new, t, atol=1e-9 * (np.abs(t).max() + 1))
        A, t, w = A_new, t_new, w_new
        if done:
            break
    return A, t, w
