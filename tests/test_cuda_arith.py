"""The CUDA kernels' arithmetic, tested on the CPU.

cuda/cpd.cu and cuda/knn.cu compute every number with the __host__ __device__ functions of
cpp/include/xmodal/detail/{cpd,knn}_arith.hpp, one GPU thread per point visiting the other set in
index order. ``xmodal._core._testing`` runs the same functions in the same order on the CPU (the
"GPU emulation"); these tests compare it with the CPU kernels, which share the per-pair
arithmetic, the denominators and the tie rule. Also here: the defects of the first CUDA version,
each with a test that runs without a GPU (the NaN denominator, cutoff and ties on both devices,
k > 64), and the error paths of the ``xmodal._cuda`` bindings.
"""

import math

import numpy as np
import pytest

import xmodal
from xmodal import _core

emu = _core._testing


def compare_estep(X, Y, weights, sigma2, c, cutoff):
    """The emulated GPU E-step against the CPU kernel: the same support, shifts, best matches
    (ties included) and empty columns; sums equal to rounding."""
    cpu = _core.cpd_estep(X, Y, weights, sigma2, c, cutoff, True)
    gpu = emu.cpd_estep_gpu_emulation(X, Y, weights, sigma2, c, cutoff)
    tol = 1e-12 if X.dtype == np.float64 else 2e-6
    for k in ("P1", "Pt1", "PX", "best_prob"):
        assert gpu[k].dtype == X.dtype and np.all(np.isfinite(gpu[k])), k
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=tol, atol=tol, err_msg=k)
        np.testing.assert_array_equal(gpu[k] == 0, cpu[k] == 0, err_msg=k)  # the same support
    np.testing.assert_array_equal(gpu["best_idx"], cpu["best_idx"])
    np.testing.assert_array_equal(np.isfinite(gpu["log_s"]), np.isfinite(cpu["log_s"]))
    fin = np.isfinite(cpu["log_s"])
    np.testing.assert_allclose(gpu["log_s"][fin], cpu["log_s"][fin], rtol=tol, atol=tol)
    for k in ("shifted_columns", "empty_columns"):
        assert gpu[k] == cpu[k], k
    assert math.isclose(gpu["log_s_sum"], cpu["log_s_sum"], rel_tol=tol, abs_tol=tol * len(X))
    shifted = int(gpu["shifted_columns"])
    assert gpu["pairs"] == 2 * len(X) * len(Y) + shifted * len(Y)  # dense on the GPU
    return cpu, gpu


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("cutoff", [36.0, 4.0, math.inf])
@pytest.mark.parametrize("sigma2", [0.05, 1e-5, 1e-40])
def test_gpu_estep_arithmetic_matches_the_cpu_kernel(dtype, d, cutoff, sigma2):
    # 1e-5: fixed points far from every moving point are summed relative to their nearest one
    # (shifted); 1e-40: float32 runs in float64 on both devices
    rng = np.random.default_rng(d)
    X = rng.random((140, d)).astype(dtype)
    Y = rng.random((120, d)).astype(dtype)
    w = rng.uniform(0.5, 2.0, len(Y)).astype(dtype)
    w[::7] = 0  # zero-weight moving points: zero rows, no best match
    for weights, c in ((None, 0.0), (w, 0.02)):
        cpu, gpu = compare_estep(X, Y, weights, sigma2, c, cutoff)
        if weights is not None:
            assert np.all(gpu["best_idx"][::7] == -1) and np.all(gpu["P1"][::7] == 0)
    if cutoff == math.inf:  # both paths of the denominators are exercised
        assert (gpu["shifted_columns"] > 0) == (sigma2 < 0.05)


def test_gpu_estep_denominator_never_nan():
    """The first CUDA E-step formed 1 / s_n, +inf when s_n is subnormal: with w = 0 (c = 0) and a
    fixed point ~38 sigma from every moving point, pass 2 gave NaN. Both devices now sum that
    point relative to its nearest moving point (log-sum-exp)."""
    rng = np.random.default_rng(0)
    Y = rng.random((50, 2))
    sigma = 0.01
    far = np.array([[Y[:, 0].max() + 38 * sigma, 0.5]])  # d2 / (2 sigma2) > 722: e^-722 < DBL_MIN
    X = np.vstack([Y[:30] + 0.001, far])
    for dtype in (np.float64, np.float32):
        _, gpu = compare_estep(X.astype(dtype), Y.astype(dtype), None, sigma * sigma, 0.0, math.inf)
        assert gpu["shifted_columns"] >= 1
        assert gpu["Pt1"][-1] == pytest.approx(1.0, rel=1e-6)  # explained by its nearest moving point
    # the denominator function itself, at its edges: finite or -inf, never NaN, Pt1 in [0, 1]. S is
    # at least (weight) * exp(-600) (no shift) or the nearest point's weight (shifted), so with the
    # weights xmodal.cpd accepts (at least 1e-15 of their mean) S >= 1e-276.
    for S in (0.0, 1e-276, 1e-30, 1.0, 1e300):
        for e in (0.0, 1.0, 720.0, 1e308, math.inf):
            for c in (0.0, 1e-300, 1.0):
                col = emu.finish_column(S, e, c)
                assert not any(math.isnan(col[k]) for k in ("g", "pt", "log_s")), (S, e, c, col)
                assert 0.0 <= col["pt"] <= 1.0 and 0.0 <= col["g"] < math.inf
                assert col["empty"] == (S == 0 and c == 0)


def test_gpu_estep_honours_the_cutoff():
    """The first CUDA E-step ignored cutoff (dense sums): isolated points got other results than
    on the CPU. Both devices now count a pair iff d2 <= 2 sigma2 cutoff."""
    rng = np.random.default_rng(1)
    Y = rng.random((80, 3))
    X = np.vstack([Y + 0.01 * rng.normal(size=Y.shape), Y[:10] + 5.0])  # 10 fixed points far from all
    dense = emu.cpd_estep_gpu_emulation(X, Y, None, 0.01, 0.0, math.inf)
    for cutoff in (36.0, 9.0):
        cpu, gpu = compare_estep(X, Y, None, 0.01, 0.0, cutoff)
        assert gpu["empty_columns"] == 10 and np.all(gpu["Pt1"][-10:] == 0)
        assert np.all(np.isneginf(gpu["log_s"][-10:]))
    assert dense["empty_columns"] == 0 and np.all(dense["Pt1"][-10:] > 0.99)  # the dense sums differ
    # a moving point without any fixed point within the cutoff has no best match on both devices
    cpu, gpu = compare_estep(Y, np.vstack([Y, [[9.0, 9.0, 9.0]]]), None, 0.01, 0.0, 36.0)
    assert gpu["best_idx"][-1] == cpu["best_idx"][-1] == -1


def test_tie_rule_is_the_same_on_both_devices():
    """Equal posteriors: the smaller fixed index wins on both devices. (The CPU kernel picked the
    first in its cell-grid order, the GPU the smallest index.)"""
    # clusters far apart (independent): fixed points c +- (1, 0) in random index order, the moving
    # point at c: exactly equal d2, terms and denominators
    rng = np.random.default_rng(2)
    n = 40
    centers = np.c_[np.arange(n) * 100.0, np.zeros(n)]
    plus, minus = centers + [1.0, 0.0], centers - [1.0, 0.0]
    swap = rng.random(n) < 0.5
    first = np.where(swap[:, None], minus, plus)
    second = np.where(swap[:, None], plus, minus)
    X = np.empty((2 * n, 2))
    X[0::2], X[1::2] = first, second
    for dtype in (np.float64, np.float32):
        cpu, gpu = compare_estep(X.astype(dtype), centers.astype(dtype), None, 0.1, 0.0, 36.0)
        np.testing.assert_array_equal(gpu["best_idx"], 2 * np.arange(n))
        np.testing.assert_allclose(gpu["best_prob"], 1.0, rtol=1e-6)  # P[m, n] = 1 for both n: a tie


@pytest.mark.parametrize("k,radius,symmetric", [(5, None, True), (70, None, False), (130, 0.08, True),
                                                (None, 0.05, True), (1, 0.0, False)])
def test_gpu_knn_arithmetic_matches_the_cpu_kernel(k, radius, symmetric):
    """The same graph, bit for bit, for any k (the first CUDA version refused k > 64)."""
    rng = np.random.default_rng(3)
    a = rng.random((300, 3))
    b = rng.random((260, 3))
    b[:20] = a[:20]  # zero distances
    b[20:60] = np.round(b[20:60] * 8) / 8  # lattice points: many exactly equal distances (ties)
    a[60:90] = np.round(a[60:90] * 8) / 8
    kk, rr = 0 if k is None else k, -1.0 if radius is None else radius
    cpu = _core.knn_graph(a, b, kk, rr, symmetric)
    gpu = emu.knn_graph_gpu_emulation(a, b, kk, rr, symmetric)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=name)
    if k is not None:
        assert np.all(np.diff(cpu["indptr"]) >= min(k, len(b)))


def test_exp_is_exact_to_its_bound_and_zero_below_range():
    for dtype, low, rel in ((np.float32, -87.0, 3e-7), (np.float64, -708.0, 1e-15)):
        x = np.linspace(low, 0.0, 100001).astype(dtype)
        got = emu.exp_neg(x)
        assert got.dtype == dtype
        ref = np.exp(x.astype(np.float64))
        assert np.max(np.abs(got / ref - 1.0)) < rel
        below = np.array([low - 1e-3, low - 50, -np.inf], dtype=dtype)
        np.testing.assert_array_equal(emu.exp_neg(below), 0.0)


# ----------------------------------------------------------------------- xmodal._cuda error paths
class FakeCudaArray:
    """An object with __cuda_array_interface__ pointing nowhere real (never dereferenced)."""

    def __init__(self, shape, typestr="<f8", strides=None, ptr=0x1000):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, False),
                                         "strides": strides, "version": 3}


@pytest.fixture
def cuda_mod():
    from xmodal._device import cuda_module

    mod = cuda_module()
    if mod is None:
        pytest.skip("xmodal._cuda was not built (no CUDA toolkit at build time)")
    return mod


def test_cuda_bindings_check_arguments_before_touching_the_device(cuda_mod):
    a = FakeCudaArray((10, 3))
    with pytest.raises(TypeError, match="a: expected a CUDA array"):
        cuda_mod.knn_graph(np.zeros((10, 3)), a, 2, -1.0, True)
    with pytest.raises(TypeError, match="b: expected typestr '<f8'"):
        cuda_mod.knn_graph(a, FakeCudaArray((10, 3), "<f4"), 2, -1.0, True)
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        cuda_mod.knn_graph(FakeCudaArray((30,)), a, 2, -1.0, True)
    with pytest.raises(ValueError, match="b: expected a C-contiguous array"):
        cuda_mod.knn_graph(a, FakeCudaArray((10, 3), strides=(8, 80)), 2, -1.0, True)
    with pytest.raises(ValueError, match="a, b: expected the same number of columns"):
        cuda_mod.knn_graph(a, FakeCudaArray((10, 2)), 2, -1.0, True)
    with pytest.raises(ValueError, match="algorithm: expected 'auto', 'brute' or 'grid'"):
        cuda_mod.knn_graph(a, a, 2, -1.0, True, 0, "kdtree")
    with pytest.raises(TypeError, match="fixed: expected float32 or float64"):
        cuda_mod.cpd_estep(FakeCudaArray((10, 3), "<f2"), a, None, 1.0, 0.0, 36.0)
    with pytest.raises(TypeError, match="moved: expected typestr '<f4'"):
        cuda_mod.cpd_estep(FakeCudaArray((10, 3), "<f4"), a, None, 1.0, 0.0, 36.0)
    with pytest.raises(ValueError, match="weights: expected one weight per moving point"):
        cuda_mod.cpd_estep(a, a, FakeCudaArray((4,)), 1.0, 0.0, 36.0)


def test_cuda_bindings_report_a_missing_device_as_runtime_error(cuda_mod):
    a = FakeCudaArray((10, 3))
    if len(cuda_mod.devices()) == 0:  # this machine: the driver or the GPU is missing
        for call in (lambda: cuda_mod.knn_graph(a, a, 2, -1.0, True),
                     lambda: cuda_mod.cpd_estep(a, a, None, 1.0, 0.0, 36.0)):
            with pytest.raises(RuntimeError, match="no CUDA device is usable"):
                call()
    else:  # with a GPU the fake address is not device memory
        with pytest.raises(ValueError, match="expected device memory"):
            cuda_mod.knn_graph(a, a, 2, -1.0, True)
    assert not hasattr(cuda_mod, "knn_max_k")  # no k limit any more
    assert not hasattr(cuda_mod, "cpd_gauss_transform")  # the never-called kernel was removed


def test_public_api_without_a_gpu_raises_runtime_error():
    from xmodal._device import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    pts = np.random.default_rng(0).random((20, 3))
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        xmodal.knn_graph(pts, pts, k=2, device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        xmodal.cpd(pts, pts, device="cuda")


# ----------------------------------------------------------------------- k-NN grid search
# cuda/knn.cu searches a uniform grid of cells (cpp/include/xmodal/detail/knn_grid.hpp) where it
# pays: rings of cells around the query's cell, cells and rings skipped by a conservative bound.
# knn_graph_grid_emulation runs that search on the CPU; its graph must equal the CPU kernel's (the
# k-d trees) bit for bit, whatever the cell size or box, ties and rounding at the cell faces included.

def grid_cases():
    rng = np.random.default_rng(11)
    cases = {}
    lattice = np.stack(np.meshgrid(*[np.arange(9.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cases["lattice_ties"] = (lattice, lattice + 0.5)  # 8 neighbours at exactly equal distance
    cases["lattice_same"] = (lattice, lattice[::-1].copy())  # zero distances, points on cell faces
    dup = np.repeat(rng.random((40, 3)), 12, axis=0)
    cases["duplicates"] = (dup, dup[rng.permutation(len(dup))].copy())
    centres = rng.random((4, 3)) * 1000.0
    clusters = np.concatenate([rng.normal(0.0, 1e-3, (120, 3)) + c for c in centres])
    outliers = rng.random((4, 3)) * 1e6 - 5e5
    cases["clusters_outliers"] = (np.concatenate([clusters, outliers]), clusters[::-1] + 1e-4)
    line = np.zeros((400, 3))
    line[:, 1] = rng.random(400)
    cases["line_in_3d"] = (line, line[::3] + np.array([0.0, 0.0, 1e-9]))
    plane = np.zeros((400, 3))
    plane[:, :2] = rng.random((400, 2))
    cases["plane_in_3d"] = (rng.random((150, 3)), plane)
    cases["identical"] = (np.ones((40, 2)), np.ones((60, 2)))
    cases["huge_coordinates"] = (rng.random((300, 2)) * 1e150, rng.random((250, 2)) * 1e150)
    cases["tiny_coordinates"] = (rng.random((150, 2)) * 1e-200, rng.random((120, 2)) * 1e-200)  # d2 underflows
    cases["far_offset"] = (rng.random((300, 3)) + 1e9, rng.random((250, 3)) + 1e9)
    cases["queries_outside"] = (rng.random((200, 3)) * 50.0 - 25.0, rng.random((300, 3)))
    cases["dim1"] = (rng.random((300, 1)), rng.random((250, 1)))
    cases["dim5"] = (rng.random((300, 5)), rng.random((250, 5)))
    cases["tiny_sets"] = (rng.random((3, 2)), rng.random((2, 2)))
    return cases


GRID_CASES = grid_cases()
GRID_OPTIONS = [(6, None, True), (1, 0.0, True), (3, 0.12, True), (None, 0.2, False), (40, None, True)]


def compare_grid(a, b, k, radius, symmetric, **kw):
    kk, rr = 0 if k is None else k, -1.0 if radius is None else radius
    cpu = _core.knn_graph(a, b, kk, rr, symmetric)
    grid = emu.knn_graph_grid_emulation(a, b, kk, rr, symmetric, **kw)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(grid[name], cpu[name], err_msg=name)
    return grid


@pytest.mark.parametrize("case", sorted(GRID_CASES))
def test_gpu_grid_search_matches_the_cpu_kernel(case):
    a, b = GRID_CASES[case]
    for k, radius, symmetric in GRID_OPTIONS:
        span = float(np.ptp(np.concatenate([a, b]))) or 1.0
        lo, hi = np.quantile(b, 0.3, axis=0), np.quantile(b, 0.6, axis=0)
        # the automatic cells, tiny forced cells (many rings), and a box smaller than the points'
        # (points beyond it in the unbounded border cells)
        tiny = span * {1: 1e-3, 2: 2e-3, 3: 1.5e-2}.get(a.shape[1], 0.1)  # at most 2^26 cells
        for kw in ({}, {"cell_size": tiny}, {"box": np.array([lo, hi])}):
            g = compare_grid(a, b, k, radius, symmetric, **kw)
            assert g["algorithm"] == "grid", (case, kw)
            assert g["algorithm_reverse"] == ("grid" if symmetric and k else None)


@pytest.mark.parametrize("h", [1.0, 0.5, 2.0, 1.0 / 3.0])
def test_gpu_grid_ties_on_cell_faces(h):
    """Lattice points exactly on the cell faces, k-th neighbours tied across cells: the (d2, index)
    rule needs every tied point visited."""
    g1 = np.arange(7.0)
    lattice = np.stack(np.meshgrid(g1, g1, g1, indexing="ij"), -1).reshape(-1, 3)
    centres = lattice[:: 5] + 0.5
    for k in (1, 4, 6, 7, 9, 19, 27):
        compare_grid(centres, lattice, k, None, True, cell_size=h)
        compare_grid(lattice, lattice, k, 1.0, True, cell_size=h)  # radius pairs at exactly d2 == r2


def test_gpu_grid_points_one_ulp_off_the_cell_faces():
    rng = np.random.default_rng(12)
    h = 0.1
    faces = np.arange(-3, 14) * h
    pts = rng.choice(faces, size=(600, 2)) + rng.integers(-3, 4, size=(600, 2)) * np.spacing(1.0)
    pts = np.concatenate([pts, np.nextafter(pts[:100], np.inf), np.nextafter(pts[:100], -np.inf)])
    q = rng.choice(faces, size=(300, 2)) + rng.integers(-2, 3, size=(300, 2)) * np.spacing(1.0)
    for k, radius in ((1, None), (5, 0.1), (12, 0.2), (None, 0.3)):
        for kw in ({"cell_size": h}, {"cell_size": h * (1 + 1e-15)}, {"cell_size": h * (1 - 1e-15)}, {}):
            compare_grid(q, pts, k, radius, True, **kw)


def test_gpu_grid_random_configurations():
    rng = np.random.default_rng(13)
    for trial in range(25):
        dim = int(rng.integers(1, 5))
        na, nb = (int(x) for x in rng.integers(1, 300, 2))
        scale = 10.0 ** rng.uniform(-5, 5)
        a = rng.random((na, dim)) * scale
        b = rng.random((nb, dim)) * scale
        if trial % 3 == 0:
            b = np.round(b / scale * 4) / 4 * scale  # ties
        k = int(rng.integers(1, 20)) if trial % 4 else None
        radius = float(rng.uniform(0, 0.3) * scale) if trial % 2 else None
        if k is None and radius is None:
            k = 3
        kw = {"cell_size": float(rng.uniform(0.01, 0.5) * scale)} if trial % 5 else {}
        compare_grid(a, b, k, radius, bool(trial % 2), **kw)


def test_gpu_grid_prunes():
    """The search visits a small neighbourhood, not every point (uniform 3D, k = 8)."""
    rng = np.random.default_rng(14)
    a, b = rng.random((20000, 3)), rng.random((20000, 3))
    g = compare_grid(a, b, 8, None, True, algorithm="auto")
    assert g["algorithm"] == g["algorithm_reverse"] == "grid"
    per_query = g["points_visited"] / (len(a) + len(b))
    assert 8 <= per_query < 200, per_query  # brute force: 20000
    assert g["grid_cells"] >= 20000 // 8 // 2
    g = compare_grid(a, b, None, 0.03, False)  # radius: about 0.11 points in the ball, 1-2 cells
    assert g["points_visited"] / len(a) < 100
    # blobs at the corners of a mostly empty box: the cells are refined from the measured load
    corners = np.stack(np.meshgrid([0.0, 10.0], [0.0, 10.0], [0.0, 10.0], indexing="ij"), -1).reshape(-1, 3)
    blobs = np.concatenate([rng.random((2000, 3)) + c for c in corners])
    g = compare_grid(blobs, blobs[::-1] + 1e-3, 8, None, True)
    assert g["grid_cells"] > len(blobs) // 8  # the box alone would give len / 8 cells
    assert g["points_visited"] / (2 * len(blobs)) < 200, g["points_visited"] / (2 * len(blobs))


def test_gpu_grid_automatic_choice():
    rng = np.random.default_rng(15)
    small = rng.random((300, 3))
    assert compare_grid(small, small, 4, None, True, algorithm="auto")["algorithm"] == "brute"  # 9e4 pairs
    assert compare_grid(small, small, 4, None, True, algorithm="brute")["points_visited"] == 2 * 300 * 300
    # every reference point in one cell (three tight clusters, far apart): brute force
    b = np.concatenate([rng.normal(0.0, 1e-6, (3000, 3)) + c for c in ((0, 0, 0), (1e3, 0, 0), (0, 1e3, 1e3))])
    a = b[::2] + 1e-7
    g = compare_grid(a, b, 4, None, False, algorithm="auto")
    assert g["algorithm"] == "brute"
    # a box that cannot be gridded (the extent overflows): brute force even when the grid is asked for
    big = np.array([[-1.5e308, 0.0], [1.5e308, 1.0], [0.0, 0.5]])
    g = emu.knn_graph_grid_emulation(big, big, 2, -1.0, True)
    assert g["algorithm"] == "brute"
    ref = emu.knn_graph_gpu_emulation(big, big, 2, -1.0, True)
    np.testing.assert_array_equal(g["indices"], ref["indices"])


def test_gpu_grid_overflowing_distances_match_brute_force():
    """Squared distances that overflow to inf tie at inf: the grid must visit every cell and pick
    the lowest indices, as the brute-force kernel does."""
    rng = np.random.default_rng(16)
    big = rng.random((300, 3)) * 1e300
    for k, sym in ((1, True), (8, True), (30, False)):
        ref = emu.knn_graph_gpu_emulation(big, -big, k, -1.0, sym)
        g = emu.knn_graph_grid_emulation(big, -big, k, -1.0, sym)
        assert g["algorithm"] == "grid"
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(g[name], ref[name], err_msg=name)


def test_gpu_grid_emulation_checks_arguments():
    a = np.zeros((4, 2))
    with pytest.raises(ValueError, match="algorithm"):
        emu.knn_graph_grid_emulation(a, a, 1, -1.0, True, algorithm="kd")
    with pytest.raises(ValueError, match="box"):
        emu.knn_graph_grid_emulation(a, a, 1, -1.0, True, box=np.zeros((2, 3)))
