"""Instance matching on the sparse candidate graph (xmodal.metrics.instance_matching).

The matching at each IoU threshold must be the one-to-one matching with the most pairs, then the
largest total IoU, among pairs with IoU > t, computed with memory linear in the candidate pairs
(low thresholds on dense segmentations give connected components of thousands of objects).
References: exhaustive enumeration with exact rational IoU totals (tiny cases, ties included), a
dense Hungarian reference (scipy, the previous implementation's formulation) on medium cases, and
scipy's Hopcroft-Karp maximum matching for the pair count on large cases.
"""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching

import xmodal.metrics as M
from xmodal.metrics import instances

# ----------------------------------------------------------------------------- references


def _pairs(seg, gt, background=0):
    """{(seg label, gt label): (intersection, union)} of overlapping objects, counted directly."""
    out = {}
    for i in np.unique(seg):
        if i == background:
            continue
        a = seg == i
        for j in np.unique(gt[a]):
            if j == background:
                continue
            b = gt == j
            out[int(i), int(j)] = (int(np.sum(a & b)), int(np.sum(a | b)))
    return out


def _best_matching(pairs, t):
    """Exhaustive search: (most pairs, largest exact total IoU) over one-to-one matchings of the pairs
    with float IoU > t (the candidate rule of instance_matching: IoU computed in float64)."""
    cand = {}
    for (i, j), (n, u) in pairs.items():
        if n / u > t:
            cand.setdefault(i, []).append((j, Fraction(n, u)))
    segs = sorted(cand)

    def search(k, used):
        if k == len(segs):
            return 0, Fraction(0)
        best = search(k + 1, used)
        for j, w in cand[segs[k]]:
            if j not in used:
                n, total = search(k + 1, used | {j})
                best = max(best, (n + 1, total + w))
        return best

    return search(0, frozenset())


def _dense_reference(r, c, w):
    """The previous implementation's formulation on one dense block: maximise sum of 1 + w/(k+1)."""
    ur, ri = np.unique(r, return_inverse=True)
    uc, ci = np.unique(c, return_inverse=True)
    k = min(len(ur), len(uc))
    score = np.zeros((len(ur), len(uc)))
    score[ri, ci] = 1.0 + w / (k + 1.0)
    lut = np.full(score.shape, -1)
    lut[ri, ci] = np.arange(len(r))
    a, b = linear_sum_assignment(score, maximize=True)
    picked = lut[a, b]
    return np.sort(picked[picked >= 0])


def _check_valid(result, k, t, pairs=None):
    """One-to-one, every pair a candidate (IoU > t), IoU column right; returns the matched label pairs."""
    m = result.matches[k]
    assert m.shape == (result.tp[k], 3)
    seg_l, gt_l = m[:, 0].astype(np.int64), m[:, 1].astype(np.int64)
    assert len(set(seg_l.tolist())) == len(seg_l) and len(set(gt_l.tolist())) == len(gt_l)
    assert np.all(m[:, 2] > t)
    if pairs is not None:
        for a, b, iou in m:
            n, u = pairs[int(a), int(b)]
            assert iou == n / u
    assert result.fp[k] == result.n_seg - result.tp[k] and result.fn[k] == result.n_gt - result.tp[k]
    return list(zip(seg_l.tolist(), gt_l.tolist()))


# ----------------------------------------------------------------------------- exact on small cases

_THRESHOLDS = st.lists(st.one_of(st.sampled_from([0.0, 0.1, 0.2, 0.25, 1 / 3, 0.4, 0.45, 0.5, 0.6]),
                                 st.floats(0.0, 0.99)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 7), st.integers(2, 8)), elements=st.integers(0, 5)),
       st.data(), _THRESHOLDS)
def test_property_equals_exhaustive_search(seg, data, extra):
    """Random small label images (ragged objects, many equal IoUs), t = 0 always included: same pair
    count and exactly the same total IoU (rationals) as the best of all matchings."""
    gt = data.draw(arrays(np.int64, seg.shape, elements=st.integers(0, 5)))
    th = [0.0, *extra]
    res = M.instance_matching(seg, gt, thresholds=th)
    pairs = _pairs(seg, gt)
    for k, t in enumerate(th):
        count, total = _best_matching(pairs, t)
        matched = _check_valid(res, k, t, pairs)
        assert res.tp[k] == count
        assert sum((Fraction(*pairs[p]) for p in matched), Fraction(0)) == total


def test_ties_pick_an_optimum():
    # segment 3 overlaps ground-truth objects 1 and 2 with the same IoU (2/6); segment 4 lies in
    # object 1 only (IoU 2/4): of the two equal choices for segment 3, only object 2 gives two pairs
    gt = np.array([[1, 1, 1, 1, 2, 2, 2, 2]])
    seg = np.array([[4, 4, 3, 3, 3, 3, 0, 0]])
    res = M.instance_matching(seg, gt, thresholds=[0.0])
    assert sorted(_check_valid(res, 0, 0.0)) == [(3, 2), (4, 1)]
    # a fully symmetric tie: 2 x 2 block of equal IoUs; two pairs, total IoU 2 * 1/3
    gt = np.array([[1, 1, 2, 2]])
    seg = np.array([[5, 6, 5, 6]])
    res = M.instance_matching(seg, gt, thresholds=[0.0, 0.3])
    np.testing.assert_array_equal(res.tp, [2, 2])
    assert res.matches[0][:, 2].sum() == pytest.approx(2 / 3, abs=1e-15)
    again = M.instance_matching(seg, gt, thresholds=[0.0, 0.3])  # same input, same pairs
    np.testing.assert_array_equal(again.matches[0], res.matches[0])


def _blocky(rng, shape, n_labels, block):
    lab = rng.integers(0, n_labels, size=tuple(-(-s // block) for s in shape))
    return np.kron(lab, np.ones((block,) * len(shape), dtype=lab.dtype))[tuple(slice(0, s) for s in shape)]


@pytest.mark.parametrize("seed", range(12))
def test_equals_dense_reference(seed):
    """Medium random cases (tens of objects, one large candidate component at low thresholds):
    the same pair counts and total IoU as the dense Hungarian reference."""
    rng = np.random.default_rng(seed)
    shape = (30, 30) if seed % 2 else (12, 12, 10)
    gt = _blocky(rng, shape, 30, 3)
    seg = np.roll(_blocky(rng, shape, 40, 2), seed % 3, axis=0)
    th = [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.7]
    res = M.instance_matching(seg, gt, thresholds=th)
    table, _, _, r, c, iou = instances._object_table(seg, gt, None, 0)
    for k, t in enumerate(th):
        cand = np.flatnonzero(iou > t)
        ref = cand[_dense_reference(r[cand], c[cand], iou[cand])] if cand.size else cand
        _check_valid(res, k, t)
        assert res.tp[k] == len(ref)
        assert res.matches[k][:, 2].sum() == pytest.approx(iou[ref].sum(), rel=1e-13, abs=1e-13)


# ----------------------------------------------------------------------------- floating point


def test_one_more_pair_beats_any_iou_sum():
    """A path r0-c0-r1-c1-...-rL-cL: L + 1 pairs of IoU 1e-6 (the diagonal) against L pairs of IoU 1
    (total ~1e6): the larger matching wins, however large the IoU sum it gives up."""
    L = 10**6 - 1
    i = np.arange(L + 1)
    r = np.concatenate([i, i[1:]])
    c = np.concatenate([i, i[:-1]])
    w = np.concatenate([np.full(L + 1, 1e-6), np.ones(L)])
    picked = instances._match(r, c, w)
    np.testing.assert_array_equal(picked, np.arange(L + 1))


def test_small_iou_differences_in_a_large_component():
    """Two matchings of equal size whose totals differ by 2e-13 inside a component of ~3000 pairs:
    the larger total is found (a 1 + w/(k+1) score rounds this difference away)."""
    K, d = 3000, 1e-13
    i = np.arange(K + 1)
    # chain: rows 0..K, columns 0..K, (i, i) at 0.5 and (i+1, i) at 0.25: the diagonal is forced
    r = [i, i[1:], [K + 1, K + 1, K + 2, K + 2, K + 1]]
    c = [i, i[:-1], [K + 1, K + 2, K + 1, K + 2, K]]
    w = [np.full(K + 1, 0.5), np.full(K, 0.25), [0.5, 0.5 + d, 0.5 + d, 0.5, 0.1]]
    r, c, w = (np.concatenate(x) for x in (r, c, w))
    picked = instances._match(r, c, w)
    assert len(picked) == K + 3
    chosen = set(zip(r[picked].tolist(), c[picked].tolist()))
    assert {(K + 1, K + 2), (K + 2, K + 1)} <= chosen
    assert all((j, j) in chosen for j in range(K + 1))


# ----------------------------------------------------------------------------- large, low threshold


def _voronoi_labels(shape, n, seed):
    """Touching objects: every pixel takes the label (1..n) of its nearest random seed pixel."""
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(int(np.prod(shape)), size=n, replace=False))
    seeds = np.zeros(shape, dtype=np.int64)
    seeds.flat[flat] = np.arange(1, n + 1)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(nearest)]


@pytest.mark.parametrize("shape, n, shift", [((1414, 1414), 20000, 3), ((126, 126, 126), 20000, 2)])
def test_large_low_threshold_bounded_memory(shape, n, shift):
    """~20k touching objects against a copy shifted by a fraction of their size, t = 0.1: candidate
    components of thousands of objects. Peak Python allocation of the matching (the table counted
    before) stays far below one dense n_seg x n_gt float64 block (3.2 GB here); the pair count is the
    maximum (scipy's Hopcroft-Karp on the candidate graph)."""
    gt = _voronoi_labels(shape, n, seed=1)
    seg = np.roll(gt, shift, axis=tuple(range(len(shape))))
    table = M.contingency_table(seg, gt)
    del seg, gt
    t = 0.1
    tracemalloc.start()
    try:
        res = M.instance_matching(table=table, thresholds=[t, 0.5])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense_bytes = 8 * res.n_seg * res.n_gt
    assert peak < min(64 * 2**20, dense_bytes / 20), f"peak {peak / 2**20:.1f} MiB, dense {dense_bytes / 2**20:.0f} MiB"
    _check_valid(res, 0, t)
    _, _, _, r, c, iou = instances._object_table(None, None, table, 0)
    cand = iou > t
    graph = sparse.csr_matrix((np.ones(cand.sum()), (r[cand], c[cand])), shape=(len(table.seg_ids), len(table.gt_ids)))
    # the case is what it claims: a large component of candidates
    _, comp = sparse.csgraph.connected_components(sparse.bmat([[None, graph], [graph.T, None]]), directed=False)
    assert np.bincount(comp).max() > 1000
    assert res.tp[0] == np.count_nonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0)
    assert res.tp[0] > 0.8 * n and res.tp[1] <= res.tp[0]
