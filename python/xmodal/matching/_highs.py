"""The assignment problems as LPs solved by HiGHS (highspy): one variable per allowed pair.

The constraint matrices (bipartite incidence, totally unimodular) make every vertex of these LPs
integral, so the simplex optimum is an exact assignment; the rounded solution is still checked.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_TOL = 1e-6


def _solve(c: sp.csr_matrix, obj: np.ndarray, row_lo, row_hi, col_lo, col_hi, offset: float = 0.0):
    import highspy

    n, m = c.shape
    nnz = c.nnz
    if nnz == 0:  # HiGHS reports an empty model as such: decide here
        if (np.asarray(row_lo) > 0).any() or (np.asarray(col_lo) > 0).any():
            raise ValueError("cost: infeasible: no allowed pair at all; build the candidate graph with a larger "
                             "k or radius, or allow unmatched points")
        return np.zeros(0, np.int64), np.zeros(0, np.int64), {"highs_status": "empty"}
    coo = c.tocoo()
    r = coo.row.astype(np.int32)
    j = coo.col.astype(np.int32)
    obj = coo.data if obj is None else obj  # CSR -> COO keeps the storage order
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
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        text = h.modelStatusToString(status)
        if status == highspy.HighsModelStatus.kInfeasible:
            raise ValueError("cost: infeasible: HiGHS proves that no assignment satisfies the constraints; "
                             "build the candidate graph with a larger k or radius, or allow unmatched points")
        raise RuntimeError(f"HiGHS did not reach an optimum: {text}")
    x = np.asarray(h.getSolution().col_value, dtype=np.float64)
    frac = np.abs(x - np.round(x))
    if nnz and frac.max() > _TOL:
        raise RuntimeError(f"HiGHS returned a fractional solution (max distance to an integer {frac.max():.3g})")
    chosen = x > 0.5
    info = {"highs_status": h.modelStatusToString(status),
            "highs_objective": float(h.getInfo().objective_function_value),
            "highs_iterations": int(h.getInfo().simplex_iteration_count),
            "max_fractionality": float(frac.max()) if nnz else 0.0}
    return r[chosen].astype(np.int64), j[chosen].astype(np.int64), info


def solve_one_to_one(c: sp.csr_matrix, unmatched_cost):
    """rows, cols, info of the min-cost one-to-one (partial when unmatched_cost is given) matching."""
    n, m = c.shape
    if unmatched_cost is None:
        row_lo = np.ones(n) if n <= m else np.zeros(n)
        col_lo = np.ones(m) if m <= n else np.zeros(m)
        return _solve(c, None, row_lo, np.ones(n), col_lo, np.ones(m))
    u = float(unmatched_cost)
    # sum c x + u * (#unmatched rows + #unmatched cols) = sum (c - 2u) x + u (n + m)
    obj = c.data - 2.0 * u
    return _solve(c, obj, np.zeros(n), np.ones(n), np.zeros(m), np.ones(m), offset=u * (n + m))


def solve_cover(c: sp.csr_matrix, max_per_target):
    """rows, cols, info of the min-cost cover matching."""
    n, m = c.shape
    cap = np.inf if max_per_target is None else float(max_per_target)
    if n >= m:
        return _solve(c, None, np.ones(n), np.ones(n), np.ones(m), np.full(m, cap))
    return _solve(c, None, np.ones(n), np.full(n, cap), np.ones(m), np.ones(m))
