"""GASP kernel: same partitions as bioimage-cpp's GaspClusterPolicy, a brute-force reference for the
constrained linkages, the mutex watershed case, constraints, bad inputs; multicut wrapper; the
superpixel route on the shipped ISBI 2012 slices."""

import numpy as np
import pytest
from _gasp_reference import reference_gasp

from xmodal.segmentation import (
    boundary_to_signed_weights,
    distance_transform_watershed,
    edge_features,
    gasp,
    multicut,
    mutex_watershed_graph,
    probabilities_to_costs,
    region_adjacency_graph,
    superpixel_agglomeration,
)

# xmodal (linkage, cannot_link) -> bioimage-cpp linkage name
BIOIMAGE_LINKAGES = [
    ("sum", False, "sum"),
    ("mean", False, "mean"),
    ("max", False, "max"),
    ("min", False, "min"),
    ("abs_max", False, "abs_max"),
    ("abs_max", True, "mutex_watershed"),
]


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def random_graph(rng, n, density, *, shuffle=True):
    m = int(density * n)
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = u != v
    uv = np.unique(np.stack([np.minimum(u, v), np.maximum(u, v)], 1)[keep], axis=0)
    if shuffle:
        rng.shuffle(uv)
    return uv


def bioimage_gasp(n, uv, w, sizes, linkage, mergeable=None):
    bgraph = pytest.importorskip("bioimage_cpp.graph")
    agglo = pytest.importorskip("bioimage_cpp.graph.agglomeration")
    g = bgraph.UndirectedGraph.from_edges(n, uv)
    return agglo.GaspClusterPolicy(linkage=linkage).optimize(g, w, edge_sizes=sizes, is_mergeable=mergeable)


@pytest.mark.parametrize("linkage,cannot_link,bio_linkage", BIOIMAGE_LINKAGES)
def test_equal_to_bioimage_cpp_on_random_graphs(linkage, cannot_link, bio_linkage):
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(2, 300))
        uv = random_graph(rng, n, rng.uniform(0.5, 4.0))
        if len(uv) == 0:
            continue
        w = rng.normal(0.15, 1.0, len(uv))
        sizes = rng.uniform(0.5, 5.0, len(uv))
        ref = bioimage_gasp(n, uv, w, sizes, bio_linkage)
        ours = gasp(n, uv, w, linkage=linkage, cannot_link=cannot_link, edge_sizes=sizes)
        assert same_partition(ref, ours), (trial, n, len(uv))


@pytest.mark.parametrize("linkage,cannot_link,bio_linkage", [BIOIMAGE_LINKAGES[i] for i in (0, 1, 2, 5)])
def test_equal_to_bioimage_cpp_with_unmergeable_edges(linkage, cannot_link, bio_linkage):
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 150))
        uv = random_graph(rng, n, 3.0)
        if len(uv) == 0:
            continue
        w = rng.normal(0.3, 1.0, len(uv))
        mergeable = rng.random(len(uv)) > 0.2
        ref = bioimage_gasp(n, uv, w, None, bio_linkage, mergeable)
        ours = gasp(n, uv, w, linkage=linkage, cannot_link=cannot_link, mergeable=mergeable)
        assert same_partition(ref, ours)


@pytest.mark.parametrize("linkage", ["sum", "mean", "max", "min", "abs_max"])
@pytest.mark.parametrize("cannot_link", [False, True])
def test_equal_to_brute_force_reference(linkage, cannot_link):
    rng = np.random.default_rng(11)
    for _ in range(25):
        n = int(rng.integers(2, 40))
        uv = random_graph(rng, n, 2.5)
        if len(uv) == 0:
            continue
        w = rng.normal(0.1, 1.0, len(uv))
        sizes = rng.uniform(0.5, 3.0, len(uv))
        ref = reference_gasp(n, uv, w, sizes, linkage, cannot_link)
        ours = gasp(n, uv, w, linkage=linkage, cannot_link=cannot_link, edge_sizes=sizes)
        assert same_partition(ref, ours)


@pytest.mark.parametrize("linkage", ["sum", "mean", "max", "min"])
def test_no_attractive_linkage_left_between_clusters(linkage):
    rng = np.random.default_rng(5)
    n = 400
    uv = random_graph(rng, n, 3.0)
    w = rng.normal(0.2, 1.0, len(uv))
    s = rng.uniform(1, 4, len(uv))
    lab = gasp(n, uv, w, linkage=linkage, edge_sizes=s).astype(np.int64)
    a, b = lab[uv[:, 0]], lab[uv[:, 1]]
    cut = a != b
    key = np.minimum(a, b)[cut] * (n + 1) + np.maximum(a, b)[cut]
    for k in np.unique(key):
        sel = key == k
        ws, ss = w[cut][sel], s[cut][sel]
        link = {"sum": ws.sum(), "mean": (ws * ss).sum() / ss.sum(), "max": ws.max(), "min": ws.min()}[linkage]
        assert link <= 1e-12


@pytest.mark.parametrize("linkage,cannot_link,bio_linkage", [BIOIMAGE_LINKAGES[i] for i in (0, 1, 2, 5)])
def test_equal_to_bioimage_cpp_on_a_large_grid_graph(linkage, cannot_link, bio_linkage):
    """A 3D grid graph: large clusters, many merges, the native hash map is rebuilt on the way."""
    rng = np.random.default_rng(12)
    shape = (4, 60, 60)
    idx = np.arange(np.prod(shape)).reshape(shape)
    uv = np.concatenate([np.stack([np.take(idx, range(0, s - 1), axis=d).ravel(),
                                   np.take(idx, range(1, s), axis=d).ravel()], 1)
                         for d, s in enumerate(shape)])
    w = rng.normal(0.3, 1.0, len(uv))
    ref = bioimage_gasp(idx.size, uv, w, None, bio_linkage)
    ours, info = gasp(idx.size, uv, w, linkage=linkage, cannot_link=cannot_link, return_info=True)
    assert info.n_rebuilds > 0
    assert same_partition(ref, ours)


def test_mutex_watershed_case_equals_mutex_watershed_graph():
    rng = np.random.default_rng(2)
    for _ in range(40):
        n = int(rng.integers(2, 300))
        uv = random_graph(rng, n, 3.0)
        if len(uv) == 0:
            continue
        w = rng.normal(0.0, 1.0, len(uv))
        att = w > 0
        ref = mutex_watershed_graph(n, uv[att], w[att], uv[~att], -w[~att])
        ours = gasp(n, uv, w, linkage="abs_max", cannot_link=True)
        assert np.array_equal(ref, ours)  # both: consecutive labels in node order


def test_constraints_are_respected():
    uv = np.array([[0, 1], [1, 2], [0, 2]])
    w = np.array([1.0, 1.0, -5.0])
    # max linkage merges everything without constraints (max(1, -5) = 1 > 0) ...
    assert len(np.unique(gasp(3, uv, w, linkage="max"))) == 1
    # ... but the strong repulsion keeps 0 and 2 apart with cannot-link constraints
    for linkage in ("max", "mean", "sum", "abs_max"):
        lab = gasp(3, uv, w, linkage=linkage, cannot_link=True)
        assert lab[0] != lab[2]
    # an unmergeable edge is never contracted
    lab = gasp(3, uv[:2], np.array([2.0, 1.0]), mergeable=[False, True])
    assert lab[0] != lab[1] and lab[1] == lab[2]
    # mean linkage: ({0,1}, 2) has mean (1 - 5) / 2 < 0
    assert gasp(3, uv, w, linkage="mean").tolist() == [1, 1, 2]


def test_duplicate_edges_are_merged_first():
    rng = np.random.default_rng(4)
    n = 60
    uv = random_graph(rng, n, 3.0)
    w = rng.normal(0.1, 1.0, len(uv))
    dup = rng.integers(0, len(uv), 40)
    uv2 = np.concatenate([uv, uv[dup][:, ::-1]])
    w2 = np.concatenate([w, rng.normal(0.1, 1.0, 40)])
    lab, info = gasp(n, uv2, w2, linkage="sum", return_info=True)
    assert info.n_duplicate_edges == 40
    # the same as the graph with the repeated edges summed up front
    wsum = w.copy()
    np.add.at(wsum, dup, w2[len(uv):])
    assert same_partition(lab, gasp(n, uv, wsum, linkage="sum"))


def test_labels_info_and_stop_criterion():
    rng = np.random.default_rng(8)
    n = 200
    uv = random_graph(rng, n, 3.0)
    w = np.abs(rng.normal(1.0, 0.1, len(uv)))  # all attractive
    lab, info = gasp(n, uv, w, return_info=True)
    first = lab[np.sort(np.unique(lab, return_index=True)[1])]
    assert first.tolist() == list(range(1, lab.max() + 1))
    assert info.n_clusters == lab.max() and info.n_merges == n - info.n_clusters
    lab10 = gasp(n, uv, w, n_clusters=10)
    assert lab10.max() == max(10, lab.max())
    assert np.array_equal(gasp(n, uv, w), lab)  # deterministic


def test_gasp_bad_inputs():
    uv = np.array([[0, 1], [1, 2]])
    w = np.array([1.0, -1.0])
    with pytest.raises(ValueError, match="linkage"):
        gasp(3, uv, w, linkage="ward")
    with pytest.raises(ValueError, match="node ids must be < n_nodes"):
        gasp(2, uv, w)
    with pytest.raises(ValueError, match="self-loops"):
        gasp(3, [[1, 1]], [1.0])
    with pytest.raises(ValueError, match="weights"):
        gasp(3, uv, [1.0])
    with pytest.raises(ValueError, match="finite"):
        gasp(3, uv, [1.0, np.inf])
    with pytest.raises(ValueError, match="edge_sizes"):
        gasp(3, uv, w, edge_sizes=[1.0, 0.0])
    with pytest.raises(ValueError, match="mergeable"):
        gasp(3, uv, w, mergeable=[True])
    with pytest.raises(TypeError, match="edges"):
        gasp(3, [[0.5, 1.0]], [1.0])
    with pytest.raises(ValueError, match="edges"):
        gasp(3, [[0, 1, 2]], [1.0])
    with pytest.raises(ValueError, match="n_clusters"):
        gasp(3, uv, w, n_clusters=0)
    with pytest.raises(TypeError, match="n_nodes"):
        gasp(3.0, uv, w)
    assert gasp(4, np.zeros((0, 2), int), []).tolist() == [1, 2, 3, 4]


def test_signed_weights_and_costs():
    b = np.array([0.0, 0.25, 0.5, 0.9])
    np.testing.assert_allclose(boundary_to_signed_weights(b), [0.5, 0.25, 0.0, -0.4])
    np.testing.assert_allclose(boundary_to_signed_weights(b, beta=0.7), 0.3 - b)
    c = probabilities_to_costs(b[1:], beta=0.5)
    np.testing.assert_allclose(c, np.log((1 - b[1:]) / b[1:]))
    np.testing.assert_allclose(probabilities_to_costs(b[1:], beta=0.6) - c, np.log(0.4 / 0.6))
    sized = probabilities_to_costs(b[1:], edge_sizes=[1.0, 2.0, 4.0], size_exponent=1.0)
    np.testing.assert_allclose(sized, c * [0.25, 0.5, 1.0])
    assert np.isfinite(probabilities_to_costs(b)).all()  # p = 0 is clipped
    with pytest.raises(ValueError, match="beta"):
        probabilities_to_costs(b, beta=1.0)
    with pytest.raises(ValueError, match="probabilities"):
        probabilities_to_costs([1.5])


def test_multicut_matches_bioimage_cpp_solvers():
    mc = pytest.importorskip("bioimage_cpp.graph.multicut")
    bgraph = pytest.importorskip("bioimage_cpp.graph")
    rng = np.random.default_rng(6)
    n = 300
    uv = random_graph(rng, n, 3.0)
    costs = rng.normal(0.3, 1.0, len(uv))
    g = bgraph.UndirectedGraph.from_edges(n, uv)
    energy = lambda lab: float(costs[lab[uv[:, 0]] != lab[uv[:, 1]]].sum())  # noqa: E731
    for solver, cls in (("greedy-additive", mc.GreedyAdditiveMulticut), ("kernighan-lin", mc.KernighanLinMulticut)):
        ours = multicut(n, uv, costs, solver=solver)
        ref = cls().optimize(mc.MulticutObjective(g, costs))
        assert same_partition(ours, ref)
        assert energy(ours) <= min(0.0, costs.sum()) + 1e-9  # beats all-joined (0) and all-cut
    fm = multicut(n, uv, costs, solver="fusion-moves")
    assert energy(fm) <= energy(multicut(n, uv, costs, solver="greedy-additive")) + 1e-9
    with pytest.raises(ValueError, match="solver"):
        multicut(n, uv, costs, solver="ilp")
    with pytest.raises(ValueError, match="repeated"):
        multicut(3, [[0, 1], [1, 0]], [1.0, 1.0])
    for bad, err in ((0, ValueError), (-1, ValueError), ("abc", TypeError)):
        with pytest.raises(err, match="n_threads"):
            multicut(3, [[0, 1]], [1.0], n_threads=bad)


def test_multicut_without_bioimage_cpp_names_the_extra(monkeypatch):
    import sys

    for name in list(sys.modules):
        if name == "bioimage_cpp" or name.startswith("bioimage_cpp."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bioimage_cpp", None)
    with pytest.raises(ImportError, match=r"xmodal\[multicut\]"):
        multicut(3, [[0, 1]], [1.0])


# ------------------------------------------------------------------------------------------------
# real region graphs: the shipped ISBI 2012 slices through the shipped model
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def isbi():
    pytest.importorskip("torch")
    from xmodal.datasets import isbi2012_slices
    from xmodal.models import load_isbi2012_affinity_unet
    from xmodal.models.isbi2012 import predict_affinities

    model = load_isbi2012_affinity_unet()
    norm = model.metadata["normalization"]
    raw, gt = isbi2012_slices()
    affs = np.stack([predict_affinities(model, r, mean=norm["mean"], std=norm["std"]) for r in raw])
    return affs, np.asarray(model.offsets), int(model.n_attractive), gt


def test_equal_to_bioimage_cpp_on_isbi_region_graphs(isbi):
    from xmodal.segmentation import boundaries_from_affinities

    affs, offs, na, _ = isbi
    n_graphs = 0
    for a in affs:
        b = boundaries_from_affinities(a, offs, n_attractive=na)
        for kw in ({}, {"sigma_seeds": 0.0, "min_size": 0}):
            sp = distance_transform_watershed(b, **kw)
            rag = region_adjacency_graph(sp)
            f = edge_features(rag, sp, b)
            w, s = boundary_to_signed_weights(f.mean), f.count.astype(np.float64)
            assert rag.n_edges > 200
            for linkage, cannot_link, bio in BIOIMAGE_LINKAGES:
                ref = bioimage_gasp(rag.n_nodes, rag.edges, w, s, bio)
                ours = gasp(rag.n_nodes, rag.edges, w, linkage=linkage, cannot_link=cannot_link, edge_sizes=s)
                assert same_partition(ref, ours), (linkage, cannot_link, kw)
            n_graphs += 1
    assert n_graphs == 4


def test_superpixel_route_on_isbi_beats_superpixels_alone(isbi):
    from xmodal.metrics import adapted_rand_error, contingency_table

    affs, offs, na, gt = isbi
    a, g = affs[0], gt[0]
    err = lambda seg: adapted_rand_error(table=contingency_table(seg, g), ignore_gt=(0,)).error  # noqa: E731
    results = {}
    for method in ("gasp", "mws"):
        seg, info = superpixel_agglomeration(affinities=a, offsets=offs, n_attractive=na, method=method,
                                             return_info=True)
        results[method] = (seg, info)
        assert info.n_segments < info.n_superpixels
        assert err(seg) < err(info.superpixels)
        assert err(seg) < 0.1
    # graph MWS on the RAG is GASP abs-max with constraints
    seg_cl = superpixel_agglomeration(affinities=a, offsets=offs, n_attractive=na, method="gasp",
                                      linkage="abs_max", cannot_link=True)
    assert np.array_equal(seg_cl, results["mws"][0])
