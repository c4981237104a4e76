"""Audit of xmodal.metrics: independent references written from the definitions, adversarial labels
(huge / negative / non-consecutive ids, uint64 beyond 2**53 and 2**63), argument checks and
determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

import xmodal.metrics as M

try:  # independent implementation, only for the comparisons
    import skimage.metrics as skm
except ImportError:  # pragma: no cover
    skm = None


# ----------------------------------------------------------------------------- references


def _pair_counts(seg, gt, ignore_gt=(0,), ignore_seg=()):
    """(n_ij, s_i, g_j) as Python-int lists, by counting label pairs with np.unique on rows."""
    s, g = np.asarray(seg).ravel(), np.asarray(gt).ravel()
    keep = ~np.isin(g, np.array(ignore_gt, dtype=g.dtype)) if len(ignore_gt) else np.ones(g.size, bool)
    if len(ignore_seg):
        keep &= ~np.isin(s, np.array(ignore_seg, dtype=s.dtype))
    s, g = s[keep], g[keep]
    pairs = {}
    for a, b in zip(s.tolist(), g.tolist()):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    seg_sizes, gt_sizes = {}, {}
    for (a, b), c in pairs.items():
        seg_sizes[a] = seg_sizes.get(a, 0) + c
        gt_sizes[b] = gt_sizes.get(b, 0) + c
    return list(pairs.values()), list(seg_sizes.values()), list(gt_sizes.values())


def _ref_arand(seg, gt, **kw):
    nij, si, gj = _pair_counts(seg, gt, **kw)
    n = sum(nij)
    t = sum(c * c for c in nij) - n  # exact integers
    s = sum(c * c for c in si) - n
    g = sum(c * c for c in gj) - n
    return (s + g - 2 * t) / (s + g) if s + g else 0.0


def _ref_voi(seg, gt, **kw):
    nij, si, gj = _pair_counts(seg, gt, **kw)
    n = sum(nij)
    h = lambda counts: -sum(c / n * np.log2(c / n) for c in counts)  # noqa: E731
    h_joint = h(nij)
    return h_joint - h(gj), h_joint - h(si)  # H(S|G) = H(S,G) - H(G), H(G|S) = H(S,G) - H(S)


def _blocky(rng, shape, n, block=3):
    lab = rng.integers(0, n, size=tuple(-(-s // block) for s in shape))
    lab = np.kron(lab, np.ones((block,) * len(shape), dtype=lab.dtype))
    return lab[tuple(slice(0, s) for s in shape)]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape", [(17, 23), (5, 9, 11)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arand_voi_match_own_reference_on_adversarial_labels(shape, seed):
    rng = np.random.default_rng(seed)
    gt = _blocky(rng, shape, 6)
    seg = _blocky(rng, shape, 8, block=2)
    # non-consecutive, negative and huge labels: same partition, so same scores
    variants = [(seg, gt), (seg * 1000 + 7, gt * 3), (seg - 4, gt),
                (seg.astype(np.int64) * 10**15, gt), (seg.astype(np.uint64) + np.uint64(2**63), gt)]
    want = _ref_arand(seg, gt)
    want_voi = _ref_voi(seg, gt)
    for s, g in variants:
        assert M.adapted_rand_error(s, g).error == pytest.approx(want, abs=1e-12)
        v = M.variation_of_information(s, g)
        assert (v.split, v.merge) == pytest.approx(want_voi, abs=1e-10)
    # ignoring the segmentation's 0 as well
    got = M.adapted_rand_error(seg, gt, ignore_seg=(0,)).error
    assert got == pytest.approx(_ref_arand(seg, gt, ignore_seg=(0,)), abs=1e-12)
    if skm is not None:
        assert M.adapted_rand_error(seg, gt).error == pytest.approx(skm.adapted_rand_error(gt, seg)[0], abs=1e-12)
        np.testing.assert_allclose([v.split, v.merge], skm.variation_of_information(gt, seg, ignore_labels=(0,)),
                                   atol=1e-10)


def test_uint64_labels_beyond_2_53_keep_distinct_objects():
    # two ground-truth objects whose uint64 ids differ only below float64 precision
    gt = np.array([[2**60 + 1, 2**60 + 3]] * 2, dtype=np.uint64)
    seg = np.ones((2, 2), dtype=np.uint8)  # one segment merging both
    t = M.contingency_table(seg, gt)
    assert [int(v) for v in t.gt_ids] == [2**60 + 1, 2**60 + 3]
    np.testing.assert_array_equal(t.counts, [2, 2])
    assert M.adapted_rand_error(seg, gt).error == pytest.approx(_ref_arand(seg, gt), abs=1e-12)
    assert M.adapted_rand_error(seg, gt).error > 0.3


def test_uint64_labels_beyond_2_63():
    gt = np.array([2**64 - 1, 2**64 - 1, 2**63, 2**63, 5, 5], dtype=np.uint64)
    seg = np.array([1, 1, 2, 2, 2, 3], dtype=np.uint64)
    # an ignore label that only uint64 can hold
    r = M.adapted_rand_error(seg, gt, ignore_gt=[2**64 - 1])
    assert r.n_voxels == 4
    assert r.error == pytest.approx(_ref_arand(seg, gt, ignore_gt=(2**64 - 1,)), abs=1e-12)
    ids, cents = M.label_centroids(gt)
    assert [int(v) for v in ids] == [5, 2**63, 2**64 - 1]
    np.testing.assert_allclose(cents[:, 0], [4.5, 2.5, 0.5])
    ids, _ = M.label_centroids(gt, background=2**64 - 1)
    assert [int(v) for v in ids] == [0 + 5, 2**63]


def test_counts_beyond_2_31_stay_exact():
    # a table with pair counts beyond 2**31 (built directly, no 2**31-voxel image needed)
    big = 3 * 2**31 + 5
    t = M.ContingencyTable(np.array([1, 2]), np.array([1, 2]), np.array([0, 1]), np.array([0, 1]),
                           np.array([big, big - 1]), np.array([big, big - 1]), np.array([big, big - 1]), 2 * big - 1)
    assert M.adapted_rand_error(table=t).error == 0.0
    v = M.variation_of_information(table=t)
    assert v.split == 0.0 and v.merge == 0.0


def test_identical_segmentations_give_exact_zero_and_single_segment():
    rng = np.random.default_rng(5)
    gt = _blocky(rng, (60, 70), 500, block=2)
    r = M.adapted_rand_error(gt, gt)
    assert r.error == 0.0 and r.precision == 1.0 and r.recall == 1.0
    one = np.ones((4, 5), int)
    assert M.adapted_rand_error(one, one).error == 0.0
    v = M.variation_of_information(one, gt[:4, :5] + 1)
    assert np.isfinite(v.split) and np.isfinite(v.merge) and v.split == 0.0


def test_results_do_not_depend_on_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 400_000, 1_500_000)
    gt = rng.integers(1, 300_000, 1_500_000)
    table = M.contingency_table(seg, gt)
    with threadpoolctl.threadpool_limits(1):
        one = (M.adapted_rand_error(table=table), M.variation_of_information(table=table))
    with threadpoolctl.threadpool_limits(4):
        many = (M.adapted_rand_error(table=table), M.variation_of_information(table=table))
    assert one == many


# ----------------------------------------------------------------------------- centroids, Chamfer


def test_centroids_and_chamfer_in_physical_units_anisotropic():
    rng = np.random.default_rng(2)
    seg = _blocky(rng, (6, 20, 24), 9, block=4)
    gt = np.roll(seg, 2, axis=2)
    spacing = (2.5, 0.3, 0.1)
    ids, cents = M.label_centroids(seg, spacing=spacing)
    want = np.array(ndimage.center_of_mass(np.ones_like(seg), seg, ids)) * spacing
    np.testing.assert_allclose(cents, want, rtol=1e-12)
    _, cg = M.label_centroids(gt, spacing=spacing)
    d = cdist(cents, cg)
    ref = 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())
    assert M.centroid_chamfer_distance(seg, gt, spacing=spacing).distance == pytest.approx(ref, rel=1e-12)
    assert M.evaluate_segmentation(seg, gt, spacing=spacing).chamfer == pytest.approx(ref, rel=1e-12)


def test_centroids_many_labels_match_reference():
    seg = np.arange(4 * 30 * 40).reshape(4, 30, 40) // 3  # many small labels, 1-D runs
    ids, cents, sizes = M.label_centroids(seg, spacing=(2.0, 1.0, 0.5), background=(), return_sizes=True)
    want = np.array(ndimage.center_of_mass(np.ones_like(seg), seg, ids)) * (2.0, 1.0, 0.5)
    np.testing.assert_allclose(cents, want, rtol=1e-12)
    np.testing.assert_array_equal(sizes, 3)


def test_chamfer_without_objects_names_the_image():
    with pytest.raises(ValueError, match="segmentation"):
        M.centroid_chamfer_distance(np.zeros((4, 4), int), np.ones((4, 4), int))
    with pytest.raises(ValueError, match="ground_truth"):
        M.centroid_chamfer_distance(np.ones((4, 4), int), np.zeros((4, 4), int))
    # no object in the segmentation: chamfer is NaN, the rest is defined
    s = M.evaluate_segmentation(np.zeros((4, 4), int), np.ones((4, 4), int))
    assert np.isnan(s.chamfer) and s.n_seg == 0 and s.f1[0] == 0.0


def test_evaluate_checks_spacing_even_without_objects():
    with pytest.raises(ValueError, match="spacing"):
        M.evaluate_segmentation(np.zeros((4, 4), int), np.ones((4, 4), int), spacing=-1)


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad", [0.5, "0", True, [1, 2.5], [None]])
def test_ignore_labels_must_be_integers(bad):
    seg, gt = np.array([1, 2, 3]), np.array([0, 1, 1])
    with pytest.raises(TypeError, match="ignore_gt"):
        M.adapted_rand_error(seg, gt, ignore_gt=bad)
    with pytest.raises(TypeError, match="background"):
        M.instance_matching(seg, gt, background=bad)


def test_numpy_integer_ignore_labels_accepted():
    seg, gt = np.array([1, 2, 3, 3]), np.array([0, 1, 1, 2])
    assert M.adapted_rand_error(seg, gt, ignore_gt=np.int64(0)).n_voxels == 3
    assert M.adapted_rand_error(seg, gt, ignore_gt=np.array([0, 2], np.uint8)).n_voxels == 2


def test_no_output_printed(capsys):
    rng = np.random.default_rng(0)
    gt = _blocky(rng, (12, 12), 5)
    M.evaluate_segmentation(gt, gt)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint64])
def test_unique_inverse_equals_numpy_unique(dtype):
    from xmodal.metrics._contingency import unique_inverse

    rng = np.random.default_rng(4)
    info = np.iinfo(dtype)
    for x in (rng.integers(info.min, info.max, 500, dtype=dtype, endpoint=True),  # no runs
              np.repeat(rng.integers(info.min, info.max, 40, dtype=dtype, endpoint=True), rng.integers(1, 9, 40)),
              np.array([info.max] * 3 + [info.min], dtype=dtype), np.zeros(1, dtype), np.zeros(0, dtype)):
        ids, inv = unique_inverse(x.reshape(-1, 1) if x.size % 2 == 0 and x.size else x)
        want_ids, want_inv = np.unique(x, return_inverse=True)
        assert ids.dtype == x.dtype and inv.dtype == np.int64
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(inv, want_inv.reshape(-1))
