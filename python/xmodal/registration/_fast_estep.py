"""Sub-quadratic CPD E-step, fast Gauss transform and voxel-grid subsample (``xmodal._core``).

The exact E-step (``_core.cpd_estep``) visits every pair within the truncation radius
``sqrt(2 sigma2 cutoff)``; while sigma is wide against the point spacing that is every pair. The fast
E-step computes the two Gauss transforms the E-step needs on a regular grid (B-spline splatting,
a separable convolution, interpolation back; smooth particle-mesh Ewald style) with a rigorous
per-point error bound, and falls back to exact sums wherever the bound is above the tolerance.
See ``docs/cpd.md`` ("Fast E-step") and ``cpp/include/xmodal/cpd_fast.hpp``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .._validation import as_bool, as_points, choice, describe, float_dtype, positive_float, positive_int

#: Default tolerance of the fast E-step: the rigorous per-point bound on the relative error of
#: every denominator s_n and every P1_m (the measured errors are typically 30-100 times smaller).
ESTEP_TOL = 1e-2
METHODS = ("auto", "exact", "fast")
#: Below this many pairs (M N) ``cpd(estep="auto")`` always runs the exact kernel.
AUTO_MIN_PAIRS = 25_000_000
_REACH_LEVELS = (4.5, 5.5, 6.5, 7.5)  # as cpp/src/cpd_fast.cpp


@dataclass
class EStepResult:
    """Outputs of :func:`fast_estep` (those of the exact E-step, plus error bounds).

    Attributes
    ----------
    P1 : ndarray (M,)
        ``P1[m] = sum_n P[m, n]``.
    Pt1 : ndarray (N,)
        ``Pt1[n] = sum_m P[m, n]``.
    PX : ndarray (M, d)
        ``PX[m] = sum_n P[m, n] x_n``.
    log_s : ndarray (N,) float64
        ``log s_n`` (the mixture density's denominators, -inf where s_n = 0).
    log_s_sum : float
        ``sum_n log s_n`` (``log(DBL_MIN)`` for each empty column, as the exact kernel).
    best : ndarray (M,) int64 or None
        Per moving point the fixed index of its largest posterior (-1: none). On the grid path the
        largest among the fixed points near the nearest one (see docs); exact otherwise.
    best_prob : ndarray (M,) or None
        That posterior.
    bound_s, bound_p1, bound_px : ndarray or None
        With ``want_bounds``: per fixed point the bound on ``|d s_n| / s_n``; per moving point the
        absolute bounds on ``|d P1_m|`` and on ``|d (PX_m - y_m P1_m)|`` (input units; the part
        from the s_n errors excluded, see docs). Zero where exact sums were used.
    info : dict
        ``method`` ("exact" or "fast": what ran), ``order``, ``q`` (sigma / h), ``h``, ``cells``,
        ``capped``, ``dense_rel`` (a priori bound for a uniform density), ``max_rel_s``,
        ``max_rel_p1``, ``max_px`` (largest a posteriori bounds: relative for s_n and P1_m, the
        posterior mean's displacement in units of sigma for PX), ``exact_columns``,
        ``exact_rows``, ``unresolved_rows``, ``fell_back``, ``sampled_rel_s`` (measured relative
        error of 8 exactly summed s_n; with ``want_bounds``), ``est_cost_exact`` (NaN where no
        grid fits the cell cap: the exact kernel runs unestimated),
        ``est_cost_grid``, ``pairs``, ``empty_columns``, ``seconds`` (per phase).
    """

    P1: np.ndarray
    Pt1: np.ndarray
    PX: np.ndarray
    log_s: np.ndarray
    log_s_sum: float
    best: np.ndarray | None
    best_prob: np.ndarray | None
    bound_s: np.ndarray | None = None
    bound_p1: np.ndarray | None = None
    bound_px: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _tol(tol, name: str = "tol") -> float:
    t = positive_float(tol, name)
    if not t <= 0.5:
        raise ValueError(f"{name}: expected a number in (0, 0.5], got {t}")
    return t


def check_estep_tol(tol) -> float:
    """``cpd``'s ``estep_tol`` validated: a number in (0, 0.5]."""
    return _tol(tol, "estep_tol")


def estep_method(requested: str, M: int, N: int) -> str:
    """The method the CPU E-step of :func:`xmodal.cpd` runs with: "auto" becomes "exact" below
    ``AUTO_MIN_PAIRS`` pairs (M N), where the exact kernel costs little and results stay those of
    the exact E-step; larger problems keep "auto" (the per-iteration cost rule of the kernel)."""
    if requested == "auto" and M * N < AUTO_MIN_PAIRS:
        return "exact"
    return requested


def _max_cells(max_cells) -> int:
    if max_cells is None:
        return 0
    return positive_int(max_cells, "max_cells", minimum=64)


def fast_estep(fixed, moved, sigma2: float, *, weights=None, c: float = 0.0, cutoff: float = 36.0,
               method: str = "auto", tol: float = ESTEP_TOL, max_cells: int | None = None,
               want_best: bool = True, want_bounds: bool = False, dtype=None) -> EStepResult:
    """CPD E-step with a sub-quadratic path for wide Gaussians.

    ``P[m, n] = a_m k_mn / s_n`` with ``k_mn = exp(-|x_n - y_m|^2 / (2 sigma2))`` and
    ``s_n = sum_m a_m k_mn + c`` (the notation of ``xmodal/cpd.hpp``).

    Parameters
    ----------
    fixed : array (N, d)
        Fixed points x_n, d = 2 or 3.
    moved : array (M, d)
        Transformed moving points y_m.
    sigma2 : float > 0
        Gaussian variance (squared units of the points).
    weights : array (M,), optional
        Prior weights a_m >= 0 (1 when absent).
    c : float >= 0
        Outlier constant.
    cutoff : float > 0
        Truncation of the exact sums (pairs with d^2 > 2 sigma2 cutoff are skipped, as in the
        exact kernel); ``inf`` for dense exact sums.
    method : {"auto", "exact", "fast"}
        "exact": the exact truncated kernel. "fast": the grid whenever a grid with q = sigma/h >=
        0.75 fits in ``max_cells`` (exact otherwise). "auto": the grid when its a priori bound
        meets ``tol`` within ``max_cells`` and its cost model beats the exact kernel's.
    tol : float in (0, 0.5]
        Bound on the relative error of every s_n (tol/2) and P1_m (tol/2 plus the s_n part) and on
        the posterior mean's displacement (tol sigma); points whose bound exceeds it are summed
        exactly.
    max_cells : int, optional
        Grid size cap (default 4 (M + N), at least 4096); a larger box coarsens h (reported).
    want_best, want_bounds : bool
        Compute the best match / the per-point bounds.
    dtype : None, float32 or float64
        Kernel precision (None: float32 when both inputs are float32).

    Returns
    -------
    EStepResult
    """
    from .. import _core

    dt = float_dtype(dtype, fixed, moved)
    X = as_points(fixed, "fixed", dtype=dt)
    Y = as_points(moved, "moved", dtype=dt)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"fixed, moved: expected the same dimension d, got {X.shape[1]} and {Y.shape[1]}")
    sigma2 = positive_float(sigma2, "sigma2")
    c = positive_float(c, "c", allow_zero=True)
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not (float(cutoff) > 0):
        raise ValueError(f"cutoff: expected a positive number or inf, got {describe(cutoff)}")
    choice(method, "method", METHODS)
    tol = _tol(tol)
    mc = _max_cells(max_cells)
    want_best = as_bool(want_best, "want_best")
    want_bounds = as_bool(want_bounds, "want_bounds")
    w = None
    if weights is not None:
        w = np.asarray(weights)
        if w.shape != (Y.shape[0],):
            raise ValueError(f"weights: expected shape ({Y.shape[0]},) (one per moving point), got {w.shape}")
        w = np.ascontiguousarray(w, dtype=dt)
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("weights: expected finite values >= 0")
    out = _core.cpd_estep_fast(X, Y, w, sigma2, c, float(cutoff), method, tol, mc, want_best, want_bounds)
    return EStepResult(P1=out["P1"], Pt1=out["Pt1"], PX=out["PX"], log_s=out["log_s"],
                       log_s_sum=float(out["log_s_sum"]), best=out["best_idx"] if want_best else None,
                       best_prob=out["best_prob"] if want_best else None,
                       bound_s=out["bound_s"] if want_bounds else None,
                       bound_p1=out["bound_p1"] if want_bounds else None,
                       bound_px=out["bound_px"] if want_bounds else None, info=dict(out["stats"]))


def grid_error_bound(q: float, *, order: int = 3, d: int = 3, tol: float | None = None,
                     reach: float | None = None) -> dict:
    """Error envelope of the grid Gauss transform at ``q = sigma / h``.

    Returns a dict: ``dense_rel`` (bound on the relative error of a Gauss sum over a uniform
    density of sources), ``dense_rel_dist`` (the same for the centred first moment, units of
    sigma), ``env`` / ``env_dist`` on ``radii`` (peak-normalised bounds on |K - G| for pairs at
    infinity-norm distance >= radii * sigma), ``sup_1d``, ``taps`` (the convolution kernel),
    ``reach`` (R: taps up to ceil(R q); from ``tol`` when not given, as the E-step picks it).
    Any other point distribution gets its own per-point bound from :func:`fast_estep`.
    """
    from .. import _core

    q = positive_float(q, "q")
    if not 0.25 <= q <= 64:
        raise ValueError(f"q: expected a number in [0.25, 64], got {q}")
    if isinstance(order, bool) or order not in (3, 5):
        raise ValueError(f"order: expected 3 (cubic) or 5 (quintic), got {order!r}")
    if isinstance(d, bool) or d not in (1, 2, 3):
        raise ValueError(f"d: expected 1, 2 or 3, got {d!r}")
    if reach is None:
        t = ESTEP_TOL if tol is None else _tol(tol)
        r = _core.cpd_grid_reach_for_tol(t)
        # the E-step rounds the reach up to its table levels
        reach = next((v for v in _REACH_LEVELS if v >= r - 1e-12), _REACH_LEVELS[-1])
    reach = positive_float(reach, "reach")
    if not 1 <= reach <= 16:
        raise ValueError(f"reach: expected a number in [1, 16], got {reach}")
    return dict(_core.cpd_grid_error_profile(int(order), float(q), float(reach), int(d)))


def voxel_subsample(points, n: int | None = None, *, voxel: float | None = None):
    """Spatially uniform subsample: per occupied cell of a voxel grid the point nearest its centre.

    Parameters
    ----------
    points : array (P, d)
        d = 2 or 3.
    n : int, optional
        Target count: the voxel edge is searched so that at most ``n`` points (and, where the
        counts allow, at least 0.9 n) are kept.
    voxel : float, optional
        The voxel edge (input units) instead of ``n``.

    Returns
    -------
    (indices, voxel) : sorted int64 indices into ``points`` and the edge used.
    """
    from .. import _core

    if (n is None) == (voxel is None):
        raise ValueError("voxel_subsample: give exactly one of n (a target count) or voxel (an edge length)")
    dt = float_dtype(None, points)
    P = as_points(points, "points", dtype=dt)
    target = 0 if n is None else positive_int(n, "n")
    v = 0.0 if voxel is None else positive_float(voxel, "voxel")
    out = _core.voxel_subsample(P, target, v)
    return out["indices"], float(out["voxel"])


def gauss_transform(centers, coefficients, points, beta: float, *, method: str = "auto", tol: float = 1e-6,
                    max_cells: int | None = None, dtype=None):
    """``out[q] = sum_k exp(-|p_q - c_k|^2 / (2 beta^2)) coefficients[k]`` with an error bound.

    "auto" picks the cheaper of the grid (absolute error per point <= the returned bound, which is
    at most about tol times the coefficients' magnitude in reach) and the exact sums truncated at
    36 (``cpd_gauss_transform``). Returns ``(out (Q, d), bound (Q,), info)``.
    """
    from .. import _core

    dt = float_dtype(dtype, centers, points)
    C = as_points(centers, "centers", dtype=dt)
    P = as_points(points, "points", dtype=dt)
    W = np.asarray(coefficients)
    if W.shape != C.shape:
        raise ValueError(f"coefficients: expected shape {C.shape} (one vector per centre), got {W.shape}")
    W = np.ascontiguousarray(W, dtype=dt)
    if not np.isfinite(W).all():
        raise ValueError("coefficients: expected finite values")
    if P.shape[1] != C.shape[1]:
        raise ValueError(f"centers, points: expected the same dimension d, got {C.shape[1]} and {P.shape[1]}")
    beta = positive_float(beta, "beta")
    choice(method, "method", METHODS)
    tol = _tol(tol)
    out = _core.cpd_gauss_transform_fast(C, W, P, beta, method, tol, _max_cells(max_cells))
    info = {k: out[k] for k in ("method", "order", "q", "cells", "max_abs")}
    return out["values"], out["bound"], info


def expected_grid_reach(tol: float) -> float:
    """Kernel reach R (units of sigma) used for ``tol`` before rounding to the table levels."""
    from .. import _core

    return float(_core.cpd_grid_reach_for_tol(_tol(tol)))


__all__ = ["EStepResult", "fast_estep", "grid_error_bound", "voxel_subsample", "gauss_transform", "ESTEP_TOL",
           "expected_grid_reach", "estep_method", "check_estep_tol", "AUTO_MIN_PAIRS"]
