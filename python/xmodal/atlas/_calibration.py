"""Calibration of an atlas's confidence: leave one sample out, identify it against an atlas of the
others, fit the temperature of the posterior marginals (optionally a Platt scaling) to the outcomes."""

from __future__ import annotations

import time

import numpy as np

from ._assemble import assemble
from ._identify import identify
from ._sinkhorn import SINKHORN, apply_platt, logit, sinkhorn_marginals


def leave_one_out(pts, nms, feats, feature_names, opts, identify_options, prior=None, prior_features=None):
    """Identify every sample against an atlas of the others; per sample the raw material of the
    calibration (candidate graph, relative costs, the assignment, the true atlas rows)."""

    out = []
    for s in range(len(pts)):
        rest = [i for i in range(len(pts)) if i != s]
        sub = assemble([pts[i] for i in rest], [nms[i] for i in rest],
                     None if feats is None else [feats[i] for i in rest], feature_names,
                     prior=prior, prior_features=prior_features, **opts)
        dbg = {}
        io = {k: v for k, v in identify_options.items() if k != "temperature"}
        r = identify(pts[s], sub, features=None if feats is None else feats[s], temperature=1.0, _debug=dbg,
                     **io)
        truth = sub.index(nms[s])
        out.append({"sample": s, "index": r.index, "truth": truth, **dbg,
                    "seconds": r.diagnostics["timings"]["total"], "fit": r.diagnostics["fit"]["median_d2"]})
    return out


def confidence_at(rec, T):
    """Confidence of the given names (and the probability of the truth) at temperature ``T``."""

    rows, cols = rec["rows"], rec["cols"]
    n, m = rec["shape"]
    p, p_un, _, _ = sinkhorn_marginals(rows, cols, rec["rel"], (n, m), temperature=T, **SINKHORN)
    key = {(int(a), int(b)): float(v) for a, b, v in zip(rows, cols, p)}
    idx = rec["index"]
    return np.array([key.get((i, int(idx[i])), 0.0) if idx[i] >= 0 else float(p_un[i]) for i in range(n)])


def calibration_figures(conf, correct, bins=10):
    """ECE (equal-width bins), accuracy and share of cells at confidence >= 0.9, reliability table."""
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    table = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap = abs(conf[sel].mean() - correct[sel].mean())
            ece += sel.mean() * gap
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(sel.sum()),
                          "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    hi = conf >= 0.9
    return {"ece": float(ece), "accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "accuracy_at_0.9": float(correct[hi].mean()) if hi.any() else None,
            "share_at_0.9": float(hi.mean()) if len(conf) else 0.0, "reliability": table, "n": int(len(conf))}


#: Label-noise rates tried per sample (share of its names given wrongly in its own annotation).
NOISE_GRID = np.linspace(0.0, 0.5, 51)


def _noise_loss(conf, correct, noise_grid=NOISE_GRID):
    """Per sample: the binary log loss (summed) of "the given name is right" when a share ``eps``
    of the sample's reference names is itself wrong, ``P(right) = (1 - eps) * conf``; the best
    ``eps`` on the grid, which must beat ``eps = 0`` by ``log(n) / 2`` nats (one parameter's BIC)."""
    c = np.clip(conf, 1e-6, 1 - 1e-6)
    q = np.clip((1.0 - noise_grid)[:, None] * c[None, :], 1e-6, 1 - 1e-6)
    loss = -(correct * np.log(q) + (1 - correct) * np.log(1 - q)).sum(1)
    best = int(np.argmin(loss))
    if loss[0] - loss[best] <= 0.5 * np.log(max(len(c), 2)):
        best = 0
    return float(loss[best]), float(noise_grid[best])


def fit_temperature(records, grid=None, robust=True):
    """Temperature minimising the binary log loss of "the given name is right" over ``records``:
    a log-spaced grid from 0.25 to 16, then a finer one around the best.

    ``robust``: the reference names of a training sample can themselves be wrong (a tracking swap
    renames a whole sub-lineage); its right names then look like confident mistakes and would push
    the temperature up for everyone. Each sample gets its own label-noise rate (see
    :func:`_noise_loss`), fitted with the temperature; returns them too."""
    correct = [(r["index"] == r["truth"]).astype(float) for r in records]

    def loss_at(T):
        conf = [confidence_at(r, T) for r in records]
        if robust:
            per = [_noise_loss(cf, ok) for cf, ok in zip(conf, correct)]
            total = sum(v for v, _ in per) / sum(len(ok) for ok in correct)
            return total, np.concatenate(conf), [e for _, e in per]
        cc, ok = np.clip(np.concatenate(conf), 1e-6, 1 - 1e-6), np.concatenate(correct)
        return -float(np.mean(ok * np.log(cc) + (1 - ok) * np.log(1 - cc))), np.concatenate(conf), \
            [0.0] * len(records)

    grid = np.exp(np.linspace(np.log(0.25), np.log(16.0), 13)) if grid is None else np.asarray(grid, float)
    results = {float(T): loss_at(T) for T in grid}
    if len(grid) > 2:
        best = min(results, key=lambda T: results[T][0])
        step = float(np.log(grid[1] / grid[0]))
        for f in (-0.5, -0.25, 0.25, 0.5):
            T = float(best * np.exp(f * step))
            results[T] = loss_at(T)
    T = min(results, key=lambda T: results[T][0])
    return T, results[T][0], results[T][1], np.concatenate(correct), results[T][2]


def fit_platt(conf, correct, prior=1.0):
    """Platt scaling of the tempered confidences: (a, b) minimising the binary log loss of
    ``sigmoid(a * logit(conf) + b)``, with a weak Gaussian prior (``prior`` pseudo-observations)
    towards the identity (1, 0); a in [0.25, 4], b in [-4, 4]."""
    from scipy.optimize import minimize

    z = logit(conf)
    y = np.asarray(correct, float)

    def loss(v):
        a, b = v
        q = a * z + b
        # log(1 + exp(-q)) for y = 1, log(1 + exp(q)) for y = 0, summed stably
        return float(np.sum(np.logaddexp(0.0, -q) * y + np.logaddexp(0.0, q) * (1 - y))
                     + 0.5 * prior * ((a - 1.0) ** 2 + b ** 2))

    res = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.25, 4.0), (-4.0, 4.0)])
    return float(res.x[0]), float(res.x[1])


def calibrate_atlas(pts, nms, feats, feature_names, atlas, opts, identify_options, platt=False, robust=True):
    t0 = time.perf_counter()
    recs = leave_one_out(pts, nms, feats, feature_names, opts, identify_options, prior=atlas.pooled_covariance,
                         prior_features=atlas.pooled_feature_covariance)
    T, loss, conf, correct, noise = fit_temperature(recs, robust=robust)
    out = {"temperature": T, "log_loss": loss, "loo_label_noise_per_sample": noise,
           "method": "leave-one-sample-out: temperature of the marginals (binary log loss"
                     + (", a label-noise rate per sample)" if robust else ")")}
    if platt:
        ab = fit_platt(conf, correct)
        conf = apply_platt(conf, ab)
        out.update(platt=list(ab), method=out["method"] + ", then Platt scaling")
    figs = calibration_figures(conf, correct)
    per = []
    start = 0
    for r in recs:
        n = len(r["index"])
        per.append(float(correct[start:start + n].mean()))
        start += n
    fits = [r["fit"] for r in recs if r["fit"] is not None]
    return {**out, "loo_accuracy_per_sample": per, "loo_mean_accuracy": float(np.mean(per)),
            "loo_fit_median_d2": fits,
            "loo_worst_accuracy": float(np.min(per)), **{"loo_" + k: v for k, v in figs.items()},
            "seconds": time.perf_counter() - t0}
