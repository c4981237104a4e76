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
    result composed into a new sample -> atlas map (the inverse of the CPD transform). A result
    that would change the handedness of the map is discarded."""
    from ..registration import cpd

    y = x @ A.T + t
    res = cpd(model.mu, y, transform=kind, w=w, weights=np.exp(model.log_pi), max_iter=max_iter)
    tr = res.transform
    B = np.asarray(tr.matrix if hasattr(tr, "matrix") else tr.scale * tr.rotation, np.float64)
    c = np.asarray(tr.translation, np.float64)
    Bi = np.linalg.inv(B)
    if np.linalg.det(Bi @ A) * np.linalg.det(A) <= 0:
        return A, t  # an affine CPD may mirror the sample: the pose search decides the handedness
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


def _inflate(model, s2):
    """The model's position covariances plus ``s2`` times the identity (the field's own
    uncertainty, as the shrinking variance of CPD)."""
    cov = np.linalg.inv(model.prec0) + s2 * np.eye(model.d)
    model.prec = np.linalg.inv(cov)
    model.logdet = np.linalg.slogdet(cov)[1]


def deform_em(y0, model, u, feats, k, *, beta, lam, iterations, n_centres, anneal=1.0, adaptive=False):
    """Smooth field of the atlas frame fitted to the soft assignment: posterior marginals (Sinkhorn
    at a temperature going from ``anneal`` down to 1 over the iterations; the names' covariances
    plus an isotropic variance s2 of the field's own error, estimated from the residuals as the
    variance of CPD) -> expected name mean of every cell (precision-weighted by its mass) ->
    regularised field (:class:`~xmodal.atlas._deform.SmoothField`) -> marginals again.
    Returns the field (None when there is nothing to fit)."""
    from ._deform import SmoothField, centres

    n, m = len(y0), len(model.mu)
    fld = SmoothField(centres(model.mu, n_centres), beta)
    unit = float(np.median(model.iso))
    d2, _ = _nearest(y0, model.mu)
    s2 = max(float(np.mean(d2)) / model.d - unit, 0.0) if adaptive else 0.0
    temps = np.geomspace(anneal, 1.0, iterations) if iterations > 1 else np.ones(iterations)
    try:
        for temperature in temps:
            y = fld.apply(y0)
            _inflate(model, s2)
            _, _, rows, cols, rel, _ = assign(y, model, u, feats, k)
            p, _, _, _ = sinkhorn_marginals(rows, cols, rel, (n, m), temperature=temperature, tol=1e-3,
                                            max_iter=100)
            var = model.iso[cols] + s2
            wprec = p / var
            w = np.bincount(rows, weights=wprec, minlength=n)
            tgt = np.zeros((n, model.d))
            for j in range(model.d):
                tgt[:, j] = np.bincount(rows, weights=wprec * model.mu[cols, j], minlength=n)
            ok = w > 1e-12
            if ok.sum() < model.d + 2:
                return None
            tgt[ok] /= w[ok][:, None]
            fld.fit(y0[ok], tgt[ok], w[ok] * unit, lam)
            # the field's error: the residual variance under the marginals beyond the names' own
            r2 = ((fld.apply(y0)[rows] - model.mu[cols]) ** 2).sum(1)
            mass = max(float(p.sum()), 1e-300)
            if adaptive:
                s2 = max(float((p * r2).sum()) / (model.d * mass) - float((p * model.iso[cols]).sum()) / mass, 0.0)
    finally:
        model.reset()
    return fld


def _nearest(y, mu):
    from scipy.spatial import cKDTree

    d, j = cKDTree(mu).query(y)
    return d ** 2, j
