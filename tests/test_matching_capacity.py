"""The capacitated cover (``cover_assignment(cost, max_per_target=K)``): exact optima of the warm-started
repair against HiGHS, against the flow solver started cold (every point on its cheapest partner) and
against exhaustive enumeration; the limits K = 1 (a perfect matching) and K large (the uncapacitated
cover); ties, offsets and k-NN graphs; infeasible instances on both routes of the solver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

import xmodal
from xmodal import _core, cover_assignment, linear_assignment


def random_problem(rng, n, m, *, density, kind, hidden_cover=True):
    """A sparse (n, m) cost matrix; `kind` picks the costs (float, small integers full of ties, all
    equal, half-integers with negatives); `hidden_cover` adds a pair set that covers both sides."""
    mask = rng.random((n, m)) < density
    if hidden_cover:
        for i in range(max(n, m)):
            mask[i % n, i % m] = True
    vals = {"float": lambda: rng.random((n, m)) * 10,
            "ties": lambda: rng.integers(0, 3, (n, m)).astype(float),
            "equal": lambda: np.ones((n, m)),
            "negative": lambda: rng.integers(-6, 20, (n, m)) * 0.5}[kind]()
    r, c = np.nonzero(mask)
    return sp.csr_matrix((vals[r, c], (r, c)), shape=(n, m))


def reference_start(c: sp.csr_matrix, cap: int) -> dict:
    """The native flow solver started from every point on its cheapest partner (no warm start)."""
    g = c.tocsr().copy()
    g.sort_indices()
    return _core.cover_assignment(g.shape[0], g.shape[1], g.indptr.astype(np.int64), g.indices.astype(np.int32),
                                  g.data.astype(np.float64), cap, warm_start=False)


def check_cover(res, c: sp.csr_matrix, cap):
    n, m = c.shape
    big, small = (res.rows, res.cols) if n >= m else (res.cols, res.rows)
    assert np.array_equal(np.sort(big), np.arange(max(n, m)))        # larger side exactly once
    load = np.bincount(small, minlength=min(n, m))
    assert load.min() >= 1 and (cap is None or load.max() <= cap)   # smaller side 1 .. K times
    assert np.array_equal(np.asarray(c[res.rows, res.cols]).ravel(), res.pair_costs)


def reference_cost(c: sp.csr_matrix, out: dict) -> float:
    n, m = c.shape
    partner = out["col_of_row"].astype(np.int64)
    idx = np.arange(max(n, m))
    rows, cols = (idx, partner) if n >= m else (partner, idx)
    return float(np.asarray(c[rows, cols]).ravel().sum())


@pytest.mark.parametrize("kind", ["float", "ties", "equal", "negative"])
@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (30, 30), (60, 21)])
def test_capacitated_cover_equals_highs_and_the_cold_start(kind, shape):
    n, m = shape
    rng = np.random.default_rng([n, m, len(kind), ord(kind[0])])
    checked = 0
    for trial in range(6):
        c = random_problem(rng, n, m, density=[0.06, 0.15, 0.5][trial % 3], kind=kind)
        for cap in (1, 2, 3, 5):
            if cap * min(n, m) < max(n, m):
                continue
            try:
                hi = cover_assignment(c, max_per_target=cap, solver="highs")
            except ValueError:
                with pytest.raises(ValueError, match="infeasible"):
                    cover_assignment(c, max_per_target=cap)
                assert reference_start(c, cap)["failed_row"] >= 0
                continue
            res = cover_assignment(c, max_per_target=cap)
            check_cover(res, c, cap)
            assert res.cost == pytest.approx(hi.cost, rel=1e-9, abs=1e-9)
            cold = reference_start(c, cap)
            assert cold["failed_row"] == -1
            assert reference_cost(c, cold) == pytest.approx(res.cost, rel=1e-9, abs=1e-9)
            checked += 1
    assert checked >= 6


def test_capacitated_cover_small_exhaustive():
    # every assignment of 6 points to 3 targets, integer costs with many ties
    rng = np.random.default_rng(41)
    for _ in range(25):
        c = rng.integers(0, 4, (6, 3)).astype(float)
        c[rng.random((6, 3)) < 0.2] = np.inf
        for cap in (2, 3, 4):
            costs = [sum(c[i, a[i]] for i in range(6)) for a in itertools.product(range(3), repeat=6)
                     if len(set(a)) == 3 and max(a.count(j) for j in range(3)) <= cap]
            best = min(costs, default=np.inf)
            if not np.isfinite(best):
                with pytest.raises(ValueError, match="infeasible"):
                    cover_assignment(c, max_per_target=cap)
                continue
            assert cover_assignment(c, max_per_target=cap).cost == best
            assert cover_assignment(c.T, max_per_target=cap).cost == best


@pytest.mark.parametrize("seed", range(4))
def test_capacity_one_is_the_perfect_matching(seed):
    rng = np.random.default_rng(seed)
    c = random_problem(rng, 35, 35, density=0.15, kind="ties" if seed % 2 else "float")
    res = cover_assignment(c, max_per_target=1)
    assert res.cost == linear_assignment(c).cost
    check_cover(res, c, 1)
    with pytest.raises(ValueError, match="max_per_target >= 2"):
        cover_assignment(c[:, :30], max_per_target=1)


def test_large_capacity_is_the_uncapacitated_cover():
    rng = np.random.default_rng(5)
    c = random_problem(rng, 80, 30, density=0.2, kind="float")
    free = cover_assignment(c)
    top = int(np.bincount(free.cols).max())
    for cap in (top, top + 1, 10**6, 2**62, 10**30):
        res = cover_assignment(c, max_per_target=cap)
        assert res.info["capacity_binding"] is False and res.info["over_capacity"] == 0
        assert np.array_equal(res.rows, free.rows) and np.array_equal(res.cols, free.cols)
    tight = cover_assignment(c, max_per_target=top - 1)
    assert tight.info["capacity_binding"] and tight.info["over_capacity"] > 0
    assert tight.cost > free.cost - 1e-12


@pytest.mark.parametrize("cap", [2, 3])
def test_knn_graph_cover_equals_highs(cap):
    # nuclei-like: a random cloud against a perturbed copy with 8 % missing (as workload P, smaller)
    rng = np.random.default_rng(cap)
    a = rng.uniform(0, 80, (700, 3))
    keep = rng.random(700) > 0.08
    g = xmodal.knn_graph(a, a[keep] + rng.normal(0, 3, (int(keep.sum()), 3)), k=10, radius=6.0)
    res = cover_assignment(g, max_per_target=cap)
    assert res.info["capacity_binding"]
    check_cover(res, g, cap)
    assert res.cost == pytest.approx(cover_assignment(g, max_per_target=cap, solver="highs").cost, rel=1e-10)
    assert reference_cost(g, reference_start(g, cap)) == pytest.approx(res.cost, rel=1e-12)
    again = cover_assignment(g, max_per_target=cap)   # deterministic
    assert np.array_equal(again.rows, res.rows) and np.array_equal(again.cols, res.cols)


def test_exact_fill_with_ties_and_offsets():
    # twice as many points as targets and K = 2: every target takes exactly 2; ties (rounded
    # distances), then the same costs on a 1e12 offset, which must not change the choice
    rng = np.random.default_rng(9)
    b = rng.uniform(0, 200, (150, 2))
    a = b[rng.integers(0, 150, 300)] + rng.normal(0, 8, (300, 2))
    g = xmodal.knn_graph(a, b, k=12)
    g.data = np.round(g.data)
    res = cover_assignment(g, max_per_target=2)
    assert np.all(np.bincount(res.cols, minlength=150) == 2)
    assert res.cost == cover_assignment(g, max_per_target=2, solver="highs").cost  # integer costs: exact
    assert reference_cost(g, reference_start(g, 2)) == res.cost
    shifted = g.copy()
    shifted.data = shifted.data + 1e12
    rs = cover_assignment(shifted, max_per_target=2)
    assert float(np.sum(rs.pair_costs - 1e12)) == res.cost


def test_infeasible_on_both_routes_names_a_true_witness():
    # no cover even without a capacity (columns 3 and 4 only reach row 5): reported by complements
    c = np.full((7, 5), np.inf)
    c[:5, :3] = 1.0
    c[5, 3:] = 1.0
    c[6, 0] = 2.0
    with pytest.raises(ValueError) as exc:
        cover_assignment(c, max_per_target=3)
    msg = str(exc.value)
    assert "rows [0, 1, 2, 3, 4, 6] (6 in all) have allowed pairs only with columns [0, 1, 2] (3 in all)" in msg
    assert "leaves 1 other row for the 2 other columns" in msg
    # a cover exists, but not within the capacity: column 0 alone would need to take rows 0-3
    c = np.full((8, 4), np.inf)
    c[:4, 0] = 1.0
    c[4:, 1:] = np.arange(12.0).reshape(4, 3)
    cover_assignment(c)
    with pytest.raises(ValueError) as exc:
        cover_assignment(c, max_per_target=3)
    msg = str(exc.value)
    assert "rows [0, 1, 2, 3] (4 in all) have allowed pairs only with columns [0] (1 in all)" in msg
    assert "which can take at most max_per_target=3 each, 3 in all" in msg
