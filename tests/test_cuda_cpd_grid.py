"""The grid path of the CUDA E-step (cuda/cpd.cu, xmodal/detail/cpd_grid.hpp), replayed on the CPU.

With a finite cutoff the GPU bins both sets into cells of edge >= the support radius
sqrt(2 sigma2 cutoff) and each thread visits the 3^D cells around its point. The terms are the
dense kernel's (the pairs it skips are outside the support, where every term is 0), summed in cell
order: results equal to rounding, the same support, shifts, empty columns and best matches (ties
included). ``xmodal._core._testing.cpd_estep_grid_emulation`` runs the GPU's steps on the CPU.
"""

import math

import numpy as np
import pytest

from xmodal import _core

emu = _core._testing


def compare(X, Y, weights, sigma2, c, cutoff):
    grid = emu.cpd_estep_grid_emulation(X, Y, weights, sigma2, c, cutoff)
    dense = emu.cpd_estep_gpu_emulation(X, Y, weights, sigma2, c, cutoff)
    cpu = _core.cpd_estep(X, Y, weights, sigma2, c, cutoff, True)
    tol = 1e-12 if X.dtype == np.float64 else 2e-6
    for ref in (dense, cpu):
        for k in ("P1", "Pt1", "PX", "best_prob"):
            assert grid[k].dtype == X.dtype and np.all(np.isfinite(grid[k])), k
            np.testing.assert_allclose(grid[k], ref[k], rtol=tol, atol=tol, err_msg=k)
            np.testing.assert_array_equal(grid[k] == 0, ref[k] == 0, err_msg=k)  # the same support
        # the best match is the same, except where two candidates' posteriors are equal to rounding
        # (their g_n come from sums in another order): then best_prob (compared above) agrees
        differ = grid["best_idx"] != ref["best_idx"]
        assert differ.mean() <= (0 if X.dtype == np.float64 else 0.005), np.flatnonzero(differ)
        fin = np.isfinite(ref["log_s"])
        np.testing.assert_array_equal(np.isfinite(grid["log_s"]), fin)
        np.testing.assert_allclose(grid["log_s"][fin], ref["log_s"][fin], rtol=tol, atol=tol)
        for k in ("shifted_columns", "empty_columns"):
            assert grid[k] == ref[k], k
        assert math.isclose(grid["log_s_sum"], ref["log_s_sum"], rel_tol=tol, abs_tol=tol * len(X))
    assert grid["pairs"] < dense["pairs"]
    return grid, dense


def cloud(n, d, rng, spacing=1.0):
    side = int(math.ceil(n ** (1 / d))) + 1
    g = np.stack(np.meshgrid(*[np.arange(side)] * d, indexing="ij"), -1).reshape(-1, d).astype(float)
    g = g[rng.permutation(len(g))[:n]]
    return (g + rng.uniform(-0.3, 0.3, g.shape)) * spacing


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("cutoff", [36.0, 4.0, 100.0])
def test_grid_path_equals_the_dense_path_and_the_cpu(dtype, d, cutoff):
    rng = np.random.default_rng(d)
    X = (cloud(900, d, rng, 8.0) + 100.0).astype(dtype)
    Y = (X[rng.permutation(len(X))[:700]] + rng.normal(scale=1.0, size=(700, d))).astype(dtype)
    w = rng.uniform(0.5, 2.0, len(Y)).astype(dtype)
    w[::7] = 0  # zero weights: zero rows, no best match
    for weights, c in ((None, 0.0), (w, 0.02)):
        grid, dense = compare(X, Y, weights, 2.0, c, cutoff)
        assert grid["grid_cells"] >= (108 if d == 3 else 36)
        assert grid["cell_edge"] >= math.sqrt(2 * 2.0 * cutoff)
    # a small sigma2 with a wide cutoff: fixed points far from every moving point are shifted
    X2 = np.vstack([X, X[:20] + 6.0]).astype(dtype)
    grid, _ = compare(X2, Y, None, 0.02, 0.0, 900.0 if dtype == np.float64 else 100.0)
    assert grid["shifted_columns"] > 0


def test_grid_edge_cases():
    rng = np.random.default_rng(3)
    X = cloud(600, 3, rng, 5.0)
    # duplicates, points on cell faces (multiples of the edge), a far cluster, ties
    Y = np.vstack([X[:300], X[:50], X[300:320] + 1e-9, [[0.0, 0.0, 0.0], [1e4, 1e4, 1e4]]])
    X = np.vstack([X, [[1e4, 1e4, 1e4 + 1.0]], X[:5]])  # duplicate fixed points: ties by index
    grid, _ = compare(X, Y, None, 1.0, 0.0, 36.0)
    edge = grid["cell_edge"]
    lattice = np.stack(np.meshgrid(*[np.arange(8) * edge] * 3, indexing="ij"), -1).reshape(-1, 3)
    compare(np.vstack([lattice, lattice + 0.3 * edge]), lattice[::-1].copy(), None, 1.0, 0.0, 36.0)
    # clustered: all points in a few cells, the grid visits (almost) every pair, still right
    Xc = np.vstack([rng.normal(size=(300, 3)) * 0.1, rng.normal(size=(300, 3)) * 0.1 + 50.0])
    compare(Xc, Xc[::2] + 0.01, None, 0.05, 0.0, 36.0)
    # the GPU's grid covers both sets: a moving set far outside the fixed one
    compare(X[:400], X[:400] + 40.0, None, 1.0, 1e-3, 36.0)


def test_no_grid_where_the_dense_kernel_runs():
    rng = np.random.default_rng(0)
    X = rng.random((200, 3))
    for sigma2, cutoff in ((1e-3, math.inf), (10.0, 36.0)):  # no support radius; radius beyond the extent
        with pytest.raises(ValueError, match="dense path"):
            emu.cpd_estep_grid_emulation(X, X, None, sigma2, 0.0, cutoff)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_grid_path_matches_the_dense_path_and_the_cpu(dtype):
    """On the GPU: the grid path (default) against the dense path (grid=False) and the CPU kernel,
    and against its CPU replay (the same order: equal to the device libm's last place)."""
    import cupy as cp

    from xmodal._device import native_cuda

    mod = native_cuda("cpd_estep")
    rng = np.random.default_rng(7)
    X = (cloud(30000, 3, rng, 8.0) + 50.0).astype(dtype)
    Y = (X[rng.permutation(len(X))[:25000]] + rng.normal(size=(25000, 3))).astype(dtype)
    w = rng.uniform(0.5, 2.0, len(Y)).astype(dtype)
    w[::11] = 0
    tol = 1e-11 if dtype == np.float64 else 5e-6
    for weights, c, sigma2 in ((None, 0.0, 2.0), (w, 1e-3, 0.5)):
        wd = None if weights is None else cp.asarray(weights)
        outs = {g: mod.cpd_estep(cp.asarray(X), cp.asarray(Y), wd, sigma2, c, 36.0, 0, g) for g in (True, False)}
        host = {g: {k: (cp.asarray(v).get() if not isinstance(v, (int, float)) else v) for k, v in o.items()}
                for g, o in outs.items()}
        cpu = _core.cpd_estep(X, Y, weights, sigma2, c, 36.0, True)
        replay = emu.cpd_estep_grid_emulation(X, Y, weights, sigma2, c, 36.0)
        for ref in (host[False], cpu, replay):
            for k in ("P1", "Pt1", "PX", "best_prob"):
                np.testing.assert_allclose(host[True][k], ref[k], rtol=tol, atol=tol, err_msg=k)
                np.testing.assert_array_equal(host[True][k] == 0, ref[k] == 0, err_msg=k)
            assert (host[True]["best_idx"] != ref["best_idx"]).mean() <= (0 if dtype == np.float64 else 0.005)
            assert host[True]["empty_columns"] == ref["empty_columns"]
        assert (host[True]["grid_cells"], host[True]["cell_edge"]) == (replay["grid_cells"], replay["cell_edge"])
        assert host[False]["grid_cells"] == 0
        # The GPU visits at least the replay's pairs and far fewer than the dense path. Its count was
        # 7.6x the replay's on the H200 (26.0M against 3.44M here, identical grid, bins and results):
        # an open question (docs/cpd.md), so the count is bounded, not pinned.
        assert replay["pairs"] <= host[True]["pairs"] < host[False]["pairs"] / 20


@pytest.mark.cuda
@pytest.mark.parametrize("transform", ["rigid", "deformable"])
def test_gpu_coarse_to_fine_matches_the_cpu(transform):
    """cpd_coarse_to_fine with cupy arrays: both stages on the GPU, cupy out, the CPU's result."""
    import cupy as cp

    import xmodal

    rng = np.random.default_rng(5)
    X = cloud(12000, 3, rng, 8.0)
    c = X.mean(0)
    a = 0.2
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    Y = (X - c) @ R.T + c + 5.0 + rng.normal(scale=0.5, size=X.shape)
    if transform == "deformable":  # a smooth field of ~4 µm
        Y = X + 4.0 * np.sin(X[:, ::-1] / 50.0) + rng.normal(scale=0.5, size=X.shape)
    kw = dict(transform=transform, n_coarse=3000, max_iter=40, refine_iter=5, estep="exact", tol=0.0)
    if transform == "deformable":
        kw.update(beta=40.0, lam=2.0, low_rank=200)
    cpu = xmodal.cpd_coarse_to_fine(Y, X, **kw)
    gpu = xmodal.cpd_coarse_to_fine(cp.asarray(Y), cp.asarray(X), **kw)
    assert isinstance(gpu.moved, cp.ndarray) and isinstance(gpu.match, cp.ndarray)
    moved = gpu.moved.get()
    assert np.linalg.norm(moved - cpu.moved, axis=1).mean() < 0.05 * 8.0
    assert np.mean(gpu.match.get() == cpu.match) > 0.99
    before = np.linalg.norm(Y - X, axis=1).mean()
    assert np.linalg.norm(moved - X, axis=1).mean() < (1.5 if transform == "rigid" else 0.5 * before)
    with pytest.raises(ValueError, match="estep: 'fast' runs on the CPU only"):
        xmodal.cpd_coarse_to_fine(cp.asarray(Y), cp.asarray(X), transform="rigid", estep="fast")


def _host_bins(P, lo, edge, shape):
    """The grid path's bins computed with numpy: original indices in cell order, per-cell ranges."""
    nc = np.asarray(shape[: P.shape[1]])
    c = np.clip(np.floor((P.astype(np.float64) - lo) * (1.0 / edge)), 0, nc - 1).astype(np.int64)
    key = c[:, 0]
    for d in range(1, P.shape[1]):
        key = key * nc[d] + c[:, d]
    order = np.argsort(key, kind="stable")
    cells = int(np.prod(nc))
    counts = np.bincount(key, minlength=cells)
    end = np.cumsum(counts)
    start = end - counts
    empty = counts == 0
    start[empty] = end[empty] = 0
    return order, start, end


@pytest.mark.cuda
@pytest.mark.parametrize("d", [2, 3])
def test_gpu_grid_bins_match_numpy(d):
    """The GPU's cell sort (CUB radix sort, cell ranges) against numpy on the same grid."""
    import cupy as cp

    from xmodal._device import native_cuda

    mod = native_cuda("cpd_grid_bins")
    rng = np.random.default_rng(11)
    X = cloud(5000, d, rng, 8.0) + 50.0
    Y = X[rng.permutation(len(X))[:4000]] + rng.normal(size=(4000, d))
    b = mod.cpd_grid_bins(cp.asarray(X), cp.asarray(Y), 2.0, 36.0)
    replay = emu.cpd_estep_grid_emulation(X, Y, None, 2.0, 0.0, 36.0)
    assert (b["cells"], b["edge"]) == (replay["grid_cells"], replay["cell_edge"])
    lo = np.minimum(X.min(0), Y.min(0))
    for name, P in (("fixed", X), ("moved", Y)):
        order, start, end = _host_bins(P, lo, b["edge"], b["shape"])
        got = {k: cp.asarray(b[f"{name}_{k}"]).get() for k in ("idx", "start", "end")}
        assert np.sum(got["start"] != start) == 0, (name, "start", np.flatnonzero(got["start"] != start)[:10])
        assert np.sum(got["end"] != end) == 0, (name, "end", np.flatnonzero(got["end"] != end)[:10])
        np.testing.assert_array_equal(got["idx"], order)
