"""CPD with per-point features ("colour" CPD): the native E-step against a dense reference, the
``xmodal.cpd`` options, and the stage ``register_cells(feature_cpd=True)`` adds."""

import numpy as np
import pytest

from xmodal import _core, cpd
from xmodal.pipelines import register_cells


def _dense(X, Y, w, FX, FY, inv, s2, c):
    d2 = ((Y[:, None] - X[None]) ** 2).sum(-1)
    f2 = ((FY[:, None] - FX[None]) ** 2).sum(-1)
    K = (np.ones(len(Y)) if w is None else w)[:, None] * np.exp(-d2 / (2 * s2) - inv * f2)
    s = K.sum(0) + c
    return K / s, s


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_feature_estep_matches_dense_reference(d, weighted):
    rng = np.random.default_rng(d + 10 * weighted)
    X, Y = rng.normal(size=(120, d)), 0.9 * rng.normal(size=(90, d))
    FX, FY = rng.normal(size=(120, 3)), rng.normal(size=(90, 3))
    w = rng.uniform(0.5, 1.5, 90) if weighted else None
    out = _core.cpd_estep_features(X, Y, w, FX, FY, 0.7, 0.3, 0.05, np.inf, True)
    P, s = _dense(X, Y, w, FX, FY, 0.7, 0.3, 0.05)
    np.testing.assert_allclose(out["P1"], P.sum(1), atol=1e-12)
    np.testing.assert_allclose(out["Pt1"], P.sum(0), atol=1e-12)
    np.testing.assert_allclose(out["PX"], P @ X, atol=1e-12)
    np.testing.assert_allclose(out["log_s"], np.log(s), rtol=1e-12)
    assert out["log_s_sum"] == pytest.approx(np.log(s).sum(), rel=1e-12)
    np.testing.assert_array_equal(out["best_idx"], P.argmax(1))
    np.testing.assert_allclose(out["best_prob"], P.max(1), atol=1e-12)
    # float32 in, float32 out, same values to float precision
    o32 = _core.cpd_estep_features(X.astype(np.float32), Y, w, FX, FY, 0.7, 0.3, 0.05, np.inf, True)
    assert o32["P1"].dtype == np.float32
    np.testing.assert_allclose(o32["P1"], P.sum(1), rtol=1e-4, atol=1e-6)


def test_feature_estep_without_feature_term_is_the_plain_estep():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(200, 3)), rng.normal(size=(150, 3))
    F = rng.normal(size=(200, 2)), rng.normal(size=(150, 2))
    a = _core.cpd_estep_features(X, Y, None, F[0], F[1], 0.0, 0.2, 0.01, 36.0, True)
    b = _core.cpd_estep(X, Y, None, 0.2, 0.01, 36.0, True)
    for k in ("P1", "Pt1", "PX", "log_s"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(a["best_idx"], b["best_idx"])


def test_feature_estep_stays_finite_at_tiny_sigma_and_reports_empty_columns():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    F = rng.normal(size=(50, 1)), rng.normal(size=(40, 1))
    # every term underflows exp() on its own: summed relative to the largest, each column sums to 1
    o = _core.cpd_estep_features(X, Y, None, F[0], F[1], 5.0, 1e-8, 0.0, np.inf, True)
    assert np.all(np.isfinite(o["P1"])) and np.all(np.isfinite(o["log_s"]))
    np.testing.assert_allclose(o["Pt1"], 1.0, rtol=1e-12)
    # with the cutoff nothing is within reach and there is no outlier constant: empty columns
    e = _core.cpd_estep_features(X, Y, None, F[0], F[1], 5.0, 1e-8, 0.0, 36.0, True)
    assert e["empty_columns"] == 50 and np.all(e["P1"] == 0) and np.all(e["best_idx"] == -1)


def test_feature_estep_rejects_bad_inputs():
    X, Y = np.zeros((5, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match="fixed_features: expected one row per fixed point"):
        _core.cpd_estep_features(X, Y, None, np.zeros((4, 1)), np.zeros((4, 1)), 1.0, 1.0, 0.0, 36.0, True)
    with pytest.raises(ValueError, match="same number"):
        _core.cpd_estep_features(X, Y, None, np.zeros((5, 2)), np.zeros((4, 1)), 1.0, 1.0, 0.0, 36.0, True)
    with pytest.raises(ValueError, match="fixed_features"):
        _core.cpd_estep_features(X, Y, None, np.full((5, 1), np.nan), np.zeros((4, 1)), 1.0, 1.0, 0.0, 36.0, True)
    with pytest.raises(ValueError, match="feature_inv"):
        _core.cpd_estep_features(X, Y, None, np.zeros((5, 1)), np.zeros((4, 1)), -1.0, 1.0, 0.0, 36.0, True)


def _swapped_pairs(n=160, seed=0):
    """A 3-D cloud and a copy in which neighbouring cells are displaced by about one spacing (the
    nearest cell is often not the partner); a feature channel per cell, nearly equal in both."""
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(0, 60, (n, 3))
    moving = fixed + rng.normal(0, 4.0, fixed.shape) + np.array([3.0, -2.0, 1.0])
    f = rng.normal(size=(n, 2))
    return fixed, moving, f + rng.normal(0, 0.05, f.shape), f + rng.normal(0, 0.05, f.shape)


def test_cpd_with_features_finds_partners_positions_cannot():
    fixed, moving, ff, mf = _swapped_pairs()
    kw = dict(transform="deformable", beta=20.0, lam=0.01, w=0.1, max_iter=150)
    plain = cpd(moving, fixed, **kw)
    colour = cpd(moving, fixed, moving_features=mf, fixed_features=ff, feature_sigma=0.2, **kw)
    truth = np.arange(len(fixed))
    assert np.mean(plain.match == truth) < 0.8
    assert np.mean(colour.match == truth) > 0.97
    assert colour.info["estep"]["features"] == {"columns": 2, "feature_sigma": pytest.approx(0.2)}
    assert plain.info["estep"]["features"] is None
    # a very wide feature Gaussian is no feature at all
    wide = cpd(moving, fixed, moving_features=mf, fixed_features=ff, feature_sigma=1e6, **kw)
    np.testing.assert_allclose(wide.moved, plain.moved, atol=1e-6)
    # the top-k posterior includes the feature term: its rows pick the same partner as the match
    C = colour.correspondence_matrix(k=8).toarray()
    assert np.mean(C.argmax(1) == colour.match) > 0.99


@pytest.mark.parametrize("kw, err, match", [
    (dict(moving_features=np.ones((40, 1))), ValueError, "fixed_features: features are needed for both"),
    (dict(moving_features=np.ones((39, 1)), fixed_features=np.ones((50, 1))), ValueError, r"expected shape \(40, f\)"),
    (dict(moving_features=np.ones((40, 2)), fixed_features=np.ones((50, 1))), ValueError, "expected 1 columns"),
    (dict(moving_features=np.ones((40, 1)), fixed_features=np.r_[np.ones(49), np.inf]), ValueError, "row 49"),
    (dict(moving_features=np.ones(40), fixed_features=np.ones(50), feature_sigma=0.0), ValueError, "feature_sigma"),
    (dict(moving_features=np.ones(40), fixed_features=np.ones(50), estep="fast"), ValueError, "estep='fast'"),
    (dict(moving_features=np.array(["a"] * 40), fixed_features=np.ones(50)), TypeError, "numeric"),
])
def test_cpd_feature_errors_are_clear(kw, err, match):
    rng = np.random.default_rng(0)
    with pytest.raises(err, match=match):
        cpd(rng.normal(size=(40, 3)), rng.normal(size=(50, 3)), **kw)


def test_register_cells_adds_a_feature_cpd_stage():
    fixed, moving, ff, mf = _swapped_pairs(n=200, seed=3)
    perm = np.random.default_rng(4).permutation(len(moving))
    moving, mf = moving[perm], mf[perm]
    truth = np.argsort(perm)  # moving row of each fixed cell
    kw = dict(transform="rigid", prealign=False, errors=False, fixed_features=ff, moving_features=mf)
    res = register_cells(fixed, moving, **kw)
    off = register_cells(fixed, moving, feature_cpd=False, **kw)
    assert off.features["cpd"] is None and "features_affine" not in off.cpd_iterations
    rec = res.features["cpd"]
    assert rec["stages"] == ["affine with features", "deformable with features"]
    assert rec["feature_sigma"] == pytest.approx(res.features["selection"]["tau"])
    assert [res.cpd_iterations["features_affine"], res.cpd_iterations["features_deformable"]] == rec["iterations"]
    assert min(rec["iterations"]) > 0
    assert len(res.transform.transforms) == len(off.transform.transforms) + 2
    np.testing.assert_allclose(res.transform.apply(moving), res.moved, atol=1e-6)
    right = np.mean(truth[res.fixed_index] == res.moving_index)
    assert right > 0.97 and right >= np.mean(truth[off.fixed_index] == off.moving_index)
    assert res.parameters["feature_cpd"] is True
    with pytest.raises(TypeError, match="feature_cpd"):
        register_cells(fixed, moving, feature_cpd="yes", **kw)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cutoff", [36.0, np.inf])
def test_gpu_feature_estep_matches_the_cpu(dtype, cutoff):
    """The CUDA twin (cuda/cpd.cu, estep_features): grid path (finite cutoff) and every pair in
    index order (grid=False, or an infinite cutoff) against the CPU kernel: the same terms
    (cpd_feature_arith.hpp), summed in another order."""
    import cupy as cp

    from xmodal._device import native_cuda

    mod = native_cuda("cpd_estep")
    rng = np.random.default_rng(11)
    X = rng.uniform(0, 40, (6000, 3)).astype(dtype)
    Y = (X[rng.permutation(len(X))[:5000]] + rng.normal(size=(5000, 3))).astype(dtype)
    FX, FY = rng.normal(size=(len(X), 2)).astype(dtype), rng.normal(size=(len(Y), 2)).astype(dtype)
    w = rng.uniform(0.5, 2.0, len(Y)).astype(dtype)
    w[::13] = 0
    tol = 1e-11 if dtype == np.float64 else 5e-6
    for weights, c, sigma2 in ((None, 0.0, 2.0), (w, 1e-3, 0.5)):
        cpu = _core.cpd_estep_features(X, Y, weights, FX, FY, 0.8, sigma2, c, cutoff, True)
        wd = None if weights is None else cp.asarray(weights)
        for grid in (True, False):
            out = mod.cpd_estep_features(cp.asarray(X), cp.asarray(Y), wd, cp.asarray(FX), cp.asarray(FY), 0.8,
                                         sigma2, c, cutoff, 0, grid)
            host = {k: (cp.asarray(v).get() if not isinstance(v, (int, float)) else v) for k, v in out.items()}
            for k in ("P1", "Pt1", "PX", "best_prob"):
                assert host[k].dtype == dtype, k
                np.testing.assert_allclose(host[k], cpu[k], rtol=tol, atol=tol, err_msg=k)
                np.testing.assert_array_equal(host[k] == 0, cpu[k] == 0, err_msg=k)
            np.testing.assert_allclose(host["log_s"], cpu["log_s"], rtol=tol, atol=tol)
            assert host["log_s_sum"] == pytest.approx(cpu["log_s_sum"], rel=tol, abs=tol * len(X))
            assert host["empty_columns"] == cpu["empty_columns"]
            assert (host["best_idx"] != cpu["best_idx"]).mean() <= (0 if dtype == np.float64 else 0.005)
            assert (host["grid_cells"] > 0) == (grid and np.isfinite(cutoff))
    with pytest.raises(ValueError, match="fixed_features: expected one row per fixed point"):
        mod.cpd_estep_features(cp.asarray(X), cp.asarray(Y), None, cp.asarray(FX[:10]), cp.asarray(FY), 0.8, 1.0,
                               0.0, 36.0, 0, True)
    with pytest.raises(ValueError, match="non-finite"):
        bad = FX.copy()
        bad[3, 1] = np.nan
        mod.cpd_estep_features(cp.asarray(X), cp.asarray(Y), None, cp.asarray(bad), cp.asarray(FY), 0.8, 1.0, 0.0,
                               36.0, 0, True)


@pytest.mark.cuda
def test_gpu_cpd_with_features_matches_the_cpu():
    """xmodal.cpd with cupy points and features (host or device arrays): the CPU's result."""
    import cupy as cp

    fixed, moving, ff, mf = _swapped_pairs()
    kw = dict(transform="deformable", beta=20.0, lam=0.01, w=0.1, max_iter=150, feature_sigma=0.2)
    cpu = cpd(moving, fixed, moving_features=mf, fixed_features=ff, **kw)
    gpu = cpd(cp.asarray(moving), cp.asarray(fixed), moving_features=cp.asarray(mf), fixed_features=ff, **kw)
    assert isinstance(gpu.moved, cp.ndarray)
    np.testing.assert_allclose(gpu.moved.get(), cpu.moved, atol=1e-6)
    assert np.mean(gpu.match.get() == cpu.match) > 0.999
    assert gpu.info["estep"]["features"] == cpu.info["estep"]["features"]
    with pytest.raises(ValueError, match="estep='fast'"):
        cpd(cp.asarray(moving), cp.asarray(fixed), moving_features=mf, fixed_features=ff, estep="fast")
