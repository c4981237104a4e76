"""The assignment problems as LPs solved by HiGHS (highspy): one variable per allowed pair.

The constraint matrices (bipartite incidence, totally unimodular) make every vertex of these LPs
integral, so the simplex optimum is an exact assignment; the rounded solution is still checked.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._cost import cover_hint

_TOL = 1e-6
_DUAL_TOL = 1e-10  # HiGHS' smallest; its default 1e-7 left optima 1 in 4e4 off on workload P


def import_highspy():
    """highspy, or ImportError naming the solver option and the package to install."""
    try:
        import highspy
    except ImportError as exc:
        raise ImportError("solver: 'highs' needs the package 'highspy' (a dependency of xmodal), which cannot be "
                          "imported here; install it with: pip install highspy, or use solver='native'") from exc
    return highspy


def _quiet_highs(highspy):
    """A HiGHS instance that writes nothing to stdout. ``highspy.Highs()`` prints a banner while it
    sets up its Python callbacks (which xmodal does not use); the core class underneath does not."""
    cls = getattr(getattr(highspy, "_core", None), "_Highs", None) or highspy.Highs
    h = cls()
    h.setOptionValue("output_flag", False)
    return h


_HINT = "; build the candidate graph with a larger k or radius, or allow unmatched points (unmatched_cost)"


def _solve(c: sp.csr_matrix, obj: np.ndarray, row_lo, row_hi, col_lo, col_hi, offset: float = 0.0,
           hint: str = _HINT):
    highspy = import_highspy()

    n, m = c.shape
    nnz = c.nnz
    if nnz == 0:  # HiGHS reports an empty model as such: decide here
        if (np.asarray(row_lo) > 0).any() or (np.asarray(col_lo) > 0).any():
            raise ValueError(f"cost: infeasible: no allowed pair at all{hint}")
        return np.zeros(0, np.int64), np.zeros(0, np.int64), {"highs_status": "empty"}
    coo = c.tocoo()
    r = coo.row.astype(np.int32)
    j = coo.col.astype(np.int32)
    obj = coo.data if obj is None else obj  # CSR -> COO keeps the storage order
    obj = _conditioned(np.asarray(obj, dtype=np.float64))
    lp = highspy.HighsLp()
    lp.num_col_ = nnz
    lp.num_row_ = n + m
    lp.col_cost_ = np.ascontiguousarray(obj, dtype=np.float64)
    lp.col_lower_ = np.zeros(nnz)
    lp.col_upper_ = np.ones(nnz)
    lp.row_lower_ = np.concatenate([row_lo, col_lo]).astype(np.float64)
    lp.row_upper_ = np.concatenate([row_hi, col_hi]).astype(np.float64)
    lp.offset_ = float(offset)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(0, 2 * nnz + 1, 2, dtype=np.int32)
    idx = np.empty(2 * nnz, dtype=np.int32)
    idx[0::2] = r
    idx[1::2] = n + j
    lp.a_matrix_.index_ = idx
    lp.a_matrix_.value_ = np.ones(2 * nnz)
    h = _quiet_highs(highspy)
    h.setOptionValue("dual_feasibility_tolerance", _DUAL_TOL)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        text = h.modelStatusToString(status)
        if status == highspy.HighsModelStatus.kInfeasible:
            raise ValueError(f"cost: infeasible: HiGHS proves that no assignment satisfies the constraints{hint}")
        raise RuntimeError(f"HiGHS did not reach an optimum: {text}")
    x = np.asarray(h.getSolution().col_value, dtype=np.float64)
    frac = np.abs(x - np.round(x))
    if nnz and frac.max() > _TOL:
        raise RuntimeError(f"HiGHS returned a fractional solution (max distance to an integer {frac.max():.3g})")
    chosen = x > 0.5
    info = {"highs_status": h.modelStatusToString(status),
            "highs_objective": float(h.getInfo().objective_function_value),  # of the reduced, scaled LP
            "highs_iterations": int(h.getInfo().simplex_iteration_count),
            "max_fractionality": float(frac.max()) if nnz else 0.0}
    return r[chosen].astype(np.int64), j[chosen].astype(np.int64), info


def _conditioned(obj: np.ndarray) -> np.ndarray:
    """The objective times a power of two (exact) so that its largest entry is about 1: HiGHS's
    optimality tolerances are absolute, so tiny costs (1e-6) would otherwise look all equal."""
    big = float(np.abs(obj).max()) if obj.size else 0.0
    if not (big > 0.0 and np.isfinite(big)):
        return obj
    return np.ldexp(obj, -int(np.frexp(big)[1]))


def _row_reduced(c: sp.csr_matrix) -> np.ndarray:
    """Costs minus each row's smallest cost: the same optima when every row is matched once, and
    differences kept at the scale of the spread (costs like 1e12 + small differ by the small part)."""
    deg = np.diff(c.indptr)
    rmin = np.zeros(c.shape[0])
    has = deg > 0
    rmin[has] = np.minimum.reduceat(c.data, c.indptr[:-1][has])
    return c.data - np.repeat(rmin, deg)


def _reduced(c: sp.csr_matrix, rows: bool) -> np.ndarray:
    """Costs (sorted CSR order) minus each row's (``rows``) or each column's smallest cost."""
    if rows:
        return _row_reduced(c)
    t = c.T.tocsr()
    red = sp.csr_matrix((_row_reduced(t), t.indices, t.indptr), shape=t.shape).T.tocsr()
    red.sort_indices()
    return red.data


def solve_one_to_one(c: sp.csr_matrix, unmatched_cost):
    """rows, cols, info of the min-cost one-to-one (partial when unmatched_cost is given) matching."""
    n, m = c.shape
    c = c.sorted_indices()
    if unmatched_cost is None:
        row_lo = np.ones(n) if n <= m else np.zeros(n)
        col_lo = np.ones(m) if m <= n else np.zeros(m)
        return _solve(c, _reduced(c, rows=n <= m), row_lo, np.ones(n), col_lo, np.ones(m))
    # sum c x + u * (#unmatched rows + #unmatched cols) = sum (c - 2u) x + u (n + m). Pairs with
    # c > 2u are never chosen; 2u is replaced by the dummy cost of the native solver (the same
    # optima; smaller when 2u exceeds every useful cost difference), so that c - 2u does not cancel.
    from .. import _core

    u = float(unmatched_cost)
    keep = c.data <= 2.0 * u
    c = _keep(c, keep)
    if c.nnz == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), {"highs_status": "empty"}
    rows_used = int((np.diff(c.indptr) > 0).sum())
    cols_used = int(np.unique(c.indices).size)
    dummy = _core.partial_dummy_cost(u, float(c.data.min()), float(c.data.max()), min(rows_used, cols_used))
    obj = c.data - dummy
    rows, cols, info = _solve(c, obj, np.zeros(n), np.ones(n), np.zeros(m), np.ones(m))
    info["dummy_cost"] = float(dummy)
    return rows, cols, info


def _keep(c: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    if keep.all():
        return c
    row_of_entry = np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr))
    indptr = np.zeros(c.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of_entry[keep], minlength=c.shape[0]), out=indptr[1:])
    return sp.csr_matrix((c.data[keep], c.indices[keep], indptr), shape=c.shape)


def solve_cover(c: sp.csr_matrix, max_per_target):
    """rows, cols, info of the min-cost cover matching."""
    n, m = c.shape
    c = c.sorted_indices()
    cap = np.inf if max_per_target is None else float(max_per_target)
    obj = _reduced(c, rows=n >= m)  # the larger side is matched exactly once
    hint = cover_hint(max_per_target)
    if n >= m:
        return _solve(c, obj, np.ones(n), np.ones(n), np.ones(m), np.full(m, cap), hint=hint)
    return _solve(c, obj, np.ones(n), np.full(n, cap), np.ones(m), np.ones(m), hint=hint)
