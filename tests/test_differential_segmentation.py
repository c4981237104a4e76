"""Differential checks of the segmentation kernels on inputs the other tests do not cover: graph mutex
watershed with self-loops, repeated edges, an edge both attractive and mutex, isolated nodes, seeds
and tied weights against a plain reference (and bioimage-cpp where it accepts the graph); GASP with
tied weights and repeated edges against a brute-force reference of the documented tie rule; the grid
mutex watershed against bioimage-cpp with zero and positive offsets, length-1 axes, all-equal and
quantised affinities; multicut against exhaustive search; NaN / inf refused."""

import numpy as np
import pytest
from _gasp_reference import reference_gasp

from xmodal.segmentation import gasp, multicut, mutex_watershed, mutex_watershed_graph


def same_partition(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def first_occurrence_numbering(labels):
    labels = np.asarray(labels).ravel()
    first = labels[np.sort(np.unique(labels, return_index=True)[1])]
    return first.tolist() == list(range(1, labels.max() + 1)) if labels.size else True


# --------------------------------------------------------------------------- graph mutex watershed
def reference_mws_graph(n, uv, w, muv, mw, seeds=None):
    """Edges by (weight descending, id ascending; mutex ids after the attractive ones), union-find
    with mutex sets between clusters; seeds start merged and mutually exclusive."""
    E = len(uv)
    items = sorted([(-float(w[i]), i, int(uv[i][0]), int(uv[i][1]), True) for i in range(E)]
                   + [(-float(mw[j]), E + j, int(muv[j][0]), int(muv[j][1]), False) for j in range(len(muv))])
    parent, mutex = list(range(n)), [set() for _ in range(n)]

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    def union(a, b):
        parent[b] = a
        mutex[a] |= mutex[b]
        for x in mutex[b]:
            mutex[x].discard(b)
            mutex[x].add(a)
        mutex[b] = set()

    if seeds is not None:
        first = {}
        for i, s in enumerate(seeds):
            if s and s in first and find(first[s]) != find(i):
                union(find(first[s]), find(i))
            elif s:
                first[s] = i
        roots = {find(i) for i in first.values()}
        for a in roots:
            mutex[a] |= roots - {a}
    for _, _, u, v, attractive in items:
        a, b = find(u), find(v)
        if a == b or b in mutex[a]:
            continue
        if attractive:
            union(a, b)
        else:
            mutex[a].add(b)
            mutex[b].add(a)
    return np.array([find(i) for i in range(n)])


def test_graph_mws_self_loops_repeats_ties_and_seeds_equal_reference():
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 25))
        uv = rng.integers(0, n, (int(rng.integers(0, 40)), 2))  # self-loops and repeated pairs included
        muv = rng.integers(0, n, (int(rng.integers(0, 30)), 2))
        levels = [0, 1, 3][trial % 3]  # 1 and 3: heavy ties, attractive vs mutex too
        draw = (lambda k: rng.random(k)) if levels == 0 else (lambda k: rng.integers(0, levels + 1, k) / levels)
        w, mw = draw(len(uv)), draw(len(muv))
        seeds = rng.integers(0, 3, n) * (rng.random(n) < 0.3) if trial % 4 == 0 else None
        labels = mutex_watershed_graph(n, uv, w, muv, mw, seeds=seeds)
        assert same_partition(labels, reference_mws_graph(n, uv, w, muv, mw, seeds)), trial
        assert first_occurrence_numbering(labels)


def test_graph_mws_with_ties_equals_bioimage_cpp():
    bg = pytest.importorskip("bioimage_cpp.graph")
    from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering

    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(2, 30))
        pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
        sel = rng.choice(len(pairs), min(len(pairs), int(rng.integers(2, 60))), replace=False)
        cut = int(rng.integers(1, len(sel) + 1))
        uv, muv = pairs[np.sort(sel[:cut])], pairs[sel[cut:]]
        w, mw = rng.integers(0, 3, len(uv)) / 2.0, rng.integers(0, 3, len(muv)) / 2.0
        expected = mutex_watershed_clustering(bg.UndirectedGraph(n, uv.astype(np.uint64), True), w,
                                              muv.astype(np.uint64), mw)
        assert same_partition(mutex_watershed_graph(n, uv, w, muv, mw), expected)


# ------------------------------------------------------------------------------------------- GASP
@pytest.mark.parametrize("linkage", ["sum", "mean", "max", "min", "abs_max"])
@pytest.mark.parametrize("cannot_link", [False, True])
def test_gasp_ties_and_repeated_edges_follow_the_documented_rule(linkage, cannot_link):
    rng = np.random.default_rng(2)
    for trial in range(60):
        n = int(rng.integers(1, 14))
        uv = rng.integers(0, n, (int(rng.integers(0, 30)), 2))
        uv = uv[uv[:, 0] != uv[:, 1]]  # repeated pairs (either orientation) kept
        w = rng.integers(-2, 3, len(uv)) / 2.0  # heavy ties, zero weights
        sizes = np.ones(len(uv)) if trial % 2 else rng.integers(1, 4, len(uv)).astype(float)
        labels = gasp(n, uv, w, linkage=linkage, cannot_link=cannot_link, edge_sizes=sizes)
        assert same_partition(labels, reference_gasp(n, uv, w, sizes, linkage, cannot_link)), trial
        assert first_occurrence_numbering(labels)


# ----------------------------------------------------------------------------- grid mutex watershed
def test_grid_mws_odd_offsets_and_ties_equal_bioimage_cpp():
    """Zero offsets (self edges), positive and out-of-volume offsets, length-1 axes, all-equal and
    quantised affinities, any n_attractive, float32 and float64."""
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    rng = np.random.default_rng(3)
    for trial in range(120):
        ndim = int(rng.choice([2, 3]))
        shape = tuple(int(s) for s in rng.integers(1, 7, ndim))
        C = int(rng.integers(1, 7))
        offsets = rng.integers(-3, 4, (C, ndim))
        if trial % 5 == 0:
            offsets[0] = 0
        na = int(rng.integers(0, C + 1))
        levels = trial % 3
        a = rng.random((C,) + shape) if levels == 0 else rng.integers(0, levels + 1, (C,) + shape) / levels
        if trial % 7 == 0:
            a[:] = 0.5
        a = a.astype([np.float32, np.float64][trial % 2])
        bio_affs = a.copy()
        bio_affs[na:] = 1 - bio_affs[na:]  # bioimage-cpp: repulsive channels as repulsion strengths
        expected = bio.mutex_watershed(bio_affs, offsets, na)
        labels = mutex_watershed(a, offsets, n_attractive=na)
        assert same_partition(labels, expected), (trial, shape, offsets.tolist(), na)
        assert first_occurrence_numbering(labels)


def test_grid_mws_layouts_give_the_same_labels():
    rng = np.random.default_rng(4)
    offs = [(-1, 0), (0, -1), (-2, 0), (0, -3)]
    a = rng.random((4, 9, 11))
    base = mutex_watershed(a, offs)
    np.testing.assert_array_equal(mutex_watershed(np.asfortranarray(a), offs), base)
    wide = np.zeros((4, 9, 22))
    wide[..., ::2] = a
    np.testing.assert_array_equal(mutex_watershed(wide[..., ::2], offs), base)
    np.testing.assert_array_equal(mutex_watershed(a.astype(np.float32), offs),
                                  mutex_watershed(a.astype(np.float32).astype(np.float64), offs))


# ----------------------------------------------------------------------------------- multicut
def _partitions(n):
    def rec(i, lab, k):
        if i == n:
            yield lab.copy()
            return
        for j in range(k + 1):
            lab[i] = j
            yield from rec(i + 1, lab, max(k, j + 1))
    yield from rec(0, np.zeros(n, int), 0)


def test_multicut_on_small_graphs_is_a_consistent_near_optimal_cut():
    pytest.importorskip("bioimage_cpp.graph.multicut")
    rng = np.random.default_rng(5)
    gaps = 0
    for _ in range(25):
        n = int(rng.integers(2, 7))
        pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
        uv = pairs[rng.choice(len(pairs), int(rng.integers(1, len(pairs) + 1)), replace=False)]
        flip = rng.random(len(uv)) < 0.5
        uv[flip] = uv[flip][:, ::-1]  # either orientation
        c = rng.normal(size=len(uv))

        def cut(lab):
            return float(c[lab[uv[:, 0]] != lab[uv[:, 1]]].sum())

        best = min(cut(lab) for lab in _partitions(n))
        for solver in ("kernighan-lin", "fusion-moves"):
            labels = multicut(n, uv.astype(np.int32), c, solver=solver)
            assert labels.shape == (n,) and first_occurrence_numbering(labels)
            assert cut(labels) <= 0.0 + 1e-12  # never worse than cutting nothing
            gaps += cut(labels) > best + 1e-12
    assert gaps <= 5  # heuristics: optimal on (nearly) all of these tiny graphs


# --------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused_with_the_argument_named(bad):
    rng = np.random.default_rng(6)
    a = rng.random((2, 5, 6))
    a[1, 2, 3] = bad
    with pytest.raises(ValueError, match="affinities"):
        mutex_watershed(a, [(-1, 0), (0, -1)])
    with pytest.raises(ValueError, match="weights"):
        gasp(3, [[0, 1], [1, 2]], [bad, 1.0])
    with pytest.raises(ValueError, match="mutex_weights"):
        mutex_watershed_graph(3, [[0, 1]], [1.0], [[1, 2]], [bad])
    pytest.importorskip("bioimage_cpp.graph.multicut")
    with pytest.raises(ValueError, match="costs"):
        multicut(3, [[0, 1], [1, 2]], [bad, 1.0])
