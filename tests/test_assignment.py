"""xmodal.linear_assignment / cover_assignment: exact optima against scipy and HiGHS."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

import xmodal
from xmodal import cover_assignment, linear_assignment


def check_one_to_one(res, cost_dense=None):
    assert len(np.unique(res.rows)) == res.rows.size
    assert len(np.unique(res.cols)) == res.cols.size
    assert res.rows.size + res.unmatched_rows.size == res.shape[0]
    assert res.cols.size + res.unmatched_cols.size == res.shape[1]
    if cost_dense is not None:
        np.testing.assert_array_equal(res.pair_costs, cost_dense[res.rows, res.cols])


def random_sparse(rng, n, m, density, integer=False):
    mask = rng.random((n, m)) < density
    vals = rng.integers(0, 20, (n, m)).astype(float) if integer else rng.random((n, m)) * 10
    r, c = np.nonzero(mask)
    return sp.csr_matrix((vals[r, c], (r, c)), shape=(n, m))


def allowed(c):
    """Stored entries (explicit zeros included) = allowed pairs."""
    coo = sp.coo_matrix(c)
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def partial_reference(cost, u):
    """Optimum of the partial problem by scipy on the dense (n+m) augmented matrix."""
    n, m = cost.shape
    big = 1e9
    aug = np.full((n + m, m + n), big)
    aug[:n, :m] = cost
    aug[:n, m:][np.arange(n), np.arange(n)] = u
    aug[n:, :m][np.arange(m), np.arange(m)] = u
    aug[n:, m:] = 0.0
    r, c = linear_sum_assignment(aug)
    return aug[r, c].sum()


# ------------------------------------------------------------------ dense, against scipy LSA

@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (7, 12), (12, 7), (40, 40), (30, 55), (60, 25)])
@pytest.mark.parametrize("kind", ["float", "int", "ties", "negative"])
def test_dense_equals_scipy(shape, kind):
    rng = np.random.default_rng(hash((shape, kind)) % 2**32)
    if kind == "float":
        c = rng.random(shape)
    elif kind == "int":
        c = rng.integers(0, 100, shape)
    elif kind == "ties":
        c = rng.integers(0, 3, shape).astype(float)
    else:
        c = rng.normal(size=shape) * 50
    r, cc = linear_sum_assignment(c)
    res = linear_assignment(c)
    check_one_to_one(res, np.asarray(c, float))
    assert res.rows.size == min(shape)
    assert res.cost == pytest.approx(float(np.asarray(c, float)[r, cc].sum()), rel=1e-12, abs=1e-9)
    assert res.unmatched_rows.size == shape[0] - min(shape)


@pytest.mark.parametrize("shape", [(6, 6), (8, 13), (13, 8)])
def test_dense_maximize_equals_scipy(shape):
    rng = np.random.default_rng(7)
    c = rng.random(shape)
    r, cc = linear_sum_assignment(c, maximize=True)
    res = linear_assignment(c, maximize=True)
    check_one_to_one(res, c)
    assert res.cost == pytest.approx(c[r, cc].sum(), rel=1e-12)


def test_integer_costs_exact():
    rng = np.random.default_rng(8)
    c = rng.integers(-1000, 1000, (50, 60))
    r, cc = linear_sum_assignment(c)
    assert linear_assignment(c).cost == float(c[r, cc].sum())


def test_trivial_shapes():
    res = linear_assignment(np.zeros((0, 3)))
    assert res.rows.size == 0 and res.unmatched_cols.tolist() == [0, 1, 2] and res.cost == 0.0
    res = linear_assignment(np.zeros((2, 0)), unmatched_cost=1.5)
    assert res.cost == 3.0 and res.unmatched_rows.tolist() == [0, 1]


# ------------------------------------------------------------------ sparse

@pytest.mark.parametrize("seed", range(6))
def test_sparse_equals_scipy_full_matching_and_highs(seed):
    rng = np.random.default_rng(seed)
    n, m = 120, 150 if seed % 2 else 120
    # a guaranteed-feasible sparse instance: a hidden matching plus random edges
    c = random_sparse(rng, n, m, 0.05, integer=seed % 3 == 0).tolil()
    perm = rng.permutation(m)[:n]
    for i in range(n):
        c[i, perm[i]] = rng.random() * 10
    c = c.tocsr()
    c.data += 1.0  # scipy drops explicit zeros: keep every stored cost positive here
    r, cc = min_weight_full_bipartite_matching(c)
    ref = c[r, cc].sum()
    res = linear_assignment(c)
    hi = linear_assignment(c, solver="highs")
    check_one_to_one(res, c.toarray())
    assert res.rows.size == n and hi.rows.size == n
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert hi.cost == pytest.approx(ref, rel=1e-9)
    # no forbidden pair
    assert np.all(c[res.rows, res.cols].A1 == res.pair_costs)
    assert set(zip(res.rows.tolist(), res.cols.tolist())) <= allowed(c)


def test_explicit_zero_is_an_allowed_pair():
    c = sp.csr_matrix((np.array([0.0, 5.0]), np.array([1, 0]), np.array([0, 1, 2])), shape=(2, 2))
    assert c.nnz == 2
    res = linear_assignment(c)
    assert res.rows.tolist() == [0, 1] and res.cols.tolist() == [1, 0] and res.cost == 5.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("u", [0.5, 2.0, 6.0])
def test_partial_equals_dense_reference_and_highs(seed, u):
    rng = np.random.default_rng(100 + seed)
    n, m = 25 + seed, 30 - seed
    dense = rng.random((n, m)) * 10
    res = linear_assignment(dense, unmatched_cost=u)
    check_one_to_one(res, dense)
    ref = partial_reference(dense, u)
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert res.cost == pytest.approx(res.matched_cost + u * (res.unmatched_rows.size + res.unmatched_cols.size))
    assert np.all(res.pair_costs <= 2 * u)
    # sparse version: forbidden pairs = large cost in the dense reference
    c = random_sparse(rng, n, m, 0.2)
    d = np.full((n, m), 1e6)
    d[c.nonzero()] = c.data
    res_s = linear_assignment(c, unmatched_cost=u)
    assert res_s.cost == pytest.approx(partial_reference(d, u), rel=1e-12)
    hi = linear_assignment(c, unmatched_cost=u, solver="highs")
    assert hi.cost == pytest.approx(res_s.cost, rel=1e-9)


def test_partial_maximize():
    rng = np.random.default_rng(5)
    c = rng.random((10, 12))
    res = linear_assignment(c, unmatched_cost=0.3, maximize=True)
    # maximise sum + 0.3 per unmatched point == minimise (-c) with unmatched cost -0.3
    ref = -partial_reference(-c, -0.3)
    assert res.cost == pytest.approx(ref, rel=1e-12)
    hi = linear_assignment(c, unmatched_cost=0.3, maximize=True, solver="highs")
    assert hi.cost == pytest.approx(ref, rel=1e-9)


def test_deterministic():
    rng = np.random.default_rng(9)
    c = rng.integers(0, 3, (80, 90)).astype(float)  # many ties
    r1, r2 = linear_assignment(c), linear_assignment(c)
    np.testing.assert_array_equal(r1.cols, r2.cols)
    with xmodal.num_threads(1):
        r3 = linear_assignment(c)
    np.testing.assert_array_equal(r1.cols, r3.cols)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "bsr"])
def test_sparse_formats(fmt):
    rng = np.random.default_rng(11)
    c = random_sparse(rng, 30, 30, 0.3) + sp.identity(30) * 20
    ref = linear_assignment(c.tocsr()).cost
    assert linear_assignment(c.asformat(fmt)).cost == ref
    assert linear_assignment(sp.csr_array(c)).cost == ref


# ------------------------------------------------------------------ cover

def cover_brute_reference(c, cap=None):
    """Cover optimum by HiGHS (independent LP path) for small instances."""
    return cover_assignment(c, max_per_target=cap, solver="highs").cost


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(60, 45), (45, 60), (50, 50)])
def test_cover_equals_highs(seed, shape):
    rng = np.random.default_rng(200 + seed)
    n, m = shape
    c = random_sparse(rng, n, m, 0.12, integer=seed % 2 == 0).tolil()
    for i in range(max(n, m)):  # make it feasible: a hidden cover
        if n >= m:
            c[i, i % m] = rng.random() * 10
        else:
            c[i % n, i] = rng.random() * 10
    c = c.tocsr()
    res = cover_assignment(c)
    hi = cover_assignment(c, solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-9)
    big, small = (res.rows, res.cols) if n >= m else (res.cols, res.rows)
    assert np.array_equal(np.sort(big), np.arange(max(n, m)))  # larger side exactly once
    assert np.unique(small).size == min(n, m)  # smaller side at least once
    assert np.all(c[res.rows, res.cols].A1 == res.pair_costs)
    assert res.cost == pytest.approx(res.pair_costs.sum())
    for cap in (2, 3):
        try:
            hc = cover_assignment(c, max_per_target=cap, solver="highs")
        except ValueError:
            with pytest.raises(ValueError):
                cover_assignment(c, max_per_target=cap)
            continue
        rc = cover_assignment(c, max_per_target=cap)
        assert rc.cost == pytest.approx(hc.cost, rel=1e-9)
        assert np.bincount(small if cap is None else (rc.cols if n >= m else rc.rows)).max() <= cap
        assert rc.cost >= res.cost - 1e-9


def test_capacity_shortcut_and_binding_path_agree():
    rng = np.random.default_rng(12)
    c = rng.random((30, 12))
    free = cover_assignment(c)
    load = np.bincount(free.cols, minlength=12).max()
    loose = cover_assignment(c, max_per_target=int(load))
    assert loose.info["capacity_binding"] is False and loose.cost == free.cost
    tight = cover_assignment(c, max_per_target=3)
    assert tight.info["capacity_binding"] == bool(load > 3)
    assert tight.cost == pytest.approx(cover_assignment(c, max_per_target=3, solver="highs").cost, rel=1e-9)
    assert np.bincount(tight.cols).max() <= 3


def test_cover_dense_square_is_perfect_matching():
    rng = np.random.default_rng(3)
    c = rng.random((20, 20))
    r, cc = linear_sum_assignment(c)
    assert cover_assignment(c).cost == pytest.approx(c[r, cc].sum(), rel=1e-12)


def test_cover_small_exhaustive():
    import itertools

    rng = np.random.default_rng(4)
    for _ in range(20):
        c = rng.integers(0, 6, (5, 3)).astype(float)
        best = min(sum(c[i, a[i]] for i in range(5)) for a in itertools.product(range(3), repeat=5)
                   if len(set(a)) == 3)
        assert cover_assignment(c).cost == best
        best2 = min(sum(c[i, a[i]] for i in range(5)) for a in itertools.product(range(3), repeat=5)
                    if len(set(a)) == 3 and max(a.count(j) for j in range(3)) <= 2)
        assert cover_assignment(c, max_per_target=2).cost == best2


# ------------------------------------------------------------------ property tests

@st.composite
def sparse_problems(draw):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    density = draw(st.floats(0.1, 1.0))
    integer = draw(st.booleans())
    rng = np.random.default_rng(seed)
    return random_sparse(rng, n, m, density, integer=integer)


@settings(max_examples=60, deadline=None)
@given(sparse_problems(), st.floats(0.0, 15.0))
def test_property_partial(c, u):
    res = linear_assignment(c, unmatched_cost=u)
    check_one_to_one(res)
    assert set(zip(res.rows.tolist(), res.cols.tolist())) <= allowed(c)
    assert res.matched_cost == pytest.approx(float(sum(c[i, j] for i, j in zip(res.rows, res.cols))))
    hi = linear_assignment(c, unmatched_cost=u, solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(sparse_problems())
def test_property_full(c):
    try:
        hi = linear_assignment(c, solver="highs")
    except ValueError:
        with pytest.raises(ValueError, match="cannot be matched"):
            linear_assignment(c)
        return
    res = linear_assignment(c)
    check_one_to_one(res)
    assert res.rows.size == min(c.shape)
    assert set(zip(res.rows.tolist(), res.cols.tolist())) <= allowed(c)
    assert res.cost == pytest.approx(float(sum(c[i, j] for i, j in zip(res.rows, res.cols))))
    assert res.cost == pytest.approx(hi.cost, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(sparse_problems(), st.one_of(st.none(), st.integers(1, 4)))
def test_property_cover(c, cap):
    try:
        hi = cover_assignment(c, max_per_target=cap, solver="highs")
    except ValueError:
        with pytest.raises(ValueError):
            cover_assignment(c, max_per_target=cap)
        return
    res = cover_assignment(c, max_per_target=cap)
    assert set(zip(res.rows.tolist(), res.cols.tolist())) <= allowed(c)
    assert res.cost == pytest.approx(hi.cost, rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------ errors

def test_infeasible_row_without_candidates():
    c = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"rows \[1\].*larger k or radius"):
        linear_assignment(c)
    with pytest.raises(ValueError, match=r"columns \[1\]"):
        linear_assignment(c.T)
    with pytest.raises(ValueError, match=r"rows \[1\].*cannot be matched"):
        linear_assignment(c, solver="highs")


def test_infeasible_hall_violation_names_rows():
    # rows 0, 1, 2 all only reach column 0 and 1
    c = sp.csr_matrix(np.array([[1.0, 2.0, 0, 0], [3.0, 1.0, 0, 0], [2.0, 2.0, 0, 0], [0, 0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"cost matrix is infeasible.*rows \[0, 1, 2\].*only 2 columns \[0, 1\]"):
        linear_assignment(c)
    res = linear_assignment(c, unmatched_cost=10.0)  # partial: always feasible
    assert res.unmatched_rows.size == 1


def test_infeasible_cover():
    c = sp.csr_matrix(np.array([[1.0, 0], [2.0, 0], [3.0, 0]]))
    with pytest.raises(ValueError, match=r"columns \[1\].*cannot be covered"):
        cover_assignment(c)
    c = sp.csr_matrix(np.array([[1.0, 1.0, 0], [1.0, 1.0, 0], [2.0, 0, 0], [0, 0, 1.0]]))
    c2 = sp.csr_matrix(np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 3.0, 0]]))
    cover_assignment(c2)  # feasible
    c3 = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))
    assert cover_assignment(c3, max_per_target=2).rows.size == 4
    with pytest.raises(ValueError, match="max_per_target"):
        cover_assignment(c3, max_per_target=1)
    del c


def test_cover_hall_violation():
    # 4 rows (larger side), 3 columns; columns 0 and 1 are only reachable from row 0
    c = sp.csr_matrix(np.array([[1.0, 1.0, 1.0], [0, 0, 1.0], [0, 0, 1.0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        cover_assignment(c)
    with pytest.raises(ValueError, match="infeasible"):
        cover_assignment(c, solver="highs")
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        cover_assignment(c, max_per_target=3)


@pytest.mark.parametrize("bad,exc,match", [
    (np.array([[1.0, np.nan]]), ValueError, r"invalid numeric entries.*\(0, 1\) is nan"),
    (np.array([[1.0, -np.inf]]), ValueError, r"invalid numeric entries.*\(0, 1\) is -inf"),
    (sp.csr_matrix(np.array([[1.0, -np.inf]])), ValueError, "invalid numeric entries"),
    (sp.csr_matrix(np.array([[np.nan, 1.0]])), ValueError, r"\(0, 0\) is nan"),
    (np.zeros(3), ValueError, "2-D"),
    (np.array([["a"]]), TypeError, "numeric"),
    (sp.csr_matrix(np.array([[1 + 1j]])), TypeError, "real"),
    ("cost", TypeError, "cost"),
])
def test_cost_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        linear_assignment(bad)
    with pytest.raises(exc, match=match):
        cover_assignment(bad)


def test_option_errors():
    c = np.ones((2, 2))
    with pytest.raises(ValueError, match="solver"):
        linear_assignment(c, solver="lapjv")
    with pytest.raises(ValueError, match="unmatched_cost"):
        linear_assignment(c, unmatched_cost=-np.inf)
    with pytest.raises(ValueError, match="unmatched_cost.*maximize"):
        linear_assignment(c, unmatched_cost=np.inf, maximize=True)
    with pytest.raises(ValueError, match="unmatched_cost.*nan"):
        linear_assignment(c, unmatched_cost=np.nan)
    with pytest.raises(TypeError, match="unmatched_cost"):
        linear_assignment(c, unmatched_cost="1")
    with pytest.raises(TypeError, match="maximize"):
        linear_assignment(c, maximize=1)
    with pytest.raises(ValueError, match="max_per_target"):
        cover_assignment(c, max_per_target=0)
    coo = sp.coo_matrix((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([1, 1]))), shape=(2, 2))
    with pytest.raises(ValueError, match="duplicate"):
        linear_assignment(coo)


def test_native_rechecks_bad_csr():
    from xmodal import _core

    ip = np.array([0, 1], dtype=np.int64)
    with pytest.raises(ValueError, match="out of range"):
        _core.sparse_assignment(1, 1, ip, np.array([5], dtype=np.int32), np.array([1.0]))
    with pytest.raises(ValueError, match="indptr"):
        _core.sparse_assignment(1, 1, np.array([0, 3], dtype=np.int64), np.array([0], dtype=np.int32),
                                np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        _core.sparse_assignment(1, 1, ip, np.array([0], dtype=np.int32), np.array([np.nan]))


# ------------------------------------------------------------------ issue 10: large unmatched costs

def _full_reference(c):
    r, cc = linear_sum_assignment(c)
    return float(np.asarray(c, float)[r, cc].sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("u", [1e8, 1e12, 1e14, 1e16, 1e100, 1e300, np.finfo(float).max])
@pytest.mark.parametrize("solver", ["native", "highs"])
def test_huge_unmatched_cost_gives_the_full_optimum(seed, u, solver):
    # Issue 10: c_ij - u cancelled the costs in float64 (1e16: 16.71 instead of 1.73).
    c = np.random.default_rng(seed).random((30, 30))
    res = linear_assignment(c, unmatched_cost=u, solver=solver)
    assert len(res) == 30 and res.unmatched_rows.size == 0
    assert res.matched_cost == pytest.approx(_full_reference(c), rel=1e-12)
    assert res.cost == res.matched_cost


@pytest.mark.parametrize("shape", [(30, 20), (20, 30)])
@pytest.mark.parametrize("u", [1e14, 1e16, 1e200])
def test_huge_unmatched_cost_rectangular(shape, u):
    c = np.random.default_rng(1).random(shape) * 3.0
    res = linear_assignment(c, unmatched_cost=u)
    assert len(res) == 20
    assert res.matched_cost == pytest.approx(_full_reference(c), rel=1e-12)
    assert res.cost == res.matched_cost + 10 * u


def test_huge_unmatched_cost_maximize():
    c = np.random.default_rng(2).random((30, 30))
    r, cc = linear_sum_assignment(c, maximize=True)
    for u in (-1e16, -1e12, -1e300):
        res = linear_assignment(c, unmatched_cost=u, maximize=True)
        assert len(res) == 30
        assert res.matched_cost == pytest.approx(c[r, cc].sum(), rel=1e-12)
    # a huge *gain* per unmatched point leaves everything unmatched
    res = linear_assignment(c, unmatched_cost=1e16, maximize=True)
    assert len(res) == 0 and res.cost == 60 * 1e16
    res = linear_assignment(c, unmatched_cost=-1e16)
    assert len(res) == 0 and res.cost == -60 * 1e16


@pytest.mark.parametrize("u", [1e10, 1e16, 1e250])
def test_huge_unmatched_cost_sparse_knn_graph(u):
    # Issue 10: also wrong on sparse k-NN graphs against HiGHS. With a huge unmatched cost the
    # optimum is the cheapest matching of maximum size: here a full matching exists, so it is the
    # min_weight_full_bipartite_matching optimum.
    rng = np.random.default_rng(3)
    a = rng.random((400, 3)) * 100
    b = np.concatenate([a[:350] + rng.normal(scale=1.0, size=(350, 3)), rng.random((30, 3)) * 100])
    g = xmodal.knn_graph(a, b, k=6)
    r, cc = min_weight_full_bipartite_matching(g)  # no exact zeros in this graph
    ref = float(g[r, cc].sum())
    for solver in ("native", "highs"):
        res = linear_assignment(g, unmatched_cost=u, solver=solver)
        assert len(res) == 380
        assert res.matched_cost == pytest.approx(ref, rel=1e-12)
        assert res.cost == pytest.approx(ref + 20 * u, rel=1e-15)


def test_huge_unmatched_cost_without_full_matching():
    # rows 0-2 only reach columns 0-1: one of them stays unmatched at any unmatched cost, and the
    # rest is the cheapest maximum matching (brute force below)
    c = sp.csr_matrix(np.array([[1.0, 2.0, 0, 0], [3.0, 1.5, 0, 0], [2.0, 2.5, 0, 0], [0, 0, 1.0, 4.0]]))
    # cheapest way to give columns 0 and 1 two distinct rows of {0, 1, 2}, plus row 3 -> column 2
    best = min(c[i, 0] + c[j, 1] for i in range(3) for j in range(3) if i != j) + 1.0
    for u in (50.0, 1e16, 1e300):
        res = linear_assignment(c, unmatched_cost=u)
        assert len(res) == 3 and res.matched_cost == best
        assert res.cost == best + 2 * u  # one row and one column unmatched
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_assignment(c, unmatched_cost=np.inf)  # +inf: every row must be matched, as None


def test_unmatched_cost_inf_is_none():
    c = np.random.default_rng(4).random((6, 9))
    ref = linear_assignment(c)
    for kw in ({"unmatched_cost": np.inf}, {"unmatched_cost": float("inf")}):
        res = linear_assignment(c, **kw)
        assert res.problem == "one-to-one" and res.cost == ref.cost
        np.testing.assert_array_equal(res.cols, ref.cols)
    res = linear_assignment(c, unmatched_cost=-np.inf, maximize=True)
    assert res.cost == linear_assignment(c, maximize=True).cost


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e12, -1e12])
def test_partial_at_large_offsets_equals_reference(offset):
    # costs like 1e12 + small: the small parts decide, at any unmatched cost
    rng = np.random.default_rng(5)
    small = rng.random((12, 14))
    c = offset + small
    for half_gap in (0.1, 0.3, 0.5, 2.0):
        u = offset / 2 + half_gap  # a pair is worth matching when its small part is below 2 * half_gap
        res = linear_assignment(c, unmatched_cost=u)
        ref = partial_reference_exact(c, u)
        assert abs(res.cost - ref) <= 1e-9 * max(1.0, abs(offset)) * 30


def partial_reference_exact(c, u):
    """Partial optimum from scipy on the dense (n+m) augmented matrix, shifted so that the matrix
    holds c - min(c) and u - min(c) / 2 (exact for these tests' ranges)."""
    c = np.asarray(c, float)
    n, m = c.shape
    base = c.min()
    # sum c + u * (#unmatched) = sum (c - base) + (u - base / 2) * (#unmatched) + base * (n + m) / 2
    return partial_reference(c - base, u - base / 2) + base * (n + m) / 2


# ------------------------------------------------------------------ the cases scipy's tests check

@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_scipy_case_list_and_matrix_inputs():
    c = [[4, 2, 7], [3, 5, 1]]
    ref = linear_assignment(np.asarray(c))
    for x in (c, np.asmatrix(c), tuple(map(tuple, c))):
        res = linear_assignment(x)
        np.testing.assert_array_equal(res.rows, ref.rows)
        np.testing.assert_array_equal(res.cols, ref.cols)
    assert ref.cost == 3.0


@pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64,
                                   np.float16, np.float32, np.float64])
def test_scipy_case_dtypes(dtype):
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 2 if dtype is bool else 50, (7, 9))
    c = raw.astype(dtype)
    for maximize in (False, True):
        r, cc = linear_sum_assignment(c, maximize=maximize)
        res = linear_assignment(c, maximize=maximize)
        assert res.cost == float(np.asarray(c, float)[r, cc].sum())
        assert res.pair_costs.dtype == np.float64


def test_scipy_case_bool_equals_float():
    eye = np.eye(4)
    assert linear_assignment(eye.astype(bool)).cost == linear_assignment(eye).cost == 0.0
    assert linear_assignment(eye.astype(bool), maximize=True).cost == 4.0


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.zeros((2, 2, 2)), np.float64(3.0)])
def test_scipy_case_not_a_matrix(bad):
    with pytest.raises(ValueError, match="2-D"):
        linear_assignment(bad)


def test_scipy_case_strings_rejected():
    with pytest.raises(TypeError, match="cost"):
        linear_assignment(np.eye(3).astype(str))


@pytest.mark.parametrize("fn", [lambda c: linear_assignment(c), lambda c: cover_assignment(c),
                                lambda c: linear_assignment(sp.csr_matrix(c))])
def test_scipy_case_nan_and_neginf_rejected(fn):
    for bad in (np.nan, -np.inf):
        c = np.eye(3)
        c[1, 1] = bad
        with pytest.raises(ValueError, match=r"cost: contains invalid numeric entries.*\(1, 1\)"):
            fn(c)


def test_scipy_case_inf_column_is_infeasible():
    c = np.eye(3)
    c[:, 0] = np.inf  # no row may take column 0
    for x in (c, sp.csr_matrix(c)):
        with pytest.raises(ValueError, match=r"cost matrix is infeasible"):
            linear_assignment(x)
    with pytest.raises(ValueError, match="infeasible"):
        linear_assignment(c, solver="highs")
    # allowed with an unmatched cost: column 0 stays unmatched
    res = linear_assignment(c, unmatched_cost=5.0)
    assert 0 in res.unmatched_cols.tolist() and np.all(np.isfinite(res.pair_costs))


def test_scipy_case_all_inf_is_infeasible():
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_assignment(np.full((2, 3), np.inf))
    res = linear_assignment(np.full((2, 3), np.inf), unmatched_cost=1.0)
    assert len(res) == 0 and res.cost == 5.0 and res.n_candidates == 0


def test_scipy_case_inf_entries_are_forbidden_pairs():
    inf = np.inf
    # each row has a single allowed pair: the matching is forced
    c = np.array([[7.0, inf, inf], [inf, inf, 2.0], [inf, 4.0, inf]])
    for sign in (1, -1):
        x = sign * c
        res = linear_assignment(x, maximize=sign < 0)
        assert res.cols.tolist() == [0, 2, 1] and res.cost == sign * 13.0
        res = linear_assignment(x.T, maximize=sign < 0)
        assert res.cols.tolist() == [0, 2, 1] and res.cost == sign * 13.0
        sx = sp.csr_matrix(np.where(np.isinf(x), 0.0, x))  # sparse: missing = forbidden
        assert linear_assignment(sx, maximize=sign < 0).cost == sign * 13.0
        # stored infinities in a sparse matrix are forbidden pairs too (scipy's csgraph convention)
        assert linear_assignment(sp.csr_matrix(x), maximize=sign < 0).cost == sign * 13.0
    # rectangular: the forbidden pairs steer the choice away from the cheapest entries
    c = np.array([[1.0, inf, 9.0, 3.0], [inf, 1.0, inf, 2.0]])
    r, cc = linear_sum_assignment(c)
    res = linear_assignment(c)
    assert res.cost == c[r, cc].sum() == 2.0
    assert res.n_candidates == 5
    # +inf is an error under maximize (scipy: invalid entry), -inf is forbidden
    with pytest.raises(ValueError, match=r"invalid numeric entries.*inf.*maximize"):
        linear_assignment(c, maximize=True)


def test_scipy_case_constant_matrix_identity():
    # scipy returns the identity on a constant matrix; so does the native solver's tie rule
    for shape in [(8, 8), (5, 8), (8, 5)]:
        res = linear_assignment(np.ones(shape))
        k = min(shape)
        assert res.rows.tolist() == list(range(k)) and res.cols.tolist() == list(range(k))


@pytest.mark.parametrize("shape", [(0, 0), (2, 0), (0, 3)])
def test_scipy_case_empty(shape):
    for x in (np.empty(shape), sp.csr_matrix(shape), sp.coo_matrix(shape)):
        res = linear_assignment(x)
        assert len(res) == 0 and res.cost == 0.0 and res.rows.dtype == np.int64
        assert res.unmatched_rows.size == shape[0] and res.unmatched_cols.size == shape[1]
        assert linear_assignment(x, maximize=True).cost == 0.0
        assert linear_assignment(x, unmatched_cost=2.0).cost == 2.0 * sum(shape)


def test_scipy_case_one_by_one():
    assert linear_assignment(np.array([[-3.5]])).cost == -3.5
    assert linear_assignment(np.array([[-3.5]]), unmatched_cost=-1.0).cost == -3.5
    assert linear_assignment(np.array([[-3.5]]), unmatched_cost=-2.0).cost == -4.0  # both unmatched
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_assignment(sp.csr_matrix((1, 1)))  # no stored entry: no allowed pair
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_assignment(np.array([[np.inf]]))


# Small matrices with a known optimum (worked out by hand, checked by brute force below):
# (matrix, optimal pair costs in row order).
SMALL_CASES = [
    ([[6, 2, 9], [5, 8, 7], [4, 3, 8]], [2, 7, 4]),                     # square
    ([[6, 2, 9, 1], [5, 8, 7, 3], [4, 3, 8, 6]], [2, 3, 4]),            # one spare column
    ([[12, 12, 5], [11, 7, 1], [11, 6, 3]], [12, 1, 6]),                # the greedy choice is wrong
    ([[12, 12, 5, 14], [11, 7, 1, 2], [11, 6, 3, 13]], [5, 2, 6]),      # spare column changes it
    ([[3, np.inf, np.inf], [np.inf, np.inf, 8], [np.inf, 5, np.inf]], [3, 8, 5]),  # forced by inf
]


def _brute_force(c, maximize=False):
    import itertools

    c = np.asarray(c, float)
    if c.shape[0] > c.shape[1]:
        return _brute_force(c.T, maximize)
    best = None
    for p in itertools.permutations(range(c.shape[1]), c.shape[0]):
        v = c[np.arange(c.shape[0]), list(p)]
        if np.isinf(v).any():
            continue
        s = -v.sum() if maximize else v.sum()
        best = s if best is None or s < best else best
    return None if best is None else (-best if maximize else best)


@pytest.mark.parametrize("case", range(len(SMALL_CASES)))
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("kind", ["dense", "csr", "coo"])
def test_scipy_case_small_known_optima(case, sign, kind):
    mat, expected = SMALL_CASES[case]
    c = sign * np.array(mat, dtype=float)
    assert _brute_force(c, maximize=sign < 0) == sign * sum(expected)
    conv = {"dense": np.asarray, "csr": sp.csr_matrix, "coo": sp.coo_matrix}[kind]
    for x, exp in ((c, sign * np.array(expected, float)), (c.T, None)):
        res = linear_assignment(conv(x), maximize=sign < 0)
        assert np.all(np.diff(res.rows) > 0)  # sorted rows
        if exp is not None:
            np.testing.assert_array_equal(res.pair_costs, exp)
        else:
            np.testing.assert_array_equal(np.sort(res.pair_costs), np.sort(sign * np.array(expected, float)))


# Sparse patterns without a full matching (1 = allowed pair, 0 = missing).
INFEASIBLE_PATTERNS = [
    [[1, 1, 1], [1, 0, 0], [1, 0, 0]],          # rows 1, 2 share their only column
    [[1, 1, 1], [0, 0, 1], [0, 0, 1]],
    [[1, 0, 0, 1], [1, 1, 0, 1], [0, 0, 0, 0]],  # an empty row
    [[1, 0, 0], [2, 0, 0]],                      # two rows, one reachable column
    [[0, 1, 0], [0, 2, 0]],
    [[1, 0], [2, 0], [5, 0]],                    # an empty column on the smaller side
]


@pytest.mark.parametrize("pattern", INFEASIBLE_PATTERNS)
@pytest.mark.parametrize("fmt", [sp.csr_matrix, sp.coo_matrix, sp.csr_array, sp.coo_array])
def test_scipy_case_infeasible_sparse_patterns(pattern, fmt):
    a = np.array(pattern, float)
    with pytest.raises(ValueError, match=r"cost matrix is infeasible \(no full matching exists\)"):
        linear_assignment(fmt(a))
    dense = np.where(a == 0, np.inf, a)
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_assignment(dense)
    with pytest.raises(ValueError, match="infeasible"):
        linear_assignment(fmt(a), solver="highs")
    res = linear_assignment(fmt(a), unmatched_cost=1e6)  # partial: always feasible
    assert len(res) < min(a.shape)


def test_scipy_case_deep_hall_violation():
    # Every row and column has an allowed pair, but rows 8..15 all reach only the 7 columns 0..6
    # (row 0 reaches them too): the violation is found deep in an augmenting search.
    rng = np.random.default_rng(7)
    a = np.zeros((16, 16))
    for i in range(8):
        a[i, 7 + i] = 1e-3
        a[i, 15] = 0.5  # a spare column shared by the first block
    a[0, :7] = 0.2
    for i in range(8, 16):
        a[i, rng.choice(7, 3, replace=False)] = rng.random(3) + 0.01
    a[8:, :7][:, a[8:, :7].sum(axis=0) == 0] = 0.7  # every column of the small block reachable
    assert np.all(a.sum(axis=0) > 0) and np.all(a.sum(axis=1) > 0)
    for x in (sp.csr_matrix(a), np.where(a == 0, np.inf, a)):
        with pytest.raises(ValueError, match="cost matrix is infeasible") as err:
            linear_assignment(x)
        # the message names a Hall violator: rows whose allowed pairs all lie in fewer columns
        msg = str(err.value)
        rows = [int(t) for t in msg.split("rows [")[1].split("]")[0].replace(" ...", "").split(",")
                if t.strip() not in ("", "...")]
        cols = [int(t) for t in msg.split("columns [")[1].split("]")[0].split(",") if t.strip() not in ("", "...")]
        assert len(rows) == len(cols) + 1
        assert set(np.nonzero(a[rows])[1].tolist()) <= set(cols)


def test_scipy_case_explicit_zeros_are_allowed_pairs():
    # scipy's min_weight_full_bipartite_matching removes explicit zeros (with a warning); in
    # xmodal a stored zero is an allowed pair of cost 0 (docs/matching.md, "Conventions").
    rows = np.array([0, 0, 1, 1, 2, 2])
    cols = np.array([0, 1, 0, 2, 1, 2])
    data = np.array([2.0, 0.0, 1.0, 4.0, 3.0, 1.0])
    c = sp.csr_matrix((data, (rows, cols)), shape=(3, 3))
    assert c.nnz == 6
    dense = np.full((3, 3), np.inf)
    dense[rows, cols] = data
    res = linear_assignment(c)
    assert res.cost == _brute_force(dense) == 2.0 and res.cols.tolist() == [1, 0, 2]
    assert res.n_candidates == 6
    assert linear_assignment(c.tocoo()).cost == linear_assignment(dense).cost == 2.0
    c.eliminate_zeros()  # without the stored zero the pair is forbidden
    assert linear_assignment(c).cost == 9.0


def test_scipy_case_many_random_sparse_agree_with_dense_inf():
    # dense with +inf for missing pairs, sparse, scipy and HiGHS: the same optimum or all infeasible
    rng = np.random.default_rng(8)
    n_infeasible = 0
    for _ in range(40):
        n = int(rng.integers(40, 61))
        mask = rng.random((n, n)) < 5.0 / n
        vals = rng.integers(1, 100, (n, n)).astype(float)
        dense = np.where(mask, vals, np.inf)
        sparse = sp.csr_matrix((vals[mask], np.nonzero(mask)), shape=(n, n))
        try:
            r, cc = linear_sum_assignment(dense)
            ref = dense[r, cc].sum()
        except ValueError:
            ref = None
            n_infeasible += 1
        for x, solver in ((dense, "native"), (sparse, "native"), (sparse, "highs")):
            if ref is None:
                with pytest.raises(ValueError, match="infeasible"):
                    linear_assignment(x, solver=solver)
            else:
                assert linear_assignment(x, solver=solver).cost == ref
    assert 10 <= n_infeasible <= 30  # both kinds exercised


def test_scipy_case_large_values():
    # costs near the float64 limit: summed after an exact power-of-two scaling, no overflow
    big = np.finfo(float).max / 2
    c = np.array([[big, big / 4, big], [big / 4, big, big], [big, big, big / 2]])
    res = linear_assignment(c)
    assert res.cols.tolist() == [1, 0, 2] and np.isfinite(res.cost)
    assert linear_assignment(c, solver="highs").cols.tolist() == [1, 0, 2]
    c2 = np.array([[1e308, -1e308], [-1e308, 1e308]])
    assert linear_assignment(c2).cols.tolist() == [1, 0]
    res = linear_assignment(c2, maximize=True)
    assert res.cols.tolist() == [0, 1] and res.cost == np.inf  # 2e308 overflows float64
    assert cover_assignment(c).cols.tolist() == [1, 0, 2]
    # integers beyond 2^53 are rounded to float64 like scipy does; small ones stay exact
    ci = np.array([[2**40, 3], [5, 2**41]], dtype=np.int64)
    assert linear_assignment(ci).cost == 8.0


def test_cover_inf_entries_are_forbidden():
    inf = np.inf
    c = np.array([[1.0, inf], [2.0, inf], [inf, 4.0]])
    res = cover_assignment(c)
    assert res.cols.tolist() == [0, 0, 1] and res.cost == 7.0
    assert cover_assignment(sp.csr_matrix(c)).cost == 7.0
    assert cover_assignment(c, solver="highs").cost == 7.0
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        cover_assignment(np.array([[1.0, inf], [2.0, inf]]))


@pytest.mark.parametrize("solver", ["native", "highs"])
def test_huge_unmatched_cost_at_large_offset(solver):
    # Found by the property suite: costs 1e12 + small with u = 1e16 and solver="highs" took the
    # dearer pair (the dummy cost was ~2e12 and c - dummy lost the small parts in HiGHS).
    c = np.array([[1e12 + 0.55, 1e12 + 0.1]])
    for u in (1e16, 1e300):
        res = linear_assignment(c, unmatched_cost=u, solver=solver)
        assert res.cols.tolist() == [1] and res.pair_costs.tolist() == [1e12 + 0.1]
    rng = np.random.default_rng(9)
    c = 1e12 + rng.random((9, 12))
    res = linear_assignment(c, unmatched_cost=1e16, solver=solver)
    assert res.matched_cost == pytest.approx(_full_reference(c), rel=0, abs=1e-3)
    assert res.matched_cost - 9e12 == pytest.approx(_full_reference(c - 1e12), abs=1e-3)


def test_highs_huge_unmatched_cost_on_a_3000_point_graph():
    # HiGHS' default dual tolerance (1e-7) left this optimum 0.012 too dear (the objective holds
    # c - dummy with dummy ~ n * spread); the HiGHS path now asks for 1e-10.
    rng = np.random.default_rng(3)
    n = 3000
    a = rng.random((n, 3)) * np.array([50.0, 60, 70]) * 2 ** (1 / 3)
    b = a + rng.normal(scale=1.5, size=a.shape)
    b = b[rng.random(n) > 0.08]
    g = xmodal.knn_graph(a, b, k=10, radius=5.0)
    r, cc = min_weight_full_bipartite_matching(g)
    ref = float(g[r, cc].sum())
    nat = linear_assignment(g, unmatched_cost=1e16)
    hi = linear_assignment(g, unmatched_cost=1e16, solver="highs")
    assert len(nat) == len(hi) == b.shape[0]
    assert nat.matched_cost == pytest.approx(ref, rel=1e-13)
    assert hi.matched_cost == pytest.approx(ref, rel=1e-13)


def test_highs_solver_prints_nothing():
    # A library call must not write to the terminal; highspy's Highs() prints a banner on creation.
    import subprocess
    import sys

    code = ("import numpy as np, xmodal; c = np.random.default_rng(0).random((6, 6)); "
            "r = xmodal.linear_assignment(c, solver='highs'); print('cost', round(r.cost, 9))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() and out.stdout.splitlines()[0].startswith("cost"), out.stdout
    assert out.stdout.count("\n") == 1 and out.stderr == "", (out.stdout, out.stderr)
