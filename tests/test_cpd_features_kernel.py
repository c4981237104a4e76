"""The native E-step with features (xmodal._core.cpd_estep_features: vector lanes over a cell grid,
the polynomial exp, log-sum-exp columns) against a dense numpy reference in log space, over the
dimensions, the specialised and generic feature counts, weights (zeros, tiny), cutoffs, sigma2
small and large, float32 and exact ties."""

import numpy as np
import pytest

from xmodal import _core


def _reference(X, Y, w, FX, FY, finv, s2, c, cutoff):
    X, Y, FX, FY = (np.asarray(a, dtype=np.float64) for a in (X, Y, FX, FY))
    w = np.ones(len(Y)) if w is None else np.asarray(w, dtype=np.float64)
    d2 = ((Y[:, None] - X[None]) ** 2).sum(-1)
    e = d2 / (2 * s2) + finv * ((FY[:, None] - FX[None]) ** 2).sum(-1)
    live = (d2 <= 2 * s2 * cutoff) & (w[:, None] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logk = np.where(live, np.log(w)[:, None] - e, -np.inf)  # log(w_m k_mn)
        log_s = np.logaddexp(np.logaddexp.reduce(logk, axis=0), np.log(c) if c > 0 else -np.inf)
        logP = np.where(np.isfinite(log_s)[None], logk - log_s[None], -np.inf)
    P = np.exp(logP)
    return P, log_s, logP


def _check(out, ref, X, rtol, best=True):
    P, log_s, logP = ref
    X = np.asarray(X, dtype=np.float64)
    scale = max(P.sum(1).max(), 1e-300)
    np.testing.assert_allclose(out["P1"], P.sum(1), rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(out["Pt1"], P.sum(0), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(out["PX"], P @ X, rtol=rtol, atol=rtol * scale * np.abs(X).max())
    np.testing.assert_array_equal(np.isfinite(out["log_s"]), np.isfinite(log_s))
    f = np.isfinite(log_s)
    np.testing.assert_allclose(out["log_s"][f], log_s[f], rtol=rtol, atol=rtol)
    assert out["empty_columns"] == int((~f).sum())
    if best:
        has = P.max(1) > 0
        np.testing.assert_array_equal(out["best_idx"][~has], -1)
        bi = out["best_idx"][has]
        # the reported best is a largest P[m, n] (to rounding) and its probability is reported
        rows = np.nonzero(has)[0]
        np.testing.assert_allclose(logP[rows, bi], logP[rows].max(1), rtol=0, atol=1e-9)
        np.testing.assert_allclose(out["best_prob"][has], P[rows, bi], rtol=rtol, atol=rtol * scale)


def _data(d, f, n, m, seed, weighted):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = 0.9 * X[rng.permutation(n)[:m]] + 0.1 * rng.normal(size=(m, d))
    FX, FY = rng.normal(size=(n, f)), rng.normal(size=(m, f))
    w = None
    if weighted:
        w = rng.uniform(0.05, 2.0, m)
        w[::7] = 0.0
    return X, Y, w, FX, FY


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("f", [1, 2, 3, 5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("s2, cutoff, c, finv", [(0.3, np.inf, 0.05, 0.7), (0.02, 36.0, 0.0, 2.0),
                                                 (0.05, 4.0, 1e-3, 0.0), (5.0, 9.0, 0.1, 30.0),
                                                 (1e-7, 36.0, 0.01, 0.5)])
def test_feature_kernel_matches_reference(d, f, weighted, s2, cutoff, c, finv):
    X, Y, w, FX, FY = _data(d, f, 173, 131, 7 * d + f + 100 * weighted, weighted)
    out = _core.cpd_estep_features(X, Y, w, FX, FY, finv, s2, c, cutoff, True)
    ref = _reference(X, Y, w, FX, FY, finv, s2, c, cutoff)
    _check(out, ref, X, 1e-11)
    assert out["shifted_columns"] == 0
    o32 = _core.cpd_estep_features(*(None if a is None else a.astype(np.float32) for a in (X, Y, w, FX, FY)),
                                   finv, s2, c, cutoff, True)
    assert o32["P1"].dtype == np.float32
    ref32 = _reference(*(None if a is None else a.astype(np.float32) for a in (X, Y, w, FX, FY)), finv, s2, c, cutoff)
    _check(o32, ref32, X.astype(np.float32), 2e-5, best=False)


def test_feature_kernel_far_points_and_underflow():
    # every term underflows exp() on its own (sigma2 tiny against the distances): the columns are
    # summed relative to their largest term and each still sums to 1; subnormal P entries survive
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(60, 3)), rng.normal(size=(45, 3))
    FX, FY = rng.normal(size=(60, 2)), rng.normal(size=(45, 2))
    out = _core.cpd_estep_features(X, Y, None, FX, FY, 3.0, 1e-6, 0.0, np.inf, True)
    ref = _reference(X, Y, None, FX, FY, 3.0, 1e-6, 0.0, np.inf)
    np.testing.assert_allclose(out["Pt1"], 1.0, rtol=1e-12)
    _check(out, ref, X, 1e-9)
    # a feature term of 720: P[m, n] = exp(-720) / (1 + exp(-720)) is subnormal and kept (as exp()
    # keeps it), not flushed to 0; the best match is still reported
    o = _core.cpd_estep_features(np.zeros((1, 2)), np.zeros((1, 2)), None, np.ones((1, 1)), np.zeros((1, 1)), 720.0,
                                 1.0, 1.0, np.inf, True)
    assert 0 < o["P1"][0] < 1e-300
    assert o["P1"][0] == pytest.approx(np.exp(-720.0), rel=1e-9)
    assert o["best_idx"][0] == 0


def test_feature_kernel_tiny_weights():
    # a weight of 1e-305 makes P[m, n] / w_m ~ 1e305, beyond the polynomial exp's range: the row
    # falls back to exp(); results stay those of the reference
    X, Y, w, FX, FY = _data(3, 2, 80, 60, 11, True)
    w[3] = 1e-305
    w[10] = 1e-200
    out = _core.cpd_estep_features(X, Y, w, FX, FY, 0.4, 0.1, 0.0, 36.0, True)
    ref = _reference(X, Y, w, FX, FY, 0.4, 0.1, 0.0, 36.0)
    _check(out, ref, X, 1e-10)
    assert np.all(np.isfinite(out["P1"])) and np.all(np.isfinite(out["PX"]))


def test_feature_kernel_ties_take_the_smallest_index():
    # duplicated fixed points (same place, same features): P is tied, the smallest index wins
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 3))
    X = np.concatenate([base, base])
    fb = rng.normal(size=(40, 1))
    FX = np.concatenate([fb, fb])
    Y = base[:30] + 0.01
    FY = fb[:30]
    out = _core.cpd_estep_features(X, Y, None, FX, FY, 1.0, 0.05, 0.0, 36.0, True)
    P, _, _ = _reference(X, Y, None, FX, FY, 1.0, 0.05, 0.0, 36.0)
    assert np.all(out["best_idx"] < 40)
    np.testing.assert_array_equal(out["best_idx"], P[:, :40].argmax(1))


def test_feature_kernel_many_points_threads_and_cells():
    # enough pairs for the threads and a fine grid (many ranges, masked tails); deterministic
    rng = np.random.default_rng(8)
    X = rng.uniform(0, 1, size=(700, 3))
    Y = X[rng.permutation(700)[:650]] + 0.01 * rng.normal(size=(650, 3))
    FX, FY = rng.normal(size=(700, 1)), rng.normal(size=(650, 1))
    args = (X, Y, None, FX, FY, 1.5, 2e-3, 1e-3, 36.0, True)
    out = _core.cpd_estep_features(*args)
    _check(out, _reference(*args[:-1]), X, 1e-11)
    again = _core.cpd_estep_features(*args)
    for k in ("P1", "Pt1", "PX", "log_s", "best_idx"):
        np.testing.assert_array_equal(out[k], again[k])
