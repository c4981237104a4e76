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

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .._validation import as_bool
from ._fits import AffineFit, RigidFit, _centred_spread, _level, _pair, _points, _rigid_jacobian, fit_affine, fit_rigid

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
