"""The speed paths of issue 15's follow-up: each must give the results of the code it replaced.

- the blocked weighted Gram of the Nystrom M-step (``_weighted_gram``) against the dense product;
- the exact E-step and the voxel subsample above the size (100k points) where the grid's counting
  sort runs its per-point loops on the OpenMP threads: bit-identical for 1 and 2 threads;
- ``estep="auto"`` when no grid fits (tiny sigma): the exact kernel, its cost estimate skipped
  (reported as NaN), outputs bit-identical to ``cpd_estep``;
- the in-place ``gauss_kernel`` against the textbook formula.
"""

import math

import numpy as np
import pytest

import xmodal
from xmodal import _core
from xmodal.registration._fast_estep import fast_estep, voxel_subsample
from xmodal.registration._mstep import _GRAM_PARTS, _GRAM_ROWS, DeformableSolver, _weighted_gram, gauss_kernel


def _blue_noise(n, seed, spacing=1.0):
    """About n jittered-lattice points in a cube (nucleus-like density), float32."""
    rng = np.random.default_rng(seed)
    k = int(math.ceil(n ** (1 / 3)))
    g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    g = (g + rng.uniform(-0.35, 0.35, g.shape)) * spacing
    return g[:n].astype(np.float32)


@pytest.mark.parametrize("rows", [1, _GRAM_ROWS - 1, _GRAM_ROWS, 2 * _GRAM_ROWS + 17])
def test_weighted_gram_matches_dense(rows):
    rng = np.random.default_rng(rows)
    F = rng.normal(size=(rows, 37))
    lw = rng.uniform(0.0, 5.0, size=rows)
    lw[::7] = 0.0  # points without support
    K = _weighted_gram(F, lw)
    ref = F.T @ (F * lw[:, None])
    iu = np.triu_indices(37)
    np.testing.assert_allclose(K[iu], ref[iu], rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    b = rng.normal(size=(rows, 3))
    K2, Ftb = _weighted_gram(F, lw, b)
    np.testing.assert_array_equal(K2, K)
    np.testing.assert_allclose(Ftb, F.T @ b, rtol=1e-12, atol=1e-12 * np.abs(F).max() * np.abs(b).max() * rows)


def test_weighted_gram_parts_independent_of_threads():
    """Rows spread over all parts (uneven part sizes): the same bits on 1 and 2 threads, and the
    dense product's values."""
    rows = (8 * _GRAM_PARTS + 3) * _GRAM_ROWS + 211  # enough blocks for the threaded path
    rng = np.random.default_rng(11)
    F = rng.normal(size=(rows, 23))
    lw = rng.uniform(0.0, 3.0, size=rows)
    b = rng.normal(size=(rows, 3))
    outs = []
    for n in (1, 2):
        with xmodal.num_threads(n):
            outs.append(_weighted_gram(F, lw, b))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    ref = F.T @ (F * lw[:, None])
    iu = np.triu_indices(23)
    np.testing.assert_allclose(outs[0][0][iu], ref[iu], rtol=1e-11, atol=1e-11 * np.abs(ref).max())
    np.testing.assert_allclose(outs[0][1], F.T @ b, rtol=1e-11, atol=1e-11 * np.abs(F.T @ b).max())


def test_deformable_step_matches_dense_woodbury():
    """One Nystrom M-step equals the Woodbury solve written with dense products."""
    rng = np.random.default_rng(3)
    Y = rng.normal(size=(3000, 3))
    solver = DeformableSolver(Y, 0.8, 2.0, 40)
    P1 = rng.uniform(0.1, 1.0, size=3000)
    PX = P1[:, None] * (Y + rng.normal(scale=0.05, size=Y.shape))
    s2 = 0.01
    TY, reg = solver.step(P1, PX, s2)
    ls = 2.0 * s2
    F = solver.F
    b = (PX - P1[:, None] * Y) / ls
    z = np.linalg.solve(np.eye(F.shape[1]) + F.T @ (F * (P1 / ls)[:, None]), F.T @ b)
    np.testing.assert_allclose(TY, Y + F @ z, rtol=1e-9, atol=1e-12)
    assert reg == pytest.approx(float((z * z).sum()), rel=1e-9)


def test_gauss_kernel_in_place_formula():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(20, 3))
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(gauss_kernel(a, b, 0.7), np.exp(-d2 / (2 * 0.49)), rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def big_pair():
    X = _blue_noise(110_000, 5)
    Y = (X + np.random.default_rng(6).normal(scale=0.2, size=X.shape)).astype(np.float32)
    return X, Y


def test_exact_estep_parallel_sort_deterministic(big_pair):
    """Above 100k points the grid's per-point loops run threaded: outputs identical to 1 thread."""
    X, Y = big_pair
    outs = []
    try:
        for nt in (1, 2):
            xmodal.set_num_threads(nt)
            outs.append(_core.cpd_estep(X, Y, None, 0.04, 1e-4, 36.0, True))
    finally:
        xmodal.set_num_threads(None)
    for k in ("P1", "Pt1", "PX", "best_idx", "best_prob"):
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)
    assert outs[0]["log_s_sum"] == outs[1]["log_s_sum"]
    assert outs[0]["pairs"] == outs[1]["pairs"] > 0


def test_voxel_subsample_parallel_deterministic(big_pair):
    X, _ = big_pair
    outs = []
    try:
        for nt in (1, 2):
            xmodal.set_num_threads(nt)
            outs.append(voxel_subsample(X, 5000))
    finally:
        xmodal.set_num_threads(None)
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]
    assert 4500 <= len(outs[0][0]) <= 5000


def test_auto_without_feasible_grid_is_the_exact_kernel(big_pair):
    """sigma far below the spacing: no grid fits the cell cap, so "auto" runs the exact kernel
    without estimating its cost (NaN) and returns exactly its outputs."""
    X, Y = big_pair
    s2 = 0.04
    auto = fast_estep(X, Y, s2, c=1e-4, method="auto")
    ref = _core.cpd_estep(X, Y, None, s2, 1e-4, 36.0, True)
    assert auto.info["method"] == "exact"
    assert math.isnan(auto.info["est_cost_exact"])
    assert np.array_equal(auto.P1, ref["P1"]) and np.array_equal(auto.PX, ref["PX"])
    assert np.array_equal(auto.best, ref["best_idx"])
    # a wide sigma still estimates both costs
    wide = fast_estep(X[:3000], Y[:3000], 50.0, method="auto")
    assert math.isfinite(wide.info["est_cost_exact"])


def _voxel_reference(P, v):
    """Per occupied voxel the point nearest its centre (ties: lower index), in numpy."""
    P = np.asarray(P, np.float64)
    lo = P.min(0)
    cidx = np.clip(np.floor((P - lo) / v), 0, 2097151)
    dc = (((P - (lo + (cidx + 0.5) * v)) ** 2).sum(1))
    keys = [tuple(k) for k in cidx.astype(np.int64)]
    best = {}
    for i, k in enumerate(keys):
        if k not in best or dc[i] < dc[best[k]]:
            best[k] = i
    return np.sort(np.fromiter(best.values(), np.int64))


@pytest.mark.parametrize("voxel", [0.05, 0.9, 3.0])  # 0.05: far more cells than 4 n (the sorted path)
def test_voxel_subsample_both_paths_match_reference(voxel):
    rng = np.random.default_rng(8)
    P = rng.uniform(0, 20, size=(3000, 3))
    P[100:110] = P[100]  # exact ties: the lower index wins
    idx, used = voxel_subsample(P, voxel=voxel)
    assert used == voxel
    np.testing.assert_array_equal(idx, _voxel_reference(P, voxel))


def _fps_reference(P, k=None, radius=None):
    """Farthest-point sampling written plainly (the former implementation)."""
    chosen = [int(np.argmin(((P - P.mean(0)) ** 2).sum(1)))]
    d2 = ((P - P[chosen[0]]) ** 2).sum(1)
    while len(chosen) < (k if k is not None else 1500):
        nxt = int(np.argmax(d2))
        if radius is not None and d2[nxt] <= radius * radius:
            break
        chosen.append(nxt)
        d2 = np.minimum(d2, ((P - P[nxt]) ** 2).sum(1))
    return np.asarray(chosen)


@pytest.mark.parametrize("d", [2, 3])
def test_farthest_point_centers_match_plain_version(d):
    from xmodal.registration._mstep import farthest_point_centers

    rng = np.random.default_rng(d)
    P = np.round(rng.normal(size=(4000, d)), 1)  # rounded: many equal distances (ties)
    np.testing.assert_array_equal(farthest_point_centers(P, 120), _fps_reference(P, 120))
    np.testing.assert_array_equal(farthest_point_centers(P, radius=0.4), _fps_reference(P, radius=0.4))
    # integer coordinates are taken as numbers (uint8 used to wrap on subtraction)
    Q = rng.integers(0, 150, size=(500, d)).astype(np.uint8)
    np.testing.assert_array_equal(farthest_point_centers(Q, 20), _fps_reference(Q.astype(np.float64), 20))


@pytest.mark.parametrize("estep", ["exact", "fast"])
def test_cpd_without_matches_same_fit(estep):
    """``_want_match=False`` (the coarse stage of cpd_coarse_to_fine) changes nothing but the matches."""
    X = _blue_noise(3000, 9).astype(np.float64)
    rng = np.random.default_rng(10)
    th = 0.2
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    Y = (X - X.mean(0)) @ R.T + X.mean(0) + 0.5 + rng.normal(scale=0.1, size=X.shape)
    kw = dict(w=0.01, max_iter=30, tol=0.0, estep=estep)
    a = xmodal.cpd(Y, X, **kw)
    b = xmodal.cpd(Y, X, _want_match=False, **kw)
    np.testing.assert_array_equal(a.moved, b.moved)
    assert a.sigma2 == b.sigma2 and a.iterations == b.iterations
    assert (b.match == -1).all() and (b.match_probability == 0).all()
    assert (a.match >= 0).mean() > 0.9


def test_coarse_to_fine_matches_still_reported():
    X = _blue_noise(6000, 11).astype(np.float64)
    Y = X + np.random.default_rng(12).normal(scale=0.1, size=X.shape) + 0.3
    r = xmodal.cpd_coarse_to_fine(Y, X, n_coarse=1500, max_iter=20, refine_iter=2, w=0.01)
    assert r.match.shape == (6000,) and (r.match >= 0).mean() > 0.9
    r0 = xmodal.cpd_coarse_to_fine(Y, X, n_coarse=1500, max_iter=20, refine_iter=0, w=0.01)
    assert (r0.match >= 0).mean() > 0.9


@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine"])
def test_linear_steps_with_precomputed_squares_identical(kind):
    from xmodal.registration._mstep import affine_step, rigid_step

    rng = np.random.default_rng(13)
    X, Y = rng.normal(size=(500, 3)), rng.normal(size=(400, 3))
    P1, Pt1 = rng.uniform(0.1, 1, 400), rng.uniform(0.1, 1, 500)
    PX = rng.normal(size=(400, 3))
    Np = float(P1.sum())
    xx, yy = (X * X).sum(1), (Y * Y).sum(1)
    if kind == "affine":
        a, b = affine_step(X, Y, P1, Pt1, PX, Np), affine_step(X, Y, P1, Pt1, PX, Np, xx)
    else:
        kw = dict(scale=None, estimate_scale=kind == "similarity")
        a, b = rigid_step(X, Y, P1, Pt1, PX, Np, **kw), rigid_step(X, Y, P1, Pt1, PX, Np, sq=(xx, yy), **kw)
    np.testing.assert_array_equal(a.B, b.B)
    np.testing.assert_array_equal(a.TY, b.TY)
    assert a.sigma2 == b.sigma2 and a.scale == b.scale


def test_blas_single_nested_is_free_and_restores():
    """Nested _blas_single contexts do not rescan the libraries (a flag per context) and the
    outermost one restores the caller's setting."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from xmodal.registration._mstep import _BLAS_ONE, _blas_single

    def blas():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    assert not _BLAS_ONE.get()
    with _blas_single():
        assert _BLAS_ONE.get() and all(n == 1 for n in blas())
        with _blas_single():
            assert all(n == 1 for n in blas())
        assert _BLAS_ONE.get() and all(n == 1 for n in blas())
    assert not _BLAS_ONE.get() and blas() == before


@pytest.mark.parametrize("transform", ["rigid", "affine", "deformable"])
def test_blas_single_threaded_during_cpu_em(transform):
    """During CPU EM (every transform, the deformable direct solve included) and every stage of
    cpd_coarse_to_fine, BLAS runs on one thread (a threaded BLAS's idle workers spin beside
    the OpenMP E-step); the caller's setting is restored afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    def cb(**_):
        seen.append(blas_threads())

    X = _blue_noise(3000, 21).astype(np.float64)
    Y = X + 0.2
    before = blas_threads()
    extra = {"low_rank": 50} if transform == "deformable" else {}
    xmodal.cpd(Y, X, transform=transform, max_iter=3, callback=cb)  # deformable: the direct solve
    xmodal.cpd_coarse_to_fine(Y, X, transform=transform, n_coarse=800, max_iter=8, refine_iter=2, callback=cb,
                              **extra)
    assert seen and all(all(n == 1 for n in s) for s in seen), seen
    assert blas_threads() == before


@pytest.mark.parametrize("call,match", [
    (lambda fps, P: fps(P[:0], 3), r"^points: expected an \(n, d\) array .* n >= 1, got shape \(0, 3\)"),
    (lambda fps, P: fps(P[:, 0], 3), r"^points: expected an \(n, d\) array"),
    (lambda fps, P: fps(P.astype(str), 3), r"^points: expected an \(n, d\) array of real coordinates"),
    (lambda fps, P: fps(np.where(P > 0.9, np.nan, P), 3), r"^points: coordinates must be finite"),
    (lambda fps, P: fps(P, 0), r"^k: expected an integer >= 1 or None, got 0"),
    (lambda fps, P: fps(P, 2.5), r"^k: expected an integer >= 1 or None, got 2.5"),
    (lambda fps, P: fps(P, radius=-1.0), r"^radius: expected a finite number >= 0 or None, got -1.0"),
    (lambda fps, P: fps(P, radius=float("nan")), r"^radius: expected a finite number >= 0"),
    (lambda fps, P: fps(P, max_k=0), r"^max_k: expected an integer >= 1, got 0"),
])
def test_farthest_point_centers_refuses_bad_input(call, match):
    """Empty or non-finite points and k = 0 gave numpy's 'argmin of an empty sequence' or one centre."""
    from xmodal.registration import farthest_point_centers

    P = np.random.default_rng(0).random((20, 3))
    with pytest.raises(ValueError, match=match):
        call(farthest_point_centers, P)
    assert farthest_point_centers(P[:1], 5).tolist() == [0]
    assert farthest_point_centers(P.astype(np.int64), np.int64(3)).shape == (3,)
    assert farthest_point_centers(P.tolist(), 4).tolist() == farthest_point_centers(P, 4).tolist()
