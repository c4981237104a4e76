"""Coherent Point Drift (Myronenko & Song 2010) on the native E-step of xmodal._core."""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._device import is_cuda_array, resolve_device
from .._validation import as_bool, as_points, choice, describe, positive_float, positive_int
from .transforms import AffineTransform, DeformableTransform, RigidTransform, SimilarityTransform

log = logging.getLogger("xmodal.registration")

TRANSFORMS = ("rigid", "similarity", "affine", "deformable")
#: Below this many moving points the deformable M-step is a direct dense solve.
DIRECT_MAX_POINTS = 1000
#: sigma2 floor in normalised units (coordinates scaled to unit RMS radius).
SIGMA2_FLOOR = 1e-10


@dataclass
class CPDResult:
    """Result of :func:`cpd`.

    Attributes
    ----------
    moved : array (M, d)
        The moving points after the estimated transform (same kind and dtype as the E-step:
        numpy, or the CUDA array kind of the input).
    transform : RigidTransform | SimilarityTransform | AffineTransform | DeformableTransform
        The estimated transform, in the units of the input (moving -> fixed space).
    sigma2 : float
        Final Gaussian variance, in squared input units.
    iterations : int
        EM iterations run.
    converged : bool
        Whether the relative change of the objective fell below ``tol``, or sigma2 reached its
        floor because the sets match exactly (a step checked before it is accepted; see
        ``info["stop"]``).
    match : ndarray of int64 (M,)
        For each moving point, the fixed point with the largest posterior ``P[m, n]`` in the last
        E-step (-1 when it has none within the truncation radius).
    match_probability : ndarray (M,)
        That posterior probability (in [0, 1]).
    objective : float
        Final negative log-likelihood (up to constants; plus the deformable regulariser).
    history : dict
        Per iteration ``sigma2`` (input units) and ``objective``.
    warnings : list of str
        Degenerate situations met (initial sigma2 below the floor, sigma2 collapse, non-finite or
        failed M-step reverted, no support, ...).
    info : dict
        Diagnostics: ``w``, ``normalize_scale``, M-step ``solver``, ``rank``, kernel ``pairs``
        evaluated, ``seconds`` (e-step, m-step, total), ``dtype``, ``device``, ``sigma2_floor``
        (squared input units), ``stop`` (why EM stopped: ``"converged"``, ``"max_iter"``,
        ``"sigma2_collapse"``, ``"sigma2_collapse_rejected"``, ``"m_step_failed"``,
        ``"non_finite_update"``, ``"no_support"``, ``"scale_degenerate"``) and, after a failed
        M-step, ``m_step_error``. Whenever a step is rejected, the transform returned is the
        previous iterate's.
    """

    moved: Any
    transform: Any
    sigma2: float
    iterations: int
    converged: bool
    match: np.ndarray
    match_probability: np.ndarray
    objective: float
    history: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    _posterior: Any = field(default=None, repr=False, compare=False)

    def correspondence_matrix(self, k: int = 5):
        """Sparse ``(M, N)`` posterior ``P[m, n]`` at the final transform and sigma2, restricted to
        the ``k`` nearest fixed points of each moving point (scipy.sparse CSR, float64).

        The denominators are the full (truncated only below ``exp(-cutoff)``) sums, so the stored
        entries are exact posteriors; the entries left out are those of farther points. CPU only.
        """
        k = positive_int(k, "k")
        if self._posterior is None:
            raise NotImplementedError("correspondence_matrix is available for CPU runs only")
        return self._posterior(k)

    def correspondences(self, *, min_probability: float = 0.0):
        """``(moving_idx, fixed_idx, probability)`` of the best matches above ``min_probability``."""
        keep = (self.match >= 0) & (self.match_probability > min_probability)
        idx = np.flatnonzero(keep)
        return idx, self.match[idx], self.match_probability[idx]


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


def _check_dtype(dtype, moving, fixed):
    if dtype is None:
        both32 = getattr(moving, "dtype", None) == np.float32 and getattr(fixed, "dtype", None) == np.float32
        return np.dtype(np.float32) if both32 else np.dtype(np.float64)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected None, float32 or float64, got {dtype!r}") from exc
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected None, float32 or float64, got {dt}")
    return dt


def _spread_check(p: np.ndarray, name: str):
    xp = _xp_of(p)
    if bool(xp.all(xp.ptp(p, axis=0) == 0)):
        raise ValueError(f"{name}: all {p.shape[0]} points are identical; CPD needs spread-out points")


# ----------------------------------------------------------------------------- helpers
def _xp_of(a):
    """numpy, or cupy for cupy arrays."""
    if isinstance(a, np.ndarray):
        return np
    import cupy  # only reached for device arrays

    return cupy


def _h(a) -> np.ndarray:
    """To host (numpy) for small arrays (d x d, d)."""
    return a if isinstance(a, np.ndarray) else a.get()


def _add_at(xp, a, idx, v):
    if xp is np:
        np.add.at(a, idx, v)
    else:
        import cupyx

        cupyx.scatter_add(a, idx, v)


def _gauss(a, b, beta: float):
    xp = _xp_of(a)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    d2 = xp.maximum(d2, 0.0)
    return xp.exp(-d2 / (2.0 * beta * beta))


def farthest_point_centers(points: np.ndarray, k: int | None = None, *, radius: float | None = None,
                           max_k: int = 1500) -> np.ndarray:
    """Indices of centres picked by farthest-point sampling (deterministic).

    Starts at the point nearest the centroid; stops after ``k`` centres, or (``radius`` given)
    once every point lies within ``radius`` of a centre, or at ``max_k``.
    """
    xp = _xp_of(points)
    n = points.shape[0]
    limit = n if k is None else min(int(k), n)
    limit = min(limit, max_k) if k is None else limit
    first = int(xp.argmin(((points - points.mean(0)) ** 2).sum(1)))
    chosen = [first]
    d2 = ((points - points[first]) ** 2).sum(1)
    r2 = None if radius is None else radius * radius
    while len(chosen) < limit:
        nxt = int(xp.argmax(d2))
        if r2 is not None and float(d2[nxt]) <= r2:
            break
        chosen.append(nxt)
        d2 = xp.minimum(d2, ((points - points[nxt]) ** 2).sum(1))
    return np.asarray(chosen, dtype=np.int64)


class _NumpyEStep:
    """E-step on the CPU kernels (float32 or float64 inside, float64 out)."""

    def __init__(self, X: np.ndarray, dtype, weights, cutoff: float):
        from .. import _core

        self.dtype = dtype
        self.X = np.ascontiguousarray(X, dtype=dtype)
        self.w = None if weights is None else np.ascontiguousarray(weights, dtype=dtype)
        self.fn = _core.cpd_estep_f32 if dtype == np.float32 else _core.cpd_estep
        self.cutoff = cutoff
        self.pairs = 0

    def __call__(self, TY: np.ndarray, sigma2: float, c: float):
        P1, Pt1, PX, best, prob, logsum, pairs, empty, _, _ = self.fn(
            self.X, np.ascontiguousarray(TY, dtype=self.dtype), self.w, sigma2, c, self.cutoff, True)
        self.pairs += int(pairs)
        return (P1.astype(np.float64), Pt1.astype(np.float64), PX.astype(np.float64), best,
                prob.astype(np.float64), float(logsum), int(empty))


# ----------------------------------------------------------------------------- public entry
def cpd(moving, fixed, *, transform: str = "rigid", w: float = 0.0, beta: float = 2.0, lam: float = 2.0,
        max_iter: int = 150, tol: float = 1e-5, sigma2: float | None = None, landmarks=None,
        landmark_weight: float = 10.0, device: str = "auto", dtype=None, low_rank: int | bool | None = None,
        callback: Callable | None = None, scale: float | None = None, weights=None,
        normalize: bool = True, cutoff: float = 36.0) -> CPDResult:
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
        "auto": the GPU when the inputs are CUDA arrays.
    dtype : None, float32 or float64
        Precision of the E-step kernels (the M-step is float64). None: float32 when both inputs
        are float32, else float64.
    low_rank : None, bool or int
        Deformable M-step. False: direct dense solve (O(M^2) memory). An int k: Nyström low-rank
        kernel on k farthest-point centres with a Woodbury solve (O(M k) memory); the field is then
        a Gaussian RBF on those centres. True or None (auto): direct up to 1000 moving points, else
        low rank with centres covering the moving points to within 0.6 beta (at most 1500).
    callback : callable, optional
        Called after every iteration as ``callback(iteration=i, sigma2=s2, objective=L, moved=TY)``
        (TY in input units, numpy).
    scale : float, optional
        Similarity: fix the scale to this value instead of estimating it.
    weights : array (M,), optional
        Positive prior weights of the moving points (mixture weights, relative).
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

    Returns
    -------
    CPDResult
    """
    t_start = time.perf_counter()
    choice(transform, "transform", TRANSFORMS)
    normalize = as_bool(normalize, "normalize")
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (0.0 <= float(w) < 1.0):
        raise ValueError(f"w: expected a number in [0, 1), got {describe(w)}")
    w = float(w)
    beta = positive_float(beta, "beta")
    lam = positive_float(lam, "lam")
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive_float(tol, "tol", allow_zero=True)
    sigma2 = positive_float(sigma2, "sigma2", allow_none=True)
    landmark_weight = positive_float(landmark_weight, "landmark_weight")
    scale = positive_float(scale, "scale", allow_none=True)
    if cutoff != math.inf:
        cutoff = positive_float(cutoff, "cutoff")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {describe(callback)}")
    if low_rank is not None and not isinstance(low_rank, (bool, numbers.Integral)):
        raise TypeError(f"low_rank: expected None, a bool or an integer rank, got {describe(low_rank)}")
    if isinstance(low_rank, numbers.Integral) and not isinstance(low_rank, bool) and low_rank < 1:
        raise ValueError(f"low_rank: expected a rank >= 1, got {low_rank}")
    dev = resolve_device(device, moving, fixed)
    if dev == "cuda" or is_cuda_array(moving) or is_cuda_array(fixed):
        from ._cuda_cpd import cpd_cuda

        return cpd_cuda(moving, fixed, transform=transform, w=w, beta=beta, lam=lam, max_iter=max_iter,
                        tol=tol, sigma2=sigma2, landmarks=landmarks, landmark_weight=landmark_weight,
                        dtype=dtype, low_rank=low_rank, callback=callback, scale=scale, weights=weights,
                        normalize=normalize, cutoff=cutoff)
    dt = _check_dtype(dtype, moving, fixed)
    Y = as_points(moving, "moving")
    X = as_points(fixed, "fixed")
    return _run(Y, X, transform=transform, w=w, beta=beta, lam=lam, max_iter=max_iter, tol=tol,
                sigma2=sigma2, landmarks=landmarks, landmark_weight=landmark_weight, dtype=dt,
                low_rank=low_rank, callback=callback, scale=scale, weights=weights, normalize=normalize,
                cutoff=cutoff, estep_factory=lambda Xn, wts: _NumpyEStep(Xn, dt, wts, cutoff),
                device="cpu", t_start=t_start)


def _validate_sets(Y: np.ndarray, X: np.ndarray):
    if Y.shape[1] != X.shape[1]:
        raise ValueError(f"moving, fixed: expected the same dimension d, got {Y.shape[1]} and {X.shape[1]}")
    d = X.shape[1]
    for p, name in ((Y, "moving"), (X, "fixed")):
        if p.shape[0] < d + 1:
            raise ValueError(f"{name}: expected at least d + 1 = {d + 1} points, got {p.shape[0]}")
        _spread_check(p, name)


def _run(Y, X, *, transform, w, beta, lam, max_iter, tol, sigma2, landmarks, landmark_weight, dtype,
         low_rank, callback, scale, weights, normalize, cutoff, estep_factory, device, t_start):
    _validate_sets(Y, X)
    M, D = Y.shape
    N = X.shape[0]
    lm = _check_landmarks(landmarks, M, N)
    if weights is not None:
        wts = np.asarray(weights.get() if hasattr(weights, "get") else weights, dtype=np.float64)
        if wts.shape != (M,):
            raise ValueError(f"weights: expected shape ({M},) (one per moving point), got {wts.shape}")
        if not (np.all(np.isfinite(wts)) and np.all(wts > 0)):
            raise ValueError("weights: expected positive finite values")
        wts = wts / wts.mean()
    else:
        wts = None
    if scale is not None and transform != "similarity":
        raise ValueError(f"scale: only used with transform='similarity', got transform={transform!r}")

    xp = _xp_of(X)
    # Normalisation: centre each set, scale both by the RMS radius of the fixed set.
    if normalize:
        xm, ym = _h(X.mean(0)), _h(Y.mean(0))
        s0 = float(xp.sqrt(((X - xp.asarray(xm)) ** 2).sum(1).mean()))
    else:
        xm, ym, s0 = np.zeros(D), np.zeros(D), 1.0
    Xn = (X - xp.asarray(xm)) / s0
    Yn = (Y - xp.asarray(ym)) / s0
    beta_n = beta / s0
    lam_n = lam * s0 * s0
    # sigma2 floor: relative to the spread of the fixed set (unit-independent, also unnormalised).
    spread2 = float(((Xn - Xn.mean(0)) ** 2).sum(1).mean())
    floor = SIGMA2_FLOOR * spread2
    warnings_: list[str] = []
    if sigma2 is None:
        s2 = float(M * (Xn * Xn).sum() + N * (Yn * Yn).sum() - 2.0 * Xn.sum(0) @ Yn.sum(0)) / (D * M * N)
    else:
        s2 = sigma2 / (s0 * s0)
    s2 = float(s2)
    if not s2 >= floor:  # also catches an underflow to 0 of sigma2 / s0^2
        warnings_.append(f"sigma2: the initial value {s2 * s0 * s0:.3g} (squared input units) is below the floor "
                         f"{floor * s0 * s0:.3g} (1e-10 of the fixed set's squared RMS radius) that EM resolves; "
                         "started from the floor, where the E-step already is a nearest-neighbour assignment")
        s2 = floor
    estep = estep_factory(Xn, wts)
    info = {"w": w, "normalize_scale": s0, "dtype": str(np.dtype(dtype)), "device": device,
            "transform": transform, "sigma2_floor": floor * s0 * s0}

    # Transform state (normalised units).
    B = np.eye(D)
    t = np.zeros(D)
    s_sim = 1.0 if scale is None else float(scale)
    TY = Yn.copy() if scale is None else Yn * s_sim
    deform = None
    if transform == "deformable":
        deform = _DeformableSolver(Yn, beta_n, lam_n, low_rank)
        info["solver"] = deform.solver
        info["rank"] = deform.rank
    hist_s2, hist_L = [], []
    L_prev = None
    converged = False
    stop = "max_iter"
    t_e = t_m = 0.0
    it = 0
    best = xp.full(M, -1, dtype=xp.int64)
    prob = xp.zeros(M)
    lm_m = lm_f = None
    if lm is not None:
        lm_m, lm_f = xp.asarray(lm[:, 0]), xp.asarray(lm[:, 1])

    def outlier_c(s2_):
        return 0.0 if w == 0 else (2 * math.pi * s2_) ** (D / 2) * w / (1 - w) * M / N

    def landmark_term(TY_, s2_):
        if lm is None:
            return 0.0
        return landmark_weight * float(((Xn[lm_f] - TY_[lm_m]) ** 2).sum()) / (2.0 * s2_)

    L = float("nan")
    reg_prev = 0.0
    for it in range(1, max_iter + 1):
        c = outlier_c(s2)
        t0 = time.perf_counter()
        P1, Pt1, PX, best, prob, logsum, empty = estep(TY, s2, c)
        t_e += time.perf_counter() - t0
        if lm is not None:
            _add_at(xp, P1, lm_m, landmark_weight)
            _add_at(xp, Pt1, lm_f, landmark_weight)
            _add_at(xp, PX, lm_m, landmark_weight * Xn[lm_f])
        Np = float(P1.sum())
        t0 = time.perf_counter()
        if Np <= 1e-12:
            hint = ""
            if math.isfinite(cutoff):
                hint = (f" within the truncation radius sqrt(2 sigma2 cutoff) = {math.sqrt(2 * s2 * cutoff) * s0:.3g} "
                        "(input units); start from a larger sigma2 or use cutoff=inf")
            warnings_.append(f"iteration {it}: no fixed point is explained by the moving points (sum P = {Np:.3g})"
                             f"{hint}; stopped")
            stop = "no_support"
            break
        state = (B.copy(), t.copy(), s_sim, TY.copy(), None if deform is None else deform.snapshot())

        def revert():
            nonlocal B, t, s_sim, TY
            B, t, s_sim, TY, snap = state
            if deform is not None:
                deform.restore(snap)

        reg = 0.0
        try:
            if transform in ("rigid", "similarity"):
                mu_x = _h(Xn.T @ Pt1) / Np
                mu_y = _h(Yn.T @ P1) / Np
                A = _h(PX.T @ Yn) - Np * np.outer(mu_x, mu_y)
                U, _, Vt = np.linalg.svd(A)
                C = np.eye(D)
                C[-1, -1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
                R = U @ C @ Vt
                yPy = float(P1 @ (Yn * Yn).sum(1)) - Np * float(mu_y @ mu_y)
                xPx = float(Pt1 @ (Xn * Xn).sum(1)) - Np * float(mu_x @ mu_x)
                trAR = float(np.trace(A.T @ R))
                if transform == "similarity" and scale is None:
                    new_scale = trAR / yPy if yPy > 0 else 0.0
                    if not (np.isfinite(new_scale) and new_scale > 0):
                        warnings_.append(f"iteration {it}: the scale estimate degenerated ({new_scale:.3g}); "
                                         "kept the previous transform and stopped")
                        stop = "scale_degenerate"
                        break
                    s_sim = new_scale
                elif transform == "rigid":
                    s_sim = 1.0
                B = s_sim * R
                t = mu_x - B @ mu_y
                new_s2 = (xPx - 2.0 * s_sim * trAR + s_sim * s_sim * yPy) / (Np * D)
                TY = Yn @ xp.asarray(B.T) + xp.asarray(t)
            elif transform == "affine":
                mu_x = _h(Xn.T @ Pt1) / Np
                mu_y = _h(Yn.T @ P1) / Np
                A = _h(PX.T @ Yn) - Np * np.outer(mu_x, mu_y)
                YPY = _h((Yn * P1[:, None]).T @ Yn) - Np * np.outer(mu_y, mu_y)
                xPx = float(Pt1 @ (Xn * Xn).sum(1)) - Np * float(mu_x @ mu_x)
                try:
                    B = np.linalg.solve(YPY.T, A.T).T
                except np.linalg.LinAlgError:
                    B = A @ np.linalg.pinv(YPY)
                t = mu_x - B @ mu_y
                new_s2 = (xPx - np.trace(A @ B.T)) / (Np * D)
                TY = Yn @ xp.asarray(B.T) + xp.asarray(t)
            else:
                TY, reg = deform.step(P1, PX, s2)
                new_s2 = float(Pt1 @ (Xn * Xn).sum(1) - 2.0 * (PX * TY).sum() + P1 @ (TY * TY).sum(1)) / (Np * D)
        except np.linalg.LinAlgError as exc:
            revert()
            solver = f" ({info['solver']})" if "solver" in info else ""
            warnings_.append(f"iteration {it}: the {transform} M-step{solver} failed (LinAlgError: {exc}); "
                             "reverted to the previous transform and stopped")
            info["m_step_error"] = f"LinAlgError: {exc}"
            stop = "m_step_failed"
            break
        t_m += time.perf_counter() - t0
        new_s2 = float(new_s2)
        if not (bool(xp.all(xp.isfinite(TY))) and np.isfinite(new_s2) and np.isfinite(reg)):
            revert()
            warnings_.append(f"iteration {it}: non-finite update; reverted to the previous transform and stopped")
            stop = "non_finite_update"
            break
        # Objective of this E-step (before the M-step's sigma2 update).
        L = -logsum + N * D / 2.0 * math.log(s2) + lam_n / 2.0 * reg
        hist_L.append(L)
        if new_s2 <= floor:
            # Check the step before returning it: at this iteration's sigma2 the M-step cannot raise
            # the objective (EM is monotone), so a transform that does came from a broken step.
            t0 = time.perf_counter()
            chk = estep(TY, s2, c)
            t_e += time.perf_counter() - t0
            L_old = -logsum + lam_n / 2.0 * reg_prev + landmark_term(state[3], s2)
            L_new = -chk[5] + lam_n / 2.0 * reg + landmark_term(TY, s2)
            slack = 1e-6 * max(abs(L_old), abs(L_new), float(N))
            if np.isfinite(L_new) and L_new <= L_old + slack:
                best, prob = chk[3], chk[4]
                s2 = floor
                hist_s2.append(s2 * s0 * s0)
                warnings_.append(f"iteration {it}: sigma2 collapsed to the floor {floor * s0 * s0:.3g} "
                                 "(squared input units); the sets match (almost) exactly (step checked: it does "
                                 "not raise the objective at the previous sigma2). Stopped.")
                converged = True
                stop = "sigma2_collapse"
            else:
                revert()
                warnings_.append(f"iteration {it}: sigma2 collapsed to the floor, but the step raises the objective "
                                 f"at the previous sigma2 ({L_old:.6g} -> {L_new:.6g}); reverted to the previous "
                                 "transform and stopped (not converged)")
                stop = "sigma2_collapse_rejected"
            break
        reg_prev = reg
        s2 = new_s2
        hist_s2.append(s2 * s0 * s0)
        if callback is not None:
            callback(iteration=it, sigma2=s2 * s0 * s0, objective=L, moved=TY * s0 + xp.asarray(xm))
        if L_prev is not None and abs(L - L_prev) <= tol * max(abs(L), 1.0):
            converged = True
            stop = "converged"
            break
        L_prev = L
    info["stop"] = stop

    # Transform in input units.
    if transform == "deformable":
        tr = deform.transform(s0, xm, ym, beta, cutoff)
    else:
        translation = xm + s0 * t - B @ ym
        if transform == "affine":
            tr = AffineTransform(B, translation)
        else:
            ss = float(np.cbrt(np.linalg.det(B))) if D == 3 else float(np.sqrt(np.linalg.det(B)))
            R = B / ss
            tr = RigidTransform(R, translation) if transform == "rigid" else SimilarityTransform(R, translation, ss)
    moved = (TY * s0 + xp.asarray(xm)).astype(dtype, copy=False)
    info["pairs"] = getattr(estep, "pairs", None)
    info["seconds"] = {"e_step": t_e, "m_step": t_m, "total": time.perf_counter() - t_start}
    if not converged and it == max_iter:
        log.info("cpd: %d iterations without convergence (tol=%g)", it, tol)
    posterior = None
    if xp is np and hasattr(estep, "fn"):
        c_fin = 0.0 if w == 0 else (2 * math.pi * s2) ** (D / 2) * w / (1 - w) * M / N
        posterior = _TopKPosterior(estep, Xn, TY, s2, c_fin, wts)
    return CPDResult(_posterior=posterior, moved=moved, transform=tr, sigma2=float(s2 * s0 * s0), iterations=it, converged=converged,
                     match=best.astype(xp.int64, copy=False), match_probability=xp.clip(prob, 0.0, 1.0),
                     objective=float(L), history={"sigma2": hist_s2, "objective": hist_L},
                     warnings=warnings_, info=info)


class _TopKPosterior:
    """Posterior restricted to the k nearest fixed points (see CPDResult.correspondence_matrix)."""

    def __init__(self, estep, Xn, TY, s2, c, wts):
        self.estep, self.Xn, self.TY, self.s2, self.c, self.wts = estep, Xn, TY.copy(), s2, c, wts

    def __call__(self, k: int):
        from scipy.sparse import csr_matrix
        from scipy.spatial import cKDTree

        e = self.estep
        out = e.fn(e.X, np.ascontiguousarray(self.TY, dtype=e.dtype), e.w, self.s2, self.c, e.cutoff, False)
        log_s = out[8]
        M, N = self.TY.shape[0], self.Xn.shape[0]
        k = min(k, N)
        d, idx = cKDTree(self.Xn).query(self.TY, k=k)
        d, idx = d.reshape(M, k), idx.reshape(M, k)
        # log P[m, n] = log a_m - d^2 / (2 sigma2) - log s_n, exact where s_n itself underflows;
        # pairs outside the E-step's support (d^2 > 2 sigma2 cutoff) are 0 as in the E-step.
        logk = -(d * d) / (2.0 * self.s2)
        if self.wts is not None:
            logk = logk + np.log(self.wts)[:, None]
        ls = log_s[idx]
        inside = np.isfinite(ls) & (d * d <= 2.0 * self.s2 * e.cutoff)
        p = np.where(inside, np.exp(np.minimum(np.where(inside, logk - ls, -np.inf), 0.0)), 0.0)
        rows = np.repeat(np.arange(M), k)
        return csr_matrix((p.ravel(), (rows, idx.ravel())), shape=(M, N))


def _syrk(A: np.ndarray) -> np.ndarray:
    """A^T A (upper triangle filled; half the flops of a matmul)."""
    from scipy.linalg.blas import dsyrk

    return dsyrk(1.0, np.asfortranarray(A), trans=1, lower=0)


def _spd_solve(K: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve K x = b for a symmetric positive definite K given by its upper triangle."""
    from scipy.linalg import cho_factor, cho_solve

    return cho_solve(cho_factor(K, lower=False, check_finite=False), b, check_finite=False)


def _blas_single():
    """Context limiting BLAS to one thread (threadpoolctl, optional).

    The deformable M-step's BLAS calls are small (rank x rank factorisations, an M x rank syrk)
    and follow the OpenMP E-step: a threaded BLAS pays a thread hand-over far larger than the
    work (measured on a busy 2-core machine: Cholesky of 228 x 228 0.37 s threaded, 2 ms single).
    """
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _DeformableSolver:
    """Deformable M-step in normalised units: direct dense solve or Nyström + Woodbury."""

    def __init__(self, Yn, beta: float, lam: float, low_rank):
        if _xp_of(Yn) is np:
            with _blas_single():
                self._init(Yn, beta, lam, low_rank)
        else:
            self._init(Yn, beta, lam, low_rank)

    def step(self, P1, PX, s2: float):
        if self.xp is np and self.solver != "direct":
            with _blas_single():
                return self._step(P1, PX, s2)
        return self._step(P1, PX, s2)

    def _init(self, Yn, beta: float, lam: float, low_rank):
        self.Y = Yn
        self.beta = beta
        self.lam = lam
        self.xp = xp = _xp_of(Yn)
        M, D = Yn.shape
        direct = low_rank is False or (low_rank in (None, True) and M <= DIRECT_MAX_POINTS)
        if isinstance(low_rank, numbers.Integral) and not isinstance(low_rank, bool):
            direct = False
            k = min(int(low_rank), M)
            self.centers_idx = farthest_point_centers(Yn, k)
        elif not direct:
            self.centers_idx = farthest_point_centers(Yn, radius=0.6 * beta, max_k=1500)
        if direct:
            self.solver = "direct"
            self.G = _gauss(Yn, Yn, beta)
            self.rank = M
            self.W = xp.zeros((M, D))
        else:
            self.solver = "nystrom-woodbury"
            L = Yn[xp.asarray(self.centers_idx)]
            C = _gauss(Yn, L, beta)
            S, U = xp.linalg.eigh(_gauss(L, L, beta))
            keep = S > S.max() * 1e-10
            S, U = S[keep], U[:, keep]
            self.basis = U / xp.sqrt(S)           # k x r: field coefficients = basis @ (F^T W)
            self.F = C @ self.basis               # M x r, G ~= F F^T
            self.rank = int(self.F.shape[1])
            self.Z = xp.zeros((self.rank, D))     # F^T W
        self.GW = xp.zeros((M, D))

    def snapshot(self):
        return (self.GW.copy(), getattr(self, "W", None), getattr(self, "Z", None))

    def restore(self, snap):
        self.GW = snap[0]
        if snap[1] is not None:
            self.W = snap[1]
        if snap[2] is not None:
            self.Z = snap[2]

    def _step(self, P1, PX, s2: float):
        ls = self.lam * s2
        Y = self.Y
        if self.solver == "direct":
            xp = self.xp
            A = P1[:, None] * self.G
            A[xp.arange(A.shape[0]), xp.arange(A.shape[0])] += ls
            W = xp.linalg.solve(A, PX - P1[:, None] * Y)
            self.W = W
            self.GW = self.G @ W
            reg = float(xp.sum(W * self.GW))
        else:
            F = self.F
            b = (PX - P1[:, None] * Y) / ls           # Lambda^-1 (diag(P1)^-1 PX - Y)
            lw = P1 / ls                              # Lambda^-1 diagonal
            xp = self.xp
            if xp is np:
                K = _syrk(F * np.sqrt(lw)[:, None])      # F^T Lambda^-1 F (upper triangle)
                K[np.diag_indices_from(K)] += 1.0
                z = _spd_solve(K, F.T @ b)
            else:
                K = F.T @ (F * lw[:, None])
                K[xp.arange(K.shape[0]), xp.arange(K.shape[0])] += 1.0
                z = xp.linalg.solve(K, F.T @ b)
            # F^T W = F^T (F F^T + Lambda)^-1 b' = (I + F^T Lambda^-1 F)^-1 F^T Lambda^-1 b' = z:
            # taken directly, not as F^T (b - Lambda^-1 F z), which cancels catastrophically when
            # Lambda^-1 has huge entries (heavy landmarks, small sigma2).
            self.Z = z
            self.GW = F @ self.Z
            reg = float(xp.sum(self.Z * self.Z))
        return Y + self.GW, reg

    def transform(self, s0, xm, ym, beta, cutoff) -> DeformableTransform:
        if self.solver == "direct":
            centers = _h(self.Y) * s0 + ym
            coef = _h(self.W) * s0
        else:
            centers = _h(self.Y)[self.centers_idx] * s0 + ym
            coef = _h(self.basis @ self.Z) * s0
        return DeformableTransform(centers, coef, beta, xm - ym, cutoff)
