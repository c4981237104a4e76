"""MALIS edge weights (xmodal.models.malis_weights / malis_loss) against a brute-force reference."""

import itertools

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from xmodal.models import affinity_targets, malis_loss, malis_weights

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
NN = np.array([[-1, 0], [0, -1]])


def _edges(shape):
    """(channel, y, x, p, q) of every in-image nearest-neighbour edge of a 2D grid, channel-major."""
    H, W = shape
    out = []
    for d, (dy, dx) in enumerate(NN):
        for y in range(H):
            for x in range(W):
                if y + dy >= 0 and x + dx >= 0:
                    out.append((d, y, x, y * W + x, (y + dy) * W + x + dx))
    return out


def _reference(aff, tgt, mask=None):
    """The definition, without union-find: sort the edges (value descending, then edge index), and
    for every pair of object pixels find the first prefix of the sorted edges that connects them."""
    C, H, W = aff.shape
    n = H * W
    edges = [e for e in _edges((H, W)) if mask is None or mask[e[0], e[1], e[2]]]
    cc_n, cc = connected_components(coo_matrix(
        (np.ones(sum(1 for e in edges if tgt[e[0], e[1], e[2]])),
         ([e[3] for e in edges if tgt[e[0], e[1], e[2]]], [e[4] for e in edges if tgt[e[0], e[1], e[2]]])),
        shape=(n, n)), directed=False)
    sizes = np.bincount(cc)
    obj = np.where(sizes[cc] >= 2, cc, -1)
    out = {}
    for positive in (True, False):
        def value(e):
            a, t = aff[e[0], e[1], e[2]], float(tgt[e[0], e[1], e[2]])
            return min(a, t) if positive else max(a, t)

        order = sorted(edges, key=lambda e: (-value(e), e[0] * n + e[3]))
        comps = []
        for k in range(len(order) + 1):
            pre = order[:k]
            comps.append(connected_components(coo_matrix(
                (np.ones(len(pre)), ([e[3] for e in pre], [e[4] for e in pre])), shape=(n, n)), directed=False)[1])
        w = np.zeros(aff.shape)
        for u, v in itertools.combinations(np.flatnonzero(obj >= 0), 2):
            same = obj[u] == obj[v]
            if same != positive:
                continue
            k = next(k for k in range(1, len(comps)) if comps[k][u] == comps[k][v])
            e = order[k - 1]
            if bool(tgt[e[0], e[1], e[2]]) == positive:
                w[e[0], e[1], e[2]] += 1
        out[positive] = w
    return out[True], out[False]


def _random_case(seed, shape=(6, 7)):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, size=shape)  # 0 = membrane
    tgt, mask = affinity_targets(lab, NN)
    aff = np.clip(tgt * 0.6 + rng.random((2, *shape)) * 0.5, 0, 1).astype(np.float32)
    aff[rng.random(aff.shape) < 0.1] = 0.5  # ties
    return aff, tgt, mask


@pytest.mark.parametrize("seed", range(8))
def test_weights_equal_the_maximin_definition(seed):
    aff, tgt, mask = _random_case(seed)
    if seed % 2:
        mask = mask.copy()
        mask[:, 2:4, 3:5] = 0  # a missing patch: its edges leave the graph
    w = malis_weights(aff, tgt, mask)
    pos, neg = _reference(aff, tgt, mask)
    np.testing.assert_array_equal(w.positive, pos)
    np.testing.assert_array_equal(w.negative, neg)
    assert (w.positive[tgt == 0] == 0).all() and (w.negative[tgt == 1] == 0).all()
    # float64 input: the same counts
    w64 = malis_weights(aff.astype(np.float64), tgt, mask)
    np.testing.assert_array_equal(w64.positive, w.positive)


def test_gap_in_a_membrane_carries_every_cross_pair():
    """Two cells split by a membrane column; the network leaves one gap. Every pair of pixels of the
    two cells has that gap as its maximin edge, so all 20 x 20 pairs land on it."""
    lab = np.ones((5, 9), dtype=np.int64)
    lab[:, 4] = 0
    lab[:, 5:] = 2
    tgt, mask = affinity_targets(lab, NN)
    aff = np.where(tgt > 0, 0.9, 0.1).astype(np.float32)
    aff[1, 2, 4] = 0.8  # (2, 4) <-> (2, 3): membrane pixel joined to cell 1
    aff[1, 2, 5] = 0.7  # (2, 5) <-> (2, 4): and to cell 2 -> the gap
    w = malis_weights(aff, tgt, mask)
    assert w.n_objects == 2
    assert w.negative[1, 2, 5] == 20 * 20
    assert w.negative.sum() == 20 * 20
    # same-object pairs: all C(20, 2) of each cell, on target-1 edges
    assert w.positive.sum() == 2 * 190
    # closing the gap moves the maximin to other membrane edges, but the pairs are still counted once
    aff[1, 2, 5] = 0.1
    assert malis_weights(aff, tgt, mask).negative.sum() == 20 * 20


def test_three_d_and_bad_input():
    rng = np.random.default_rng(0)
    lab = rng.integers(1, 3, size=(3, 4, 5))
    tgt, _ = affinity_targets(lab, np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1]]))
    aff = rng.random(tgt.shape)
    w = malis_weights(aff, tgt)
    sizes = [np.sum(lab == k) for k in (1, 2)]
    assert w.positive.shape == (3, 3, 4, 5)
    assert w.negative.sum() > 0 and w.positive.sum() <= sum(s * (s - 1) // 2 for s in sizes)
    with pytest.raises(TypeError, match="affinities"):
        malis_weights(aff.astype(np.int32), tgt)
    with pytest.raises(ValueError, match="targets"):
        malis_weights(aff, tgt[:, :2])
    with pytest.raises(ValueError, match="mask"):
        malis_weights(aff, tgt, np.ones((3, 3, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        malis_weights(aff[:2], tgt[:2])
    bad = aff.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        malis_weights(bad, tgt)
    # a NaN on an edge outside the graph (masked out) is not read
    m = np.ones_like(tgt)
    m[0, 1, 1, 1] = 0
    assert malis_weights(bad, tgt, m).n_objects == w.n_objects


@needs_torch
def test_loss_pushes_the_gap_down():
    lab = np.ones((5, 9), dtype=np.int64)
    lab[:, 4] = 0
    lab[:, 5:] = 2
    tgt, mask = affinity_targets(lab, NN)
    logits = torch.tensor(np.where(tgt > 0, 2.0, -2.0), dtype=torch.float32)[None]
    logits[0, 1, 2, 4] = 1.5
    logits[0, 1, 2, 5] = 1.0  # the gap
    logits.requires_grad_(True)
    t = torch.from_numpy(tgt.astype(np.float32))[None]
    m = torch.from_numpy(mask.astype(np.float32))[None]
    loss = malis_loss(logits, t, m)
    loss.backward()
    g = logits.grad[0]
    assert float(g[1, 2, 5]) > 0  # gradient descent lowers the gap's merge logit
    assert float(g[1, 2, 5]) == float(g.max())
    # a batch with no object pairs gives a zero loss that still back-propagates
    empty = torch.zeros_like(t)
    z = malis_loss(logits, empty, m)
    assert float(z.detach()) == 0.0 and z.requires_grad
