"""Smooth displacement fields of the atlas frame (Gaussian radial basis on a fixed set of centres),
fitted by regularised weighted least squares: the deformable part of the group-wise registration
in :func:`~xmodal.atlas.build_atlas` and of the registration of a new sample in
:func:`~xmodal.atlas.identify`.

A field is ``f(y) = Phi(y) @ W`` with ``Phi_ik = exp(-|y_i - c_k|^2 / (2 beta^2))``; the fit
minimises ``sum_i w_i |y_i + f(y_i) - target_i|^2 + lam * tr(W^T G W)`` (G the Gram matrix of the
centres; ``w_i`` dimensionless, about 1 for a pair with a typical residual variance s2), i.e. a
Gaussian-process prior on the field of amplitude ``sqrt(s2 / lam)`` per coordinate.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._validation import describe

DEFAULT = {"centres": 40, "beta": 0.8, "lambda": 0.3, "iterations": 3, "identify_iterations": 6, "anneal": 1.0, "adaptive": True}


def check_deform(deform):
    """The deformation options of :func:`~xmodal.atlas.build_atlas`: "auto" -> :data:`DEFAULT`,
    None / False -> None, a dict -> :data:`DEFAULT` updated by it (validated)."""
    if deform is None or deform is False:
        return None
    if isinstance(deform, str) and deform == "auto" or deform is True:
        return dict(DEFAULT)
    if not isinstance(deform, dict):
        raise TypeError(f"deform: expected 'auto', None or a dict of {sorted(DEFAULT)}, got {describe(deform)}")
    bad = sorted(set(deform) - set(DEFAULT))
    if bad:
        raise ValueError(f"deform: unknown options {bad}; expected some of {sorted(DEFAULT)}")
    out = {**DEFAULT, **deform}
    if not isinstance(out["adaptive"], (bool, np.bool_)):
        raise TypeError(f"deform: 'adaptive' must be True or False, got {describe(out['adaptive'])}")
    out["adaptive"] = bool(out["adaptive"])
    for key in ("centres", "iterations", "identify_iterations"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (1 if key == "centres" else 0):
            raise ValueError(f"deform: {key!r} must be a non-negative integer (centres >= 1), got {v!r}")
        out[key] = int(v)
    for key in ("beta", "lambda", "anneal"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"deform: {key!r} must be a positive finite number, got {v!r}")
        out[key] = float(v)
    return out


def centres(mu: np.ndarray, n: int) -> np.ndarray:
    """``n`` farthest-point centres of the atlas means (all of them when there are fewer)."""
    from ..registration import farthest_point_centers

    if len(mu) <= n:
        return np.asarray(mu, np.float64).copy()
    return np.asarray(mu, np.float64)[farthest_point_centers(np.asarray(mu, np.float64), n)]


def basis(y: np.ndarray, c: np.ndarray, beta: float) -> np.ndarray:
    d2 = ((y[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * beta * beta))


class SmoothField:
    """A fitted displacement field ``y -> y + Phi(y) @ W`` (atlas frame, atlas units)."""

    def __init__(self, c: np.ndarray, beta: float, W: np.ndarray | None = None):
        self.c = np.asarray(c, np.float64)
        self.beta = float(beta)
        self.W = np.zeros_like(self.c) if W is None else np.asarray(W, np.float64)

    def displacement(self, y: np.ndarray) -> np.ndarray:
        return basis(np.asarray(y, np.float64), self.c, self.beta) @ self.W

    def apply(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, np.float64) + self.displacement(y)

    def fit(self, y: np.ndarray, target: np.ndarray, w: np.ndarray, lam: float) -> "SmoothField":
        """The regularised weighted least-squares field taking ``y`` towards ``target``."""
        phi = basis(y, self.c, self.beta)
        G = basis(self.c, self.c, self.beta)
        pw = phi * w[:, None]
        H = pw.T @ phi + lam * G
        H += np.eye(len(H)) * (1e-9 * np.trace(H) / len(H) + 1e-300)
        self.W = np.linalg.solve(H, pw.T @ (target - y))
        return self

    def to_dict(self) -> dict:
        return {"centers": self.c.tolist(), "beta": self.beta, "coefficients": self.W.tolist()}


def groupwise(X, idx, W, mu_fn, m, *, n_centres, beta, lam, iterations):
    """Deformable stage of the group-wise registration: per sample a smooth field from its affinely
    aligned points ``X[s]`` towards the current mean (pairs weighted by the robust weights ``W``),
    alternated with the mean (``mu_fn(X)``). Returns the deformed points, the mean, the fields."""
    mu = mu_fn(X)
    c = centres(mu, n_centres)
    Xd = list(X)
    fields = [SmoothField(c, beta) for _ in X]
    for _ in range(iterations):
        for s, (x, ix, w) in enumerate(zip(X, idx, W)):
            fields[s].fit(x, mu[ix], w, lam)
            Xd[s] = fields[s].apply(x)
        mu = mu_fn(Xd)
    return Xd, mu, fields
