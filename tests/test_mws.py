"""Mutex watershed: exactness against bioimage-cpp and a reference, edge cases, errors, blockwise."""

from __future__ import annotations

import numpy as np
import pytest

import xmodal
from xmodal.segmentation import (
    blockwise_mutex_watershed,
    mutex_watershed,
    mutex_watershed_graph,
    remove_small_segments,
    seeded_mutex_watershed,
)
from xmodal.metrics import adapted_rand_error
from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

OFFS2 = [(-1, 0), (0, -1), (-2, 0), (0, -3), (-3, -3), (3, -3)]
OFFS3 = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3), (-2, -3, -3)]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def to_bioimage(affs, n_attractive):
    """xmodal affinities (all merge probabilities) -> bioimage-cpp input (repulsive = 1 - a)."""
    b = np.array(affs, copy=True)
    b[n_attractive:] = 1 - b[n_attractive:]
    return b


def reference_mws(affs, offsets, n_attractive, *, seeds=None, mask=None):
    """Plain-Python mutex watershed (sorted edges, union-find, mutex sets of edge ids)."""
    shape = affs.shape[1:]
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    edges = []
    for c, off in enumerate(offsets):
        for p in np.ndindex(*shape):
            q = tuple(np.add(p, off))
            if any(x < 0 or x >= s for x, s in zip(q, shape)) or q == p:
                continue
            if mask is not None and not (mask[p] and mask[q]):
                continue
            a = float(affs[(c,) + p])
            w = a if c < n_attractive else 1 - a
            edges.append((-w, c * n + idx[p], idx[p], idx[q], c < n_attractive))
    edges.sort()
    parent = list(range(n))
    mutex = [set() for _ in range(n)]
    seed_of = [0] * n

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if seeds is not None:
        first = {}
        for i, s in enumerate(np.asarray(seeds).ravel().tolist()):
            if s:
                if s in first:
                    parent[i] = first[s]
                else:
                    first[s] = i
                    seed_of[i] = s
    for _, eid, u, v, att in edges:
        ru, rv = find(u), find(v)
        if ru == rv or mutex[ru] & mutex[rv]:
            continue
        if att:
            if seed_of[ru] and seed_of[rv] and seed_of[ru] != seed_of[rv]:
                continue
            parent[rv] = ru
            mutex[ru] |= mutex[rv]
            seed_of[ru] = seed_of[ru] or seed_of[rv]
        else:
            mutex[ru].add(eid)
            mutex[rv].add(eid)
    lab = np.array([find(i) for i in range(n)]).reshape(shape)
    if mask is not None:
        lab = np.where(mask, lab + 1, 0)
    return lab


def random_affs(rng, shape, n_channels, dtype=np.float32, levels=None):
    if levels:
        return (rng.integers(0, levels + 1, (n_channels,) + shape) / levels).astype(dtype)
    return rng.random((n_channels,) + shape).astype(dtype)


@pytest.fixture
def restore_threads():
    n = xmodal.get_num_threads()
    yield
    xmodal.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# exactness
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndim", [2, 3])
def test_equals_bioimage_cpp_tie_free(ndim, dtype):
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    rng = np.random.default_rng(ndim)
    shape, offs = ((23, 31), OFFS2) if ndim == 2 else ((9, 14, 17), OFFS3)
    na = ndim
    for _ in range(3):
        a = random_affs(rng, shape, len(offs), dtype)
        expected = bio.mutex_watershed(to_bioimage(a, na), offs, na)
        labels = mutex_watershed(a, offs)
        assert labels.dtype == np.uint32
        np.testing.assert_array_equal(labels, expected)  # same partition and same numbering


@pytest.mark.parametrize("ndim", [2, 3])
def test_equals_bioimage_cpp_with_ties(ndim):
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    rng = np.random.default_rng(10 + ndim)
    shape, offs = ((20, 25), OFFS2) if ndim == 2 else ((8, 12, 13), OFFS3)
    for _ in range(4):
        a = random_affs(rng, shape, len(offs), levels=4)  # many exact ties
        expected = bio.mutex_watershed(to_bioimage(a, ndim), offs, ndim)
        labels = mutex_watershed(a, offs)
        assert adapted_rand_error(labels, expected, ignore_gt=()).error <= 1e-4
        # both break ties by ascending edge id (channel-major), so the partitions are identical
        assert same_partition(expected, labels)


def test_synthetic_voronoi_equals_bioimage_cpp():
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    gt = voronoi_labels((16, 48, 48), 12, seed=3)
    a = noisy_affinities(gt, OFFS3, sigma=0.25, seed=4)  # clipped -> exact 0 and 1 ties
    expected = bio.mutex_watershed(to_bioimage(a, 3), OFFS3, 3)
    labels = mutex_watershed(a, OFFS3)
    np.testing.assert_array_equal(labels, expected)
    assert adapted_rand_error(labels, gt, ignore_gt=()).error < 0.2  # and it recovers the cells


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_equals_bioimage_cpp(ndim):
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    rng = np.random.default_rng(20 + ndim)
    shape, offs = ((21, 24), OFFS2) if ndim == 2 else ((8, 12, 14), OFFS3)
    a = random_affs(rng, shape, len(offs))
    mask = rng.random(shape) > 0.3
    expected = bio.mutex_watershed(to_bioimage(a, ndim), offs, ndim, mask=mask)
    labels = mutex_watershed(a, offs, mask=mask)
    assert (labels[~mask] == 0).all() and (labels[mask] > 0).all()
    assert same_partition(expected[mask], labels[mask])
    assert sorted(np.unique(labels[mask])) == list(range(1, labels.max() + 1))  # consecutive


@pytest.mark.parametrize("ndim", [2, 3])
def test_strides_equal_bioimage_cpp(ndim):
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    rng = np.random.default_rng(30 + ndim)
    shape, offs = ((22, 27), OFFS2) if ndim == 2 else ((9, 13, 14), OFFS3)
    strides = (2, 3) if ndim == 2 else (1, 2, 3)
    a = random_affs(rng, shape, len(offs))
    expected = bio.mutex_watershed(to_bioimage(a, ndim), offs, ndim, strides=strides)
    labels, info = mutex_watershed(a, offs, strides=strides, return_info=True)
    np.testing.assert_array_equal(labels, expected)
    full = mutex_watershed(a, offs, return_info=True)[1]
    assert info.n_edges < full.n_edges


def test_random_strides_reproducible():
    rng = np.random.default_rng(5)
    a = random_affs(rng, (10, 30, 30), len(OFFS3))
    l1, i1 = mutex_watershed(a, OFFS3, strides=(1, 2, 2), randomize_strides=True, seed=7, return_info=True)
    l2 = mutex_watershed(a, OFFS3, strides=(1, 2, 2), randomize_strides=True, seed=7)
    l3, i3 = mutex_watershed(a, OFFS3, strides=(1, 2, 2), randomize_strides=True, seed=8, return_info=True)
    np.testing.assert_array_equal(l1, l2)
    assert not np.array_equal(l1, l3)
    full = mutex_watershed(a, OFFS3, return_info=True)[1]
    n_att = sum(int(np.prod([s - abs(o) for s, o in zip(a.shape[1:], off)])) for off in OFFS3[:3])
    kept = (i1.n_edges - n_att) / (full.n_edges - n_att)
    assert 0.2 < kept < 0.3  # probability 1/4


def test_matches_reference_on_mask_and_seeds():
    rng = np.random.default_rng(6)
    a = random_affs(rng, (15, 17), len(OFFS2))
    mask = rng.random((15, 17)) > 0.2
    seeds = np.zeros((15, 17), np.int64)
    seeds[1, 1] = seeds[2, 14] = 5  # one seed in two places: one object
    seeds[12, 3] = 9
    seeds[13, 15] = 2
    labels = mutex_watershed(a, OFFS2, mask=mask, seeds=seeds)
    ref = reference_mws(a, OFFS2, 2, seeds=seeds, mask=mask)
    assert same_partition(labels, ref)
    assert labels[1, 1] == labels[2, 14] != labels[12, 3]
    assert len({labels[1, 1], labels[12, 3], labels[13, 15]}) == 3


def test_seeds_keep_objects_apart():
    gt = voronoi_labels((40, 40), 4, seed=1)
    a = noisy_affinities(gt, OFFS2, sigma=0.0, seed=0)
    a[:] = np.where(np.arange(len(OFFS2))[:, None, None] < 2, 1.0, 0.0)  # everything attracts
    assert mutex_watershed(a, OFFS2).max() == 1
    seeds = np.zeros_like(gt)
    seeds[0, 0], seeds[-1, -1] = 1, 2
    labels = seeded_mutex_watershed(a, OFFS2, seeds)
    assert labels[0, 0] != labels[-1, -1]
    assert labels.max() == 2
    with pytest.raises(ValueError, match="seeds"):
        seeded_mutex_watershed(a, OFFS2, None)


def test_invert_is_boundary_convention():
    rng = np.random.default_rng(7)
    a = random_affs(rng, (8, 12, 12), len(OFFS3))
    np.testing.assert_array_equal(mutex_watershed(1 - a, OFFS3, invert=True), mutex_watershed(a, OFFS3))


def test_mwatershed_conversion():
    mw = pytest.importorskip("mwatershed")
    rng = np.random.default_rng(8)
    a = random_affs(rng, (6, 11, 12), len(OFFS3), np.float64)
    signed = a.copy()
    signed[3:] = -(1 - signed[3:])  # mwatershed: positive attracts, negative repels, by |value|
    assert same_partition(mw.agglom(signed, [list(o) for o in OFFS3]), mutex_watershed(a, OFFS3))


def test_n_attractive_and_one_channel():
    rng = np.random.default_rng(9)
    a = random_affs(rng, (12, 13), 1)
    labels = mutex_watershed(a, [(0, -1)], n_attractive=1)  # attraction only: every row is one object
    assert labels.max() == 12
    assert all(len(np.unique(row)) == 1 for row in labels)
    rep = mutex_watershed(a, [(0, -1)], n_attractive=0)  # repulsion only: all singletons
    assert rep.max() == a[0].size
    b = random_affs(rng, (12, 13), len(OFFS2))
    assert same_partition(mutex_watershed(b, OFFS2, n_attractive=3), reference_mws(b, OFFS2, 3))


# ------------------------------------------------------------------------------------------------
# graph version
# ------------------------------------------------------------------------------------------------

def _random_graph(rng, n, n_edges, n_mutex, levels=None):
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], np.uint64)
    sel = rng.choice(len(pairs), n_edges + n_mutex, replace=False)
    uv, muv = pairs[np.sort(sel[:n_edges])], pairs[sel[n_edges:]]
    if levels:
        return uv, rng.integers(0, levels, n_edges) / levels, muv, rng.integers(0, levels, n_mutex) / levels
    return uv, rng.random(n_edges), muv, rng.random(n_mutex)


@pytest.mark.parametrize("levels", [None, 3])
def test_graph_equals_bioimage_cpp(levels):
    g = pytest.importorskip("bioimage_cpp.graph")
    from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering

    rng = np.random.default_rng(11)
    for _ in range(4):
        uv, w, muv, mw = _random_graph(rng, 70, 200, 150, levels)
        expected = mutex_watershed_clustering(g.UndirectedGraph(70, uv, True), w, muv, mw)
        labels = mutex_watershed_graph(70, uv, w, muv, mw)
        np.testing.assert_array_equal(labels, expected + 1)


def test_graph_seeds_and_info():
    rng = np.random.default_rng(12)
    uv, w, muv, mw = _random_graph(rng, 40, 300, 10)
    seeds = np.zeros(40, np.int64)
    seeds[[0, 5]] = 3
    seeds[7] = 4
    labels, info = mutex_watershed_graph(40, uv, w, muv, mw, seeds=seeds, return_info=True)
    assert labels[0] == labels[5] != labels[7]
    assert info.n_edges == 310 and info.n_labels == labels.max()
    assert mutex_watershed_graph(0, np.zeros((0, 2), int), [], np.zeros((0, 2), int), []).shape == (0,)
    with pytest.raises(ValueError, match="node ids"):
        mutex_watershed_graph(3, [[0, 3]], [1.0], np.zeros((0, 2), int), [])
    with pytest.raises(ValueError, match="weights"):
        mutex_watershed_graph(3, [[0, 1]], [1.0, 2.0], np.zeros((0, 2), int), [])
    with pytest.raises(ValueError, match="finite"):
        mutex_watershed_graph(3, [[0, 1]], [np.nan], np.zeros((0, 2), int), [])


def test_graph_self_loops_have_no_effect():
    """A self-loop (u, u), attractive or mutex, neither merges nor forbids anything (documented);
    gasp refuses them instead (its linkage would need a weight for a cluster with itself)."""
    rng = np.random.default_rng(21)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        e, m = rng.integers(0, n, (int(rng.integers(1, 60)), 2)), rng.integers(0, n, (int(rng.integers(0, 60)), 2))
        w, mw = rng.random(len(e)), rng.random(len(m))
        ke, km = e[:, 0] != e[:, 1], m[:, 0] != m[:, 1]
        np.testing.assert_array_equal(mutex_watershed_graph(n, e, w, m, mw),
                                      mutex_watershed_graph(n, e[ke], w[ke], m[km], mw[km]))
    # a mutex self-loop on a node does not keep it from merging
    assert mutex_watershed_graph(2, [[0, 1]], [0.5], [[0, 0], [1, 1]], [0.9, 0.9]).tolist() == [1, 1]


# ------------------------------------------------------------------------------------------------
# edge cases and determinism
# ------------------------------------------------------------------------------------------------

def test_edge_cases():
    rng = np.random.default_rng(13)
    a = random_affs(rng, (6, 7), len(OFFS2))
    assert (mutex_watershed(a, OFFS2, mask=np.zeros((6, 7), bool)) == 0).all()
    one = mutex_watershed(np.ones((3, 1, 1, 1), np.float32), OFFS3[:3])
    assert one.shape == (1, 1, 1) and one[0, 0, 0] == 1
    long = mutex_watershed(a[:2], [(-100, 0), (0, 2**62)], n_attractive=2)  # no edges at all
    assert long.max() == a[0].size and (np.sort(long.ravel()) == np.arange(1, 43)).all()
    # an offset longer than one axis adds no edges but the others still work
    mixed = mutex_watershed(a[:3], [(0, -1), (-1, 0), (-10, 0)], n_attractive=2)
    np.testing.assert_array_equal(mixed, mutex_watershed(a[:2], [(0, -1), (-1, 0)]))
    # non-contiguous input, integer-valued offsets as floats
    big = random_affs(rng, (10, 12), len(OFFS2) * 2)[::2]
    np.testing.assert_array_equal(mutex_watershed(big, np.asarray(OFFS2, float)),
                                  mutex_watershed(np.ascontiguousarray(big), OFFS2))


def test_determinism_across_threads(restore_threads):
    gt = voronoi_labels((24, 64, 64), 20, seed=2)
    a = noisy_affinities(gt, OFFS3, sigma=0.25, seed=3)
    results = []
    for t in (1, 2, 3):
        xmodal.set_num_threads(t)
        results.append(mutex_watershed(a, OFFS3))
        results.append(mutex_watershed(a.astype(np.float64), OFFS3, strides=(1, 2, 2),
                                       randomize_strides=True, seed=1))
    for r in results[2::2]:
        np.testing.assert_array_equal(r, results[0])
    for r in results[3::2]:
        np.testing.assert_array_equal(r, results[1])


def test_info_reports_memory():
    a = random_affs(np.random.default_rng(1), (8, 20, 20), len(OFFS3))
    _, info = mutex_watershed(a, OFFS3, return_info=True)
    assert info.bytes_per_edge == 8
    assert info.peak_bytes >= 16 * info.n_edges
    assert set(info.seconds) == {"edges", "sort", "cluster"}
    _, info64 = mutex_watershed(a.astype(np.float64), OFFS3, return_info=True)
    assert info64.bytes_per_edge == 16 and info64.n_edges == info.n_edges


def test_bad_inputs():
    a = np.random.default_rng(0).random((len(OFFS2), 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="offsets"):
        mutex_watershed(a, OFFS2[:-1])  # C != len(offsets)
    with pytest.raises(ValueError, match="offsets"):
        mutex_watershed(a, [(0, 1, 2)] * len(OFFS2))  # wrong length
    with pytest.raises(TypeError, match="offsets"):
        mutex_watershed(a, [(0.5, 1)] * len(OFFS2))
    bad = a.copy()
    bad[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mutex_watershed(bad, OFFS2)
    with pytest.raises(ValueError, match="mask"):
        mutex_watershed(a, OFFS2, mask=np.ones((5, 7), bool))
    with pytest.raises(ValueError, match="n_attractive"):
        mutex_watershed(a, OFFS2, n_attractive=7)
    with pytest.raises(ValueError, match="n_attractive"):
        mutex_watershed(a, OFFS2, n_attractive=-1)
    with pytest.raises(TypeError, match="n_attractive"):
        mutex_watershed(a, OFFS2, n_attractive=1.5)
    with pytest.raises(ValueError, match="affinities"):
        mutex_watershed(a[0], OFFS2)
    with pytest.raises(TypeError, match="affinities"):
        mutex_watershed(a.astype(np.complex64), OFFS2)
    with pytest.raises(TypeError, match="affinities"):
        mutex_watershed("abc", OFFS2)
    with pytest.raises(ValueError, match="strides"):
        mutex_watershed(a, OFFS2, strides=(1, 0))
    with pytest.raises(ValueError, match="strides"):
        mutex_watershed(a, OFFS2, strides=(1, 2, 3))
    with pytest.raises(ValueError, match="randomize_strides"):
        mutex_watershed(a, OFFS2, randomize_strides=True)
    with pytest.raises(ValueError, match="seeds"):
        mutex_watershed(a, OFFS2, seeds=-np.ones((5, 6), int))
    with pytest.raises(TypeError, match="seed"):
        mutex_watershed(a, OFFS2, strides=2, randomize_strides=True, seed="x")
    huge = np.broadcast_to(np.float32(0.5), (2, 65536, 65537))  # 2^32 + 2^16 voxels, no memory
    with pytest.raises(ValueError, match="blockwise"):
        mutex_watershed(huge, [(0, -1), (-1, 0)])


# ------------------------------------------------------------------------------------------------
# remove_small_segments
# ------------------------------------------------------------------------------------------------

def test_remove_small_segments():
    labels = np.zeros((6, 10), np.int64)
    labels[:, :5] = 4
    labels[:, 5:] = 9
    labels[0, 0] = 7  # tiny segment inside 4
    labels[5, 9] = 0  # background
    out = remove_small_segments(labels, 2)
    assert out[0, 0] == 0 and out.max() == 2 and out[5, 9] == 0
    # with affinities: the tiny segment joins the neighbour it attracts most
    offs = [(-1, 0), (0, -1)]
    a = np.zeros((2, 6, 10), np.float32)
    a[:, 0:2, 0:2] = 1.0  # strong attraction of (0,0) to (1,0) and (0,1), both in segment 4
    merged = remove_small_segments(labels, 2, affinities=a, offsets=offs)
    assert merged[0, 0] == merged[1, 1] != merged[0, 9]
    assert merged.max() == 2 and merged[5, 9] == 0
    sizes = np.bincount(merged.ravel())[1:]
    assert (sizes >= 2).all()
    # isolated small segment without neighbours becomes background
    iso = np.zeros((5, 5), int)
    iso[2, 2] = 3
    assert remove_small_segments(iso, 2, affinities=np.ones((2, 5, 5)), offsets=offs).max() == 0
    with pytest.raises(ValueError, match="affinities"):
        remove_small_segments(labels, 2, affinities=a)
    with pytest.raises(TypeError, match="labels"):
        remove_small_segments(labels.astype(float), 2)
    with pytest.raises(ValueError, match="min_size"):
        remove_small_segments(labels, -1)


def test_remove_small_segments_on_mws():
    gt = voronoi_labels((12, 40, 40), 8, seed=5)
    a = noisy_affinities(gt, OFFS3, sigma=0.3, seed=6)
    seg = mutex_watershed(a, OFFS3)
    cleaned = remove_small_segments(seg, 20, affinities=a, offsets=OFFS3)
    sizes = np.bincount(cleaned.ravel())
    assert (sizes[1:] >= 20).all() and cleaned.max() < seg.max()
    before, after = (adapted_rand_error(x, gt, ignore_gt=()).error for x in (seg, cleaned))
    assert after <= before + 1e-9


# ------------------------------------------------------------------------------------------------
# mwatershed's cases (seeds, extra edges, per-offset strides), written here, and the bias option
# ------------------------------------------------------------------------------------------------

# 3 x 3 image; merge probabilities of offsets (0, 1) and (1, 0): the positive edges are
# 1-2... in raster numbering 0..8: (1,2), (4,5), (7,8) along x and (3,6), (4,7), (5,8) along y.
# Their components: {0}, {1, 2}, {3, 6}, {4, 5, 7, 8}.
MW_AFFS_2D = np.array([[[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                       [[0, 0, 0], [1, 1, 1], [0, 0, 0]]], dtype=np.float64)
MW_COMPONENTS_2D = [[(0, 0)], [(0, 1), (0, 2)], [(1, 0), (2, 0)], [(1, 1), (1, 2), (2, 1), (2, 2)]]


def _groups(labels):
    """The partition as a set of frozensets of voxel coordinates."""
    out = {}
    for idx in np.ndindex(*labels.shape):
        out.setdefault(int(labels[idx]), set()).add(idx)
    return {frozenset(v) for v in out.values()}


def _mw_partition(labels):
    """mwatershed labels -> partition labels (its background 0 = voxels without attraction -> singletons)."""
    lab = np.asarray(labels).astype(np.int64)
    zero = lab == 0
    lab[zero] = lab.max() + 1 + np.arange(int(zero.sum()))
    return lab


def test_mwatershed_cases_3d_and_2d():
    # 2 x 2 x 2 cube, offsets (0,0,1), (0,1,0), (1,0,0): two groups of four voxels
    a3 = np.array([[[[1, 0], [0, 0]], [[0, 0], [1, 0]]],
                   [[[1, 0], [0, 0]], [[0, 1], [0, 0]]],
                   [[[1, 0], [0, 1]], [[0, 0], [0, 0]]]], dtype=np.float64)
    lab = mutex_watershed(a3, [(0, 0, 1), (0, 1, 0), (1, 0, 0)], bias=-0.5)
    assert sorted(np.bincount(lab.ravel())[1:].tolist()) == [4, 4]
    # 2D with offsets (0, 1), (1, 0) and the mirrored input with (0, -1), (-1, 0)
    expected = {frozenset(g) for g in MW_COMPONENTS_2D}
    assert _groups(mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5)) == expected
    neg = np.stack([np.roll(MW_AFFS_2D[0], 1, axis=1), np.roll(MW_AFFS_2D[1], 1, axis=0)])
    assert _groups(mutex_watershed(neg, [(0, -1), (-1, 0)], bias=-0.5)) == expected
    # the classic form: both channels attractive, no repulsion -> only the merges matter, but the
    # zero-probability edges still merge last; with bias they repel, as in mwatershed
    assert mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], n_attractive=2).max() == 1
    mw = pytest.importorskip("mwatershed")
    assert same_partition(_mw_partition(mw.agglom(MW_AFFS_2D - 0.5, [(0, 1), (1, 0)])),
                          mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5))


def test_mwatershed_cases_seeds_and_extra_edges():
    # seeds 1, 2, 4 stay separate; unseeded voxels join them or form their own segments
    seeds = np.array([[1, 2, 0], [4, 0, 0], [0, 0, 0]])
    lab = mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5, seeds=seeds)
    assert _groups(lab) == {frozenset(g) for g in MW_COMPONENTS_2D}
    assert len({lab[0, 0], lab[0, 1], lab[1, 0]}) == 3
    # all edges repel: every voxel is its own segment (mwatershed leaves unseeded ones at 0)
    lab = mutex_watershed(np.zeros((2, 3, 3)), [(0, -1), (-1, 0)], bias=-0.5, seeds=seeds)
    assert lab.max() == 9
    # mwatershed's extra edge (True, 9, 1) merges the seeds 9 and 1: here, give them one seed value
    seeds = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 9]])
    merged = np.where(seeds == 9, 1, seeds)
    lab = mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5, seeds=merged)
    assert sorted(np.bincount(lab.ravel())[1:].tolist()) == [2, 2, 5]
    mw = pytest.importorskip("mwatershed")
    ref = mw.agglom(MW_AFFS_2D - 0.5, [(0, 1), (1, 0)], seeds=seeds.astype(np.uint64), edges=[(True, 9, 1)])
    assert same_partition(_mw_partition(ref), lab)
    # random seeds against mwatershed (tie-free). Seed values above the voxel count: mwatershed
    # writes seed values and cluster representatives (voxel indices) into one id space, so a small
    # seed value can collide with a representative and join two segments in its output.
    rng = np.random.default_rng(3)
    offs = [(0, 1), (1, 0), (0, 3), (3, 0), (2, 2)]
    for _ in range(5):
        a = rng.random((len(offs), 11, 13))
        sd = np.where(rng.random((11, 13)) < 0.05, rng.integers(1000, 1005, (11, 13)), 0)
        ref = mw.agglom(a - 0.5, [list(o) for o in offs], seeds=sd.astype(np.uint64))
        assert same_partition(_mw_partition(ref), mutex_watershed(a, offs, bias=-0.5, seeds=sd))


def test_mwatershed_cases_per_offset_strides():
    # offset (0, 1) keeps rows 0 and 2, offset (1, 0) keeps columns 0 and 2: the merges left are
    # (1,2), (7,8), (3,6), (5,8); voxels 0 and 4 have no attractive edge (mwatershed: background 0)
    strides = [(2, 1), (1, 2)]
    lab = mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5, strides=strides)
    assert _groups(lab) == {frozenset(g) for g in [[(0, 0)], [(1, 1)], [(0, 1), (0, 2)], [(1, 0), (2, 0)],
                                                   [(1, 2), (2, 1), (2, 2)]]}
    # with seeds 1, 2, 4 in the first voxels, as mwatershed's own case
    seeds = np.array([[1, 2, 0], [4, 0, 0], [0, 0, 0]])
    lab = mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5, strides=strides, seeds=seeds)
    assert lab[0, 1] == lab[0, 2] and lab[1, 0] == lab[2, 0] and lab[1, 1] not in lab[[0, 0, 1, 2], [0, 1, 0, 2]]
    # per-offset strides apply to attractive channels too (unlike the single stride tuple)
    rng = np.random.default_rng(4)
    a = rng.random((len(OFFS2), 12, 14))
    _, i_all = mutex_watershed(a, OFFS2, return_info=True)
    _, i_one = mutex_watershed(a, OFFS2, strides=(2, 2), return_info=True)
    per = np.ones((len(OFFS2), 2), int)
    per[:] = (2, 2)
    _, i_per = mutex_watershed(a, OFFS2, strides=per, return_info=True)
    assert i_per.n_edges < i_one.n_edges < i_all.n_edges
    # ones for the attractive rows: the same as the single tuple
    per[:2] = 1
    np.testing.assert_array_equal(mutex_watershed(a, OFFS2, strides=per), mutex_watershed(a, OFFS2, strides=(2, 2)))
    mw = pytest.importorskip("mwatershed")
    ref = mw.agglom(MW_AFFS_2D - 0.5, [(0, 1), (1, 0)], strides=[list(s) for s in strides])
    assert same_partition(_mw_partition(ref), mutex_watershed(MW_AFFS_2D, [(0, 1), (1, 0)], bias=-0.5,
                                                              strides=strides))


def test_per_offset_strides_anchor_convention_vs_mwatershed():
    """mwatershed anchors an offset's stride grid at max(0, -offset); xmodal at voxel 0.

    With non-negative offsets the two coincide; a negative offset o is the edge (q, q - o) with the
    affinity moved to q = p + o, which puts mwatershed's grid at 0 too (docs/mws.md).
    """
    mw = pytest.importorskip("mwatershed")
    rng = np.random.default_rng(5)
    offs = [(0, -1), (-1, 0), (0, -3), (-3, -2)]
    for _ in range(5):
        a = rng.random((len(offs), 13, 15))
        bias = rng.uniform(-0.9, -0.1, len(offs))
        strides = rng.integers(1, 4, (len(offs), 2))
        ref = _mw_partition(mw.agglom(a + bias[:, None, None], [list(o) for o in offs], strides=strides.tolist()))
        # the same edges with positive offsets: affinity of edge (p, p + o) stored at p + o
        pos = np.zeros_like(a)
        for c, o in enumerate(offs):
            src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(o, a.shape[1:]))
            dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(o, a.shape[1:]))
            pos[c][dst] = a[c][src]
        got = mutex_watershed(pos, [tuple(-d for d in o) for o in offs], bias=bias, strides=strides)
        assert same_partition(ref, got)


def test_bias_against_signed_references():
    """bias: s = m + bias[c]; s > 0 attracts with weight s, s < 0 repels with weight -s."""
    g = pytest.importorskip("bioimage_cpp.graph")
    from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering

    rng = np.random.default_rng(6)
    shape = (9, 10, 11)
    n = int(np.prod(shape))
    for trial in range(3):
        a = rng.random((len(OFFS3),) + shape)
        bias = np.r_[[-0.4] * 3, [-0.8] * (len(OFFS3) - 3)] if trial == 0 else rng.uniform(-1, 0, len(OFFS3))
        us, vs, ws = [], [], []
        idx = np.arange(n).reshape(shape)
        for c, o in enumerate(OFFS3):
            src = tuple(slice(max(0, -d), s - max(0, d)) for d, s in zip(o, shape))
            dst = tuple(slice(max(0, d), s - max(0, -d)) for d, s in zip(o, shape))
            us.append(idx[src].ravel())
            vs.append(idx[dst].ravel())
            ws.append(a[c][src].ravel() + bias[c])
        u, v, s = np.concatenate(us), np.concatenate(vs), np.concatenate(ws)
        lo, hi = np.minimum(u, v).astype(np.uint64), np.maximum(u, v).astype(np.uint64)
        att = s > 0
        auv = np.stack([lo[att], hi[att]], 1)
        order = np.lexsort((auv[:, 1], auv[:, 0]))  # attractive edges are unique pairs here
        graph = g.UndirectedGraph(n, np.ascontiguousarray(auv[order]), True)
        expected = mutex_watershed_clustering(graph, s[att][order], np.ascontiguousarray(np.stack([lo[~att], hi[~att]], 1)),
                                              -s[~att]).reshape(shape)
        got = mutex_watershed(a, OFFS3, bias=bias)
        assert same_partition(got, expected)
        assert same_partition(mutex_watershed(1 - a, OFFS3, bias=bias, invert=True), expected)
    # a scalar applies to every channel; larger bias -> fewer, larger segments
    a = rng.random((len(OFFS3),) + shape).astype(np.float32)
    counts = [mutex_watershed(a, OFFS3, bias=b).max() for b in (-0.9, -0.5, -0.1)]
    assert counts[0] > counts[1] > counts[2]
    np.testing.assert_array_equal(mutex_watershed(a, OFFS3, bias=-0.5), mutex_watershed(a, OFFS3, bias=[-0.5] * 7))
    # bias 0 on attractive and -1 on repulsive channels is the classic method
    np.testing.assert_array_equal(mutex_watershed(a, OFFS3, bias=[0] * 3 + [-1] * 4), mutex_watershed(a, OFFS3))


def test_bias_and_strides_errors():
    a = np.random.default_rng(0).random((len(OFFS2), 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="n_attractive"):
        mutex_watershed(a, OFFS2, bias=-0.5, n_attractive=2)
    with pytest.raises(ValueError, match="per-offset"):
        mutex_watershed(a, OFFS2, bias=-0.5, strides=(2, 2))
    with pytest.raises(ValueError, match="bias"):
        mutex_watershed(a, OFFS2, bias=[-0.5, -0.5])
    with pytest.raises(ValueError, match="bias"):
        mutex_watershed(a, OFFS2, bias=np.nan)
    with pytest.raises(TypeError, match="bias"):
        mutex_watershed(a, OFFS2, bias="x")
    with pytest.raises(TypeError, match="bias"):
        mutex_watershed(a, OFFS2, bias=True)
    with pytest.raises(ValueError, match="strides"):
        mutex_watershed(a, OFFS2, strides=np.ones((len(OFFS2) - 1, 2), int))
    with pytest.raises(ValueError, match="strides"):
        mutex_watershed(a, OFFS2, strides=np.zeros((len(OFFS2), 2), int))
    # booleans must be booleans, not truthy strings
    for name in ("invert", "randomize_strides", "return_info"):
        with pytest.raises(TypeError, match=name):
            mutex_watershed(a, OFFS2, strides=(1, 2), **{name: "no"})
    with pytest.raises(TypeError, match="invert"):
        remove_small_segments(np.ones((5, 6), int), 2, affinities=a, offsets=OFFS2, invert="no")


def test_nan_and_offset_overflow_are_errors():
    a = np.random.default_rng(1).random((len(OFFS2), 6, 7)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[3, 2, 4] = bad
        with pytest.raises(ValueError, match=r"affinities: expected finite values.*channel 3 at \(2, 4\)"):
            mutex_watershed(b, OFFS2)
    # the native kernel checks too (it is reached only through the validated Python API, so call it)
    from xmodal import _core

    b = a.copy()
    b[4, 5, 5] = np.nan  # channel 4 is offset (-3, -3): voxel (5, 5) has an edge
    with pytest.raises(ValueError, match="finite.*channel 4"):
        _core.mws_grid(b.reshape(len(OFFS2), 1, 6, 7), np.c_[np.zeros(len(OFFS2), np.int64), OFFS2],
                       2, [1, 1, 1], False, 0, False, None, None)
    # uint64 offsets that would wrap to negative values, and floats beyond int64
    wrap = np.array(OFFS2, np.int64).astype(np.uint64)
    with pytest.raises(ValueError, match="offsets.*64-bit"):
        mutex_watershed(a, wrap)
    with pytest.raises(ValueError, match="offsets.*64-bit"):
        mutex_watershed(a, np.array(OFFS2, float) * 1e20)
    ok = np.abs(np.array(OFFS2)).astype(np.uint64)  # non-negative uint64 offsets are fine
    assert mutex_watershed(a, ok).shape == (6, 7)
    with pytest.raises(ValueError, match="finite"):
        mutex_watershed_graph(3, [[0, 1]], [np.inf], np.zeros((0, 2), int), [])


def test_blockwise_per_offset_strides_and_bias():
    gt = voronoi_labels((12, 40, 40), 6, seed=7)
    a = noisy_affinities(gt, OFFS3, sigma=0.2, seed=8)
    per = np.ones((len(OFFS3), 3), int)
    per[3:] = (1, 2, 2)
    bias = [-0.5] * 3 + [-0.7] * 4
    single = mutex_watershed(a, OFFS3, bias=bias, strides=per)
    res = blockwise_mutex_watershed(a, OFFS3, block_shape=(6, 20, 20), halo=(2, 3, 3), bias=bias, strides=per,
                                    n_workers=1)
    assert adapted_rand_error(res.labels, single, ignore_gt=()).error < 0.02
    assert adapted_rand_error(res.labels, gt, ignore_gt=()).error < 0.2
    with pytest.raises(ValueError, match="n_attractive"):
        blockwise_mutex_watershed(a, OFFS3, block_shape=(6, 20, 20), halo=(2, 3, 3), bias=bias, n_attractive=3)
    with pytest.raises(TypeError, match="invert"):
        blockwise_mutex_watershed(a, OFFS3, block_shape=(6, 20, 20), halo=(2, 3, 3), invert="no")


def test_byte_swapped_and_equal_dtypes_are_accepted():
    # A float32 array whose dtype object is not numpy's canonical one (byte-swapped here, as read
    # from some files and zarr stores) is converted by the binding, not refused.
    rng = np.random.default_rng(3)
    aff = rng.random((2, 9, 11)).astype(np.float32)
    offsets = [[-1, 0], [0, -1]]
    ref = xmodal.mutex_watershed(aff, offsets)
    swapped = aff.astype(aff.dtype.newbyteorder(">"))
    np.testing.assert_array_equal(xmodal.mutex_watershed(swapped, offsets), ref)


def test_affinities_must_be_probabilities():
    rng = np.random.default_rng(0)
    aff = rng.random((2, 8, 9))
    offs = [[-1, 0], [0, -1]]
    with pytest.raises(ValueError, match=r"affinities: expected probabilities in \[0, 1\] \(integer values must be 0 "
                       r"or 1\), got dtype uint8 with values in \[\d+, \d+\] \(for 8-bit probabilities stored as "
                       r"0-255, pass affinities / 255\)"):
        mutex_watershed((aff * 255).astype(np.uint8), offs)
    bad = aff.copy()
    bad[1, 3, 4] = 1.5
    with pytest.raises(ValueError, match=r"expected probabilities in \[0, 1\], found 1.5 in channel 1 at \(3, 4\)"):
        mutex_watershed(bad, offs)
    from xmodal.segmentation import boundaries_from_affinities

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        boundaries_from_affinities(aff - 0.5, offs)
    # big-endian affinities: the same labels single-shot and blockwise
    from xmodal.segmentation import blockwise_mutex_watershed

    big = aff.astype(">f8")
    ref = mutex_watershed(aff, offs)
    np.testing.assert_array_equal(mutex_watershed(big, offs), ref)
    blk = blockwise_mutex_watershed(big, offs, block_shape=(4, 5), halo=1)
    assert blk.labels.shape == ref.shape and blk.n_labels > 0
