"""xmodal.knn_graph against scipy.spatial.cKDTree."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import xmodal
from xmodal.datasets import celegans_embryos


def reference_pairs(a, b, k=None, radius=None, symmetric=True):
    """Pair set of the k-NN / radius graph built with cKDTree."""
    ta, tb = cKDTree(a), cKDTree(b)
    pairs = set()
    if radius is not None:
        r = ta.sparse_distance_matrix(tb, radius, output_type="coo_matrix")
        pairs |= set(zip(r.row.tolist(), r.col.tolist()))
        # sparse_distance_matrix drops zero distances: add identical points explicitly
        for i, js in enumerate(tb.query_ball_point(a, 0.0)):
            pairs |= {(i, j) for j in js}
    if k is not None:
        kb = min(k, len(b))
        _, ib = tb.query(a, kb)
        ib = ib.reshape(len(a), kb)
        pairs |= {(i, int(j)) for i in range(len(a)) for j in ib[i]}
        if symmetric:
            ka = min(k, len(a))
            _, ia = ta.query(b, ka)
            ia = ia.reshape(len(b), ka)
            pairs |= {(int(i), j) for j in range(len(b)) for i in ia[j]}
    return pairs


def pair_set(g):
    c = g.tocoo()
    return set(zip(c.row.tolist(), c.col.tolist()))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k,radius,symmetric", [(5, None, True), (5, None, False), (None, 0.15, True),
                                                 (3, 0.1, True), (1, None, True), (12, 0.05, False)])
def test_same_pairs_and_distances_as_ckdtree(dim, k, radius, symmetric):
    rng = np.random.default_rng(dim * 100 + (k or 0))
    a = rng.random((300, dim))
    b = rng.random((250, dim))
    g = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=symmetric)
    assert isinstance(g, sp.csr_matrix) and g.shape == (300, 250) and g.dtype == np.float64
    assert pair_set(g) == reference_pairs(a, b, k, radius, symmetric)
    c = g.tocoo()
    ref = np.sqrt(((a[c.row] - b[c.col]) ** 2).sum(axis=1))
    np.testing.assert_allclose(c.data, ref, rtol=1e-12, atol=0)
    # canonical CSR: sorted, unique column indices per row
    for i in range(g.shape[0]):
        cols = g.indices[g.indptr[i]:g.indptr[i + 1]]
        assert np.all(np.diff(cols) > 0)


def test_identical_points_stored_as_explicit_zeros():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [9.0, 9.0]])
    g = xmodal.knn_graph(a, b, k=1, symmetric=False)
    assert g.nnz == 3
    assert g[0, 1] == 0.0 and g[1, 0] == 0.0
    coo = g.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == {(0, 1), (1, 0), (2, 0)} or \
        set(zip(coo.row.tolist(), coo.col.tolist())) == {(0, 1), (1, 0), (2, 2)}
    assert (g.data == 0).sum() == 2
    # radius 0 finds exactly the identical pairs
    g0 = xmodal.knn_graph(a, b, radius=0.0)
    assert pair_set(g0) == {(0, 1), (1, 0)} and g0.nnz == 2


def test_tie_rule_lower_index_first():
    a = np.array([[0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # all at distance 1
    g = xmodal.knn_graph(a, b, k=2, symmetric=False)
    assert g.indices.tolist() == [0, 1]


def test_k_larger_than_set_gives_all_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 3)), rng.random((4, 3))
    g = xmodal.knn_graph(a, b, k=50)
    assert g.nnz == 28


def test_spacing_scales_coordinates():
    rng = np.random.default_rng(1)
    a, b = rng.random((80, 3)), rng.random((90, 3))
    s = np.array([2.0, 0.5, 0.5])
    g1 = xmodal.knn_graph(a, b, k=4, radius=0.3, spacing=s)
    g2 = xmodal.knn_graph(a * s, b * s, k=4, radius=0.3)
    assert pair_set(g1) == pair_set(g2)
    np.testing.assert_array_equal(g1.data, g2.data)
    for bad in ("abc", [1.0, "x", 2.0], {"a": 1}):
        with pytest.raises(TypeError, match="spacing: expected a positive number or 3"):
            xmodal.knn_graph(a, b, k=4, spacing=bad)


@pytest.mark.parametrize("sizes", [(2000, 1800), (6000, 5000)])  # below / above the kernel's parallel cut (4096 rows)
@pytest.mark.parametrize("symmetric", [False, True])
def test_result_independent_of_thread_count(sizes, symmetric):
    rng = np.random.default_rng(2)
    a, b = rng.random((sizes[0], 3)), rng.random((sizes[1], 3))
    with xmodal.num_threads(1):
        g1 = xmodal.knn_graph(a, b, k=6, radius=0.05, symmetric=symmetric)
    with xmodal.num_threads(2):
        g2 = xmodal.knn_graph(a, b, k=6, radius=0.05, symmetric=symmetric)
    np.testing.assert_array_equal(g1.indptr, g2.indptr)
    np.testing.assert_array_equal(g1.indices, g2.indices)
    np.testing.assert_array_equal(g1.data, g2.data)


def test_real_points_celegans():
    emb = list(celegans_embryos().values())
    a, b = emb[0].points, emb[1].points
    g = xmodal.knn_graph(a, b, k=8, radius=20.0)
    assert pair_set(g) == reference_pairs(a, b, 8, 20.0, True)


def test_duplicate_points_in_one_set():
    a = np.zeros((5, 2))
    b = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    g = xmodal.knn_graph(a, b, k=1)
    # each a_i: nearest of b is b_0 (lower index); each b_j's nearest in a is a_0
    assert pair_set(g) == {(i, 0) for i in range(5)} | {(0, 1), (0, 2)}


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(), ValueError, "k, radius"),
    (dict(k=0), ValueError, "k"),
    (dict(k=-3), ValueError, "k"),
    (dict(k=2.5), TypeError, "k"),
    (dict(radius=-1.0), ValueError, "radius"),
    (dict(radius=float("nan")), ValueError, "radius"),
    (dict(k=3, symmetric="yes"), TypeError, "symmetric"),
    (dict(k=3, device="tpu"), ValueError, "device"),
    (dict(k=3, spacing=[1.0, -1.0]), ValueError, "spacing"),
])
def test_option_errors(kwargs, exc, match):
    a = np.zeros((3, 2))
    with pytest.raises(exc, match=match):
        xmodal.knn_graph(a, a, **kwargs)


def test_point_errors():
    with pytest.raises(ValueError, match="a, b"):
        xmodal.knn_graph(np.zeros((3, 2)), np.zeros((3, 3)), k=1)
    with pytest.raises(ValueError, match="finite"):
        xmodal.knn_graph(np.array([[0.0, np.nan]]), np.zeros((3, 2)), k=1)
    with pytest.raises(ValueError, match="b"):
        xmodal.knn_graph(np.zeros((3, 2)), np.zeros(3), k=1)
    with pytest.raises(TypeError, match="a"):
        xmodal.knn_graph(np.array([["x", "y"]]), np.zeros((3, 2)), k=1)


@pytest.mark.cuda
def test_cuda_graph_matches_cpu():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(3)
    a, b = rng.random((3000, 3)), rng.random((2500, 3))
    g_cpu = xmodal.knn_graph(a, b, k=7, radius=0.04)
    g_gpu = xmodal.knn_graph(cp.asarray(a), cp.asarray(b), k=7, radius=0.04)
    assert type(g_gpu).__module__.startswith("cupyx")
    h = g_gpu.get()
    np.testing.assert_array_equal(h.indptr, g_cpu.indptr)
    np.testing.assert_array_equal(h.indices, g_cpu.indices)
    np.testing.assert_allclose(h.data, g_cpu.data, rtol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("k,radius,symmetric", [(None, 0.05, True), (64, None, False), (1, 0.0, True)])
def test_cuda_graph_variants(k, radius, symmetric):
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    a, b = rng.random((700, 2)), rng.random((900, 2))
    b[:5] = a[:5]  # identical points: explicit zeros on both devices
    g_cpu = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=symmetric)
    h = xmodal.knn_graph(cp.asarray(a), cp.asarray(b), k=k, radius=radius, symmetric=symmetric).get()
    assert h.nnz == g_cpu.nnz
    np.testing.assert_array_equal(h.indices, g_cpu.indices)
    np.testing.assert_array_equal(h.data, g_cpu.data)
    # numpy input on the GPU returns a scipy matrix
    g_host = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=symmetric, device="cuda")
    assert isinstance(g_host, sp.csr_matrix) and g_host.nnz == g_cpu.nnz


@pytest.mark.cuda
def test_cuda_large_k_matches_cpu():
    """k > 64 (refused by the first GPU kernel): the global-memory top-k lists, same graph."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    a, b = rng.random((400, 3)), rng.random((350, 3))
    for k in (33, 65, 200):
        g_cpu = xmodal.knn_graph(a, b, k=k)
        h = xmodal.knn_graph(cp.asarray(a), cp.asarray(b), k=k).get()
        np.testing.assert_array_equal(h.indptr, g_cpu.indptr)
        np.testing.assert_array_equal(h.indices, g_cpu.indices)
        np.testing.assert_array_equal(h.data, g_cpu.data)


def test_radius_boundary_follows_squared_distances_like_ckdtree():
    # sqrt(d2) can round to exactly `radius` while d2 > radius**2: such a pair is left out, as by
    # cKDTree (both compare squared distances); docs/matching.md states the rule.
    rng = np.random.default_rng(1)
    x, y = rng.random(20000), rng.random(20000)
    d2 = x * x + y * y
    r = np.sqrt(d2)
    idx = np.flatnonzero(d2 > r * r)[:50]
    assert idx.size == 50
    a = np.zeros((1, 2))
    for i in idx:
        b = np.array([[x[i], y[i]]])
        g = xmodal.knn_graph(a, b, radius=float(r[i]))
        assert g.nnz == len(cKDTree(b).query_ball_point(a[0], r[i])) == 0
        g = xmodal.knn_graph(a, b, radius=float(np.nextafter(r[i], 2.0)))
        assert g.nnz == 1 and g.data[0] == r[i]


# ----------------------------------------------------------------------- GPU uniform-grid search
# cuda/knn.cu searches a uniform grid of cells where it pays (cpp/include/xmodal/detail/knn_grid.hpp;
# its CPU twin is tested in tests/test_cuda_arith.py) and brute force elsewhere; xmodal._cuda's
# knn_graph takes algorithm="auto" | "brute" | "grid" and reports the path in its dict.

def _cuda_graph(cp, a, b, k, radius, symmetric, algorithm):
    from xmodal._device import native_cuda

    out = native_cuda("knn_graph").knn_graph(cp.asarray(a), cp.asarray(b), 0 if k is None else k,
                                             -1.0 if radius is None else radius, symmetric, 0, algorithm)
    g = sp.csr_matrix((cp.asarray(out["data"]).get(), cp.asarray(out["indices"]).get(),
                       cp.asarray(out["indptr"]).get()), shape=(len(a), len(b)))
    return g, out["algorithm"], out["algorithm_reverse"]


def _assert_same_graph(h, g_cpu):
    np.testing.assert_array_equal(h.indptr, g_cpu.indptr)
    np.testing.assert_array_equal(h.indices, g_cpu.indices)
    np.testing.assert_array_equal(h.data, g_cpu.data)


def _grid_cases():
    rng = np.random.default_rng(21)
    lattice = np.stack(np.meshgrid(*[np.arange(14.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = rng.random((4, 3)) * 1000.0
    clusters = np.concatenate([rng.normal(0.0, 1e-3, (1500, 3)) + c for c in centres])
    dup = np.repeat(rng.random((300, 3)), 10, axis=0)
    line = np.zeros((5000, 3))
    line[:, 2] = rng.random(5000)
    return {
        "uniform_3d": (rng.random((6000, 3)), rng.random((5000, 3))),
        "uniform_2d": (rng.random((6000, 2)), rng.random((5000, 2))),
        "lattice_ties": (lattice + 0.5, lattice),
        "duplicates": (dup, dup[::-1].copy()),
        "clusters_outliers": (np.concatenate([clusters, rng.random((20, 3)) * 1e6]), clusters[::-1] + 1e-4),
        "line_in_3d": (line[::2] + 1e-9, line),
        "queries_outside": (rng.random((3000, 3)) * 40.0 - 20.0, rng.random((5000, 3))),
        "huge_coordinates": (rng.random((4000, 2)) * 1e150, rng.random((5000, 2)) * 1e150),
        "dim1": (rng.random((4000, 1)), rng.random((5000, 1))),
        "dim4": (rng.random((4000, 4)), rng.random((5000, 4))),
    }


@pytest.mark.cuda
@pytest.mark.parametrize("case", sorted(_grid_cases()))
def test_cuda_grid_and_brute_force_match_cpu(case):
    cp = pytest.importorskip("cupy")
    a, b = _grid_cases()[case]
    for k, radius, symmetric in ((8, None, True), (1, 0.0, True), (5, 0.05, True), (None, 0.08, False),
                                 (40, None, True)):
        g_cpu = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=symmetric)  # any d in 1..8
        for algorithm in ("grid", "brute", "auto"):
            h, fwd, rev = _cuda_graph(cp, a, b, k, radius, symmetric, algorithm)
            _assert_same_graph(h, g_cpu)
            if algorithm != "auto":
                assert fwd == algorithm, (case, k, radius, algorithm)
                assert rev == (algorithm if symmetric and k else None)


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [1, 4, 8])
def test_cuda_public_knn_graph_any_dimension_and_empty_sets(dim):
    """The public function on cupy input: 1-8 columns as on the CPU, and an empty set gives an empty
    cupyx CSR matrix of the right shape (no kernel launch)."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(40 + dim)
    a, b = rng.random((700, dim)), rng.random((900, dim))
    g = xmodal.knn_graph(cp.asarray(a), cp.asarray(b), k=6, radius=0.1)
    _assert_same_graph(g.get(), xmodal.knn_graph(a, b, k=6, radius=0.1))
    for n, m in ((0, 900), (700, 0), (0, 0)):
        e = xmodal.knn_graph(cp.asarray(a[:n]), cp.asarray(b[:m]), k=6)
        assert e.shape == (n, m) and e.nnz == 0
        assert e.get().shape == xmodal.knn_graph(a[:n], b[:m], k=6).shape


@pytest.mark.cuda
def test_cuda_grid_large_k_and_scratch_lists():
    """k > 32: the grid kernel's top-k lists in the global scratch buffer."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(22)
    a, b = rng.random((5000, 3)), rng.random((4000, 3))
    for k in (33, 100):
        g_cpu = xmodal.knn_graph(a, b, k=k)
        h, fwd, rev = _cuda_graph(cp, a, b, k, None, True, "grid")
        assert fwd == rev == "grid"
        _assert_same_graph(h, g_cpu)
    a, b = a[:300], b[:200]  # k > both sets: every cell visited, every pair kept
    h, fwd, _ = _cuda_graph(cp, a, b, 250, None, True, "grid")
    assert fwd == "grid" and h.nnz == 300 * 200
    _assert_same_graph(h, xmodal.knn_graph(a, b, k=250))


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [2, 3])
def test_cuda_grid_chosen_automatically_at_scale(dim):
    """200k points (the benchmark's regime): the automatic choice is the grid, the graph the CPU's."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(23 + dim)
    a = rng.random((200_000, dim)) * 1000.0
    b = a[rng.permutation(len(a))] + rng.normal(0.0, 1.0, (len(a), dim))
    g_cpu = xmodal.knn_graph(a, b, k=8, radius=4.0)
    h, fwd, rev = _cuda_graph(cp, a, b, 8, 4.0, True, "auto")
    assert fwd == rev == "grid"
    _assert_same_graph(h, g_cpu)
    g = xmodal.knn_graph(cp.asarray(a), cp.asarray(b), k=8, radius=4.0)  # the public API: the same
    _assert_same_graph(g.get(), g_cpu)


def test_cpu_tree_keeps_pairs_at_the_radius_and_ties_at_the_kth_distance():
    """The k-d tree pruned with an incrementally updated plane distance that is a lower bound only
    up to rounding: pairs at exactly the radius (d2 == r2) were dropped and k-th-place ties could
    keep a higher index. Lattice points (many exact ties) against the brute-force rule."""
    from xmodal import _core

    rng = np.random.default_rng(2721)
    a = np.round(rng.random((60, 2)) * 5) / 5
    b = np.round(rng.random((80, 2)) * 5) / 5
    assert xmodal.knn_graph(a, b, radius=1.0).nnz == cKDTree(a).count_neighbors(cKDTree(b), 1.0)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        d = 2 + seed % 2
        scale = [0.1, 0.3, 1.7][seed % 3]
        a = rng.integers(0, 6, size=(67, d)) * scale
        b = rng.integers(0, 6, size=(175, d)) * scale
        for k, radius in ((24, None), (5, 2 * scale), (None, 3 * scale)):
            got = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=True, device="cpu")
            ref = _core._testing.knn_graph_gpu_emulation(a, b, 0 if k is None else k,
                                                          -1.0 if radius is None else radius, True)
            ref = sp.csr_matrix((ref["data"], ref["indices"], ref["indptr"]), shape=got.shape)
            assert (got != ref).nnz == 0, (seed, k, radius)
