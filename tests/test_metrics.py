"""Tests of xmodal.metrics against independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

import xmodal.metrics as M
from xmodal.metrics import _contingency

try:  # independent reference implementation (scikit-image); only the comparisons need it
    import skimage.metrics as skm
except ImportError:  # pragma: no cover
    skm = None
needs_skimage = pytest.mark.skipif(skm is None, reason="scikit-image not installed (reference implementation)")


def _random_labels(rng, shape, n_labels, smooth=True):
    """Blocky random labels (so that objects overlap in a realistic way)."""
    lab = rng.integers(0, n_labels, size=tuple(max(1, s // 4) for s in shape))
    if smooth:
        lab = np.kron(lab, np.ones((4,) * len(shape), dtype=lab.dtype))[tuple(slice(0, s) for s in shape)]
    return lab


# ----------------------------------------------------------------------------- contingency table


def test_contingency_matches_dense_histogram():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 6, (30, 40))
    gt = rng.integers(3, 9, (30, 40))
    t = M.contingency_table(seg, gt)
    dense = np.zeros((seg.max() + 1, gt.max() + 1), dtype=np.int64)
    np.add.at(dense, (seg.ravel(), gt.ravel()), 1)
    got = t.to_sparse().toarray()
    np.testing.assert_array_equal(got, dense[np.ix_(t.seg_ids, t.gt_ids)])
    assert t.n_voxels == seg.size
    np.testing.assert_array_equal(t.seg_sizes, np.bincount(seg.ravel())[t.seg_ids])
    np.testing.assert_array_equal(t.gt_sizes, np.bincount(gt.ravel())[t.gt_ids])


def test_contingency_sparse_path_and_wide_labels_agree(monkeypatch):
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 50, (20, 20, 20))
    gt = rng.integers(0, 40, (20, 20, 20))
    dense_path = M.contingency_table(seg, gt)
    monkeypatch.setattr(_contingency, "_DENSE_PAIRS_MAX", 0)
    sparse_path = M.contingency_table(seg, gt)
    for name in ("seg_ids", "gt_ids", "rows", "cols", "counts", "seg_sizes", "gt_sizes"):
        np.testing.assert_array_equal(getattr(dense_path, name), getattr(sparse_path, name))
    # labels far apart and negative go through np.unique: same table up to the label values
    wide = M.contingency_table(seg.astype(np.int64) * 10**12 - 5, gt)
    np.testing.assert_array_equal(wide.counts, dense_path.counts)
    np.testing.assert_array_equal(wide.seg_ids, dense_path.seg_ids * 10**12 - 5)
    for dtype in (np.uint8, np.int16, np.uint32, np.uint64):
        t = M.contingency_table(seg.astype(dtype), gt.astype(np.uint64))
        np.testing.assert_array_equal(t.counts, dense_path.counts)
    huge = M.contingency_table(seg.astype(np.uint64) + np.uint64(2**63), gt)
    np.testing.assert_array_equal(huge.counts, dense_path.counts)
    np.testing.assert_array_equal(huge.seg_ids, dense_path.seg_ids.astype(np.uint64) + np.uint64(2**63))


def test_without_equals_masking_voxels():
    rng = np.random.default_rng(2)
    seg = rng.integers(0, 5, (25, 25))
    gt = rng.integers(0, 4, (25, 25))
    t = M.contingency_table(seg, gt).without(gt_labels=(0, 2), seg_labels=(4,))
    keep = ~np.isin(gt, (0, 2)) & (seg != 4)
    ref = M.contingency_table(seg[keep], gt[keep])
    np.testing.assert_array_equal(t.to_sparse().toarray(), ref.to_sparse().toarray())
    np.testing.assert_array_equal(t.seg_ids, ref.seg_ids)
    assert t.n_voxels == keep.sum()


# ----------------------------------------------------------------------------- ARand


@needs_skimage
@pytest.mark.parametrize("shape", [(48, 52), (16, 20, 24)])
@pytest.mark.parametrize("ignore", [(), (0,)])
def test_arand_matches_skimage(shape, ignore):
    rng = np.random.default_rng(len(shape) + len(ignore))
    gt = _random_labels(rng, shape, 6)
    seg = _random_labels(rng, shape, 9)
    ours = M.adapted_rand_error(seg, gt, ignore_gt=ignore)
    err, prec_sk, rec_sk = skm.adapted_rand_error(gt, seg, ignore_labels=ignore)
    assert ours.error == pytest.approx(err, rel=1e-12, abs=1e-14)
    # scikit-image names the two ratios the other way round (see the docstring)
    assert ours.precision == pytest.approx(rec_sk, rel=1e-12)
    assert ours.recall == pytest.approx(prec_sk, rel=1e-12)


def test_arand_brute_force_pairs():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 3, 14)
    seg = rng.integers(0, 4, 14)
    pairs = list(itertools.combinations(range(14), 2))
    same_s = np.array([seg[i] == seg[j] for i, j in pairs])
    same_g = np.array([gt[i] == gt[j] for i, j in pairs])
    both = np.sum(same_s & same_g)
    r = M.adapted_rand_error(seg, gt, ignore_gt=())
    assert r.precision == pytest.approx(both / same_s.sum())
    assert r.recall == pytest.approx(both / same_g.sum())
    assert r.error == pytest.approx(1 - 2 * both / (same_s.sum() + same_g.sum()))


def test_arand_split_and_merge_directions():
    gt = np.zeros((8, 8), int) + 1
    gt[:, 4:] = 2
    split = gt.copy()
    split[:4, :4] = 3  # gt object 1 split in two
    r = M.adapted_rand_error(split, gt)
    assert r.precision == 1.0 and r.recall < 1.0
    merged = np.ones_like(gt)
    r = M.adapted_rand_error(merged, gt)
    assert r.recall == 1.0 and r.precision < 1.0
    # two equal halves merged: pairs together in gt = 2*(32^2-32); in seg: 64^2-64
    assert r.precision == pytest.approx(2 * (32**2 - 32) / (64**2 - 64))


# ----------------------------------------------------------------------------- VOI


@needs_skimage
@pytest.mark.parametrize("shape", [(40, 44), (12, 16, 20)])
def test_voi_matches_skimage(shape):
    rng = np.random.default_rng(10 + len(shape))
    gt = _random_labels(rng, shape, 5)
    seg = _random_labels(rng, shape, 8)
    for ignore in [(), (0,)]:
        ours = M.variation_of_information(seg, gt, ignore_gt=ignore)
        split, merge = skm.variation_of_information(gt, seg, ignore_labels=ignore)  # bits, [split, merge]
        assert ours.split == pytest.approx(split, rel=1e-10)
        assert ours.merge == pytest.approx(merge, rel=1e-10)
    nats = M.variation_of_information(seg, gt, base=np.e)
    bits = M.variation_of_information(seg, gt)
    assert nats.split == pytest.approx(bits.split * np.log(2))


def test_voi_known_values():
    gt = np.ones((4, 8), int)
    seg = gt.copy()
    seg[:, 4:] = 2  # one object split in two halves: 1 bit of split, no merge
    r = M.variation_of_information(seg, gt)
    assert r.split == pytest.approx(1.0) and r.merge == 0.0
    r = M.variation_of_information(gt, seg)  # roles swapped: a merge
    assert r.merge == pytest.approx(1.0) and r.split == 0.0
    seg4 = np.arange(32).reshape(4, 8) // 8 + 1  # four equal parts -> 2 bits
    assert M.variation_of_information(seg4, gt).split == pytest.approx(2.0)


# ----------------------------------------------------------------------------- instance matching


def _brute_force_tp(seg, gt, t):
    sid = [i for i in np.unique(seg) if i != 0]
    gid = [j for j in np.unique(gt) if j != 0]
    iou = np.zeros((len(sid), len(gid)))
    for a, i in enumerate(sid):
        for b, j in enumerate(gid):
            inter = np.sum((seg == i) & (gt == j))
            iou[a, b] = inter / np.sum((seg == i) | (gt == j))
    best = (0, 0.0)
    k = min(len(sid), len(gid))
    for perm in itertools.permutations(range(len(gid)), k) if len(sid) <= len(gid) else []:
        ok = [(a, perm[a]) for a in range(k) if iou[a, perm[a]] > t]
        best = max(best, (len(ok), sum(iou[a, b] for a, b in ok)))
    if len(sid) > len(gid):
        for perm in itertools.permutations(range(len(sid)), k):
            ok = [(perm[b], b) for b in range(k) if iou[perm[b], b] > t]
            best = max(best, (len(ok), sum(iou[a, b] for a, b in ok)))
    return best, len(sid), len(gid)


def test_instance_matching_known_example():
    gt = np.zeros((20, 20), int)
    gt[0:10, 0:10] = 1
    gt[10:20, 10:20] = 2
    seg = np.zeros_like(gt)
    seg[0:10, 0:10] = 5            # exact: IoU 1
    seg[12:20, 10:20] = 7          # IoU 80/100 = 0.8
    seg[0:3, 15:18] = 9            # false positive
    r = M.instance_matching(seg, gt, thresholds=[0.5, 0.8, 0.85])
    np.testing.assert_array_equal(r.tp, [2, 1, 1])
    np.testing.assert_array_equal(r.fp, [1, 2, 2])
    np.testing.assert_array_equal(r.fn, [0, 1, 1])  # IoU must be > 0.8, not >= 0.8
    assert r.precision[0] == pytest.approx(2 / 3) and r.recall[0] == 1.0
    assert r.f1[0] == pytest.approx(0.8) and r.ap[0] == pytest.approx(2 / 3)
    assert r.mean_matched_iou[0] == pytest.approx(0.9)
    pairs = {(int(a), int(b)) for a, b, _ in r.matches[0]}
    assert pairs == {(5, 1), (7, 2)}


def test_hungarian_beats_greedy_at_low_threshold():
    # seg A overlaps gt 1 best and gt 2 a bit; seg B overlaps only gt 1. Greedy by IoU would give
    # A-1 and leave B unmatched; the optimum matches A-2 and B-1.
    gt = np.zeros((1, 20), int)
    gt[0, 0:10] = 1
    gt[0, 10:20] = 2
    seg = np.zeros_like(gt)
    seg[0, 2:14] = 3  # IoU with 1: 8/14, with 2: 4/18
    seg[0, 0:2] = 4   # IoU with 1: 2/10
    r = M.instance_matching(seg, gt, thresholds=[0.15])
    assert r.tp[0] == 2
    (best, ns, ng) = _brute_force_tp(seg, gt, 0.15)
    assert best[0] == 2


@pytest.mark.parametrize("seed", range(6))
def test_instance_matching_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = _random_labels(rng, (24, 24), 5)
    seg = _random_labels(rng, (24, 24), 6)
    th = [0.1, 0.3, 0.5, 0.7]
    r = M.instance_matching(seg, gt, thresholds=th)
    for k, t in enumerate(th):
        (count, total), ns, ng = _brute_force_tp(seg, gt, t)
        assert r.tp[k] == count
        assert r.n_seg == ns and r.n_gt == ng
        if count:
            assert r.matches[k][:, 2].sum() == pytest.approx(total)


def test_mean_ap_and_perfect_scores():
    rng = np.random.default_rng(5)
    gt = np.zeros((32, 32, 16), dtype=np.int64)
    for k, (z, y) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        gt[z + 2:z + 14, y + 1:y + 15, 2:14] = k + 1
    assert M.mean_average_precision(gt, gt) == 1.0
    # relabelling by a permutation changes nothing
    ids = np.unique(gt)
    perm = np.zeros(ids.max() + 1, dtype=np.int64)
    perm[ids[1:]] = rng.permutation(np.arange(1, len(ids))) * 17 + 3
    relab = perm[gt]
    s = M.evaluate_segmentation(relab, gt)
    assert s.arand == pytest.approx(0.0, abs=1e-15) and s.voi_split == 0 and s.voi_merge == 0
    assert s.mean_ap == 1.0 and s.sbd == 1.0 and s.chamfer == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(s.f1, 1.0)
    # mAP is the mean of the AP at 0.50..0.95
    seg = ndimage.binary_erosion(gt > 0, iterations=1) * gt  # IoU 10*12*10 / (12*14*12) ~ 0.6
    r = M.instance_matching(seg, gt, thresholds=M.AP_THRESHOLDS)
    assert M.mean_average_precision(seg, gt) == pytest.approx(r.ap.mean())
    assert 0 < M.mean_average_precision(seg, gt) < 1


def test_permutation_invariance_random():
    rng = np.random.default_rng(6)
    gt = _random_labels(rng, (40, 40), 7)
    seg = _random_labels(rng, (40, 40), 7)
    a = M.evaluate_segmentation(seg, gt).as_dict()
    perm = rng.permutation(7)
    perm[perm == 0] = 99  # seg label 0 is not special for the table metrics but is background for objects
    b = M.evaluate_segmentation(np.where(seg == 0, 0, perm[seg]), gt).as_dict()
    for key in a:
        assert np.allclose(a[key], b[key], equal_nan=True), key


# ----------------------------------------------------------------------------- SBD, centroids


def test_symmetric_best_dice_brute_force():
    rng = np.random.default_rng(7)
    gt = _random_labels(rng, (28, 28), 5)
    seg = _random_labels(rng, (28, 28), 4)

    def bd(a, b):
        vals = []
        for i in np.unique(a[a > 0]):
            best = 0.0
            for j in np.unique(b[b > 0]):
                best = max(best, 2 * np.sum((a == i) & (b == j)) / (np.sum(a == i) + np.sum(b == j)))
            vals.append(best)
        return np.mean(vals)

    assert M.symmetric_best_dice(seg, gt) == pytest.approx(min(bd(seg, gt), bd(gt, seg)))


def test_centroids_and_chamfer():
    rng = np.random.default_rng(8)
    lab = _random_labels(rng, (20, 24, 28), 6)
    ids, cents = M.label_centroids(lab, spacing=(2.0, 0.5, 0.5))
    ref = np.array(ndimage.center_of_mass(np.ones_like(lab), lab, ids)) * [2.0, 0.5, 0.5]
    np.testing.assert_allclose(cents, ref)
    assert 0 not in ids
    a = rng.normal(size=(30, 3))
    b = rng.normal(size=(20, 3))
    d = cdist(a, b)
    c = M.chamfer_distance(a, b)
    assert c.a_to_b == pytest.approx(d.min(axis=1).mean())
    assert c.b_to_a == pytest.approx(d.min(axis=0).mean())
    assert c.distance == pytest.approx(0.5 * (c.a_to_b + c.b_to_a))
    assert c.max_a_to_b == pytest.approx(d.min(axis=1).max())
    shifted = M.centroid_chamfer_distance(np.roll(lab, 3, axis=2) * (np.arange(28) >= 3), lab)
    assert shifted.distance > 0


# ----------------------------------------------------------------------------- matching accuracy


def test_matching_accuracy():
    fixed = np.array(["ABa", "ABp", "EMS", "P2", "x"])
    moving = np.array(["P2", "EMS", "ABp", "ABa", "y", "z"])
    fi = np.array([0, 1, 2, 3])
    mi = np.array([3, 1, 0, 4])  # ABa-ABa right, ABp-EMS wrong, EMS-P2 wrong, P2-y wrong
    r = M.matching_accuracy(fixed, moving, fi, mi)
    assert r.n_correct == 1 and r.n_common == 4 and r.accuracy == pytest.approx(0.25)
    assert r.precision == pytest.approx(0.25)
    assert M.matching_accuracy(fixed, moving, fi, mi, denominator="fixed").accuracy == pytest.approx(0.2)
    perfect = M.matching_accuracy(fixed, moving, [0, 1, 2, 3], [3, 2, 1, 0])
    assert perfect.accuracy == 1.0
    with pytest.raises(ValueError, match="one-to-one"):
        M.matching_accuracy(fixed, moving, [0, 1], [3, 3])
    with pytest.raises(ValueError, match="moving_index"):
        M.matching_accuracy(fixed, moving, [0], [6])
    with pytest.raises(ValueError, match="same length"):
        M.matching_accuracy(fixed, moving, [0, 1], [3])
    with pytest.raises(ValueError, match="unique"):
        M.matching_accuracy(["a", "a"], moving, [0], [0])


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
    a = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="same shape"):
        M.adapted_rand_error(a, np.zeros((4, 5), int))
    with pytest.raises(TypeError, match="integer label image"):
        M.variation_of_information(a.astype(float), a)
    with pytest.raises(ValueError, match="no voxels left"):
        M.adapted_rand_error(a, a)  # all ground truth is the ignored label 0
    with pytest.raises(ValueError, match="thresholds"):
        M.instance_matching(a, a, thresholds=[1.0])
    with pytest.raises(ValueError, match="base"):
        M.variation_of_information(a + 1, a + 1, base=1.0)
    with pytest.raises(TypeError, match="table"):
        M.adapted_rand_error(table=np.eye(2))
    with pytest.raises(ValueError, match="same dimension"):
        M.chamfer_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    # empty object sets
    empty = M.instance_matching(a, a)
    assert empty.tp[0] == 0 and empty.f1[0] == 1.0
    assert M.symmetric_best_dice(a, a + 1) == 0.0


# ----------------------------------------------------------------------------- property tests

from hypothesis import given, settings  # noqa: E402  (hypothesis is in the test extra)
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(2, 9), st.integers(2, 9)), elements=st.integers(0, 5)),
       st.permutations(list(range(1, 6))))
def test_property_identity_and_relabelling(gt, perm):
    lut = np.array([0, *perm]) * 3 + np.array([0] + [1] * 5)  # keep 0 as background, others -> new ids
    relabelled = lut[gt]
    if np.any(gt > 0):
        s = M.evaluate_segmentation(relabelled, gt)
        assert s.arand == pytest.approx(0.0, abs=1e-12)
        assert s.voi_split == pytest.approx(0.0, abs=1e-12) and s.voi_merge == pytest.approx(0.0, abs=1e-12)
        assert s.mean_ap == 1.0 and s.sbd == 1.0
        np.testing.assert_array_equal(s.f1, 1.0)


@needs_skimage
@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, (6, 7), elements=st.integers(0, 4)), arrays(np.int64, (6, 7), elements=st.integers(0, 4)))
def test_property_matches_skimage_and_bounds(seg, gt):
    if np.any(gt > 0):
        ours = M.adapted_rand_error(seg, gt)
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = skm.adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
        if np.isfinite(ref):  # scikit-image gives NaN when no pair exists (0/0); ours defines it
            assert ours.error == pytest.approx(ref, abs=1e-12)
        assert 0.0 <= ours.error <= 1.0
        voi = M.variation_of_information(seg, gt)
        split, merge = skm.variation_of_information(gt, seg, ignore_labels=(0,))
        assert voi.split == pytest.approx(split, abs=1e-10) and voi.merge == pytest.approx(merge, abs=1e-10)
    r = M.instance_matching(seg, gt, thresholds=[0.0, 0.5])
    assert np.all(r.tp <= min(r.n_seg, r.n_gt)) and r.tp[0] >= r.tp[1]
    assert 0.0 <= M.symmetric_best_dice(seg, gt) <= 1.0
