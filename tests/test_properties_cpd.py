"""Property-based tests (hypothesis) of the CPD E-step and of the unit independence of the fits.

The native E-step (``xmodal._core.cpd_estep``, float32 and float64) is compared with a dense
brute-force reference in float64 numpy (:func:`dense_estep`, an exact log-sum-exp over the same
support) over random shapes, point-set kinds (uniform, near matches, exact duplicates, ties on an
integer grid, all points equal, collinear, far apart), scales from 1e-6 to 1e12, offsets, sigma2
over ~40 decades (down to 1e-300), cutoffs, weights and outlier weights w in [0, 1). Whatever the
input, the posterior must be a posterior: sum P1 = sum Pt1 <= N, 0 <= Pt1 <= 1.

Profiles (tests/conftest.py): "ci" (default, fixed seed; this file takes ~20 s on 2 cores) and
"nightly" (20x the examples, random seeds): ``XMODAL_HYPOTHESIS_PROFILE=nightly pytest
tests/test_properties_cpd.py --hypothesis-show-statistics``.
"""

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xmodal  # noqa: E402
from xmodal import _core  # noqa: E402
from xmodal.registration import fit_affine, fit_rigid, prediction_region  # noqa: E402


def examples(n: int) -> int:
    """``n`` examples under the "ci" profile (100 examples by default), scaled with the profile."""
    return max(1, int(round(n * settings.default.max_examples / 100)))


# ----------------------------------------------------------------------------- reference
def pair_d2(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(M, N) squared distances in the arithmetic of the kernel: differences and sum of squares in
    the points' dtype, axis by axis in order (so the support test d2 <= r2 decides alike)."""
    t = X[None, :, :] - Y[:, None, :]
    d2 = t[..., 0] * t[..., 0] + t[..., 1] * t[..., 1]
    if X.shape[1] == 3:
        d2 = d2 + t[..., 2] * t[..., 2]
    return d2


def dense_estep(X, Y, weights, sigma2, c, cutoff):
    """Dense E-step in float64 with an exact log-sum-exp per fixed point.

    Returns P (M, N) and log s (N). Support: pairs with d2 <= r2 (every pair for cutoff = inf),
    d2 and r2 in the points' dtype as in the kernel; the rest in float64.
    """
    dt = X.dtype
    d2 = pair_d2(X, Y)
    inside = d2 <= (dt.type(2.0 * sigma2 * cutoff) if math.isfinite(cutoff) else np.inf)
    d2 = d2.astype(np.float64)
    inv = 1.0 / (2.0 * sigma2)
    M, N = d2.shape
    a = np.ones(M) if weights is None else weights.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = np.where(inside & (a > 0)[:, None], d2, np.inf).min(axis=0)  # (N,) of the weighted support
        has = np.isfinite(h)
        hh = np.where(has, h, 0.0)
        logk = np.where(inside, np.log(a)[:, None] - (d2 - hh[None, :]) * inv, -np.inf)
        S = np.exp(logk).sum(axis=0)
        la = np.log(S)
        e = hh * inv  # may overflow to inf when sigma2 is tiny against the distances
        lc = np.log(c) + e if c > 0 else np.full(N, -np.inf)
        lden = np.logaddexp(la, lc)
        P = np.where(inside & (S > 0)[None, :], np.exp(logk - lden[None, :]), 0.0)
        # log s = log(S e^-e + c), without inf - inf
        log_s = np.where(la >= lc, (la - e) + np.log1p(np.exp(lc - la)),
                         (np.log(c) if c > 0 else -np.inf) + np.log1p(np.exp(la - lc)))
        log_s = np.where(S > 0, log_s, np.log(c) if c > 0 else -np.inf)
        empty = (S == 0) & (c == 0)
    return P, log_s, empty


def check_against_reference(X, Y, weights, sigma2, c, cutoff):
    """Run the native E-step and compare every output with :func:`dense_estep`."""
    out = _core.cpd_estep(X, Y, weights, sigma2, c, cutoff, True)
    P1, Pt1, PX, best, prob = (out[k] for k in ("P1", "Pt1", "PX", "best_idx", "best_prob"))
    logsum, empty, log_s, shifted = (out[k] for k in ("log_s_sum", "empty_columns", "log_s", "shifted_columns"))
    M, N = len(Y), len(X)
    tol = 1e-9 if X.dtype == np.float64 else 3e-4
    for name, v in (("P1", P1), ("Pt1", Pt1), ("PX", PX), ("prob", prob)):
        assert np.all(np.isfinite(v)), name
    # a posterior, whatever the input
    assert np.all(P1 >= 0) and np.all(Pt1 >= 0) and np.all(Pt1 <= 1 + tol)
    assert float(P1.sum(dtype=np.float64)) <= N * (1 + tol)
    assert abs(float(P1.sum(dtype=np.float64)) - float(Pt1.sum(dtype=np.float64))) <= tol * max(N, 1)
    assert np.all(prob >= 0) and np.all(prob <= 1 + tol)
    # against the dense reference
    P, ref_log_s, ref_empty = dense_estep(X, Y, weights, sigma2, c, cutoff)
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(Pt1, P.sum(0), rtol=tol, atol=tol)
    np.testing.assert_allclose(P1, P.sum(1), rtol=tol, atol=tol)
    scale = np.abs(Xd).max() + np.finfo(np.float64).tiny
    assert np.all(np.abs(PX - P @ Xd) <= tol * (P.sum(1)[:, None] * scale + scale))
    fin = np.isfinite(ref_log_s)
    np.testing.assert_array_equal(np.isfinite(log_s), fin)
    np.testing.assert_allclose(log_s[fin], ref_log_s[fin], rtol=tol, atol=tol)
    assert empty == int(ref_empty.sum())
    ref_logsum = np.where(ref_empty, math.log(np.finfo(np.float64).tiny), ref_log_s).sum()
    if np.isfinite(ref_logsum):
        assert abs(logsum - ref_logsum) <= tol * (np.abs(np.where(ref_empty, 708.0, ref_log_s)).sum() + N)
    else:
        assert logsum == ref_logsum
    # best match wherever the reference's largest posterior is clear
    top2 = np.sort(P, axis=1)[:, -2:] if N > 1 else np.c_[np.zeros(M), P]
    clear = (top2[:, 1] > 1e-6) & (top2[:, 1] > top2[:, 0] * (1 + 100 * tol))
    np.testing.assert_array_equal(best[clear], P.argmax(1)[clear])
    np.testing.assert_allclose(prob[clear], P.max(1)[clear], rtol=tol, atol=tol)
    assert np.all(best[P.max(1) == 0] == -1)
    return shifted


# ----------------------------------------------------------------------------- strategies
KINDS = ("uniform", "near", "duplicates", "grid_ties", "all_equal", "collinear", "far_apart")


def make_points(kind, d, M, N, rng):
    if kind == "uniform":
        return rng.random((N, d)), rng.random((M, d))
    if kind == "near":
        X = rng.random((N, d))
        return X, X[rng.integers(0, N, M)] + rng.normal(scale=1e-3, size=(M, d))
    if kind == "duplicates":
        pool = rng.random((3, d))
        return pool[rng.integers(0, 3, N)], pool[rng.integers(0, 3, M)]
    if kind == "grid_ties":
        return rng.integers(0, 4, (N, d)).astype(float), rng.integers(0, 4, (M, d)).astype(float)
    if kind == "all_equal":
        p = rng.random(d)
        q = p if rng.random() < 0.5 else rng.random(d)
        return np.tile(p, (N, 1)), np.tile(q, (M, 1))
    if kind == "collinear":
        p, v = rng.random(d), rng.normal(size=d)
        return p + rng.random((N, 1)) * v, p + rng.random((M, 1)) * v
    X = rng.random((N, d))  # far apart: every kernel term is tiny unless sigma2 is large
    return X, rng.random((M, d)) + 100.0


@st.composite
def estep_cases(draw):
    d = draw(st.sampled_from([2, 3]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    M = draw(st.integers(1, 40))
    N = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    X, Y = make_points(kind, d, M, N, rng)
    scale = 10.0 ** draw(st.floats(-6, 12))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3])) * rng.normal(size=d)
    X = ((X + offset) * scale).astype(dtype)
    Y = ((Y + offset) * scale).astype(dtype)
    if draw(st.integers(0, 9)) == 0:
        sigma2 = 1e-300  # absolute: below what float32 (and most units) can hold
    else:
        sigma2 = scale * scale * 10.0 ** draw(st.floats(-30, 8))
    cutoff = draw(st.sampled_from([36.0, math.inf, 5.0, 1000.0]))
    w = draw(st.sampled_from([0.0, 0.0, 1e-8, 0.1, 0.5, 0.99]))
    # c = (2 pi sigma2)^(d/2) w / (1 - w) M / N, in logs so it never overflows silently
    log_c = d / 2 * math.log(2 * math.pi * sigma2) + math.log(w / (1 - w) * M / N) if w > 0 else -math.inf
    assume(log_c < 700)
    c = math.exp(log_c) if w > 0 else 0.0
    wkind = draw(st.sampled_from(["none", "none", "positive", "with_zeros"]))
    weights = None
    if wkind != "none":
        weights = rng.uniform(0.1, 10.0, M)
        if wkind == "with_zeros":
            weights[rng.random(M) < 0.3] = 0.0
        weights = weights.astype(dtype)
    return X, Y, weights, float(sigma2), c, cutoff


# ----------------------------------------------------------------------------- properties
@settings(max_examples=examples(400))
@given(estep_cases())
def test_estep_matches_dense_reference(case):
    X, Y, weights, sigma2, c, cutoff = case
    check_against_reference(X, Y, weights, sigma2, c, cutoff)


@settings(max_examples=examples(60))
@given(d=st.sampled_from([2, 3]), dtype=st.sampled_from([np.float64, np.float32]),
       log_s2=st.floats(-300, -1), seed=st.integers(0, 2 ** 32 - 1))
def test_estep_tiny_sigma2_is_nearest_neighbour_assignment(d, dtype, log_s2, seed):
    """With distinct distances and sigma2 far below them, every fixed point gives its whole mass to
    its nearest moving point (dense and truncated alike): the limit the old E-step broke."""
    rng = np.random.default_rng(seed)
    X = rng.random((30, d)).astype(dtype)
    Y = (rng.random((25, d)) * 0.9 + 0.05).astype(dtype)
    d2 = pair_d2(X, Y).astype(np.float64)
    srt = np.sort(d2, axis=0)
    assume(np.all(srt[1] > srt[0] * (1 + 1e-3)))  # a unique nearest moving point per fixed point
    sigma2 = float(10.0 ** log_s2) * float(srt[0].min() + 1e-12)
    assume(np.all((srt[1] - srt[0]) / (2 * sigma2) > 50))
    nearest = d2.argmin(axis=0)
    for cutoff in (36.0, math.inf):
        out = _core.cpd_estep(X, Y, None, sigma2, 0.0, cutoff, True)
        P1, Pt1 = out["P1"], out["Pt1"]
        if cutoff == math.inf:
            np.testing.assert_allclose(Pt1, 1.0, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(P1, np.bincount(nearest, minlength=25), rtol=1e-6, atol=1e-9)
        else:  # truncated: only the fixed points with a moving point within the cutoff radius count
            inside = srt[0] <= 2 * sigma2 * cutoff * (1 - 1e-5)
            assert np.all(Pt1[inside] > 1 - 1e-6) and float(P1.sum()) <= 30 * (1 + 1e-6)


@settings(max_examples=examples(25))
@given(kind=st.sampled_from(["rigid", "similarity", "affine"]), d=st.sampled_from([2, 3]),
       log_scale=st.floats(-6, 12), seed=st.integers(0, 2 ** 32 - 1))
def test_cpd_is_unit_independent(kind, d, log_scale, seed):
    """cpd(s Y, s X) = s cpd(Y, X) for s from 1e-6 to 1e12 (the E-step, the sigma2 floor and the
    M-steps are all relative to the data's own spread)."""
    rng = np.random.default_rng(seed)
    Y = rng.uniform(-10, 10, (60, d))
    A = np.linalg.qr(rng.normal(size=(d, d)))[0]
    A *= np.sign(np.linalg.det(A))
    X = Y @ (A * (1.1 if kind != "rigid" else 1.0)).T * 0.3 + rng.normal(0, 0.05, (60, d)) + 1.0
    X = Y + 0.1 * (X - Y)  # a small change keeps every case in CPD's basin: units, not global search
    s = 10.0 ** log_scale
    ref = xmodal.cpd(Y, X, transform=kind, max_iter=40, tol=0.0)
    got = xmodal.cpd(Y * s, X * s, transform=kind, max_iter=40, tol=0.0)
    np.testing.assert_allclose(got.moved / s, ref.moved, rtol=1e-6, atol=1e-6 * np.abs(X).max())
    assert got.sigma2 / s ** 2 == pytest.approx(ref.sigma2, rel=1e-5)


@settings(max_examples=examples(100))
@given(d=st.sampled_from([2, 3]), n=st.integers(8, 40), log_scale=st.floats(-6, 12),
       log_offset=st.floats(-3, 6), seed=st.integers(0, 2 ** 32 - 1), with_scale=st.booleans())
def test_fits_are_unit_independent(d, n, log_scale, log_offset, seed, with_scale):
    """fit_rigid / fit_affine / prediction_region give the same answer in any units (issue 10
    item 5: a cond(JᵀJ) test made fit_rigid refuse data at 1e5 that it accepted at 1)."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, d)) + 10.0 ** log_offset
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    R *= np.sign(np.linalg.det(R))
    dst = src @ R.T + rng.normal(size=d) + rng.normal(scale=0.01, size=(n, d))
    s = 10.0 ** log_scale
    a, b = fit_rigid(src, dst, scale=with_scale), fit_rigid(src * s, dst * s, scale=with_scale)
    np.testing.assert_allclose(b.rotation, a.rotation, atol=1e-7)
    assert b.rms / s == pytest.approx(a.rms, rel=1e-6)
    pa, pb = prediction_region(a, src[:3]), prediction_region(b, src[:3] * s)
    np.testing.assert_allclose(pb.semi_axes / s, pa.semi_axes, rtol=1e-5)
    fa, fb = fit_affine(src, dst), fit_affine(src * s, dst * s)
    np.testing.assert_allclose(fb.matrix, fa.matrix, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(prediction_region(fb, src[:3] * s).semi_axes / s,
                               prediction_region(fa, src[:3]).semi_axes, rtol=1e-5)
