"""Fast (grid) CPD E-step, its error bounds, the fast Gauss transform and the voxel subsample.

The reference is the exact kernel with dense sums (``_core.cpd_estep``, cutoff = inf) in float64.
Point clouds have a nucleus-like density: blue-noise points (a jittered lattice of unit spacing)
inside an ellipsoid, the moving copy smoothly deformed, noisy and with missing points.
"""

import numpy as np
import pytest

import xmodal
from xmodal import _core
from xmodal.registration._fast_estep import (
    ESTEP_TOL,
    fast_estep,
    gauss_transform,
    grid_error_bound,
    voxel_subsample,
)


def nuclei_cloud(n, d, seed, spacing=1.0):
    """About n blue-noise points (jittered lattice) inside an ellipsoid with axes 1 : 0.7 : 0.5."""
    rng = np.random.default_rng(seed)
    axes = np.array([1.0, 0.7, 0.5][:d])
    vol_frac = np.pi / 4 if d == 2 else np.pi / 6
    side = (n / (vol_frac * np.prod(axes))) ** (1.0 / d) * 1.05
    k = int(np.ceil(side))
    g = np.stack(np.meshgrid(*[np.arange(k)] * d, indexing="ij"), -1).reshape(-1, d).astype(float)
    g += rng.uniform(-0.35, 0.35, size=g.shape)
    c = (g - (k - 1) / 2) / ((k - 1) / 2 * axes)
    keep = (c ** 2).sum(1) <= 1.0
    p = g[keep] * spacing
    return p[rng.permutation(len(p))[:n]]


def moving_copy(X, seed, noise=0.25, missing=0.1, shift=0.7):
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    centres = X[rng.choice(len(X), 8, replace=False)]
    disp = np.exp(-((X[:, None] - centres[None]) ** 2).sum(-1) / (2 * 8.0 ** 2)) @ rng.normal(size=(8, d))
    Y = X + 1.5 * disp + rng.normal(scale=noise, size=X.shape) + shift
    keep = rng.random(len(X)) >= missing
    return Y[keep]


def dense_reference(X, Y, s2, c=0.0, weights=None):
    r = _core.cpd_estep(np.ascontiguousarray(X, np.float64), np.ascontiguousarray(Y, np.float64),
                        None if weights is None else np.asarray(weights, np.float64), s2, c, np.inf, True)
    return r["P1"], r["Pt1"], r["PX"], r["best_idx"], r["best_prob"], r["log_s_sum"], r["log_s"]


def posterior_distance_sum(X, Y, s2, log_s, chunk=512):
    """sum_n P[m, n] |x_n - y_m| per moving point (dense, chunked)."""
    out = np.zeros(len(Y))
    for i in range(0, len(Y), chunk):
        d2 = ((Y[i:i + chunk, None, :] - X[None]) ** 2).sum(-1)
        P = np.exp(-d2 / (2 * s2) - log_s[None, :])
        out[i:i + chunk] = (P * np.sqrt(d2)).sum(1)
    return out


def check_against_reference(X, Y, s2, r, c=0.0, weights=None, slack=1e-9):
    """Every output of the fast E-step lies within its reported bound of the dense reference."""
    P1, Pt1, PX, _, _, logsum, log_s = dense_reference(X, Y, s2, c, weights)
    s_ref = np.exp(log_s)
    s_fast = np.exp(r.log_s)
    rel_s = np.abs(s_fast - s_ref) / s_ref
    assert np.all(rel_s <= r.bound_s + slack), (rel_s.max(), r.bound_s[np.argmax(rel_s - r.bound_s)])
    assert np.all(np.abs(r.Pt1 - Pt1) <= r.bound_s * Pt1 + slack)
    assert np.all(np.abs(r.P1 - P1) <= r.bound_p1 + slack * np.maximum(P1, 1.0))
    # the posterior mean's displacement: grid part + the s_n part (max relative error of s_n)
    Yd = np.asarray(Y, np.float64)
    dev = np.abs((r.PX - Yd * r.P1[:, None]) - (PX - Yd * P1[:, None])).max(1)
    rel_g = r.info["max_rel_s"] / (1 - r.info["max_rel_s"])
    extra = rel_g * posterior_distance_sum(np.asarray(X, np.float64), Yd, s2, log_s)
    if weights is not None:
        extra = extra * np.asarray(weights, np.float64)
    scale = np.abs(Yd).max() + 1.0
    assert np.all(dev <= r.bound_px + extra + slack * scale * np.maximum(P1, 1.0)), (dev - r.bound_px - extra).max()
    assert abs(r.log_s_sum - logsum) <= np.sum(-np.log1p(-np.minimum(r.bound_s, 0.5))) + slack * abs(logsum) + 1e-6
    return rel_s


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("s2", [2.0, 9.0, 60.0])
def test_fast_estep_within_reported_bound(d, dtype, s2):
    n = 2500 if d == 3 else 1800
    X = nuclei_cloud(n, d, seed=d).astype(dtype)
    Y = moving_copy(X.astype(float), seed=d + 10).astype(dtype)
    # (a small problem: the default cap of 4 (M + N) cells would coarsen the grid at sigma2 = 2)
    r = fast_estep(X, Y, s2, method="fast", tol=ESTEP_TOL, want_bounds=True, max_cells=10**6)
    assert r.info["method"] == "fast" and not r.info["capped"]
    # float32 inputs: the reference sees the same float32 coordinates; the grid sums in double,
    # so the only extra error is the float32 rounding of the outputs
    slack = 1e-9 if dtype == np.float64 else 3e-6
    rel_s = check_against_reference(X.astype(np.float64), Y.astype(np.float64), s2, r, slack=slack)
    # the bound is rigorous but not vacuous: below the tolerance, and the errors far below it
    assert r.info["max_rel_s"] <= ESTEP_TOL / 2
    assert r.info["max_rel_p1"] <= ESTEP_TOL * 1.01
    assert rel_s.max() <= 1e-3
    assert r.info["sampled_rel_s"] <= r.info["max_rel_s"]
    assert r.P1.dtype == dtype and r.PX.dtype == dtype and r.Pt1.dtype == dtype


@pytest.mark.parametrize("tol", [1e-1, 1e-3])
def test_tolerance_picks_the_grid(tol):
    X = nuclei_cloud(2500, 3, seed=5)
    Y = moving_copy(X, seed=6)
    r = fast_estep(X, Y, 16.0, method="fast", tol=tol, want_bounds=True)
    assert r.info["method"] == "fast"
    # a tighter tolerance needs a finer grid or a higher B-spline order
    assert r.info["dense_rel"] <= tol / 4
    assert r.info["max_rel_s"] <= tol / 2
    check_against_reference(X, Y, 16.0, r)


def test_outliers_and_partial_overlap_use_exact_sums():
    """Isolated fixed points (far from every moving point) are summed exactly, not on the grid."""
    X = nuclei_cloud(2000, 3, seed=1)
    Y = moving_copy(X, seed=2)
    rng = np.random.default_rng(3)
    far_fixed = X.max(0) + rng.uniform(8, 20, size=(30, 3))       # beyond the moving set
    far_moving = X.min(0) - rng.uniform(8, 20, size=(30, 3))       # beyond the fixed set
    Xo = np.vstack([X, far_fixed])
    Yo = np.vstack([Y, far_moving])
    for c in (0.0, 1e-3):
        # cutoff = inf: the exactly summed columns are then untruncated too, like the reference
        # (with a finite cutoff they follow the exact kernel's truncation)
        r = fast_estep(Xo, Yo, 4.0, c=c, cutoff=np.inf, method="fast", want_bounds=True, max_cells=10**6)
        assert r.info["method"] == "fast"
        assert r.info["exact_columns"] >= 1
        check_against_reference(Xo, Yo, 4.0, r, c=c)


def test_celegans_embryo_real_points():
    """Real nucleus centres (C. elegans, xmodal.datasets): the bound holds on a real density."""
    import xmodal.datasets

    emb = list(xmodal.datasets.celegans_embryos().values())
    A = emb[0].points / 10.0
    B = emb[1].points / 10.0
    B = B - B.mean(0) + A.mean(0)
    for s2 in (5.0, 50.0):
        r = fast_estep(A, B, s2, method="fast", want_bounds=True, c=1e-4, max_cells=10**6)
        assert r.info["method"] == "fast"
        check_against_reference(A, B, s2, r, c=1e-4)


def test_weights_and_zero_weight_rows():
    X = nuclei_cloud(1500, 2, seed=7)
    Y = moving_copy(X, seed=8)
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(Y))
    w[::7] = 0.0
    r = fast_estep(X, Y, 6.0, weights=w, method="fast", want_bounds=True, max_cells=10**6)
    assert r.info["method"] == "fast"
    assert np.all(r.P1[::7] == 0) and np.all(r.PX[::7] == 0) and np.all(r.best[::7] == -1)
    check_against_reference(X, Y, 6.0, r, weights=w)


@pytest.mark.parametrize("outliers", [False, True])
def test_deterministic_across_thread_counts(outliers):
    X = nuclei_cloud(3000, 3, seed=11)
    Y = moving_copy(X, seed=12)
    if outliers:  # exact columns and rows in the mix
        rng = np.random.default_rng(1)
        X = np.vstack([X, X.max(0) + rng.uniform(6, 15, size=(40, 3))])
        Y = np.vstack([Y, Y.min(0) - rng.uniform(6, 15, size=(40, 3))])
    outs = []
    try:
        for nt in (1, 2, 3):
            xmodal.set_num_threads(nt)
            outs.append(fast_estep(X, Y, 8.0, method="fast", want_bounds=True, max_cells=10**6))
    finally:
        xmodal.set_num_threads(None)
    assert outs[0].info["method"] == "fast"
    if outliers:
        assert outs[0].info["exact_columns"] > 0
    for o in outs[1:]:
        for name in ("P1", "Pt1", "PX", "log_s", "best", "best_prob", "bound_s", "bound_p1", "bound_px"):
            assert np.array_equal(getattr(o, name), getattr(outs[0], name)), name
        assert o.log_s_sum == outs[0].log_s_sum


def test_auto_picks_by_sigma():
    X = nuclei_cloud(3000, 3, seed=13)
    Y = moving_copy(X, seed=14)
    wide = fast_estep(X, Y, 50.0, method="auto")
    narrow = fast_estep(X, Y, 0.05, method="auto")
    assert wide.info["method"] == "fast"
    assert narrow.info["method"] == "exact"
    assert wide.info["est_cost_grid"] < wide.info["est_cost_exact"]
    # the exact choice is the exact kernel itself
    ref = _core.cpd_estep(X, Y, None, 0.05, 0.0, 36.0, True)
    assert np.array_equal(narrow.P1, ref["P1"]) and np.array_equal(narrow.best, ref["best_idx"])
    ex = fast_estep(X, Y, 50.0, method="exact")
    assert ex.info["method"] == "exact"


def test_grid_cap_coarsens_and_reports():
    X = nuclei_cloud(2000, 3, seed=15)
    Y = moving_copy(X, seed=16)
    r = fast_estep(X, Y, 30.0, method="fast", max_cells=2500, want_bounds=True)
    assert r.info["method"] == "fast" and r.info["capped"]
    assert r.info["cells"] <= 2500
    assert r.info["q"] < 2.0
    # the coarse grid's bound exceeds tol/2 for many points: they are summed exactly
    assert r.info["exact_columns"] > 0
    assert r.info["max_rel_s"] <= ESTEP_TOL / 2
    check_against_reference(X, Y, 30.0, r)
    # a cap that allows no useful grid: the exact kernel runs
    r2 = fast_estep(X, Y, 0.5, method="fast", max_cells=64)
    assert r2.info["method"] == "exact"


def test_error_envelope_holds_at_random_offsets():
    """The 1-D envelope bounds |K - G| at offsets off the sampling lattice it was computed on."""
    rng = np.random.default_rng(0)
    for order in (3, 5):
        for q in (1.0, 2.0, 3.3):
            pr = grid_error_bound(q, order=order, d=1)
            taps = pr["taps"]
            kmax = len(taps) - 1
            g = np.concatenate([taps[:0:-1], taps])

            def bspline(x):
                x = np.abs(x)
                if order == 3:
                    return np.where(x < 1, 2 / 3 - x ** 2 + x ** 3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
                from scipy.interpolate import BSpline

                return BSpline.basis_element(np.arange(7) - 3.0, extrapolate=False)(x).astype(float) * 1.0

            half = (order + 1) // 2
            for _ in range(200):
                s = rng.uniform(0, 1)
                t = s + rng.uniform(-(kmax + order + 1), kmax + order + 1)
                nodes_s = np.arange(np.floor(s) - half + 1, np.floor(s) + half + 1)
                ws = np.nan_to_num(bspline(s - nodes_s))
                nodes_t = np.arange(np.floor(t) - half + 1, np.floor(t) + half + 1)
                wt = np.nan_to_num(bspline(t - nodes_t))
                k = nodes_t[:, None] - nodes_s[None, :]
                gk = np.where(np.abs(k) <= kmax, g[(np.clip(k, -kmax, kmax) + kmax).astype(int)], 0.0)
                K = wt @ gk @ ws
                u = abs(t - s) / q
                G = np.exp(-u * u / 2)
                i = np.searchsorted(pr["radii"], u, side="right") - 1
                assert abs(K - G) <= pr["env"][i] + 1e-15, (order, q, u, K - G, pr["env"][i])


def test_error_bound_function():
    prev = np.inf
    for q in (1.0, 1.5, 2.0, 3.0, 4.0):
        pr = grid_error_bound(q, order=3, d=3)
        assert pr["dense_rel"] < prev
        prev = pr["dense_rel"]
        assert np.all(np.diff(pr["env"]) <= 0) and np.all(np.diff(pr["env_dist"]) <= 0)
    # quintic splines are more accurate at the same q; 3-D bounds exceed the 1-D profile
    assert grid_error_bound(2.0, order=5)["dense_rel"] < grid_error_bound(2.0, order=3)["dense_rel"]
    assert grid_error_bound(2.0, d=3)["env"][0] > grid_error_bound(2.0, d=1)["env"][0]
    with pytest.raises(ValueError, match="order"):
        grid_error_bound(2.0, order=4)
    with pytest.raises(ValueError, match="q"):
        grid_error_bound(0.1)


def test_gauss_transform_fast_within_bound():
    rng = np.random.default_rng(1)
    C = nuclei_cloud(400, 3, seed=3) * 3
    W = rng.normal(size=C.shape)
    P = nuclei_cloud(3000, 3, seed=4) * 1.2
    beta = 6.0
    ref = _core.cpd_gauss_transform(C, W, P, beta, np.inf)["values"]
    out, bound, info = gauss_transform(C, W, P, beta, method="fast", tol=1e-4)
    assert info["method"] == "fast"
    assert np.all(np.abs(out - ref).max(1) <= bound + 1e-12)
    assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max()
    out2, _, info2 = gauss_transform(C, W, P, beta, method="exact")
    assert info2["method"] == "exact"
    np.testing.assert_allclose(out2, ref, rtol=1e-12, atol=1e-12)


def test_voxel_subsample():
    X = nuclei_cloud(5000, 3, seed=21)
    idx, v = voxel_subsample(X, 600)
    assert 540 <= len(idx) <= 600
    assert np.all(np.diff(idx) > 0)
    lo = X.min(0)
    cells = np.floor((X - lo) / v).astype(np.int64)
    keys = [tuple(c) for c in cells]
    chosen = {keys[i]: i for i in idx}
    assert len(chosen) == len(idx) == len(set(keys))  # one point per occupied voxel
    centre = lo + (cells + 0.5) * v
    dc = ((X - centre) ** 2).sum(1)
    for k_, i in list(chosen.items())[:200]:
        members = [j for j in range(len(X)) if keys[j] == k_]
        assert dc[i] == min(dc[j] for j in members)
    idx2, v2 = voxel_subsample(X, voxel=v)
    assert np.array_equal(idx, idx2) and v2 == v
    idx3, _ = voxel_subsample(X.astype(np.float32), 600)
    assert abs(len(idx3) - len(idx)) <= 60


def test_bad_inputs():
    X = nuclei_cloud(200, 3, seed=1)
    Y = X + 0.1
    with pytest.raises(ValueError, match="sigma2"):
        fast_estep(X, Y, 0.0)
    with pytest.raises(ValueError, match="sigma2"):
        fast_estep(X, Y, np.nan)
    with pytest.raises(ValueError, match="method"):
        fast_estep(X, Y, 1.0, method="grid")
    with pytest.raises(ValueError, match="tol"):
        fast_estep(X, Y, 1.0, tol=0.9)
    with pytest.raises(ValueError, match="tol"):
        fast_estep(X, Y, 1.0, tol=0.0)
    with pytest.raises(ValueError, match="same dimension"):
        fast_estep(X, Y[:, :2], 1.0)
    with pytest.raises(ValueError, match="moved"):
        bad = Y.copy()
        bad[3, 1] = np.inf
        fast_estep(X, bad, 1.0)
    with pytest.raises(ValueError, match="weights"):
        fast_estep(X, Y, 1.0, weights=-np.ones(len(Y)))
    with pytest.raises(ValueError, match="weights"):
        fast_estep(X, Y, 1.0, weights=np.ones(3))
    with pytest.raises(ValueError, match="max_cells"):
        fast_estep(X, Y, 1.0, max_cells=3)
    with pytest.raises(TypeError, match="want_best"):
        fast_estep(X, Y, 1.0, want_best="yes")
    with pytest.raises(ValueError, match="cutoff"):
        fast_estep(X, Y, 1.0, cutoff=-1.0)
    with pytest.raises(ValueError, match="voxel"):
        voxel_subsample(X)
    with pytest.raises(ValueError, match="coefficients"):
        gauss_transform(X, np.ones((3, 3)), Y, 1.0)
    # the native layer re-checks what it relies on
    with pytest.raises(ValueError, match="method"):
        _core.cpd_estep_fast(X, Y, None, 1.0, 0.0, 36.0, "nope", 0.01, 0, False, False)
    with pytest.raises(ValueError, match="tol"):
        _core.cpd_estep_fast(X, Y, None, 1.0, 0.0, 36.0, "fast", 2.0, 0, False, False)
    with pytest.raises(ValueError, match="sigma2"):
        _core.cpd_estep_fast(X, Y, None, -1.0, 0.0, 36.0, "fast", 0.01, 0, False, False)
    with pytest.raises(ValueError, match="non-finite"):
        bad = X.copy()
        bad[0, 0] = np.nan
        _core.cpd_estep_fast(bad, Y, None, 1.0, 0.0, 36.0, "fast", 0.01, 0, False, False)
    with pytest.raises(ValueError, match="columns"):
        _core.voxel_subsample(np.ones((5, 4)), 2, 0.0)


def test_grid_best_match_near_and_far():
    """Best match on the grid path: for moving points inside the fixed set mostly the exact arg max
    of P; for moving points far outside it a fixed point within sigma/2 beyond their nearest one
    (the candidate ball, not its bounding box, is searched)."""
    from scipy.spatial import cKDTree

    X = nuclei_cloud(3000, 3, seed=21)
    Y = moving_copy(X, seed=22)
    rng = np.random.default_rng(5)
    far = X.max(0) + rng.uniform(2, 8, size=(40, 3))  # beyond one corner of the fixed set, within the cutoff
    Yo = np.vstack([Y, far])
    s2 = 9.0
    r = fast_estep(X, Yo, s2, method="fast", max_cells=10**6)
    assert r.info["method"] == "fast"
    ref = _core.cpd_estep(X, Yo, None, s2, 0.0, 36.0, True)
    inside = slice(0, len(Y))
    # (measured: 82 % the same index at sigma = 3 spacings, where the posterior is flat)
    assert (r.best[inside] == ref["best_idx"][inside]).mean() >= 0.75
    # never above the exact maximum (up to the grid's error on s_n), and close to it on average
    assert np.all(r.best_prob[inside] <= ref["best_prob"][inside] * (1 + ESTEP_TOL) + 1e-9)
    assert r.best_prob[inside].mean() >= 0.95 * ref["best_prob"][inside].mean()
    dnn, _ = cKDTree(X).query(far)
    got = np.linalg.norm(X[r.best[len(Y):]] - far, axis=1)
    assert np.all(r.best[len(Y):] >= 0)
    assert np.all(got <= dnn + 0.5 * np.sqrt(s2) + 1e-9)
