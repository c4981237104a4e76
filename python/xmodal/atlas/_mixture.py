"""An atlas as a Gaussian mixture of names: per-name costs of a cell, and the exact sparse assignment
of cells to names (negative log-likelihoods in nats)."""

from __future__ import annotations

import math

import numpy as np

from ._model import Atlas

LOG2PI = math.log(2.0 * math.pi)


def _median_nn_distance(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    return float(np.median(dist[:, 1]))


class Model:
    """Precomputed per-name quantities of an atlas for the costs."""

    def __init__(self, atlas: Atlas, feature_weight: float = 1.0):
        self.atlas = atlas
        self.mu = self.mu0 = atlas.means
        self.d = atlas.ndim
        cov = atlas.covariances
        self.prec = self.prec0 = np.linalg.inv(cov)
        self.logdet = self.logdet0 = np.linalg.slogdet(cov)[1]
        self.iso = np.trace(cov, axis1=1, axis2=2) / self.d
        pres = np.clip(atlas.presence, 1e-6, 1 - 1e-6)
        self.log_pi = np.log(pres)
        self.absent = -np.log1p(-pres)  # cost of a name being absent
        # volume of the atlas (uniform ellipsoid with the covariance of the means)
        c = np.cov((self.mu - self.mu.mean(0)).T)
        ev = np.clip(np.linalg.eigvalsh(c), 1e-12, None)
        if self.d == 3:
            self.log_volume = math.log(4.0 / 3.0 * math.pi) + 0.5 * float(np.log(5.0 * ev).sum())
        else:
            self.log_volume = math.log(math.pi) + 0.5 * float(np.log(4.0 * ev).sum())
        self.feature_weight = float(feature_weight)
        if atlas.feature_means is not None:
            fc = atlas.feature_covariances
            self.fmu = atlas.feature_means
            self.fprec = np.linalg.inv(fc)
            self.flogdet = np.linalg.slogdet(fc)[1]
        else:
            self.fmu = None
        self.rms = float(np.sqrt(((self.mu - self.mu.mean(0)) ** 2).sum(1).mean()))
        self.nn = _median_nn_distance(self.mu) if len(self.mu) > 1 else self.rms

    def reset(self):
        self.mu, self.prec, self.logdet = self.mu0, self.prec0, self.logdet0

    def condition(self, residuals, present):
        """Shift each name's mean by what its partners' residuals predict (``residuals`` (m, d),
        valid where ``present``) and shrink its covariance by the share of variance they explain."""
        rel = self.atlas.relations
        J = np.asarray(rel.get("partners", np.zeros((len(self.mu0), 0))), np.int64)
        if J.ndim != 2 or J.shape[1] == 0:
            return False
        w = np.asarray(rel["weights"], np.float64)
        fac = np.asarray(rel["factor"], np.float64)
        sc = np.asarray(rel["scale"], np.float64)
        Jc = np.where(J >= 0, J, 0)
        valid = (J >= 0) & present[Jc]
        z = np.where(valid[..., None], residuals[Jc] / sc[Jc], 0.0)  # (m, p, d)
        shift = sc * (w * valid[..., None] * z).sum(1)
        f = 1.0 - (1.0 - fac) * valid.mean(1)[:, None]  # (m, d): variance left along each axis
        self.mu = self.mu0 + shift
        g = 1.0 / np.sqrt(f)
        self.prec = self.prec0 * g[:, :, None] * g[:, None, :]
        self.logdet = self.logdet0 + np.log(f).sum(1)
        return True

    def outlier_rate(self) -> float:
        """Good-Turing estimate of the fraction of a new sample's cells whose name the atlas lacks:
        names seen in exactly one training sample per sample, over the mean cells per sample;
        at least 0.01 (spurious detections)."""
        a = self.atlas
        n1 = float((a.counts == 1).sum())
        per_sample = float(a.counts.sum()) / max(a.n_samples, 1)
        return float(np.clip(n1 / max(a.n_samples, 1) / max(per_sample, 1.0), 0.01, 0.5))

    def pair_costs(self, y, rows, cols, feats=None):
        """Negative log-likelihood of cell ``rows`` having name ``cols`` (nats)."""
        r = y[rows] - self.mu[cols]
        maha = np.einsum("ei,eij,ej->e", r, self.prec[cols], r)
        c = 0.5 * maha + 0.5 * self.logdet[cols] + 0.5 * self.d * LOG2PI - self.log_pi[cols]
        if feats is not None and self.fmu is not None:
            q = feats[rows] - self.fmu[cols]
            fm = np.einsum("ei,eij,ej->e", q, self.fprec[cols], q)
            f = feats.shape[1]
            c = c + self.feature_weight * (0.5 * fm + 0.5 * self.flogdet[cols] + 0.5 * f * LOG2PI)
        return c

    def unmatched_costs(self, n, u, feats=None):
        cost = np.full(n, float(u))
        if feats is not None and self.fmu is not None:
            f = feats.shape[1]
            cost = cost + self.feature_weight * (0.5 * (feats ** 2).sum(1) + 0.5 * f * LOG2PI)
        return cost


def _graph(y, model: Model, k):
    from ..matching import knn_graph

    g = knn_graph(y, model.mu, k=max(1, min(k, len(model.mu), len(y))))
    g = g.tocoo()
    return g.row.astype(np.int64), g.col.astype(np.int64)


def assign(y, model: Model, u, feats, k):
    """Exact assignment; returns (rows, cols, all candidate rows, cols, relative costs, objective)."""
    from ..matching import linear_assignment
    import scipy.sparse as sp

    n, m = len(y), len(model.mu)
    rows, cols = _graph(y, model, k)
    c = model.pair_costs(y, rows, cols, feats)
    ucell = model.unmatched_costs(n, u, feats)
    rel = c - ucell[rows] - model.absent[cols]
    keep = rel < 0  # pairs that cannot beat leaving both unmatched are never chosen
    r, cc, rr = rows[keep], cols[keep], rel[keep]
    base = float(ucell.sum() + model.absent.sum())
    if r.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), rows, cols, rel, base
    half = 0.5 * float(-rr.min()) + 1e-9
    mat = sp.csr_matrix((rr + 2 * half, (r, cc)), shape=(n, m))
    res = linear_assignment(mat, unmatched_cost=half)
    obj = base + float(res.matched_cost) - 2.0 * half * len(res.rows)
    return res.rows, res.cols, rows, cols, rel, obj
