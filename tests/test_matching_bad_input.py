"""Bad input to the matching functions: a clear Python exception naming the argument, never a crash."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import xmodal
from xmodal import cover_assignment, knn_graph, linear_assignment, match_points


def _bad_indptr():
    return sp.csr_matrix((np.array([1.0, 2.0]), np.array([0, 1]), np.array([0, 5, 2])), shape=(2, 2))


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, so that heap corruption cannot take the test run down."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(xmodal.__file__)),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("XMODAL_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)


# ------------------------------------------------------------------- 1. malformed CSR structure

@pytest.mark.parametrize("func", ["linear_assignment", "cover_assignment"])
def test_bad_indptr_is_a_clean_error_not_a_crash(func):
    r = _run_isolated(f"""
        import numpy as np, scipy.sparse as sp, xmodal
        c = sp.csr_matrix((np.array([1., 2.]), np.array([0, 1]), np.array([0, 5, 2])), shape=(2, 2))
        try:
            xmodal.{func}(c)
        except ValueError as exc:
            print("ValueError:", exc)
        """)
    assert r.returncode == 0, f"rc {r.returncode} (a negative rc is a signal): {r.stderr[-2000:]}"
    assert "ValueError: cost:" in r.stdout and "indptr" in r.stdout, r.stdout


def _csr(data, indices, indptr, shape=(2, 2)):
    """A CSR matrix whose arrays are set after construction (scipy checks only a few things there)."""
    c = sp.csr_matrix(np.eye(*shape))
    c.data, c.indices, c.indptr = np.asarray(data, float), np.asarray(indices), np.asarray(indptr)
    return c


@pytest.mark.parametrize("func", [linear_assignment, cover_assignment])
@pytest.mark.parametrize("cost, match", [
    (lambda: _bad_indptr(), r"cost: invalid CSR matrix: expected a non-decreasing indptr, got indptr\[1\] = 5"),
    (lambda: _csr([1, 2], [0, 1], [0, 1]), r"cost: invalid CSR matrix: expected indptr of length 3 .*got length 2"),
    (lambda: _csr([1, 2], [0, 1], [1, 1, 2]), r"cost: invalid CSR matrix: expected indptr to start at 0, got 1"),
    (lambda: _csr([1, 2], [0, 1], [0, 1, 3]), r"cost: invalid CSR matrix: indptr ends at 3 stored entries, "
                                              r"expected at most the length of indices \(2\) and data \(2\)"),
    (lambda: _csr([1, 2], [0, -1], [0, 1, 2]), r"cost: invalid CSR matrix: column index out of range: entry 1 "
                                               r"has column index -1, expected 0 <= index < 2"),
    (lambda: _csr([1, 2], [0.0, 1.0], [0, 1, 2]), r"cost: invalid CSR matrix: expected indices to be a 1-D "
                                                  r"integer array, got ndarray of shape \(2,\) and dtype float64"),
])
def test_malformed_csr_structure(func, cost, match):
    with pytest.raises(ValueError, match=match):
        func(cost())


@pytest.mark.parametrize("func", [linear_assignment, cover_assignment])
def test_malformed_other_sparse_formats(func):
    c = sp.csc_matrix(np.eye(2))
    c.indices[0] = 5
    with pytest.raises(ValueError, match=r"cost: invalid CSC matrix: row index out of range: entry 0 has row "
                                         r"index 5, expected 0 <= index < 2 \(the number of rows\)"):
        func(c)
    c = sp.coo_matrix(np.eye(2))
    c.col[0] = 5
    with pytest.raises(ValueError, match=r"cost: invalid COO matrix: column index out of range"):
        func(c)
    c = sp.bsr_matrix(np.eye(4), blocksize=(2, 2))
    c.indptr[1] = 5
    with pytest.raises(ValueError, match=r"cost: invalid BSR matrix: expected a non-decreasing indptr"):
        func(c)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "lil", "dok", "dia"])
def test_valid_sparse_formats_still_accepted(fmt):
    c = sp.random(6, 6, density=1.0, random_state=0, format=fmt) if fmt != "bsr" else \
        sp.bsr_matrix(sp.random(6, 6, density=1.0, random_state=0).toarray(), blocksize=(2, 3))
    dense = c.toarray()
    assert linear_assignment(c).cost == pytest.approx(linear_assignment(dense).cost)
    assert cover_assignment(c).cost == pytest.approx(cover_assignment(dense).cost)


def test_csr_tail_beyond_indptr_is_ignored():
    # scipy allows indices/data longer than indptr[-1]: the tail is not part of the matrix
    c = _csr([1.0, 2.0, 99.0], [0, 1, 7], [0, 1, 2])
    assert linear_assignment(c).cost == 3.0 and cover_assignment(c).cost == 3.0


# ------------------------------------------------------------------ 2. column index out of range

@pytest.mark.parametrize("func", [linear_assignment, cover_assignment])
def test_column_index_out_of_range_is_named(func):
    c = sp.csr_matrix((np.array([1.0, 2.0]), np.array([0, 1]), np.array([0, 1, 2])), shape=(2, 2))
    c.indices[1] = 7
    with pytest.raises(ValueError, match=r"cost: invalid CSR matrix: column index out of range: entry 1 has "
                                         r"column index 7, expected 0 <= index < 2 \(the number of columns\)"):
        func(c)


# --------------------------------------------------------------------------- 3. huge k, clamped

@pytest.mark.parametrize("k", [2**31, 2**63, 2**80, np.int64(2**40)])
def test_huge_k_means_all_points(k):
    rng = np.random.default_rng(0)
    a, b = rng.random((9, 3)), rng.random((7, 3))
    g = knn_graph(a, b, k=k)
    assert g.shape == (9, 7) and g.nnz == 63
    assert (g != knn_graph(a, b, k=9)).nnz == 0
    res = match_points(a, b, k=k)
    ref = match_points(a, b, k=9)
    assert res.cost == ref.cost and res.rows.tolist() == ref.rows.tolist() and res.cols.tolist() == ref.cols.tolist()


@pytest.mark.parametrize("k, exc, match", [
    (0, ValueError, r"k: expected an integer >= 1, got 0"),
    (-(2**40), ValueError, r"k: expected an integer >= 1, got -1099511627776"),
    (True, TypeError, r"k: expected an integer >= 1, got True"),
    (2.0, TypeError, r"k: expected an integer >= 1, got 2.0"),
    ("3", TypeError, r"k: expected an integer >= 1, got '3'"),
])
def test_bad_k_still_rejected(k, exc, match):
    a = np.random.default_rng(0).random((5, 2))
    for f in (knn_graph, match_points):
        with pytest.raises(exc, match=match):
            f(a, a, k=k)


# --------------------------------------------------------------- 4. negative unmatched_cost

@pytest.mark.parametrize("u", [-1.0, -1e-300, -np.inf, np.nan])
def test_match_points_rejects_negative_or_nan_unmatched_cost(u):
    a = np.random.default_rng(0).random((5, 2))
    with pytest.raises(ValueError, match=r"unmatched_cost: expected a finite number >= 0 \(a distance\), "
                                         r"np.inf \(same as None\) or None, got"):
        match_points(a, a, k=2, unmatched_cost=u)


def test_match_points_unmatched_cost_type_and_valid_values():
    a = np.random.default_rng(0).random((5, 2))
    with pytest.raises(TypeError, match=r"unmatched_cost: expected a number >= 0 or None, got '1'"):
        match_points(a, a, k=2, unmatched_cost="1")
    with pytest.raises(TypeError, match=r"unmatched_cost: expected a number >= 0 or None, got True"):
        match_points(a, a, k=2, unmatched_cost=True)
    assert len(match_points(a, a, k=2, unmatched_cost=np.inf)) == 5  # same as None
    assert match_points(a, a, k=2, unmatched_cost=0.0).cost == 0.0  # identical points: zero-cost ties
    assert len(match_points(a, a, k=2, unmatched_cost=1.0)) == 5


# ---------------------------------------------------------------------- 5. highspy missing

@pytest.mark.parametrize("call", [
    lambda: linear_assignment(np.eye(3), solver="highs"),
    lambda: linear_assignment(np.eye(3), unmatched_cost=1.0, solver="highs"),
    lambda: cover_assignment(np.eye(3), solver="highs"),
    lambda: match_points(np.eye(3), np.eye(3), k=2, solver="highs"),
])
def test_highs_without_highspy_names_option_and_package(monkeypatch, call):
    monkeypatch.setitem(sys.modules, "highspy", None)  # import blocker: "import highspy" raises ImportError
    with pytest.raises(ImportError, match=r"solver: 'highs' needs the package 'highspy'.*pip install highspy"):
        call()
