"""Coherent Point Drift (Myronenko & Song 2010): the public entry point.

The dispatcher of the CPD twins: :func:`cpd` validates the options once, then the device's
adapter (``_cpd_cpu.py``: numpy and xmodal._core; ``_cpd_cuda.py``: cupy and xmodal._cuda)
converts and validates the points and provides the E-step, and the EM loop (``_em.py``, with the
M-steps of ``_mstep.py``) runs the same on either device.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Callable

import numpy as np

from .._device import array_namespace, resolve_device, to_host
from .._validation import as_bool, choice, describe, float_dtype, positive_float, positive_int
from ._em import Options, run
from ._fast_estep import ESTEP_TOL, check_estep_tol, estep_method
from ._fast_estep import METHODS as ESTEP_METHODS
from ._mstep import _blas_single, farthest_point_centers
from ._result import CPDResult

__all__ = ["cpd", "CPDResult", "farthest_point_centers"]

TRANSFORMS = ("rigid", "similarity", "affine", "deformable")


def cpd(moving, fixed, *, transform: str = "rigid", w: float = 0.0, beta: float = 2.0, lam: float = 2.0,
        max_iter: int = 150, tol: float = 1e-5, sigma2: float | None = None, landmarks=None,
        landmark_weight: float = 10.0, device: str = "auto", dtype=None, low_rank: int | bool | None = None,
        callback: Callable | None = None, scale: float | None = None, weights=None,
        normalize: bool = True, cutoff: float = 36.0, estep: str = "auto",
        estep_tol: float = ESTEP_TOL, xtol: float = 0.0, moving_features=None, fixed_features=None,
        feature_sigma: float = 1.0, _want_match: bool = True) -> CPDResult:
    """Register ``moving`` onto ``fixed`` by Coherent Point Drift.

    The moving points are the centroids of a Gaussian mixture (equal variance ``sigma2``) plus a
    uniform outlier component of weight ``w``; EM alternates the posterior of the correspondences
    (E-step, computed natively without the M x N matrix) and the transform (M-step, closed form
    for rigid / similarity / affine, a regularised linear solve for deformable).

    Parameters
    ----------
    moving : array (M, d)
        Points to transform, d = 2 or 3, physical units (e.g. µm), axis order as ``fixed``.
        A CUDA array (cupy, torch on cuda) runs on the GPU and returns the same kind.
    fixed : array (N, d)
        Target points, same units and axis order.
    transform : {"rigid", "similarity", "affine", "deformable"}
        Rigid and similarity give proper rotations (det = +1).
    w : float in [0, 1)
        Outlier weight of the uniform component.
    beta : float > 0
        Deformable: width of the Gaussian kernel of the displacement field, in input units.
    lam : float > 0
        Deformable: regularisation weight, with the meaning of pycpd's ``alpha`` / probreg's
        ``lmd`` for the same (unnormalised) coordinates: the M-step solves
        ``(G + lam * sigma2 * diag(P1)^-1) W = diag(P1)^-1 PX - Y`` in input units.
    max_iter : int >= 1
        Maximum EM iterations.
    tol : float >= 0
        Stop when the relative change of the objective (negative log-likelihood) is below ``tol``.
    xtol : float >= 0
        Also stop (``converged``, ``info["stop"] == "converged"``, ``info["stop_rule"] == "xtol"``)
        after an iteration in which no moving point moved by more than ``xtol * sigma`` (sigma =
        sqrt(sigma2) of that iteration's E-step): the transform has stopped changing on the scale
        of the posterior's width. 0 (default) disables the rule.
    moving_features, fixed_features : array (M, f) and (N, f), optional
        Per-point features (colour channels, size, intensity; both or neither) that make CPD a
        "colour" CPD: each mixture component is the product of the spatial Gaussian and a feature
        Gaussian, so the E-step's kernel becomes
        ``exp(-|x_n - T(y_m)|^2 / (2 sigma2) - |f_n - g_m|^2 / (2 feature_sigma^2))`` (the outlier
        component unchanged). The features are not transformed and steer only which points are
        paired; put them on a common scale first (e.g. normal scores within each set, as
        :func:`xmodal.pipelines.register_cells` does). Exact E-step only (``estep="fast"`` is
        refused): on the CPU ``cpd_estep_features``, with CUDA arrays its twin in ``cuda/cpd.cu``
        (features may be host or device arrays); ``info["estep"]["features"]`` records the columns
        and ``feature_sigma``.
    feature_sigma : float > 0
        Standard deviation of the feature difference of a right pair, per feature column, in the
        features' units (1 by default: standardised features that differ by about one standard
        deviation). Large values make the features irrelevant.
    _want_match : bool
        Internal (``cpd_coarse_to_fine``'s subsample stage, whose matches are discarded): False
        skips the best-match search of every CPU E-step; ``match`` is then -1 and
        ``match_probability`` 0 everywhere. The fit itself is unchanged.
    sigma2 : float, optional
        Initial variance (squared input units); default the mean squared distance between all
        pairs (computed in O(M + N)). Values below the floor (1e-10 of the fixed set's squared
        RMS radius, ``info["sigma2_floor"]``) start from the floor, with a warning.
    landmarks : array (k, 2) of int, optional
        Known correspondences ``(moving_idx, fixed_idx)``; each adds ``landmark_weight`` to the
        posterior of its pair (as probreg's ConstrainedNonRigidCPD), for every transform kind.
    landmark_weight : float > 0
        Weight of a landmark pair, in units of one certain correspondence.
    device : {"auto", "cpu", "cuda"}
        "auto": the GPU when the inputs are CUDA arrays. Both devices run the same E-step
        arithmetic (support, shifts, terms, tie rule; ``cpp/include/xmodal/detail/cpd_arith.hpp``).
    dtype : None, float32 or float64
        Precision of the E-step kernels (the M-step is float64). None: float32 when both inputs
        are float32, else float64.
    low_rank : None, bool or int
        Deformable M-step. False: direct dense solve (O(M^2) memory). An int k: Nyström low-rank
        kernel on k farthest-point centres with a Woodbury solve (O(M k) memory); the field is then
        a Gaussian RBF on those centres. True or None (auto): direct up to 1000 moving points, else
        low rank with centres covering the moving points to within 0.6 beta (at most 1500).
    callback : callable, optional
        Called after every accepted iteration, the last one included, as
        ``callback(iteration=i, sigma2=s2, objective=L, moved=TY)``: ``s2`` and ``L`` are the
        values ``history`` records, ``TY`` the moving points at that iterate in input units (a new
        array each call: numpy, or cupy for CUDA inputs), so the last call's ``TY`` is ``moved`` (in
        float64).
        A step that is reverted (see ``info["stop"]``) is not reported. An exception raised by the
        callback (e.g. KeyboardInterrupt to cancel) propagates out of :func:`cpd` and leaves no state
        behind.
    scale : float, optional
        Similarity: fix the scale to this value instead of estimating it.
    weights : array (M,), optional
        Positive prior weights of the moving points (mixture weights, relative; each at least 1e-15
        of their mean).
    normalize : bool
        Centre each set and scale both by the RMS radius of ``fixed`` before EM (the transform is
        returned in input units). This makes the outlier constant of CPD independent of the units
        and is the guard against the scale collapse with free scale and ``w >= 0.1``; set False to
        reproduce pycpd exactly.
    cutoff : float > 0
        Kernel truncation: terms with ``|x - y|^2 > 2 sigma2 cutoff`` (each below
        ``exp(-cutoff)``) are skipped, the same pairs in both passes of the E-step; ``inf`` gives
        the dense sums. Either way the posterior is exact over its support at any sigma2
        (log-sum-exp denominators; see docs/cpd.md).
    estep : {"auto", "exact", "fast"}
        How the CPU E-step sums (docs/cpd.md, "Fast E-step"). "exact": the truncated exact kernel
        at every iteration. "fast": the grid Gauss transform whenever its grid fits in 4 (M + N)
        cells (sigma wide against the point spacing), exact sums otherwise and for the points whose
        error bound exceeds ``estep_tol``. "auto": exact when M N < 2.5e7 (results identical to
        "exact"); otherwise, per iteration, the grid when its a priori bound meets ``estep_tol``
        and its cost model beats the exact kernel's (early iterations, large sigma2), else exact.
        The GPU runs the exact kernel ("fast" is refused there). What ran and the error bounds
        reached are in ``info["estep"]``.
    estep_tol : float in (0, 0.5]
        Error bound of the fast E-step (dimensionless): every denominator s_n within a relative
        ``estep_tol / 2``, every P1_m within ``estep_tol / 2`` plus the s_n part, and every
        posterior mean ``PX_m / P1_m`` within ``estep_tol * sigma`` (sigma = sqrt(sigma2), input
        units), each guaranteed per point (points whose bound is larger are summed exactly).

    Returns
    -------
    CPDResult
    """
    t_start = time.perf_counter()
    opt = _options(transform=transform, w=w, beta=beta, lam=lam, max_iter=max_iter, tol=tol, sigma2=sigma2,
                   landmark_weight=landmark_weight, low_rank=low_rank, callback=callback, scale=scale,
                   normalize=normalize, cutoff=cutoff, estep=estep, estep_tol=estep_tol)
    opt.xtol = positive_float(xtol, "xtol", allow_zero=True)
    want_match = as_bool(_want_match, "_want_match")
    on_gpu = resolve_device(device, moving, fixed) == "cuda"
    if on_gpu and opt.estep == "fast":
        raise ValueError("estep: 'fast' runs on the CPU only (the GPU E-step is exact); use estep='auto' or "
                         "'exact' with CUDA arrays, or device='cpu'")
    if on_gpu:
        from . import _cpd_cuda as backend
    else:
        from . import _cpd_cpu as backend
    opt.dtype = float_dtype(dtype, moving, fixed)
    opt.device = "cuda" if on_gpu else "cpu"
    kind = backend.input_kind(moving, fixed) if on_gpu else "numpy"
    Y = backend.points(moving, "moving")
    X = backend.points(fixed, "fixed")
    _validate_sets(Y, X)
    M, N = Y.shape[0], X.shape[0]
    opt.landmarks = _check_landmarks(landmarks, M, N)
    opt.weights = _check_weights(weights, M)
    feats = _check_features(moving_features, fixed_features, M, N, feature_sigma)
    if feats is not None and opt.estep == "fast":
        raise ValueError("moving_features: CPD with features runs with the exact E-step; got estep='fast' "
                         "(use estep='auto' or 'exact')")
    if feats is not None and on_gpu:
        factory = lambda Xn, wts: backend.EStep(Xn, opt.dtype, wts, opt.cutoff, features=feats)  # noqa: E731
    elif feats is not None:
        factory = lambda Xn, wts: backend.EStep(Xn, opt.dtype, wts, opt.cutoff, method="exact",  # noqa: E731
                                                want_best=want_match, features=feats)
    elif on_gpu:
        factory = lambda Xn, wts: backend.EStep(Xn, opt.dtype, wts, opt.cutoff)  # noqa: E731
    else:
        factory = lambda Xn, wts: backend.EStep(Xn, opt.dtype, wts, opt.cutoff, method=estep_method(  # noqa: E731
            opt.estep, M, N), tol=opt.estep_tol, want_best=want_match)
    if on_gpu:
        res = run(Y, X, opt, factory, t_start)
    else:
        # BLAS on one thread for the whole CPU run: the M-steps' products are small (d x d from
        # M x d; rank x rank factorisations; direct solves of at most 1,000 points, ~20 % slower
        # alone on one thread) or split over xmodal's threads (the Nystrom Gram), and a threaded
        # BLAS's idle workers spin beside the OpenMP E-step's threads: a quarter of the CPU time
        # of a 20k-point rigid fit on 2 cores went to OpenBLAS's idle loop, and register_cells'
        # model selection on 400-cell embryos took 10.7 s a pair instead of 3.0
        with _blas_single():
            res = run(Y, X, opt, factory, t_start)
    return backend.finish(res, kind)


def _options(*, transform, w, beta, lam, max_iter, tol, sigma2, landmark_weight, low_rank, callback, scale, normalize,
             cutoff, estep="exact", estep_tol=ESTEP_TOL) -> Options:
    """The scalar options, validated once for both devices (points, landmarks and weights follow
    once the points are converted)."""
    choice(transform, "transform", TRANSFORMS)
    choice(estep, "estep", ESTEP_METHODS)
    estep_tol = check_estep_tol(estep_tol)
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (0.0 <= float(w) < 1.0):
        raise ValueError(f"w: expected a number in [0, 1), got {describe(w)}")
    if cutoff != math.inf:
        cutoff = positive_float(cutoff, "cutoff")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {describe(callback)}")
    if low_rank is not None and not isinstance(low_rank, (bool, numbers.Integral)):
        raise TypeError(f"low_rank: expected None, a bool or an integer rank, got {describe(low_rank)}")
    if isinstance(low_rank, numbers.Integral) and not isinstance(low_rank, bool) and low_rank < 1:
        raise ValueError(f"low_rank: expected a rank >= 1, got {low_rank}")
    scale = positive_float(scale, "scale", allow_none=True)
    if scale is not None and transform != "similarity":
        raise ValueError(f"scale: only used with transform='similarity', got transform={transform!r}")
    return Options(transform=transform, w=float(w), beta=positive_float(beta, "beta"), lam=positive_float(lam, "lam"),
                   max_iter=positive_int(max_iter, "max_iter"), tol=positive_float(tol, "tol", allow_zero=True),
                   sigma2=positive_float(sigma2, "sigma2", allow_none=True), landmarks=None,
                   landmark_weight=positive_float(landmark_weight, "landmark_weight"), low_rank=low_rank,
                   callback=callback, scale=scale, weights=None, normalize=as_bool(normalize, "normalize"),
                   cutoff=float(cutoff), dtype=np.dtype(np.float64), device="cpu", estep=estep, estep_tol=estep_tol)


# ----------------------------------------------------------------------------- validation
def _check_landmarks(landmarks, M: int, N: int):
    if landmarks is None:
        return None
    a = np.asarray(landmarks)
    if a.size == 0:
        return None
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"landmarks: expected integer (moving_idx, fixed_idx) pairs, got {describe(landmarks)}")
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"landmarks: expected a (k, 2) array of (moving_idx, fixed_idx) pairs, got shape {a.shape}")
    a = a.astype(np.int64)
    if a[:, 0].min() < 0 or a[:, 0].max() >= M:
        raise ValueError(f"landmarks: moving indices must lie in [0, {M}), got range [{a[:, 0].min()}, {a[:, 0].max()}]")
    if a[:, 1].min() < 0 or a[:, 1].max() >= N:
        raise ValueError(f"landmarks: fixed indices must lie in [0, {N}), got range [{a[:, 1].min()}, {a[:, 1].max()}]")
    return a


def _check_weights(weights, M: int):
    """Positive finite prior weights, one per moving point, scaled to mean 1 (float64 numpy)."""
    if weights is None:
        return None
    wts = np.asarray(to_host(weights) if hasattr(weights, "get") else weights, dtype=np.float64)
    if wts.shape != (M,):
        raise ValueError(f"weights: expected shape ({M},) (one per moving point), got {wts.shape}")
    if not (np.all(np.isfinite(wts)) and np.all(wts > 0)):
        raise ValueError("weights: expected positive finite values")
    wts = wts / wts.mean()
    if wts.min() < 1e-15:  # the E-step's denominators stay finite above ~1e-18 (float32)
        raise ValueError(f"weights: expected values within 1e15 of their mean, got a smallest of {wts.min():.3g} "
                         "times the mean")
    return wts


def _check_features(moving_features, fixed_features, M: int, N: int, feature_sigma):
    """None without features, else (fixed (N, f), moving (M, f), 1 / (2 feature_sigma^2)) as float64
    numpy; clear errors for one set missing, wrong shapes, non-finite values or a bad sigma."""
    if moving_features is None and fixed_features is None:
        return None
    if moving_features is None or fixed_features is None:
        missing = "moving_features" if moving_features is None else "fixed_features"
        raise ValueError(f"{missing}: features are needed for both sets (or neither), got only the other set's")
    sigma = positive_float(feature_sigma, "feature_sigma")
    out = []
    for name, f, n in (("fixed_features", fixed_features, N), ("moving_features", moving_features, M)):
        a = np.asarray(to_host(f) if hasattr(f, "get") else f)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric (n, f) array, got {describe(f)}")
        a = a.astype(np.float64).reshape(len(a), -1) if a.ndim == 1 else a.astype(np.float64)
        if a.ndim != 2 or a.shape[0] != n or a.shape[1] == 0:
            raise ValueError(f"{name}: expected shape ({n}, f) with f >= 1 (one row per point), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: expected finite values, got NaN or inf in row "
                             f"{int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])}")
        out.append(np.ascontiguousarray(a))
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"moving_features: expected {out[0].shape[1]} columns (as fixed_features), got "
                         f"{out[1].shape[1]}")
    return out[0], out[1], 1.0 / (2.0 * sigma * sigma)


def _validate_sets(Y, X):
    if Y.shape[1] != X.shape[1]:
        raise ValueError(f"moving, fixed: expected the same dimension d, got {Y.shape[1]} and {X.shape[1]}")
    d = X.shape[1]
    for p, name in ((Y, "moving"), (X, "fixed")):
        if p.shape[0] < d + 1:
            raise ValueError(f"{name}: expected at least d + 1 = {d + 1} points, got {p.shape[0]}")
        xp = array_namespace(p)
        if bool(xp.all(xp.ptp(p, axis=0) == 0)):
            raise ValueError(f"{name}: all {p.shape[0]} points are identical; CPD needs spread-out points")
