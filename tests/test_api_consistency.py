"""API consistency across matching, registration and segmentation (findings of a differential audit):
empty point sets, point dimensions, the sigma2-collapse warning, and one dtype contract for the value
arrays of the segmentation functions."""

import re

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import xmodal
import xmodal.segmentation as seg

# ------------------------------------------------------------------------------------ matching


@pytest.mark.parametrize("n,m", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("kw", [dict(k=3), dict(radius=0.5), dict(k=2, radius=0.5, symmetric=False),
                                dict(k=10**12)])
def test_knn_graph_of_an_empty_set_is_an_empty_matrix(n, m, kw):
    rng = np.random.default_rng(0)
    g = xmodal.knn_graph(rng.random((n, 3)), rng.random((m, 3)), spacing=[1.0, 2.0, 3.0], **kw)
    assert isinstance(g, sp.csr_matrix) and g.shape == (n, m) and g.dtype == np.float64 and g.nnz == 0
    assert g.indptr.tolist() == [0] * (n + 1)
    # what scipy's tree gives for the same sets
    assert cKDTree(rng.random((m, 3))).query_ball_point(rng.random((n, 3)), 0.5).shape == (n,)


def test_empty_points_need_a_2d_shape():
    with pytest.raises(ValueError, match=r"a: expected an \(n, d\) array, got shape \(0,\) \(an empty set of points "
                                         r"has shape \(0, d\)\)"):
        xmodal.knn_graph([], np.zeros((3, 2)), k=1)


@pytest.mark.parametrize("d", [1, 4, 8])
def test_knn_graph_any_dimension_the_kernel_takes_equals_ckdtree(d):
    rng = np.random.default_rng(d)
    a, b = rng.random((60, d)), rng.random((45, d))
    g = xmodal.knn_graph(a, b, k=3, symmetric=False)
    _, idx = cKDTree(b).query(a, 3)
    ref = {(i, int(j)) for i in range(60) for j in idx[i]}
    c = g.tocoo()
    assert set(zip(c.row.tolist(), c.col.tolist())) == ref
    np.testing.assert_allclose(c.data, np.sqrt(((a[c.row] - b[c.col]) ** 2).sum(1)), rtol=1e-12)
    if d == 1:  # radius pairs on a line
        g1 = xmodal.knn_graph(a, b, radius=0.05)
        pairs = {(i, j) for i, js in enumerate(cKDTree(b).query_ball_point(a, 0.05)) for j in js}
        c1 = g1.tocoo()
        assert set(zip(c1.row.tolist(), c1.col.tolist())) == pairs


def test_knn_graph_refuses_more_columns_than_the_kernel_takes():
    with pytest.raises(ValueError, match=r"a: expected 1 to 8 columns \(coordinates\), got 9"):
        xmodal.knn_graph(np.zeros((3, 9)), np.zeros((3, 9)), k=1)


def test_match_points_with_an_empty_set():
    b = np.random.default_rng(1).random((4, 3))
    res = xmodal.match_points(np.zeros((0, 3)), b)
    assert len(res) == 0 and res.shape == (0, 4) and res.unmatched_cols.tolist() == [0, 1, 2, 3]
    assert res.unmatched_rows.size == 0 and res.cost == 0.0 and res.info["graph_pairs"] == 0
    res = xmodal.match_points(b, np.zeros((0, 3)), unmatched_cost=2.5)
    assert res.problem == "partial" and res.unmatched_rows.tolist() == [0, 1, 2, 3] and res.cost == 10.0
    assert len(xmodal.match_points(np.zeros((0, 3)), np.zeros((0, 3)), mode="cover")) == 0
    with pytest.raises(ValueError, match=r"a, b: mode='cover' .* needs points in both sets .*got 0 and 4 points"):
        xmodal.match_points(np.zeros((0, 3)), b, mode="cover")


def test_match_points_names_its_own_arguments_when_the_graph_is_infeasible():
    a = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [50.0, 0.0]])
    b = np.array([[0.05, 0.0], [0.15, 0.0], [49.0, 0.0], [51.0, 0.0]])
    for mode in ("one-to-one", "cover"):
        with pytest.raises(ValueError, match=r"^k, radius: on the candidate graph \(rows: points of a, columns: points "
                                             r"of b\): cost matrix is infeasible .*larger k or radius"):
            xmodal.match_points(a, b, k=1, symmetric=False, mode=mode)


def test_assignment_on_an_empty_graph_is_consistent_with_empty_matrices():
    g = xmodal.knn_graph(np.zeros((0, 2)), np.ones((3, 2)), k=2)
    for cost in (g, np.zeros((0, 3))):
        res = xmodal.linear_assignment(cost)
        assert len(res) == 0 and res.unmatched_cols.tolist() == [0, 1, 2]
        with pytest.raises(ValueError, match=r"cost: a cover needs points on both sides, got shape \(0, 3\)"):
            xmodal.cover_assignment(cost)


# -------------------------------------------------------------------------------- registration


def _collapse_with_outliers(transform):
    rng = np.random.default_rng(0)
    Y = rng.uniform(0, 1, (80, 2))
    X = np.vstack([Y, rng.uniform(0, 1, (20, 2))])  # 20 fixed points that no moving point explains
    return Y, X, xmodal.cpd(Y, X, transform=transform, w=0.3)


@pytest.mark.parametrize("transform", ["deformable", "rigid"])
def test_sigma2_collapse_warning_counts_the_outliers(transform):
    Y, X, r = _collapse_with_outliers(transform)
    assert r.info["stop"] == "sigma2_collapse" and r.converged
    (msg,) = [w for w in r.warnings if "collapsed" in w]
    assert "match (almost) exactly" not in msg  # not true: 20 fixed points are far from every moved point
    assert "20 of 100 fixed points (20.0%) are treated as outliers" in msg and "w=0.3" in msg
    # the residual it gives is that of the matched points, and it is right
    resid = float(re.search(r"largest residual ([0-9.e+-]+) input units", msg).group(1))
    true_inlier = np.sqrt(((r.moved - X[:80]) ** 2).sum(1)).max()
    assert resid == pytest.approx(true_inlier, rel=0.05, abs=1e-12) and resid < 1e-4
    assert cKDTree(r.moved).query(X[80:])[0].max() > 100 * max(resid, 1e-9)


def test_sigma2_collapse_warning_of_an_exact_copy_says_the_sets_match():
    Y = np.random.default_rng(2).uniform(0, 1, (50, 3))
    r = xmodal.cpd(Y, Y + [0.1, -0.2, 0.05], transform="rigid")
    (msg,) = [w for w in r.warnings if "collapsed" in w]
    assert "the sets match (almost) exactly" in msg and "outliers" not in msg and "match no fixed" not in msg


def test_sigma2_collapse_warning_counts_unmatched_moving_points():
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (60, 2))
    Y = np.vstack([X, rng.uniform(3, 4, (15, 2))])  # 15 moving points far from every fixed point
    r = xmodal.cpd(Y, X, transform="rigid", w=0.1)
    msgs = [w for w in r.warnings if "collapsed" in w]
    if r.info["stop"] != "sigma2_collapse":
        pytest.skip(f"no collapse here (stop {r.info['stop']})")
    assert "15 of 75 moving points match no fixed point" in msgs[0]
    assert "match (almost) exactly" not in msgs[0]


# -------------------------------------------------------------------------------- segmentation

OFFS = [[-1, 0], [0, -1], [-3, 0], [0, -3]]


def _binary_affinities():
    return np.random.default_rng(0).random((4, 12, 13)) > 0.5


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.int64, np.float16, np.float32, ">f8"])
def test_mutex_watershed_takes_any_real_dtype_of_zero_one_affinities(dtype):
    a = _binary_affinities()
    ref = xmodal.mutex_watershed(a.astype(np.float64), OFFS, n_attractive=2)
    np.testing.assert_array_equal(xmodal.mutex_watershed(a.astype(dtype), OFFS, n_attractive=2), ref)
    blk = xmodal.blockwise_mutex_watershed(a.astype(dtype), OFFS, block_shape=(6, 7), halo=3, n_attractive=2)
    assert blk.labels.shape == ref.shape and blk.n_labels > 0


@pytest.mark.parametrize("call", [
    lambda a: xmodal.mutex_watershed(a, OFFS),
    lambda a: xmodal.blockwise_mutex_watershed(a, OFFS, block_shape=(6, 7), halo=3),
    lambda a: seg.boundaries_from_affinities(a, OFFS),
    lambda a: seg.superpixel_agglomeration(affinities=a, offsets=OFFS, n_attractive=2),
    lambda a: seg.slicewise_superpixel_agglomeration(a[:2, None], OFFS[:2], n_attractive=2),
])
def test_integer_affinities_other_than_zero_one_are_refused_with_a_hint(call):
    a = (np.random.default_rng(1).random((4, 12, 13)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"affinities: expected probabilities in \[0, 1\] \(integer values must be "
                                         r"0 or 1\), got dtype uint8 .*pass affinities / 255"):
        call(a)


@pytest.mark.parametrize("bad", [np.complex64, "U3", object])
@pytest.mark.parametrize("name,call", [
    ("affinities", lambda a: xmodal.mutex_watershed(a, OFFS)),
    ("affinities", lambda a: xmodal.blockwise_mutex_watershed(a, OFFS, block_shape=6, halo=3)),
    ("affinities", lambda a: seg.slicewise_superpixel_agglomeration(a[:2, None], OFFS[:2], n_attractive=2)),
    ("affinities", lambda a: seg.stitched_superpixel_agglomeration(a, OFFS, n_attractive=2, block_shape=6, halo=3)),
    ("boundaries", lambda a: seg.distance_transform_watershed(a[0])),
    ("boundaries", lambda a: seg.edge_features(*_rag(), a[0])),
    ("weights", lambda a: xmodal.mutex_watershed_graph(2, [[0, 1]], a[0, 0, :1], [], [])),
    ("weights", lambda a: xmodal.gasp(2, [[0, 1]], a[0, 0, :1])),
    ("boundary", lambda a: seg.boundary_to_signed_weights(a[0, 0])),
    ("probabilities", lambda a: seg.probabilities_to_costs(a[0, 0])),
    ("edge_boundary", lambda a: seg.agglomerate_graph(2, [[0, 1]], a[0, 0, :1], [1.0])),
])
def test_non_real_values_are_refused_naming_the_argument(name, call, bad):
    a = _binary_affinities().astype(np.float64).astype(bad)
    with pytest.raises(TypeError, match=rf"^{name}: expected .*(real|numeric)"):
        call(a)


def _rag():
    lab = (np.arange(12 * 13).reshape(12, 13) // 40).astype(np.int32)
    return seg.region_adjacency_graph(lab), lab


def test_value_functions_agree_across_dtypes():
    """bool, integer and float inputs of the same 0/1 values give the same result everywhere."""
    a = _binary_affinities()
    rag, lab = _rag()
    for dt in (bool, np.uint8, np.int32, np.float16):
        x = a.astype(dt)
        got, ref = seg.edge_features(rag, lab, x[0]), seg.edge_features(rag, lab, a[0] * 1.0)
        np.testing.assert_array_equal(got.mean, ref.mean)
        np.testing.assert_array_equal(got.quantiles, ref.quantiles)
        np.testing.assert_array_equal(seg.boundaries_from_affinities(x, OFFS),
                                      seg.boundaries_from_affinities(a * 1.0, OFFS))
        w = x[0, 0, :3]
        np.testing.assert_array_equal(
            xmodal.mutex_watershed_graph(4, [[0, 1], [1, 2], [2, 3]], w, [[0, 3]], [0.5]),
            xmodal.mutex_watershed_graph(4, [[0, 1], [1, 2], [2, 3]], w.astype(float), [[0, 3]], [0.5]))
        np.testing.assert_array_equal(seg.probabilities_to_costs(w), seg.probabilities_to_costs(w.astype(float)))


@pytest.mark.parametrize("method", ["gasp", "multicut", "mws"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -0.1, 1.5])
def test_agglomerate_graph_names_edge_boundary_for_values_outside_0_1(method, value):
    """The boundary values are checked under their own name (NaN was reported as gasp's `weights`
    or multicut's `probabilities`, and 1.5 was agglomerated as a strong boundary)."""
    b = np.array([0.2, value, 0.9])
    with pytest.raises(ValueError, match=r"^edge_boundary: expected finite boundary values in \[0, 1\], edge 1 has"):
        seg.agglomerate_graph(4, [[0, 1], [1, 2], [2, 3]], b, [1.0, 1.0, 1.0], method=method)
    b[1] = 1.0
    assert seg.agglomerate_graph(4, [[0, 1], [1, 2], [2, 3]], b, [1.0, 1.0, 1.0], method=method).shape == (4,)
