"""CPU adapter of :func:`xmodal.cpd`: numpy points, the E-step of xmodal._core: the exact kernel
(cpp/src/cpd.cpp) or the fast one (cpp/src/cpd_fast.cpp: grid Gauss transform with per-point error
bounds, exact sums where the bound is above the tolerance)."""

from __future__ import annotations

import numpy as np

from .._validation import as_points
from ._em import EStepOut


def points(x, name: str) -> np.ndarray:
    """``x`` as validated float64 ``(n, d)`` numpy coordinates."""
    return as_points(x, name)


def finish(result, kind: str):
    """numpy in, numpy out: nothing to convert."""
    return result


class EStep:
    """E-step on the CPU kernel (float32 or float64 inside, float64 out).

    ``method``: "exact" (the exact kernel), "fast" or "auto" (the fast E-step's kernel with that
    method and the error tolerance ``tol``; see :func:`xmodal.cpd`). :meth:`report` sums up what ran.
    """

    def __init__(self, Xn: np.ndarray, dtype, weights, cutoff: float, method: str = "exact", tol: float = 1e-2,
                 want_best: bool = True, features=None):
        self.dtype = np.dtype(dtype)
        self.X = np.ascontiguousarray(Xn, dtype=self.dtype)
        self.w = None if weights is None else np.ascontiguousarray(weights, dtype=self.dtype)
        self.cutoff = cutoff
        self.pairs = 0
        self.method, self.tol = method, tol
        self.ran: list[dict] = []  # per call of the fast kernel: what ran and its bounds
        self.calls = 0
        self.want_best = want_best  # False: no best-match search (EStepOut.best / prob are None)
        # (fixed (N, f), moving (M, f), 1 / (2 feature_sigma^2)): the kernel of cpd_estep_features
        self.features = None if features is None else (np.ascontiguousarray(features[0], dtype=self.dtype),
                                                       np.ascontiguousarray(features[1], dtype=self.dtype),
                                                       float(features[2]))

    def _fast(self, TY: np.ndarray, sigma2: float, c: float) -> dict:
        from .. import _core

        out = _core.cpd_estep_fast(self.X, np.ascontiguousarray(TY, dtype=self.dtype), self.w, sigma2, c,
                                   self.cutoff, self.method, self.tol, 0, self.want_best, False)
        st = out["stats"]
        self.ran.append({k: st[k] for k in _KEPT})
        return out

    def report(self) -> dict:
        """``requested`` method, ``tol``, ``fast_calls`` / ``exact_calls`` (E-steps that ran each
        path, the collapse check's included), the largest a posteriori bounds over the fast calls
        (``max_rel_s``, ``max_rel_p1``: relative; ``max_px``: units of sigma),
        ``unresolved_rows`` (summed) and ``calls`` (per call of the fast kernel: method, q, order,
        cells, bounds, exact columns and rows, fell_back)."""
        fast = [r for r in self.ran if r["method"] == "fast"]
        feats = None if self.features is None else {"columns": int(self.features[0].shape[1]),
                                                    "feature_sigma": float((2.0 * self.features[2]) ** -0.5)
                                                    if self.features[2] > 0 else float("inf")}
        return {"features": feats, "requested": self.method, "tol": self.tol, "fast_calls": len(fast),
                "exact_calls": self.calls - len(fast),
                "max_rel_s": max((r["max_rel_s"] for r in fast), default=0.0),
                "max_rel_p1": max((r["max_rel_p1"] for r in fast), default=0.0),
                "max_px": max((r["max_px"] for r in fast), default=0.0),
                "unresolved_rows": sum(r["unresolved_rows"] for r in fast), "calls": self.ran}

    def native(self, TY: np.ndarray, sigma2: float, c: float, want_best: bool = True) -> dict:
        from .. import _core

        if self.features is not None:
            fx, fy, inv = self.features
            return _core.cpd_estep_features(self.X, np.ascontiguousarray(TY, dtype=self.dtype), self.w, fx, fy, inv,
                                            sigma2, c, self.cutoff, want_best)
        return _core.cpd_estep(self.X, np.ascontiguousarray(TY, dtype=self.dtype), self.w, sigma2, c, self.cutoff,
                               want_best)

    def __call__(self, TY: np.ndarray, sigma2: float, c: float) -> EStepOut:
        self.calls += 1
        out = self.native(TY, sigma2, c, self.want_best) if self.method == "exact" else self._fast(TY, sigma2, c)
        self.pairs += int(out["pairs"])
        f64 = np.float64
        best, prob = (out["best_idx"], out["best_prob"].astype(f64)) if self.want_best else (None, None)
        return EStepOut(out["P1"].astype(f64), out["Pt1"].astype(f64), out["PX"].astype(f64), best, prob,
                        float(out["log_s_sum"]), int(out["empty_columns"]))

    def posterior(self, Xn, TY, s2: float, c: float, weights) -> "TopKPosterior":
        return TopKPosterior(self, Xn, TY, s2, c, weights)


_KEPT = ("method", "order", "q", "cells", "capped", "max_rel_s", "max_rel_p1", "max_px", "exact_columns",
         "exact_rows", "unresolved_rows", "fell_back")


class TopKPosterior:
    """Posterior restricted to the k nearest fixed points (see CPDResult.correspondence_matrix)."""

    def __init__(self, estep: EStep, Xn, TY, s2, c, wts):
        self.estep, self.Xn, self.TY, self.s2, self.c, self.wts = estep, Xn, TY.copy(), s2, c, wts

    def __call__(self, k: int):
        from scipy.sparse import csr_matrix
        from scipy.spatial import cKDTree

        e = self.estep
        log_s = e.native(self.TY, self.s2, self.c, want_best=False)["log_s"]
        M, N = self.TY.shape[0], self.Xn.shape[0]
        k = min(k, N)
        d, idx = cKDTree(self.Xn).query(self.TY, k=k)
        d, idx = d.reshape(M, k), idx.reshape(M, k)
        # log P[m, n] = log a_m - d^2 / (2 sigma2) - log s_n, exact where s_n itself underflows;
        # pairs outside the E-step's support (d^2 > 2 sigma2 cutoff) are 0 as in the E-step.
        logk = -(d * d) / (2.0 * self.s2)
        if self.wts is not None:
            logk = logk + np.log(self.wts)[:, None]
        if e.features is not None:  # the feature factor of the kernel (CPD with features)
            fx, fy, inv = e.features
            logk = logk - inv * ((fy[:, None, :].astype(np.float64) - fx[idx].astype(np.float64)) ** 2).sum(-1)
        ls = log_s[idx]
        inside = np.isfinite(ls) & (d * d <= 2.0 * self.s2 * e.cutoff)
        p = np.where(inside, np.exp(np.minimum(np.where(inside, logk - ls, -np.inf), 0.0)), 0.0)
        rows = np.repeat(np.arange(M), k)
        return csr_matrix((p.ravel(), (rows, idx.ravel())), shape=(M, N))
