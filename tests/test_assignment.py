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
