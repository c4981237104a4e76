"""Property tests (hypothesis) for xmodal.matching against independent references.

References: scipy ``linear_sum_assignment`` (full matchings, dense with +inf = forbidden),
exhaustive enumeration in exact rational arithmetic (tiny partial and cover problems), HiGHS LPs
written here (partial matchings through the min-cost k-matching curve, covers), and
``scipy.spatial.cKDTree`` plus a brute-force rule for k-NN / radius graphs.

Inputs span shapes 0..N, cost scales 1e-6..1e12, large offsets (1e12 + small), ties (small
integers, constant matrices), forbidden pairs, explicit zeros, extreme unmatched costs (+-1e16,
+-1e300, with and without ``maximize``), dense and sparse forms, degenerate point sets.

Example counts: the numbers below are for the "ci" profile (fixed seed, tests/conftest.py); the
"nightly" profile (``XMODAL_HYPOTHESIS_PROFILE=nightly``) runs 20x as many with random seeds.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

from xmodal import cover_assignment, knn_graph, linear_assignment

EPS = np.finfo(float).eps


def examples(n_ci: int) -> int:
    """Examples for a test: n_ci under the ci profile (100 examples by default), scaled with it."""
    return max(1, round(n_ci * settings.default.max_examples / 100))


def fast(n_ci: int):
    return settings(max_examples=examples(n_ci), suppress_health_check=[HealthCheck.too_slow])


SCALES = [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e12]

# ------------------------------------------------------------------------------- generators


@st.composite
def cost_matrices(draw, max_side=10, min_side=0):
    """(dense float64 matrix with +inf = forbidden, description) over shapes, scales and kinds."""
    n = draw(st.integers(min_side, max_side))
    m = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(["uniform", "ties", "constant", "offset", "signed", "spread"]))
    scale = draw(st.sampled_from(SCALES))
    p_forbid = draw(st.sampled_from([0.0, 0.0, 0.3, 0.7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        c = rng.random((n, m)) * scale
    elif kind == "ties":
        c = rng.integers(0, 3, (n, m)) * scale
    elif kind == "constant":
        c = np.full((n, m), scale)
    elif kind == "offset":  # the small parts decide
        c = 1e12 + rng.random((n, m)) * scale
    elif kind == "signed":
        c = rng.normal(size=(n, m)) * scale
    else:  # many magnitudes at once
        c = rng.random((n, m)) * 10.0 ** rng.integers(-6, 13, (n, m))
    c = np.asarray(c, dtype=float)
    if p_forbid:
        c[rng.random((n, m)) < p_forbid] = np.inf
    return c


def to_sparse(c: np.ndarray, rng: np.random.Generator, store_inf: bool) -> sp.csr_matrix:
    """Sparse form: stored entries = allowed pairs (zeros stored explicitly); forbidden pairs are
    left out, or stored as +inf when ``store_inf``."""
    keep = np.isfinite(c) | (store_inf & (rng.random(c.shape) < 0.5))
    r, j = np.nonzero(keep)
    out = sp.csr_matrix((c[r, j], (r, j)), shape=c.shape)
    assert out.nnz == r.size  # explicit zeros kept
    return out


def sum_tol(values, k: int) -> float:
    """Rounding allowance for comparing two sums of k costs taken from ``values``."""
    finite = np.abs(values[np.isfinite(values)])
    big = float(finite.max()) if finite.size else 0.0
    return 8 * EPS * (k + 2) * big + 1e-300


def check_matching(res, dense: np.ndarray, partial: bool):
    """Structure of a one-to-one result: distinct rows/cols, allowed pairs, exact pair costs."""
    assert np.unique(res.rows).size == res.rows.size
    assert np.unique(res.cols).size == res.cols.size
    assert np.all(np.diff(res.rows) > 0) or res.rows.size <= 1
    assert np.all(np.isfinite(dense[res.rows, res.cols]))
    np.testing.assert_array_equal(res.pair_costs, dense[res.rows, res.cols])
    assert res.rows.size + res.unmatched_rows.size == dense.shape[0]
    assert res.cols.size + res.unmatched_cols.size == dense.shape[1]
    if not partial:
        assert res.rows.size == min(dense.shape)


# -------------------------------------------------------------- full matchings against scipy


@fast(60)
@given(cost_matrices(max_side=12), st.booleans(), st.sampled_from(["dense", "sparse", "sparse_inf"]),
       st.integers(0, 2**32 - 1))
@example(np.random.default_rng(0).random((30, 30)), False, "dense", 0)
@example(np.ones((8, 8)), False, "dense", 0)
def test_full_matching_equals_scipy(c, maximize, form, seed):
    x = -c if maximize else c  # maximize: -inf marks the forbidden pairs, as in scipy
    try:
        r, cc = linear_sum_assignment(x, maximize=maximize)
        ref = float(x[r, cc].sum())
    except ValueError as e:
        assert "infeasible" in str(e)
        ref = None
    inp = x if form == "dense" else to_sparse(x, np.random.default_rng(seed), form == "sparse_inf")
    if ref is None:
        with pytest.raises(ValueError, match="cost matrix is infeasible"):
            linear_assignment(inp, maximize=maximize)
        return
    res = linear_assignment(inp, maximize=maximize)
    check_matching(res, x, partial=False)
    assert abs(res.cost - ref) <= sum_tol(x, min(x.shape))


@fast(25)
@given(cost_matrices(max_side=10, min_side=1), st.integers(0, 2**32 - 1))
def test_full_matching_highs_equals_scipy(c, seed):
    try:
        r, cc = linear_sum_assignment(c)
    except ValueError:
        with pytest.raises(ValueError, match="infeasible"):
            linear_assignment(to_sparse(c, np.random.default_rng(seed), False), solver="highs")
        return
    ref = float(c[r, cc].sum())
    res = linear_assignment(c, solver="highs")
    check_matching(res, c, partial=False)
    # HiGHS' optimality tolerance is relative to the spread of the costs after its reduction
    finite = c[np.isfinite(c)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    assert abs(res.cost - ref) <= sum_tol(c, min(c.shape)) + 1e-6 * spread * min(c.shape)


# ------------------------------------------------------- partial matchings: exact references


def exact_partial_optimum(c: np.ndarray, u: Fraction) -> Fraction:
    """Minimum over all partial matchings of sum(costs) + u * #unmatched, in exact arithmetic."""
    n, m = c.shape
    best = u * (n + m)
    allowed = [[j for j in range(m) if np.isfinite(c[i, j])] for i in range(n)]
    exact = [[Fraction(float(v)) if np.isfinite(v) else None for v in row] for row in c]

    def rec(i, used, acc, k):
        nonlocal best
        if i == n:
            best = min(best, acc + u * (n + m - 2 * k))
            return
        rec(i + 1, used, acc, k)
        for j in allowed[i]:
            if not used & (1 << j):
                rec(i + 1, used | (1 << j), acc + exact[i][j], k + 1)

    rec(0, 0, Fraction(0), 0)
    return best


def exact_objective(res, c: np.ndarray, u: Fraction) -> Fraction:
    pairs = sum((Fraction(float(c[i, j])) for i, j in zip(res.rows, res.cols)), Fraction(0))
    return pairs + u * (res.unmatched_rows.size + res.unmatched_cols.size)


EXTREME_U = [1e16, -1e16, 1e300, -1e300, 1e14, 1e-300, 0.0]


@st.composite
def unmatched_costs(draw, c: np.ndarray | None = None):
    kind = draw(st.sampled_from(["extreme", "relative", "relative", "offset"]))
    if kind == "extreme":
        return draw(st.sampled_from(EXTREME_U))
    finite = np.abs(c[np.isfinite(c)]) if c is not None else np.zeros(0)
    scale = float(finite.max()) if finite.size else 1.0
    if kind == "offset":  # costs 1e12 + small: thresholds inside the small parts
        return 5e11 + draw(st.floats(-2.0, 2.0)) * scale * 1e-12
    return draw(st.floats(-1.0, 1.5)) * scale


@fast(80)
@given(st.data(), cost_matrices(max_side=5), st.booleans(), st.sampled_from(["dense", "sparse", "sparse_inf"]),
       st.integers(0, 2**32 - 1))
@example(None, np.random.default_rng(1).random((5, 5)), False, "dense", 0)
def test_partial_equals_exhaustive_optimum(data, c, maximize, form, seed):
    u = data.draw(unmatched_costs(c)) if data is not None else 1e16
    x = -c if maximize else c
    inp = x if form == "dense" else to_sparse(x, np.random.default_rng(seed), form == "sparse_inf")
    res = linear_assignment(inp, unmatched_cost=u, maximize=maximize)
    check_matching(res, x, partial=True)
    # maximise sum(x) + u * #unmatched  ==  minimise sum(c) - u * #unmatched
    wu = Fraction(-u if maximize else u)
    got = exact_objective(res, c, wu)
    best = exact_partial_optimum(c, wu)
    assert got - best <= Fraction(sum_tol(c, min(c.shape) + 1)), (float(got), float(best))
    assert res.cost == pytest.approx(float(exact_objective(res, x, Fraction(u))), rel=1e-12, abs=1e-300)


def min_cost_k_matching(c: sp.csr_matrix, k: int):
    """Cheapest matching with exactly k pairs as an LP in HiGHS (a min-cost flow of value k, so
    the LP optimum is integral), or None when infeasible; returns the exact cost of the pairs."""
    import highspy

    if k == 0:
        return Fraction(0)
    coo = c.tocoo()
    nnz = coo.nnz
    n, m = c.shape
    base = float(coo.data.min())
    spread = float(coo.data.max() - base)
    obj = (coo.data - base) / (spread if spread > 0 else 1.0)  # every pair costs base once: k * base
    lp = highspy.HighsLp()
    lp.num_col_ = nnz
    lp.num_row_ = n + m + 1
    lp.col_cost_ = obj
    lp.col_lower_ = np.zeros(nnz)
    lp.col_upper_ = np.ones(nnz)
    lp.row_lower_ = np.concatenate([np.zeros(n + m), [k]])
    lp.row_upper_ = np.concatenate([np.ones(n + m), [k]])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(0, 3 * nnz + 1, 3, dtype=np.int32)
    idx = np.empty(3 * nnz, dtype=np.int32)
    idx[0::3], idx[1::3], idx[2::3] = coo.row, n + coo.col, n + m
    lp.a_matrix_.index_ = idx
    lp.a_matrix_.value_ = np.ones(3 * nnz)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.passModel(lp)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    xv = np.asarray(h.getSolution().col_value)
    assert np.abs(xv - np.round(xv)).max() < 1e-6  # integral vertex
    chosen = xv > 0.5
    return sum((Fraction(float(v)) for v in coo.data[chosen]), Fraction(0))


def partial_optimum_by_cardinality(c: sp.csr_matrix, u: Fraction) -> Fraction:
    """min_k f(k) + u (n + m - 2k), f = cheapest k-matching (convex in k): binary search on the
    marginal cost f(k+1) - f(k) against 2u."""
    n, m = c.shape
    if c.nnz == 0:
        return u * (n + m)
    nu = int((maximum_bipartite_matching(sp.csr_matrix((np.ones(c.nnz), c.indices, c.indptr), shape=c.shape),
                                         perm_type="column") >= 0).sum())
    f = {}

    def F(k):
        if k not in f:
            f[k] = min_cost_k_matching(c, k)
        return f[k]

    lo, hi = 0, nu  # find the smallest k with F(k+1) - F(k) >= 2u (or nu)
    while lo < hi:
        mid = (lo + hi) // 2
        if F(mid + 1) - F(mid) >= 2 * u:
            hi = mid
        else:
            lo = mid + 1
    return min(F(k) + u * (n + m - 2 * k) for k in {max(lo - 1, 0), lo, min(lo + 1, nu)})


@fast(30)
@given(st.data(), cost_matrices(max_side=14, min_side=1), st.sampled_from(["dense", "sparse"]),
       st.sampled_from(["native", "highs"]), st.integers(0, 2**32 - 1))
def test_partial_equals_highs_cardinality_reference(data, c, form, solver, seed):
    u = data.draw(unmatched_costs(c))
    sc = to_sparse(c, np.random.default_rng(seed), False)
    res = linear_assignment(c if form == "dense" else sc, unmatched_cost=u, solver=solver)
    check_matching(res, c, partial=True)
    got = exact_objective(res, c, Fraction(u))
    best = partial_optimum_by_cardinality(sc, Fraction(u))
    finite = c[np.isfinite(c)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    tol = sum_tol(c, min(c.shape) + 1) + 1e-6 * spread * (min(c.shape) + 1)  # HiGHS tolerances
    assert abs(got - best) <= Fraction(tol), (float(got), float(best), u)


@fast(20)
@given(st.integers(0, 2**32 - 1), st.integers(20, 120), st.integers(20, 120), st.integers(1, 5),
       st.sampled_from([1e8, 1e16, 1e300, np.finfo(float).max]), st.sampled_from([1e-6, 1.0, 1e6]),
       st.booleans())
def test_huge_unmatched_cost_on_knn_graphs(seed, n, m, k, u, scale, maximize):
    """Issue 10 at graph scale: with a huge unmatched cost the optimum is the cheapest matching of
    maximum size (scipy on the dense form when a full matching exists, else a k-matching LP)."""
    rng = np.random.default_rng(seed)
    a = rng.random((n, 3)) * scale * 50
    b = rng.random((m, 3)) * scale * 50
    g = knn_graph(a, b, k=k, symmetric=bool(seed % 2))
    sign = -1.0 if maximize else 1.0
    dense = np.full(g.shape, np.inf)
    coo = g.tocoo()
    dense[coo.row, coo.col] = coo.data
    res = linear_assignment(sign * g if maximize else g, unmatched_cost=sign * u, maximize=maximize)
    check_matching(res, sign * dense, partial=True)
    nu = int((maximum_bipartite_matching(g, perm_type="column") >= 0).sum())
    assert len(res) == nu  # maximum size
    got = float(np.sum(dense[res.rows, res.cols]))
    if nu == min(n, m):
        r, cc = linear_sum_assignment(dense)
        ref = float(dense[r, cc].sum())
        assert abs(got - ref) <= sum_tol(dense, nu)
    else:
        ref = float(min_cost_k_matching(g, nu))
        spread = float(coo.data.max() - coo.data.min())
        assert got <= ref + sum_tol(dense, nu) + 1e-6 * spread * nu


# ------------------------------------------------------------------------------------ covers


def exact_cover_optimum(c: np.ndarray, cap):
    """Cheapest cover by enumeration (larger side exactly once, smaller side at least once and at
    most cap), exact arithmetic; None when infeasible."""
    t = c if c.shape[0] >= c.shape[1] else c.T
    nl, ns = t.shape
    best = None
    for a in itertools.product(range(ns), repeat=nl):
        counts = np.bincount(a, minlength=ns)
        if counts.min() < 1 or (cap is not None and counts.max() > cap):
            continue
        v = t[np.arange(nl), list(a)]
        if not np.all(np.isfinite(v)):
            continue
        s = sum((Fraction(float(z)) for z in v), Fraction(0))
        best = s if best is None or s < best else best
    return best


@fast(60)
@given(cost_matrices(max_side=5, min_side=1), st.sampled_from([None, None, 1, 2, 3]),
       st.sampled_from(["dense", "sparse", "sparse_inf"]), st.integers(0, 2**32 - 1))
def test_cover_equals_exhaustive_optimum(c, cap, form, seed):
    if max(c.shape) > 5 or (max(c.shape) == 5 and min(c.shape) > 4):
        c = c[:5, :4] if c.shape[0] >= c.shape[1] else c[:4, :5]
    inp = c if form == "dense" else to_sparse(c, np.random.default_rng(seed), form == "sparse_inf")
    best = exact_cover_optimum(c, cap)
    if best is None:
        with pytest.raises(ValueError):
            cover_assignment(inp, max_per_target=cap)
        return
    res = cover_assignment(inp, max_per_target=cap)
    big, small = (res.rows, res.cols) if c.shape[0] >= c.shape[1] else (res.cols, res.rows)
    assert np.array_equal(np.sort(big), np.arange(max(c.shape)))
    assert np.unique(small).size == min(c.shape)
    if cap is not None:
        assert np.bincount(small).max() <= cap
    np.testing.assert_array_equal(res.pair_costs, c[res.rows, res.cols])
    got = sum((Fraction(float(v)) for v in res.pair_costs), Fraction(0))
    assert got - best <= Fraction(sum_tol(c, max(c.shape))), (float(got), float(best))


@fast(25)
@given(cost_matrices(max_side=16, min_side=1), st.sampled_from([None, 2, 4]), st.integers(0, 2**32 - 1))
def test_cover_equals_highs(c, cap, seed):
    sc = to_sparse(c, np.random.default_rng(seed), False)
    try:
        ref = cover_assignment(sc, max_per_target=cap, solver="highs")
    except ValueError:
        with pytest.raises(ValueError):
            cover_assignment(sc, max_per_target=cap)
        return
    res = cover_assignment(sc, max_per_target=cap)
    finite = c[np.isfinite(c)]
    spread = float(finite.max() - finite.min())
    assert abs(res.cost - ref.cost) <= sum_tol(c, max(c.shape)) + 1e-6 * spread * max(c.shape)


# --------------------------------------------------------------------------- k-NN / radius


@st.composite
def point_sets(draw):
    dim = draw(st.sampled_from([2, 3]))
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["uniform", "uniform", "grid", "duplicates", "identical", "collinear"]))
    scale = draw(st.sampled_from(SCALES))
    offset = draw(st.sampled_from([0.0, 0.0, 1.0, -1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        a, b = rng.random((n, dim)), rng.random((m, dim))
    elif kind == "grid":  # many equal distances
        a, b = rng.integers(0, 4, (n, dim)).astype(float), rng.integers(0, 4, (m, dim)).astype(float)
    elif kind == "duplicates":
        base = rng.random((5, dim))
        a, b = base[rng.integers(0, 5, n)], base[rng.integers(0, 5, m)]
    elif kind == "identical":
        a, b = np.zeros((n, dim)), np.zeros((m, dim))
    else:
        t = rng.random(n + m)
        line = np.outer(t, rng.random(dim) + 0.1)
        a, b = line[:n], line[n:]
    return (a + offset) * scale, (b + offset) * scale, scale


def sq_dist(a, b):
    d2 = np.zeros((a.shape[0], b.shape[0]))
    for ax in range(a.shape[1]):  # axis order, as documented
        d2 = d2 + (a[:, None, ax] - b[None, :, ax]) ** 2
    return d2


def knn_rule(d2: np.ndarray, k: int):
    """Pairs (i, j): j among the k smallest (d2, j) of row i (the documented tie rule)."""
    out = set()
    for i in range(d2.shape[0]):
        order = np.lexsort((np.arange(d2.shape[1]), d2[i]))[:k]
        out |= {(i, int(j)) for j in order}
    return out


@fast(60)
@given(point_sets(), st.one_of(st.none(), st.integers(1, 8)),
       st.sampled_from([None, 0.0, 0.1, 0.3, 1.0, "pair", "pair"]), st.booleans(), st.integers(0, 2**16))
def test_knn_graph_equals_references(pts, k, rel_radius, symmetric, pick):
    a, b, scale = pts
    d2 = sq_dist(a, b)
    if rel_radius == "pair":  # exactly the distance of one pair: the rounding boundary
        radius = float(np.sqrt(d2.ravel()[pick % d2.size]))
    else:
        radius = None if rel_radius is None else rel_radius * scale
    if k is None and radius is None:
        k = 3
    g = knn_graph(a, b, k=k, radius=radius, symmetric=symmetric)
    coo = g.tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist()))
    # brute force with the documented rule (k-NN ties: lower index) and distance <= radius
    want = set()
    if k is not None:
        want |= knn_rule(d2, k)
        if symmetric:
            want |= {(i, j) for j, i in knn_rule(d2.T, k)}
    if radius is not None:
        within = d2 <= radius * radius  # squared distances, as documented (and as cKDTree)
        want |= set(zip(*[x.tolist() for x in np.nonzero(within)]))
    assert got == want
    np.testing.assert_allclose(coo.data, np.sqrt(d2[coo.row, coo.col]), rtol=1e-12, atol=0)
    assert g.nnz == len(got)  # identical points are stored as explicit zeros
    # cKDTree: the k smallest distances of every query agree (tie-proof), and so do the pair
    # sets on the radius part
    tb = cKDTree(b)
    if k is not None:
        kk = min(k, b.shape[0])
        dk, _ = tb.query(a, kk)
        dk = np.asarray(dk).reshape(a.shape[0], kk)
        dense = g.toarray()
        for i in range(a.shape[0]):
            ours = np.sort(dense[i, [j for (_, j) in knn_rule(d2[i:i + 1], kk)]])
            np.testing.assert_allclose(ours, np.sort(dk[i]), rtol=1e-12, atol=0)
    if radius is not None:
        ball = tb.query_ball_point(a, radius)
        ref = {(i, int(j)) for i, js in enumerate(ball) for j in js}
        inside = {(i, j) for (i, j) in got if d2[i, j] <= radius * radius}
        assert inside == ref


@fast(20)
@given(point_sets(), st.integers(1, 6))
def test_knn_graph_tie_free_pairs_equal_ckdtree(pts, k):
    a, b, scale = pts
    d2 = sq_dist(a, b)
    # skip inputs with ties at the k-th place (cKDTree guarantees no order among equal distances)
    for mat in (d2, d2.T):
        s = np.sort(mat, axis=1)
        kk = min(k, mat.shape[1])
        if kk < mat.shape[1] and np.any(s[:, kk - 1] == s[:, kk]):
            return
    g = knn_graph(a, b, k=k)
    coo = g.tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist()))
    ta, tb = cKDTree(a), cKDTree(b)
    ref = set()
    kb, ka = min(k, b.shape[0]), min(k, a.shape[0])
    _, ib = tb.query(a, kb)
    ref |= {(i, int(j)) for i, row in enumerate(np.asarray(ib).reshape(len(a), kb)) for j in row}
    _, ia = ta.query(b, ka)
    ref |= {(int(i), j) for j, row in enumerate(np.asarray(ia).reshape(len(b), ka)) for i in row}
    assert got == ref
