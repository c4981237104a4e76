"""Region adjacency graph and edge statistics against a brute-force numpy reference."""

import itertools

import numpy as np
import pytest

import xmodal
from xmodal.segmentation import edge_features, region_adjacency_graph


def _random_labels(shape, n, seed, zero_fraction=0.0):
    """Blocky random labels (small patches) so that regions have several faces."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, n + 1, size=tuple(-(-s // 2) for s in shape))
    lab = coarse
    for ax in range(len(shape)):
        lab = np.repeat(lab, 2, axis=ax)
    lab = lab[tuple(slice(0, s) for s in shape)].copy()
    noise = rng.random(shape) < 0.15
    lab[noise] = rng.integers(1, n + 1, size=int(noise.sum()))
    if zero_fraction:
        lab[rng.random(shape) < zero_fraction] = 0
    return lab


def _brute(labels, values=None, affinities=None, offsets=None, ignore=0, long_range=None):
    """Edges, faces and samples by looping over voxels."""
    nd = labels.ndim
    faces, samples = {}, {}
    steps = [tuple(int(i == d) for i in range(nd)) for d in range(nd)]
    for p in itertools.product(*map(range, labels.shape)):
        for st in steps:
            q = tuple(a + b for a, b in zip(p, st))
            if any(c >= s for c, s in zip(q, labels.shape)):
                continue
            a, b = int(labels[p]), int(labels[q])
            if a == b or (ignore is not None and (a == ignore or b == ignore)):
                continue
            key = (min(a, b), max(a, b))
            faces[key] = faces.get(key, 0) + 1
            if values is not None:
                samples.setdefault(key, []).extend([float(values[p]), float(values[q])])
    for o in (long_range if long_range is not None else []):
        for p in itertools.product(*map(range, labels.shape)):
            q = tuple(a + b for a, b in zip(p, o))
            if any(c < 0 or c >= s for c, s in zip(q, labels.shape)):
                continue
            a, b = int(labels[p]), int(labels[q])
            if a == b or (ignore is not None and (a == ignore or b == ignore)):
                continue
            faces.setdefault((min(a, b), max(a, b)), 0)
    if affinities is not None:
        for c, o in enumerate(offsets):
            for p in itertools.product(*map(range, labels.shape)):
                q = tuple(a + b for a, b in zip(p, o))
                if any(x < 0 or x >= s for x, s in zip(q, labels.shape)):
                    continue
                a, b = int(labels[p]), int(labels[q])
                if a == b or (ignore is not None and (a == ignore or b == ignore)):
                    continue
                key = (min(a, b), max(a, b))
                if key in faces:
                    samples.setdefault(key, []).append(float(affinities[(c,) + p]))
    return faces, samples


@pytest.mark.parametrize("shape,ignore", [((13, 17), 0), ((13, 17), None), ((5, 7, 9), 0)])
def test_rag_edges_and_faces_match_brute_force(shape, ignore):
    lab = _random_labels(shape, 9, seed=len(shape), zero_fraction=0.1)
    rag = region_adjacency_graph(lab, ignore_label=ignore)
    faces, _ = _brute(lab, ignore=ignore)
    keys = sorted(faces)
    assert rag.n_nodes == int(lab.max()) + 1
    assert rag.edges.tolist() == [list(k) for k in keys]
    assert rag.n_faces.tolist() == [faces[k] for k in keys]
    assert (rag.edges[:, 0] < rag.edges[:, 1]).all()


def test_rag_long_range_edges():
    lab = _random_labels((12, 14), 15, seed=3)
    offs = [[-3, 0], [0, -4], [2, 2]]
    rag = region_adjacency_graph(lab, offsets=offs)
    faces, _ = _brute(lab, long_range=offs)
    keys = sorted(faces)
    assert rag.edges.tolist() == [list(k) for k in keys]
    assert rag.n_faces.tolist() == [faces[k] for k in keys]
    assert (rag.n_faces == 0).any()  # some pairs meet only through a long-range offset


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(11, 16), (4, 6, 8)])
def test_boundary_features_match_brute_force(shape, dtype):
    lab = _random_labels(shape, 7, seed=5, zero_fraction=0.05).astype(np.int64)
    b = np.random.default_rng(1).random(shape).astype(dtype)
    rag = region_adjacency_graph(lab)
    q = (0.0, 0.1, 0.5, 0.9, 1.0)
    f = edge_features(rag, lab, b, quantiles=q)
    _, samples = _brute(lab, values=b)
    for e, (u, v) in enumerate(rag.edges.tolist()):
        s = np.array(samples[(u, v)], np.float64)
        assert f.count[e] == s.size == 2 * rag.n_faces[e]
        assert f.mean[e] == pytest.approx(s.mean(), rel=1e-12, abs=1e-15)
        assert f.min[e] == s.min() and f.max[e] == s.max()
        np.testing.assert_allclose(f.quantiles[e], np.quantile(s, q), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(f.get("median"), f.quantiles[:, 2])
    np.testing.assert_array_equal(f.get("q10"), f.quantiles[:, 1])


def test_affinity_features_match_brute_force():
    shape = (3, 9, 10)
    lab = _random_labels(shape, 6, seed=7)
    offs = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0], [0, 2, -2]]
    affs = np.random.default_rng(2).random((len(offs),) + shape)
    rag = region_adjacency_graph(lab)
    f = edge_features(rag, lab, affinities=affs, offsets=offs, quantiles=(0.25, 0.75))
    _, samples = _brute(lab, affinities=affs, offsets=offs)
    for e, (u, v) in enumerate(rag.edges.tolist()):
        s = np.array(samples.get((u, v), []), np.float64)
        assert f.count[e] == s.size
        if s.size:
            assert f.mean[e] == pytest.approx(s.mean(), rel=1e-12)
            assert (f.min[e], f.max[e]) == (s.min(), s.max())
            np.testing.assert_allclose(f.quantiles[e], np.quantile(s, (0.25, 0.75)), rtol=1e-12)
        else:
            assert np.isnan(f.mean[e])


def test_boundary_mean_and_size_equal_bioimage_cpp():
    features = pytest.importorskip("bioimage_cpp.graph.features")
    bgraph = pytest.importorskip("bioimage_cpp.graph")
    lab = _random_labels((40, 50), 30, seed=11).astype(np.uint32)
    b = np.random.default_rng(4).random(lab.shape).astype(np.float32)
    rag = region_adjacency_graph(lab, ignore_label=None)
    f = edge_features(rag, lab, b)
    brag = bgraph.region_adjacency_graph(lab)
    ref = features.edge_map_features(brag, lab, b)
    assert np.array_equal(np.asarray(brag.uv_ids()), rag.edges.astype(np.asarray(brag.uv_ids()).dtype))
    np.testing.assert_allclose(f.mean, ref[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(ref[:, 1], rag.n_faces)  # its "size" is the face count


def test_rag_features_independent_of_thread_count():
    lab = _random_labels((6, 64, 64), 200, seed=9)
    b = np.random.default_rng(5).random(lab.shape).astype(np.float32)
    old = xmodal.get_num_threads()
    try:
        out = []
        for nt in (1, 2, 3):
            xmodal.set_num_threads(nt)
            rag = region_adjacency_graph(lab)
            f = edge_features(rag, lab, b)
            out.append((rag.edges, rag.n_faces, f.mean, f.quantiles))
    finally:
        xmodal.set_num_threads(old)
    for other in out[1:]:
        for x, y in zip(out[0], other):
            assert np.array_equal(x, y)


def test_rag_bad_inputs():
    lab = np.zeros((5, 5), np.int32)
    lab[2:] = 1
    with pytest.raises(TypeError, match="labels"):
        region_adjacency_graph(lab.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        region_adjacency_graph(lab - 2)
    with pytest.raises(ValueError, match="labels"):
        region_adjacency_graph(lab[None, None])
    with pytest.raises(ValueError, match="offsets"):
        region_adjacency_graph(lab, offsets=[[1, 0, 0]])
    with pytest.raises(TypeError, match="ignore_label"):
        region_adjacency_graph(lab, ignore_label=-1)
    rag = region_adjacency_graph(lab, ignore_label=None)
    assert rag.edges.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="boundaries, affinities"):
        edge_features(rag, lab)
    with pytest.raises(ValueError, match="boundaries"):
        edge_features(rag, lab, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="finite"):
        edge_features(rag, lab, np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="quantiles"):
        edge_features(rag, lab, np.zeros((5, 5)), quantiles=(1.5,))
    with pytest.raises(ValueError, match="offsets"):
        edge_features(rag, lab, affinities=np.zeros((2, 5, 5)), offsets=[[0, -1]])
    with pytest.raises(ValueError, match="labels"):
        edge_features(rag, lab[:4], np.zeros((4, 5)))
    with pytest.raises(ValueError, match="feature"):
        edge_features(rag, lab, np.zeros((5, 5))).get("q33")
