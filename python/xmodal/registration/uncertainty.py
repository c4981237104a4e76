"""Registration error estimates for rigid and affine fits to matched points.

After Potier, Lavancier, Kunne and Paul-Gilloteaux (ICIP 2021; the ec-CLEM error maps) and
Fitzpatrick, West and Maurer (IEEE TMI 1998). Pure numpy / scipy.

Model and conventions
---------------------
Matched points ``src`` (n, d) and ``dst`` (n, d), d = 2 or 3, same physical units, image axis
order. The fits map ``src`` onto ``dst``: ``dst_i = T(src_i) + e_i`` with the error ``e_i`` in
``dst`` only (the localisation error of both sets folded into one), independent between points.

**Affine** ``T(x) = A x + t``. This is the multivariate linear model ``Y = X B + E`` with rows
``x_i = (src_i, 1)``, ``p = d + 1`` regressors and ``E`` rows ~ N(0, Σ) (any covariance Σ).
Least squares gives ``B = (XᵀX)⁻¹ XᵀY`` and ``S = ÊᵀÊ / (n - p)`` (unbiased for Σ). At a new
point ``x0 = (src0, 1)`` with leverage ``h0 = x0ᵀ (XᵀX)⁻¹ x0``, the prediction error
``y0 - ŷ0`` ~ N(0, (1 + h0) Σ) is independent of S and ``(n - p) S`` is Wishart(Σ, n - p), so
``(y0 - ŷ0)ᵀ S⁻¹ (y0 - ŷ0) / (1 + h0)`` is Hotelling T²(d, n - p), that is
``T² (n - p - d + 1) / (d (n - p))`` ~ F(d, n - p - d + 1). The exact level-``α`` prediction region
is the ellipsoid::

    (y - ŷ0)ᵀ S⁻¹ (y - ŷ0) <= (1 + h0) d (n - p) / (n - p - d + 1) F_{d, n-p-d+1}(α)

(``kind="confidence"``: the region for the true ``T(src0)``, with ``h0`` instead of ``1 + h0``).
It needs ``n >= 2 d + 1`` points.

**Rigid** ``T(x) = s R (x - x̄) + c`` with R a proper rotation, x̄ the centroid of ``src``,
``s = 1`` unless ``scale=True`` (similarity); fitted in closed form (Kabsch / Umeyama), so
``c = mean(dst)``. The noise is isotropic, ``e_i`` ~ N(0, σ² I). Linearising around the estimate with
the parameters θ = (ω, c[, log s]), rotation perturbed as ``R -> exp(Σ_k ω_k G_k) R`` (G_k the
generators of rotations: one in 2D, three in 3D), the Jacobian of ``T(x)`` is::

    ∂T/∂ω_k = s G_k R (x - x̄),   ∂T/∂c = I,   ∂T/∂log s = s R (x - x̄),

stacked over the fiducials as J (n d × q), q = d(d-1)/2 + d (+1 with scale). Gauss-Newton gives
``Cov(θ̂) ≈ σ² (JᵀJ)⁻¹`` and at a target ``x0`` with Jacobian ``J0`` (d × q)::

    Cov(ŷ0) ≈ σ² J0 (JᵀJ)⁻¹ J0ᵀ,    Cov(y0 - ŷ0) ≈ σ² (I + J0 (JᵀJ)⁻¹ J0ᵀ).

σ² is estimated by ``σ̂² = Σ |r_i|² / ν`` with ``ν = n d - q`` degrees of freedom; the region
uses ``(y - ŷ0)ᵀ C⁻¹ (y - ŷ0) <= d F_{d, ν}(α)`` with ``C`` the covariance above at ``σ̂²``
(σ̂² ν / σ² ~ χ²_ν, independent of the residual at a new point to first order). Asymptotic: it
assumes small noise compared with the extent of the fiducials.

**Fitzpatrick TRE** (rigid, isotropic FLE): for N fiducials with RMS localisation error FLE
(``FLE² = E|ε|² = d σ²``) the expected squared target registration error at ``r`` is, in 3D,
``TRE²(r) ≈ FLE²/N (1 + 1/3 Σ_{k=1..3} d_k² / f_k²)`` with ``d_k`` the distance of ``r`` from the
k-th principal axis of the fiducials (through their centroid) and ``f_k`` the RMS distance of the
fiducials from that axis. In 2D the only rotation axis is the normal through the centroid, and the
same derivation (translation: 2σ²/N; rotation angle variance σ² / (N f²)) gives
``TRE²(r) ≈ FLE²/N (1 + 1/2 d²/f²)``, d = distance of r from the centroid, f² = mean squared
distance of the fiducials from it. FLE can be estimated from the fit residuals (FRE):
``E[FRE²] = FLE² (1 - q / (N d))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from .._validation import as_bool

__all__ = [
    "AffineFit",
    "RigidFit",
    "PredictionRegion",
    "LeaveOneOutResult",
    "TREResult",
    "fit_affine",
    "fit_rigid",
    "prediction_region",
    "leave_one_out_residuals",
    "fitzpatrick_tre",
]


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


@dataclass(frozen=True)
class PredictionRegion:
    """Elliptical regions ``{y : (y - centers[i])ᵀ shape_matrices[i]⁻¹ (y - centers[i]) <= 1}``.

    Attributes
    ----------
    centers : (m, d)
        Predicted positions of the target points in the ``dst`` frame.
    covariances : (m, d, d)
        Estimated covariance of the prediction error ``y - ŷ`` (``kind="prediction"``) or of ``ŷ``
        (``kind="confidence"``), physical units squared.
    shape_matrices : (m, d, d)
        ``quantile * covariances``; the region's semi-axes are the square roots of its eigenvalues.
    semi_axes : (m, d)
        Semi-axis lengths, ascending.
    axes : (m, d, d)
        Unit directions of the semi-axes (columns), matching ``semi_axes``.
    quantile : (m,) or float
        The scalar multiplying the covariance (see the module docstring).
    level : float
    kind : str
    method : str
        ``"affine-F"`` or ``"rigid-linearised-F"``.
    """

    centers: np.ndarray
    covariances: np.ndarray
    shape_matrices: np.ndarray
    semi_axes: np.ndarray
    axes: np.ndarray
    quantile: float
    level: float
    kind: str
    method: str

    def mahalanobis2(self, points) -> np.ndarray:
        """``(y - c)ᵀ shape⁻¹ (y - c)`` per point; <= 1 inside the region."""
        y = _points(points, "points")
        if y.shape != self.centers.shape:
            raise ValueError(f"points: expected shape {self.centers.shape} (one per target), got {y.shape}")
        r = y - self.centers
        sol = np.linalg.solve(self.shape_matrices, r[:, :, None])[:, :, 0]
        return (r * sol).sum(axis=1)

    def contains(self, points) -> np.ndarray:
        """Boolean per target: whether ``points[i]`` lies in region ``i``."""
        return self.mahalanobis2(points) <= 1.0


def _region(centers, cov, quantile, level, kind, method) -> PredictionRegion:
    shape = cov * np.asarray(quantile, dtype=np.float64).reshape(-1, 1, 1)
    w, v = np.linalg.eigh(shape)
    return PredictionRegion(centers=centers, covariances=cov, shape_matrices=shape,
                            semi_axes=np.sqrt(np.clip(w, 0.0, None)), axes=v, quantile=quantile, level=level,
                            kind=kind, method=method)


def prediction_region(fit, points, *, level: float = 0.95, kind: str = "prediction") -> PredictionRegion:
    """Level-``level`` region for where target points map, from a rigid or affine fit.

    Parameters
    ----------
    fit : AffineFit or RigidFit
        From :func:`fit_affine` or :func:`fit_rigid`.
    points : (m, d) array
        Target points in the ``src`` frame.
    level : float
        Coverage probability, default 0.95.
    kind : {"prediction", "confidence"}
        ``"prediction"`` (default): region for a new observed position ``y0 = T(x0) + e0`` (the
        position measured in ``dst``, with the same error as the fiducials). ``"confidence"``:
        region for the true mapped position ``T(x0)``.

    Returns
    -------
    PredictionRegion
        Affine: exact under Gaussian errors (Hotelling / F). Rigid: first-order (asymptotic). See the
        module docstring for both derivations.
    """
    level = _level(level)
    if kind not in ("prediction", "confidence"):
        raise ValueError(f"kind: expected 'prediction' or 'confidence', got {kind!r}")
    if not isinstance(fit, (AffineFit, RigidFit)):
        raise TypeError(f"fit: expected an AffineFit or RigidFit, got {type(fit).__name__}")
    x0 = _points(points, "points")
    d = fit.ndim
    if x0.shape[1] != d:
        raise ValueError(f"points: expected {d} columns like the fit, got {x0.shape[1]}")
    centers = fit.transform(x0)
    extra = 1.0 if kind == "prediction" else 0.0
    if isinstance(fit, AffineFit):
        n, p = fit.n_points, d + 1
        df2 = n - p - d + 1
        if df2 < 1:
            raise ValueError(f"fit: an affine region in {d}D needs at least {2 * d + 1} points, the fit has {n}")
        X0 = fit._design(x0)
        h0 = np.einsum("mi,ij,mj->m", X0, fit.xtx_inv, X0)
        cov = (extra + h0)[:, None, None] * fit.noise_covariance
        quantile = d * (n - p) / df2 * stats.f.ppf(level, d, df2)
        return _region(centers, cov, quantile, level, kind, "affine-F")
    J0 = _rigid_jacobian(fit.rotation, fit.scale, x0 - fit.src_centroid, fit.with_scale)
    cov = fit.sigma2 * (extra * np.eye(d) + np.einsum("mai,ij,mbj->mab", J0, fit.param_cov_unit, J0))
    quantile = d * stats.f.ppf(level, d, fit.dof)
    return _region(centers, cov, quantile, level, kind, "rigid-linearised-F")


# ----------------------------------------------------------------------------- leave one out


@dataclass(frozen=True)
class LeaveOneOutResult:
    """Residuals of each point predicted by the fit to all the others.

    Attributes
    ----------
    residuals : (n, d)
        ``dst_i - T_{-i}(src_i)``.
    distances : (n,)
        Their lengths.
    rms : float
        Root mean squared distance.
    transform : str
    """

    residuals: np.ndarray
    distances: np.ndarray
    rms: float
    transform: str


def leave_one_out_residuals(src, dst, *, transform: str = "rigid", scale: bool = False) -> LeaveOneOutResult:
    """Leave-one-out residuals of a rigid / similarity or affine fit.

    Affine: the closed form ``e_i / (1 - h_ii)`` (PRESS residuals, exact for least squares); rigid:
    n refits.

    Parameters
    ----------
    src, dst : (n, d) arrays
    transform : {"rigid", "affine"}
    scale : bool
        With ``transform="rigid"``: fit a similarity.
    """
    scale = as_bool(scale, "scale")
    s, t = _pair(src, dst)
    n, d = s.shape
    if transform == "affine":
        if n < d + 3:
            raise ValueError(f"src: leave-one-out affine residuals in {d}D need at least {d + 3} points, got {n}")
        fit = fit_affine(s, t)
        X = fit._design(s)
        h = np.einsum("mi,ij,mj->m", X, fit.xtx_inv, X)
        if np.any(h > 1 - 1e-12):
            raise ValueError("src: a point has leverage 1 (the others leave the affine map undetermined)")
        res = fit.residuals / (1.0 - h)[:, None]
    elif transform == "rigid":
        res = np.empty_like(t)
        for i in range(n):
            keep = np.arange(n) != i
            f = fit_rigid(s[keep], t[keep], scale=scale)
            res[i] = t[i] - f.transform(s[i:i + 1])[0]
    else:
        raise ValueError(f"transform: expected 'rigid' or 'affine', got {transform!r}")
    dist = np.linalg.norm(res, axis=1)
    return LeaveOneOutResult(residuals=res, distances=dist, rms=float(np.sqrt((dist ** 2).mean())), transform=transform)


# ----------------------------------------------------------------------------- Fitzpatrick TRE


@dataclass(frozen=True)
class TREResult:
    """Fitzpatrick's predicted target registration error.

    Attributes
    ----------
    tre : (m,)
        Predicted RMS TRE at each target, ``sqrt(E|TRE|²)``, physical units.
    fle : float
        The RMS fiducial localisation error used.
    principal_axes : (d, d)
        Principal axes of the fiducials (columns).
    axis_rms : (k,)
        ``f_k``: RMS distance of the fiducials from each rotation axis (3 in 3D, 1 in 2D).
    """

    tre: np.ndarray
    fle: float
    principal_axes: np.ndarray
    axis_rms: np.ndarray


def fitzpatrick_tre(fiducials, targets, *, fle=None, fre=None) -> TREResult:
    """Expected target registration error of a rigid point registration (Fitzpatrick et al. 1998).

    ``TRE²(r) ≈ FLE²/N (1 + 1/3 Σ_k d_k²/f_k²)`` in 3D and ``FLE²/N (1 + 1/2 d²/f²)`` in 2D (module
    docstring). Give either ``fle`` (RMS localisation error, ``sqrt(E|ε|²)``, the error of the
    fiducial positions of both sets combined) or ``fre`` (the RMS fit residual of a rigid
    registration of these fiducials, converted with ``FLE² = FRE² N d / (N d - q)``).

    Parameters
    ----------
    fiducials : (N, d) array
        Fiducial positions (either frame; only their configuration matters).
    targets : (m, d) array
        Target positions in the same frame.
    fle, fre : float, optional
        Exactly one of them.
    """
    f = _points(fiducials, "fiducials")
    r = _points(targets, "targets")
    n, d = f.shape
    if r.shape[1] != d:
        raise ValueError(f"targets: expected {d} columns like fiducials, got {r.shape[1]}")
    if n < d:
        raise ValueError(f"fiducials: expected at least {d} points, got {n}")
    if (fle is None) == (fre is None):
        raise ValueError("fle, fre: give exactly one of them")
    q = d * (d - 1) // 2 + d
    if fle is None:
        fre = float(fre)
        if not (np.isfinite(fre) and fre >= 0):
            raise ValueError(f"fre: expected a non-negative number, got {fre}")
        if n * d <= q:
            raise ValueError(f"fiducials: converting FRE to FLE needs more than {q / d:g} fiducials, got {n}")
        fle = fre * np.sqrt(n * d / (n * d - q))
    fle = float(fle)
    if not (np.isfinite(fle) and fle >= 0):
        raise ValueError(f"fle: expected a non-negative number, got {fle}")
    c, a, rho = _centred_spread(f, "fiducials", "the rotation is not determined")
    w, v = np.linalg.eigh(a.T @ a / n)  # variances along the principal directions
    w = np.clip(w, 0.0, None)
    rc = (r - c) @ v  # target coordinates along the principal directions
    if d == 3:
        # distance² from axis k = sum of the squared coordinates along the other two directions
        f2 = np.array([w.sum() - w[k] for k in range(3)])
        d2 = np.stack([(rc ** 2).sum(axis=1) - rc[:, k] ** 2 for k in range(3)], axis=1)
        # relative to the spread (rho² = w.sum()): the same answer in any units
        if np.any(f2 <= 1e-12 * rho * rho):
            raise ValueError("fiducials: all on one line; the rotation is not determined")
        ratio = (d2 / f2).sum(axis=1) / 3.0
    else:
        f2 = np.array([w.sum()])
        ratio = (rc ** 2).sum(axis=1) / f2[0] / 2.0
    tre = np.sqrt(fle ** 2 / n * (1.0 + ratio))
    return TREResult(tre=tre, fle=fle, principal_axes=v, axis_rms=np.sqrt(f2))
