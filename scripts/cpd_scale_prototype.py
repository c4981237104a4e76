"""Prototype of issue 15's integration: ``cpd(..., estep="auto"|"exact"|"fast", estep_tol=...)`` and
coarse-to-fine CPD, built from the pieces of ``xmodal.cpd`` (its EM loop ``_run`` takes an E-step
factory) and of ``xmodal.registration._fast_estep``. Not part of the package: once the registration
restructuring (issue 11) lands, ``FastEStep`` becomes the CPU E-step adapter and ``coarse_to_fine``
a mode of ``cpd``.

    python scripts/cpd_scale_prototype.py --n 200000 --transform rigid     # a synthetic demo

Pieces:
- ``FastEStep``: the E-step adapter (same call and outputs as ``_cpd._NumpyEStep``), running the
  fast E-step with ``method`` / ``tol`` and keeping per-iteration diagnostics (which path ran, the
  error bounds, the exact work).
- ``cpd_fast``: ``xmodal.cpd`` with that adapter.
- ``coarse_to_fine``: fit on voxel subsamples of both sets, then refine on all points (rigid,
  similarity, affine: the coarse transform applied, a few EM iterations on all points from the
  sigma2 of the nearest-neighbour residuals, transforms composed); deformable: the coarse field (a Gaussian RBF on the
  Nyström centres) evaluated at all moving points with the fast Gauss transform, optionally
  followed by a rigid/affine-free deformable refinement on all points.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from xmodal.registration import _cpd  # noqa: E402
from xmodal.registration._fast_estep import ESTEP_TOL, gauss_transform, voxel_subsample  # noqa: E402
from xmodal.registration.transforms import (  # noqa: E402
    AffineTransform,
    DeformableTransform,
    RigidTransform,
    SimilarityTransform,
)


class FastEStep:
    """E-step adapter for ``_cpd._run``: the fast E-step (float32 or float64 inside, float64 out)."""

    def __init__(self, X, dtype, weights, cutoff, method="auto", tol=ESTEP_TOL, max_cells=None, want_best="last"):
        from xmodal import _core

        self.dtype = dtype
        self.X = np.ascontiguousarray(X, dtype=dtype)
        self.w = None if weights is None else np.ascontiguousarray(weights, dtype=dtype)
        self.fast = _core.cpd_estep_fast_f32 if dtype == np.float32 else _core.cpd_estep_fast
        # the exact kernel, for CPDResult.correspondence_matrix (which re-runs it at the end)
        self.fn = _core.cpd_estep_f32 if dtype == np.float32 else _core.cpd_estep
        self.cutoff = cutoff
        self.method = method
        self.tol = tol
        self.max_cells = 0 if max_cells is None else int(max_cells)
        self.pairs = 0
        self.log = []  # per call: method, q, order, bounds, seconds

    def __call__(self, TY, s2, c):
        t0 = time.perf_counter()
        out = self.fast(self.X, np.ascontiguousarray(TY, dtype=self.dtype), self.w, s2, c, self.cutoff, self.method,
                        self.tol, self.max_cells, True, False)
        P1, Pt1, PX, best, prob, log_s, _, _, _, info = out
        self.pairs += int(info["pairs"])
        self.log.append(dict(sigma2=s2, method=info["method"], order=info["order"], q=info["q"],
                             cells=info["cells"], max_rel_s=info["max_rel_s"], max_rel_p1=info["max_rel_p1"],
                             max_px=info["max_px"], exact_columns=info["exact_columns"],
                             exact_rows=info["exact_rows"], unresolved_rows=info["unresolved_rows"],
                             fell_back=info["fell_back"], seconds=time.perf_counter() - t0))
        return (P1.astype(np.float64), Pt1.astype(np.float64), PX.astype(np.float64), best,
                prob.astype(np.float64), float(info["log_s_sum"]), int(info["empty_columns"]))


def cpd_fast(moving, fixed, *, transform="rigid", estep="auto", estep_tol=ESTEP_TOL, max_cells=None, w=0.0,
             beta=2.0, lam=2.0, max_iter=150, tol=1e-5, sigma2=None, dtype=None, low_rank=None, callback=None,
             scale=None, weights=None, normalize=True, cutoff=36.0):
    """``xmodal.cpd`` (CPU) with the fast E-step; ``info["estep"]`` holds the per-iteration log."""
    from xmodal._validation import as_points

    t_start = time.perf_counter()
    dt = _cpd._check_dtype(dtype, moving, fixed)
    Y = as_points(moving, "moving")
    X = as_points(fixed, "fixed")
    holder = {}

    def factory(Xn, wts):
        holder["e"] = FastEStep(Xn, dt, wts, cutoff, estep, estep_tol, max_cells)
        return holder["e"]

    r = _cpd._run(Y, X, transform=transform, w=w, beta=beta, lam=lam, max_iter=max_iter, tol=tol, sigma2=sigma2,
                  landmarks=None, landmark_weight=10.0, dtype=dt, low_rank=low_rank, callback=callback,
                  scale=scale, weights=weights, normalize=normalize, cutoff=cutoff, estep_factory=factory,
                  device="cpu", t_start=t_start)
    r.info["estep"] = holder["e"].log
    r.info["estep_method"] = estep
    r.info["estep_tol"] = estep_tol
    return r


def _compose(outer, inner):
    """outer o inner for rigid / similarity / affine transforms."""
    A1, t1 = _matrix(inner)
    A2, t2 = _matrix(outer)
    A = A2 @ A1
    t = A2 @ t1 + t2
    if isinstance(outer, RigidTransform) and isinstance(inner, RigidTransform):
        return RigidTransform(A, t)
    if isinstance(outer, SimilarityTransform) and isinstance(inner, SimilarityTransform):
        s = outer.scale * inner.scale
        return SimilarityTransform(A / s, t, s)
    return AffineTransform(A, t)


def _matrix(tr):
    if isinstance(tr, AffineTransform):
        return tr.matrix, tr.translation
    return tr.matrix, tr.translation


def refine_sigma2(moved, fixed, coarse_sigma2, *, sample=20000, seed=0):
    """Starting sigma2 of the refinement on all points: the coarse fit leaves residuals far below the
    coarse sigma (which reflects the subsample's spacing), and EM shrinks a wide sigma only slowly.
    Twice the sigma2 that the nearest-neighbour residuals of (a sample of) the fixed points would
    give (median of |x - nn(x)|^2 over the median of chi-square with d degrees of freedom), at most
    the coarse sigma2."""
    from scipy.spatial import cKDTree
    from scipy.stats import chi2

    rng = np.random.default_rng(seed)
    f = np.asarray(fixed, np.float64)
    if len(f) > sample:
        f = f[rng.choice(len(f), sample, replace=False)]
    d, _ = cKDTree(np.asarray(moved, np.float64)).query(f)
    d2 = float(np.median(d * d)) / chi2.median(f.shape[1])
    return min(coarse_sigma2, 2.0 * max(d2, 1e-12))


def coarse_to_fine(moving, fixed, *, transform="rigid", n_coarse=20000, coarse_iter=None, refine_iter=5,
                   max_iter=50, estep="auto", estep_tol=ESTEP_TOL, interp_tol=1e-6, subsample=None, **kw):
    """Fit on voxel subsamples (about ``n_coarse`` points each), then refine on all points.

    ``max_iter`` iterations in all: ``coarse_iter`` (default ``max_iter - refine_iter``) on the
    subsamples, ``refine_iter`` on all points from :func:`refine_sigma2` (rigid / similarity / affine;
    deformable refines only when ``refine_iter > 0``, with the coarse centres' count as
    ``low_rank``). ``subsample``: "both" (default for rigid / similarity / affine) or "moving"
    (default for deformable: the coarse fit then matches the moving subsample to the full fixed set,
    whose E-step stays O(M_c + N) on the grid, and its field does not alias the fixed subsample's
    sampling). Returns a dict with
    ``moved`` (all moving points), ``transform``, ``sigma2``, ``coarse`` / ``fine`` results,
    ``seconds`` per stage and the subsample sizes.
    """
    moving = np.asarray(moving)
    fixed = np.asarray(fixed)
    M, N = len(moving), len(fixed)
    coarse_iter = max_iter - refine_iter if coarse_iter is None else coarse_iter
    t0 = time.perf_counter()
    if M > n_coarse:
        im, vm = voxel_subsample(moving, n_coarse)
    else:
        im, vm = np.arange(M), 0.0
    if subsample is None:
        subsample = "moving" if transform == "deformable" else "both"
    if subsample not in ("both", "moving"):
        raise ValueError(f"subsample: expected 'both' or 'moving', got {subsample!r}")
    if N > n_coarse and subsample == "both":
        jf, vf = voxel_subsample(fixed, n_coarse)
    else:
        jf, vf = np.arange(N), 0.0
    t_sub = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = cpd_fast(moving[im], fixed[jf], transform=transform, max_iter=coarse_iter, estep=estep, estep_tol=estep_tol,
                  **kw)
    t_coarse = time.perf_counter() - t0
    out = dict(coarse=rc, n_coarse_moving=len(im), n_coarse_fixed=len(jf), voxel=(vm, vf))
    t0 = time.perf_counter()
    if transform == "deformable":
        tr = rc.transform
        dt = np.float32 if moving.dtype == np.float32 else np.float64
        disp, bound, ginfo = gauss_transform(tr.centers.astype(dt), tr.coefficients.astype(dt), moving.astype(dt),
                                             tr.beta, tol=interp_tol)
        moved = moving + disp + tr.offset
        out.update(interp_info=ginfo, interp_bound=float(bound.max()))
        t_interp = time.perf_counter() - t0
        rf = None
        if refine_iter > 0:
            t1 = time.perf_counter()
            kw2 = dict(kw)
            kw2.setdefault("low_rank", int(rc.info.get("rank", 300)))
            rf = cpd_fast(moved, fixed, transform="deformable", max_iter=refine_iter,
                          sigma2=refine_sigma2(moved, fixed, rc.sigma2), estep=estep, estep_tol=estep_tol, **kw2)
            moved = rf.moved
            t_interp += time.perf_counter() - t1
        out.update(moved=moved, transform=tr, fine=rf, sigma2=(rf or rc).sigma2,
                   seconds=dict(subsample=t_sub, coarse=t_coarse, fine=t_interp))
        return out
    moving1 = rc.transform.apply(moving)
    rf = None
    tr = rc.transform
    sigma2 = rc.sigma2
    if refine_iter > 0:
        rf = cpd_fast(moving1, fixed, transform=transform, max_iter=refine_iter,
                      sigma2=refine_sigma2(moving1, fixed, rc.sigma2), estep=estep, estep_tol=estep_tol, **kw)
        tr = _compose(rf.transform, rc.transform)
        sigma2 = rf.sigma2
    moved = tr.apply(moving)
    out.update(moved=moved, transform=tr, fine=rf, sigma2=sigma2,
               seconds=dict(subsample=t_sub, coarse=t_coarse, fine=time.perf_counter() - t0))
    return out


def _demo(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--transform", default="rigid", choices=["rigid", "similarity", "affine", "deformable"])
    ap.add_argument("--n-coarse", type=int, default=20000)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--refine", type=int, default=5)
    ap.add_argument("--estep", default="auto")
    ap.add_argument("--tol", type=float, default=ESTEP_TOL)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    side = int(math.ceil(a.n ** (1 / 3)))
    g = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    X = (g + rng.uniform(-0.35, 0.35, g.shape)).astype(np.float32)[: a.n] * 8.0  # ~8 µm nucleus spacing
    ang = 0.2
    R = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    Y = ((X - X.mean(0)) @ R.T + X.mean(0) + 5.0 + rng.normal(scale=1.0, size=X.shape)).astype(np.float32)
    kw = dict(beta=60.0, lam=2.0, w=1e-5) if a.transform == "deformable" else dict(w=1e-5)
    t0 = time.perf_counter()
    res = coarse_to_fine(Y, X, transform=a.transform, n_coarse=a.n_coarse, max_iter=a.iters, refine_iter=a.refine,
                         estep=a.estep, estep_tol=a.tol, tol=0.0, **kw)
    print(f"{a.n} points, {a.transform}: {time.perf_counter() - t0:.1f} s {res['seconds']}")
    print("mean residual to truth:", float(np.linalg.norm(res["moved"] - X, axis=1).mean()))
    for stage in ("coarse", "fine"):
        r = res[stage]
        if r is None:
            continue
        ms = [e["method"] for e in r.info["estep"]]
        print(stage, r.iterations, "iterations; E-step paths:", {m: ms.count(m) for m in set(ms)},
              "seconds", {k: round(v, 2) for k, v in r.info["seconds"].items()})


if __name__ == "__main__":
    _demo()
