"""Least-squares rigid, similarity and affine fits to matched points, with the statistics the error
estimates of :mod:`xmodal.registration.uncertainty` need (its docstring gives the model and the
conventions: ``dst_i = T(src_i) + e_i``, same physical units, image axis order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# ----------------------------------------------------------------------------- input checks


def _describe(x) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    text = repr(x)
    return text if len(text) <= 60 else f"{type(x).__name__} ({text[:57]}...)"


def _points(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover
        raise TypeError(f"{name}: expected an (n, d) array of coordinates, got {_describe(x)}") from exc
    if a.dtype == object or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a real numeric (n, d) array, got {_describe(x)}")
    if a.ndim != 2 or a.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected an (n, d) array with d = 2 or 3, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: coordinates must be finite")
    return a


def _pair(src, dst, min_points: int | None = None):
    s = _points(src, "src")
    t = _points(dst, "dst")
    if s.shape != t.shape:
        raise ValueError(f"src and dst: expected matched points of the same shape, got {s.shape} and {t.shape}")
    if min_points is not None and len(s) < min_points:
        raise ValueError(f"src: expected at least {min_points} matched points, got {len(s)}")
    return s, t


def _level(level) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    return level


# ----------------------------------------------------------------------------- fits

#: Relative rounding level below which centred coordinates count as zero (a multiple of float64
#: epsilon times the coordinates' magnitude): every degeneracy test compares like with like, so
#: none depends on the units of the points.
_COINCIDE = 64.0 * np.finfo(np.float64).eps


def _centred_spread(s: np.ndarray, name: str, what: str):
    """Centroid, centred points and their RMS radius; ValueError when the points coincide.

    "Coincide" is relative to the magnitude of the coordinates (rounding of the centroid), so the
    test gives the same answer in any units.
    """
    centroid = s.mean(axis=0)
    a = s - centroid
    rho = float(np.sqrt((a ** 2).sum(axis=1).mean()))
    if not rho > _COINCIDE * float(np.abs(s).max(initial=0.0)):
        raise ValueError(f"{name}: all points coincide (to rounding); {what}")
    return centroid, a, rho


@dataclass(frozen=True)
class AffineFit:
    """Least-squares affine fit ``dst ≈ src @ matrix.T + translation``.

    Attributes
    ----------
    matrix : (d, d)
    translation : (d,)
    residuals : (n, d)
        ``dst - fitted``.
    noise_covariance : (d, d)
        ``S = residualsᵀ residuals / (n - d - 1)``, the unbiased estimate of the error covariance Σ
        (physical units squared).
    dof : int
        ``n - d - 1``.
    rms : float
        Root mean squared residual distance (FRE).
    xtx_inv : (d + 1, d + 1)
        ``(XᵀX)⁻¹`` of the centred design, rows ``(src_i - src_centroid, 1)`` (the same leverages
        as the raw design, better conditioned far from the origin).
    src_centroid : (d,)
    n_points : int
    """

    matrix: np.ndarray
    translation: np.ndarray
    residuals: np.ndarray
    noise_covariance: np.ndarray
    dof: int
    rms: float
    xtx_inv: np.ndarray = field(repr=False)
    src_centroid: np.ndarray = field(default=None, repr=False)
    n_points: int = 0

    def _design(self, points) -> np.ndarray:
        return np.hstack([points - self.src_centroid, np.ones((len(points), 1))])

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0]

    def transform(self, points) -> np.ndarray:
        """Apply the fitted map to ``(m, d)`` points."""
        p = _points(points, "points")
        if p.shape[1] != self.ndim:
            raise ValueError(f"points: expected {self.ndim} columns, got {p.shape[1]}")
        return p @ self.matrix.T + self.translation


def fit_affine(src, dst) -> AffineFit:
    """Least-squares affine map from ``src`` to ``dst`` (matched rows), with the noise estimate.

    Parameters
    ----------
    src, dst : (n, d) arrays, d = 2 or 3, n >= d + 2 (so that the noise can be estimated)
        Matched points, physical units.

    Returns
    -------
    AffineFit

    Raises
    ------
    ValueError
        Too few points, or ``src`` points in a degenerate (collinear / coplanar) configuration.
    """
    s, t = _pair(src, dst)
    n, d = s.shape
    p = d + 1
    if n < p + 1:
        raise ValueError(f"src: an affine fit in {d}D with a noise estimate needs at least {p + 1} points, got {n}")
    centroid, a, rho = _centred_spread(s, "src", "an affine map is not determined")
    # Centred and scaled by the RMS radius: the design is unit-free, so are its conditioning and the
    # degeneracy test; X = Xn diag(rho, ..., rho, 1).
    Xn = np.hstack([a / rho, np.ones((n, 1))])
    sv = np.linalg.svd(Xn[:, :d], compute_uv=False)
    if sv[-1] <= 1e-10 * sv[0]:
        raise ValueError(f"src: the points are degenerate (all on a {'line' if d == 2 else 'plane or line'}); "
                         "an affine map is not determined")
    Bn, *_ = np.linalg.lstsq(Xn, t, rcond=None)
    resid = t - Xn @ Bn
    dof = n - p
    S = resid.T @ resid / dof
    unscale = np.r_[np.full(d, 1.0 / rho), 1.0]
    B = Bn * unscale[:, None]
    xtx_inv = np.linalg.inv(Xn.T @ Xn) * np.outer(unscale, unscale)
    A = B[:d].T.copy()
    return AffineFit(matrix=A, translation=B[d] - A @ centroid, residuals=resid, noise_covariance=S, dof=dof,
                     rms=float(np.sqrt((resid ** 2).sum(axis=1).mean())), xtx_inv=xtx_inv, src_centroid=centroid,
                     n_points=n)


@dataclass(frozen=True)
class RigidFit:
    """Least-squares rigid (or similarity) fit ``dst ≈ scale * (src - src_centroid) @ rotation.T + dst_centroid``.

    Attributes
    ----------
    rotation : (d, d)
        Proper rotation (determinant +1).
    translation : (d,)
        So that ``fitted = scale * src @ rotation.T + translation``.
    scale : float
        1 unless fitted with ``scale=True``.
    residuals : (n, d)
    sigma2 : float
        Estimated isotropic noise variance per coordinate, ``Σ|r_i|² / dof``.
    dof : int
        ``n d - q`` with q = d(d-1)/2 + d (+1 with scale) parameters.
    rms : float
        Root mean squared residual distance (FRE).
    src_centroid : (d,)
    param_cov_unit : (q, q)
        ``(JᵀJ)⁻¹`` of the linearised model (multiply by σ² for the parameter covariance).
    with_scale : bool
    n_points : int
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float
    residuals: np.ndarray
    sigma2: float
    dof: int
    rms: float
    src_centroid: np.ndarray
    param_cov_unit: np.ndarray = field(repr=False)
    with_scale: bool = False
    n_points: int = 0

    @property
    def ndim(self) -> int:
        return self.rotation.shape[0]

    def transform(self, points) -> np.ndarray:
        """Apply the fitted map to ``(m, d)`` points."""
        p = _points(points, "points")
        if p.shape[1] != self.ndim:
            raise ValueError(f"points: expected {self.ndim} columns, got {p.shape[1]}")
        return self.scale * p @ self.rotation.T + self.translation


def _generators(d: int) -> np.ndarray:
    if d == 2:
        return np.array([[[0.0, -1.0], [1.0, 0.0]]])
    g = np.zeros((3, 3, 3))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        g[k] = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
    return g


def _rigid_jacobian(rotation, scale, centred, with_scale) -> np.ndarray:
    """(m, d, q) Jacobians of T(x) for centred points (x - x̄)."""
    m, d = centred.shape
    rx = scale * centred @ rotation.T  # s R (x - x̄)
    gens = _generators(d)
    cols = [np.einsum("kab,mb->mak", gens, rx)]  # (m, d, n_rot)
    cols.append(np.broadcast_to(np.eye(d), (m, d, d)))
    if with_scale:
        cols.append(rx[:, :, None])
    return np.concatenate(cols, axis=2)


def fit_rigid(src, dst, *, scale: bool = False) -> RigidFit:
    """Least-squares rigid (rotation + translation) or similarity (``scale=True``) fit.

    Closed form (Kabsch; Umeyama 1991 for the scale), proper rotations only. Also returns the
    isotropic noise variance estimate and the linearised parameter covariance used by
    :func:`prediction_region` (see the module docstring).

    Parameters
    ----------
    src, dst : (n, d) arrays, d = 2 or 3
        Matched points, physical units; n >= 2 in 2D, n >= 3 in 3D (more than the parameters / d).
    scale : bool
        Fit an isotropic scale too.

    Returns
    -------
    RigidFit
    """
    s, t = _pair(src, dst)
    n, d = s.shape
    q = d * (d - 1) // 2 + d + (1 if scale else 0)
    if n * d <= q:
        raise ValueError(f"src: a {'similarity' if scale else 'rigid'} fit in {d}D with a noise estimate needs "
                         f"more than {q / d:g} points, got {n}")
    ms, a, rho = _centred_spread(s, "src", "the rotation is not determined")
    mt = t.mean(axis=0)
    b = t - mt
    U, sig, Vt = np.linalg.svd(b.T @ a)  # H = Σ b_i a_iᵀ = U diag(sig) Vt, R = U D Vt
    D = np.ones(d)
    D[-1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = (U * D) @ Vt
    c = float((sig * D).sum() / (a ** 2).sum()) if scale else 1.0
    if scale and not (np.isfinite(c) and c > 0):
        raise ValueError(f"dst: the fitted scale is {c:.3g}; a similarity map with a positive scale is not determined")
    fitted = c * a @ R.T + mt
    resid = t - fitted
    dof = n * d - q
    sigma2 = float((resid ** 2).sum() / dof)
    # Jacobian with the rotation (and log-scale) columns divided by c * rho: J = Jn diag(k), so the
    # conditioning of Jn^T Jn, and the degeneracy test on it, do not depend on the units.
    k = np.ones(q)
    k[:d * (d - 1) // 2] = c * rho
    if scale:
        k[-1] = c * rho
    Jn = _rigid_jacobian(R, c, a, scale).reshape(n * d, q) / k
    jtj_n = Jn.T @ Jn
    if np.linalg.cond(jtj_n) > 1e12:
        raise ValueError("src: the points are degenerate for a rigid fit (e.g. collinear in 3D); "
                         "the rotation is not determined")
    param_cov_unit = np.linalg.inv(jtj_n) / np.outer(k, k)
    return RigidFit(rotation=R, translation=mt - c * ms @ R.T, scale=c, residuals=resid, sigma2=sigma2, dof=dof,
                    rms=float(np.sqrt((resid ** 2).sum(axis=1).mean())), src_centroid=ms,
                    param_cov_unit=param_cov_unit, with_scale=bool(scale), n_points=n)


# ----------------------------------------------------------------------------- regions
