"""Refinement of a pose: CPD of the atlas onto the sample, alternation of exact assignment and a
generalised least-squares fit, optional smooth deformation, and the mean-field conditioning of
names on their partners."""

from __future__ import annotations

import math

import numpy as np

from ._fit import gls_affine, procrustes
from ._mixture import assign
from ._sinkhorn import sinkhorn_marginals


def cpd_stage(x, model, A, t, kind, q_out, w=0.1, max_iter=100):
    """CPD of the atlas means (moving, weighted by presence) onto the sample mapped by (A, t); the
    result composed into a new sample -> atlas map (the inverse of the CPD transform)."""
    from ..registration import cpd

    y = x @ A.T + t
    res = cpd(model.mu, y, transform=kind, w=w, weights=np.exp(model.log_pi), max_iter=max_iter)
    tr = res.transform
    B = np.asarray(tr.matrix if hasattr(tr, "matrix") else tr.scale * tr.rotation, np.float64)
    c = np.asarray(tr.translation, np.float64)
    Bi = np.linalg.inv(B)
    return Bi @ A, Bi @ (t - c)


def relational(x, A, t, model, u, feats, k, iterations, *, temperature=1.0, min_mass=0.3):
    """Mean-field alternation: posterior marginals of the assignment -> expected residual of every
    name (where its total mass exceeds ``min_mass``) -> names conditioned on their partners
    (:meth:`Model.condition`) -> marginals again. Returns the iterations run."""
    n, m = len(x), len(model.mu0)
    y = x @ A.T + t
    it = 0
    for it in range(1, iterations + 1):
        _, _, rows, cols, rel, _ = assign(y, model, u, feats, k)
        p, _, _, _ = sinkhorn_marginals(rows, cols, rel, (n, m), temperature=temperature, tol=1e-3, max_iter=100)
        mass = np.bincount(cols, weights=p, minlength=m)
        r = np.zeros((m, model.d))
        for j in range(model.d):
            r[:, j] = np.bincount(cols, weights=p * (y[rows, j] - model.mu0[cols, j]), minlength=m)
        present = mass > min_mass
        r[present] /= mass[present][:, None]
        if not model.condition(r, present):
            return 0
    return it


def apply_map(x, A, t, field_):
    y = x @ A.T + t
    if field_ is not None:
        y = field_.apply(y)
    return y


def refine(x, model, A, t, u, feats, k, kind, max_iter, deformable):
    prev = None
    field_ = None
    obj = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        y = x @ A.T + t
        rows_m, cols_m, _, _, _, obj = assign(y, model, u, feats, k)
        key = (tuple(rows_m.tolist()), tuple(cols_m.tolist()))
        if key == prev or len(rows_m) < model.d + 2:
            break
        prev = key
        src, dst = x[rows_m], model.mu[cols_m]
        if kind == "affine":
            A_new, t_new = gls_affine(src, dst, model.prec[cols_m])
            if np.linalg.det(A_new) * np.linalg.det(A) <= 0:
                break  # the fit would change the handedness chosen by the pose search
            A, t = A_new, t_new
        else:
            w = 1.0 / model.iso[cols_m]
            A, t = procrustes(src, dst, w, kind=kind, allow_reflection=bool(np.linalg.det(A) < 0))
    else:
        obj = assign(x @ A.T + t, model, u, feats, k)[-1]
    if deformable:
        field_, obj = deform(x, model, A, t, u, feats, k)
    return A, t, field_, it, obj


def deform(x, model, A, t, u, feats, k, iterations=5, beta_factor=2.0, lam=1.0):
    from ..registration import DeformableTransform

    beta = beta_factor * model.nn
    y0 = x @ A.T + t
    field_ = None
    obj = math.inf
    for _ in range(iterations):
        y = y0 if field_ is None else field_.apply(y0)
        rows_m, cols_m, _, _, _, obj = assign(y, model, u, feats, k)
        if len(rows_m) < 2:
            break
        c = y0[rows_m]
        r = model.mu[cols_m] - c
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        G = np.exp(-d2 / (2 * beta * beta))
        # noise of a residual relative to the kernel: the name's isotropic variance
        W = np.linalg.solve(G + lam * np.diag(model.iso[cols_m]) / model.nn ** 2, r)
        field_ = DeformableTransform(c, W, beta, np.zeros(model.d))
    y = y0 if field_ is None else field_.apply(y0)
    obj = assign(y, model, u, feats, k)[-1]
    return field_, obj
