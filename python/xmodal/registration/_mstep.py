"""The M-steps of CPD (Myronenko & Song 2010), in normalised units, for numpy or cupy E-step outputs.

``rigid_step`` (rigid / similarity: a proper rotation by SVD, optional scale), ``affine_step``
(closed-form least squares) and :class:`DeformableSolver` (Gaussian-kernel displacement field:
direct dense solve, or Nystrom low rank with a Woodbury solve). Each takes the E-step's
``P1, Pt1, PX`` and returns the new transform with the sigma2 update; the EM loop
(``_em.py``) owns the iteration, the stopping rules and the bookkeeping.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import threading
from dataclasses import dataclass

import numpy as np

from .._device import array_namespace, to_host
from .transforms import DeformableTransform

#: Below this many moving points the deformable M-step is a direct dense solve.
DIRECT_MAX_POINTS = 1000


class ScaleDegenerate(ArithmeticError):
    """The similarity scale estimate is not a positive finite number."""

    def __init__(self, value: float):
        super().__init__(f"the scale estimate degenerated ({value:.3g})")
        self.value = value


@dataclass
class LinearStep:
    """A rigid / similarity / affine M-step: TY = Yn @ B.T + t (normalised units)."""

    B: np.ndarray
    t: np.ndarray
    scale: float
    sigma2: float
    TY: object


def _weighted_means(Xn, Yn, P1, Pt1, PX, Np, xx=None):
    mu_x = to_host(Xn.T @ Pt1) / Np
    mu_y = to_host(Yn.T @ P1) / Np
    A = to_host(PX.T @ Yn) - Np * np.outer(mu_x, mu_y)
    xx = (Xn * Xn).sum(1) if xx is None else xx
    xPx = float(Pt1 @ xx) - Np * float(mu_x @ mu_x)
    return mu_x, mu_y, A, xPx


def rigid_step(Xn, Yn, P1, Pt1, PX, Np: float, *, scale: float | None, estimate_scale: bool,
               sq: tuple | None = None) -> LinearStep:
    """Rigid (``estimate_scale=False, scale=None``: s = 1), similarity with a free scale
    (``estimate_scale=True``) or a fixed one (``scale``). Raises :class:`ScaleDegenerate`.
    ``sq``: optional ``(|x_n|^2, |y_m|^2)`` row sums of squares, precomputed by the caller (the
    points do not change between iterations)."""
    xp = array_namespace(Yn)
    D = Yn.shape[1]
    xx, yy = sq if sq is not None else (None, None)
    mu_x, mu_y, A, xPx = _weighted_means(Xn, Yn, P1, Pt1, PX, Np, xx)
    U, _, Vt = np.linalg.svd(A)
    C = np.eye(D)
    C[-1, -1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = U @ C @ Vt
    yy = (Yn * Yn).sum(1) if yy is None else yy
    yPy = float(P1 @ yy) - Np * float(mu_y @ mu_y)
    trAR = float(np.trace(A.T @ R))
    if estimate_scale:
        s = trAR / yPy if yPy > 0 else 0.0
        if not (np.isfinite(s) and s > 0):
            raise ScaleDegenerate(s)
    else:
        s = 1.0 if scale is None else float(scale)
    B = s * R
    t = mu_x - B @ mu_y
    new_s2 = (xPx - 2.0 * s * trAR + s * s * yPy) / (Np * D)
    return LinearStep(B, t, s, float(new_s2), Yn @ xp.asarray(B.T) + xp.asarray(t))


def affine_step(Xn, Yn, P1, Pt1, PX, Np: float, xx=None) -> LinearStep:
    """Affine least squares; a singular weighted covariance falls back to the pseudo-inverse.
    ``xx``: optional precomputed ``|x_n|^2``."""
    xp = array_namespace(Yn)
    D = Yn.shape[1]
    mu_x, mu_y, A, xPx = _weighted_means(Xn, Yn, P1, Pt1, PX, Np, xx)
    YPY = to_host((Yn * P1[:, None]).T @ Yn) - Np * np.outer(mu_y, mu_y)
    try:
        B = np.linalg.solve(YPY.T, A.T).T
    except np.linalg.LinAlgError:
        B = A @ np.linalg.pinv(YPY)
    t = mu_x - B @ mu_y
    new_s2 = (xPx - np.trace(A @ B.T)) / (Np * D)
    return LinearStep(B, t, 1.0, float(new_s2), Yn @ xp.asarray(B.T) + xp.asarray(t))


def gauss_kernel(a, b, beta: float):
    """Dense Gaussian kernel matrix exp(-|a_i - b_j|^2 / (2 beta^2)) (numpy or cupy)."""
    xp = array_namespace(a)
    # in place on one (n_a, n_b) buffer: at 100k x 300 each temporary is 240 MB
    g = a @ b.T
    g *= -2.0
    g += (a * a).sum(1)[:, None]
    g += (b * b).sum(1)[None, :]
    xp.maximum(g, 0.0, out=g)
    g *= -1.0 / (2.0 * beta * beta)
    return xp.exp(g, out=g)


def farthest_point_centers(points: np.ndarray, k: int | None = None, *, radius: float | None = None,
                           max_k: int = 1500) -> np.ndarray:
    """Indices of centres picked by farthest-point sampling (deterministic).

    Starts at the point nearest the centroid, then repeatedly takes the point farthest from the
    centres so far (ties: the lowest index).

    Parameters
    ----------
    points : (n, d) array (numpy, or cupy for CUDA arrays), n >= 1, finite coordinates in any unit.
    k : int >= 1, optional
        Number of centres (at most ``n``). Without ``k`` the sampling stops once every point lies
        within ``radius`` of a centre, or at ``max_k`` centres.
    radius : float >= 0, optional
        Covering radius, in the unit of ``points``.
    max_k : int >= 1
        Cap on the number of centres when ``k`` is not given.

    Returns
    -------
    (m,) int64 numpy array of point indices, in the order picked.
    """
    if not isinstance(points, np.ndarray) and not hasattr(points, "__cuda_array_interface__"):
        points = np.asarray(points)  # lists, tuples, CPU tensors
    xp = array_namespace(points)
    if getattr(points, "ndim", 0) != 2 or points.shape[0] < 1 or points.dtype.kind not in "biuf":
        raise ValueError(f"points: expected an (n, d) array of real coordinates with n >= 1, got shape "
                         f"{getattr(points, 'shape', None)} and dtype {getattr(points, 'dtype', None)}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
        raise ValueError(f"k: expected an integer >= 1 or None, got {k!r}")
    if radius is not None and not (isinstance(radius, numbers.Real) and 0 <= float(radius) < float("inf")):
        raise ValueError(f"radius: expected a finite number >= 0 or None, got {radius!r}")
    if isinstance(max_k, bool) or not isinstance(max_k, numbers.Integral) or max_k < 1:
        raise ValueError(f"max_k: expected an integer >= 1, got {max_k!r}")
    if points.dtype.kind != "f":  # integer coordinates: subtraction would wrap or overflow
        points = points.astype(xp.float64)
    if not bool(xp.isfinite(points).all()):
        raise ValueError("points: coordinates must be finite (NaN or infinity found)")
    n = points.shape[0]
    limit = n if k is None else min(int(k), n)
    limit = min(limit, max_k) if k is None else limit
    first = int(xp.argmin(((points - points.mean(0)) ** 2).sum(1)))
    chosen = [first]
    # coordinates as contiguous columns: |p - q|^2 summed axis by axis, (dx^2 + dy^2) + dz^2, the
    # same rounding as ((points - q) ** 2).sum(1) (so the same centres), ~7x faster per centre
    cols = [xp.ascontiguousarray(points[:, j]) for j in range(points.shape[1])]
    d2 = _dist2_cols(cols, points[first])
    r2 = None if radius is None else radius * radius
    while len(chosen) < limit:
        nxt = int(xp.argmax(d2))
        if r2 is not None and float(d2[nxt]) <= r2:
            break
        chosen.append(nxt)
        xp.minimum(d2, _dist2_cols(cols, points[nxt]), out=d2)
    return np.asarray(chosen, dtype=np.int64)


def _dist2_cols(cols, q):
    """Squared distances of the points (given as coordinate columns) to q."""
    s = cols[0] - q[0]
    s *= s
    for j in range(1, len(cols)):
        t = cols[j] - q[j]
        t *= t
        s += t
    return s


#: Rows per block of :func:`_weighted_gram` (a 1024 x 300 float64 block is 2.5 MB: it stays in
#: cache from the syrk to the F^T b product; 512 and 2048 were a few % slower at 20k and 100k rows).
_GRAM_ROWS = 1024

#: From 8 blocks per part on, the rows of :func:`_weighted_gram` are cut into this many parts of
#: whole blocks (a function of the row count only), summed separately and added in part order: the
#: parts run on up to ``xmodal.get_num_threads()`` Python threads (single-threaded BLAS in each),
#: and the result is the same for any thread count.
_GRAM_PARTS = 8


def _gram_part(F: np.ndarray, sq: np.ndarray, b: np.ndarray | None, lo: int, hi: int):
    """``F[lo:hi]^T diag(sq^2) F[lo:hi]`` (upper triangle) and ``F[lo:hi]^T b[lo:hi]``, by blocks."""
    from scipy.linalg.blas import dsyrk

    r = F.shape[1]
    K = np.zeros((r, r), order="F")
    Fb = None if b is None else np.zeros((r, b.shape[1]))
    for i in range(lo, hi, _GRAM_ROWS):
        j = min(i + _GRAM_ROWS, hi)
        blk = F[i:j]
        K = dsyrk(1.0, (blk * sq[i:j, None]).T, beta=1.0, c=K, trans=0, lower=0, overwrite_c=1)
        if Fb is not None:
            Fb += blk.T @ b[i:j]
    return K, Fb


def _weighted_gram(F: np.ndarray, lw: np.ndarray, b: np.ndarray | None = None):
    """``F^T diag(lw) F`` for ``lw >= 0`` (upper triangle filled; half the flops of a matmul);
    with ``b`` (M, d) also ``F^T b``, returned as a second value.

    Summed over blocks of rows with BLAS syrk: no (M, r) temporary and no Fortran-order copy of
    the whole scaled matrix (that copy alone cost as much as the product: 4-8x slower at 20k-100k
    rows, rank 300). Each block ``F[i:j] * sqrt(lw[i:j])`` is C-ordered, so its transpose is the
    Fortran-ordered ``r x rows`` operand of ``syrk(trans=0)``; ``F^T b`` is summed from the same
    blocks while they are in cache (F is read once instead of twice). The blocks are grouped in
    up to ``_GRAM_PARTS`` parts (fixed by the row count) that run in parallel on xmodal's threads
    and are added in part order: the sums are in block / part order, so they may differ from one
    product in the last bits, but not between thread counts.
    """
    from .._config import get_num_threads

    F = np.ascontiguousarray(F, dtype=np.float64)
    M = F.shape[0]
    sq = np.sqrt(lw)
    nblk = max(1, -(-M // _GRAM_ROWS))
    # parts (and threads) only where they are large (8+ blocks each): scipy's syrk holds the GIL,
    # so only the scaling and F^T b products overlap, and a pool per call costs ~0.2 ms
    parts = min(_GRAM_PARTS, nblk) if nblk >= 8 * _GRAM_PARTS else 1
    cuts = [min(M, (nblk * p // parts) * _GRAM_ROWS) for p in range(parts)] + [M]
    spans = [(cuts[p], cuts[p + 1]) for p in range(parts)]
    workers = min(get_num_threads(), parts)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as ex:
            res = list(ex.map(lambda s: _gram_part(F, sq, b, *s), spans))
    else:
        res = [_gram_part(F, sq, b, *s) for s in spans]
    K, Fb = res[0]
    for Kp, Fp in res[1:]:
        K += Kp
        if Fb is not None:
            Fb += Fp
    return K if b is None else (K, Fb)


def _spd_solve(K: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve K x = b for a symmetric positive definite K given by its upper triangle."""
    from scipy.linalg import cho_factor, cho_solve

    return cho_solve(cho_factor(K, lower=False, check_finite=False), b, check_finite=False)


#: True inside :func:`_blas_single` (per context: nested calls, e.g. each Nyström step inside a CPD
#: run that already limits BLAS, then cost nothing; threadpoolctl's library scan is ~1 ms a call).
_BLAS_ONE: contextvars.ContextVar[bool] = contextvars.ContextVar("xmodal_blas_single", default=False)

#: Guards the process-wide BLAS limit shared by concurrent :func:`_blas_single` users (threads):
#: ``users`` counts the open contexts, ``limiter`` is the threadpoolctl limiter the first one made
#: (it holds the thread counts from before the limit, restored by the last one out).
_BLAS_LOCK = threading.Lock()
_BLAS_SHARED: dict = {"users": 0, "limiter": None}


def _blas_acquire(threadpool_limits) -> None:
    """Enter the shared BLAS limit: the first user (process-wide) saves the counts and limits to 1."""
    with _BLAS_LOCK:
        if _BLAS_SHARED["users"] == 0:
            _BLAS_SHARED["limiter"] = threadpool_limits(limits=1, user_api="blas")
        _BLAS_SHARED["users"] += 1


def _blas_release() -> None:
    """Leave the shared BLAS limit: the last user restores the counts the first one saved."""
    with _BLAS_LOCK:
        _BLAS_SHARED["users"] -= 1
        if _BLAS_SHARED["users"] == 0:
            limiter, _BLAS_SHARED["limiter"] = _BLAS_SHARED["limiter"], None
            limiter.restore_original_limits()


@contextlib.contextmanager
def _blas_single():
    """Context limiting BLAS to one thread (threadpoolctl, optional).

    The deformable M-step's BLAS calls are small (rank x rank factorisations, an M x rank syrk)
    and follow the OpenMP E-step: a threaded BLAS pays a thread hand-over far larger than the
    work (measured on a busy 2-core machine: Cholesky of 228 x 228 0.37 s threaded, 2 ms single),
    and its idle workers spin beside the E-step's threads. Nested uses are free.

    The BLAS thread count is process-wide, so overlapping uses from several threads share one
    limit (reference counted under a lock): the first to enter saves the counts and limits BLAS to
    one thread, the last to leave restores the saved counts. Each caller saving and restoring on
    its own would let an inner restore re-impose another caller's limit forever. A host changing
    the BLAS thread count while an xmodal CPU fit runs sees its change undone when the fit ends.
    """
    if _BLAS_ONE.get():
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    token = _BLAS_ONE.set(True)
    try:
        _blas_acquire(threadpool_limits)
    except BaseException:
        _BLAS_ONE.reset(token)
        raise
    try:
        yield
    finally:
        try:
            _blas_release()
        finally:
            _BLAS_ONE.reset(token)


class DeformableSolver:
    """Deformable M-step in normalised units: direct dense solve or Nyström + Woodbury."""

    def __init__(self, Yn, beta: float, lam: float, low_rank):
        if array_namespace(Yn) is np:
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
        self.xp = xp = array_namespace(Yn)
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
            self.G = gauss_kernel(Yn, Yn, beta)
            self.rank = M
            self.W = xp.zeros((M, D))
        else:
            self.solver = "nystrom-woodbury"
            L = Yn[xp.asarray(self.centers_idx)]
            C = gauss_kernel(Yn, L, beta)
            S, U = xp.linalg.eigh(gauss_kernel(L, L, beta))
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
                K, Ftb = _weighted_gram(F, lw, b)        # F^T Lambda^-1 F (upper triangle), F^T b
                K[np.diag_indices_from(K)] += 1.0
                z = _spd_solve(K, Ftb)
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
            centers = to_host(self.Y) * s0 + ym
            coef = to_host(self.W) * s0
        else:
            centers = to_host(self.Y)[self.centers_idx] * s0 + ym
            coef = to_host(self.basis @ self.Z) * s0
        return DeformableTransform(centers, coef, beta, xm - ym, cutoff)
