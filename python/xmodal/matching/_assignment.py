"""Exact minimum-cost assignment on dense or sparse cost matrices."""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import choice, describe, positive_int
from ._cost import _as_csr, _first, _overflow_scale, cover_hint
from ._highs import import_highspy

logger = logging.getLogger(__name__)

__all__ = ["AssignmentResult", "linear_assignment", "cover_assignment"]

@dataclass
class AssignmentResult:
    """An exact assignment between the rows and the columns of a cost matrix.

    Attributes
    ----------
    rows, cols : (p,) int64 arrays
        The chosen pairs ``(rows[t], cols[t])``, sorted by row, then column. One-to-one problems
        use each row and column at most once; cover problems use every point of the larger side
        exactly once.
    cost : float
        Objective value: the sum of the chosen entries plus ``unmatched_cost`` for every unmatched
        row and every unmatched column (when an unmatched cost was given). With ``maximize=True``,
        in the original sign (the maximum). A sum beyond the float64 range is ``+-inf``.
    unmatched_rows, unmatched_cols : int64 arrays
        Rows / columns not in any chosen pair.
    pair_costs : (p,) float64 array
        The cost entry of each chosen pair.
    matched_cost : float
        ``pair_costs.sum()``, without unmatched costs.
    problem : str
        ``"one-to-one"``, ``"partial"`` (one-to-one with an unmatched cost) or ``"cover"``.
    solver : str
        ``"native"`` (successive shortest paths, C++) or ``"highs"`` (HiGHS LP).
    shape : tuple of int
        Shape of the cost matrix.
    n_candidates : int
        Allowed pairs (stored entries) in the problem.
    searches : int
        Shortest-path searches of the native solver (0 for HiGHS).
    time_s : float
        Wall time of the solve, seconds.
    info : dict
        Further diagnostics (warm-start matches, scanned columns, HiGHS status, ...).
    """

    rows: np.ndarray
    cols: np.ndarray
    cost: float
    unmatched_rows: np.ndarray
    unmatched_cols: np.ndarray
    pair_costs: np.ndarray
    matched_cost: float
    problem: str
    solver: str
    shape: tuple
    n_candidates: int
    searches: int = 0
    time_s: float = 0.0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        return (f"AssignmentResult(problem={self.problem!r}, pairs={len(self)}, cost={self.cost!r}, "
                f"unmatched_rows={self.unmatched_rows.size}, unmatched_cols={self.unmatched_cols.size}, "
                f"solver={self.solver!r}, time_s={self.time_s:.4g})")


def _native_arrays(c: sp.csr_matrix):
    return (np.ascontiguousarray(c.indptr, dtype=np.int64), np.ascontiguousarray(c.indices, dtype=np.int32),
            np.ascontiguousarray(c.data, dtype=np.float64))


def _unmatched(n: int, used: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[used] = False
    return np.flatnonzero(mask).astype(np.int64)


def _finish(c: sp.csr_matrix, rows, cols, *, sign: float, unmatched_cost, problem, solver, t0, searches=0,
            info=None) -> AssignmentResult:
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    pair_costs = np.asarray(c[rows, cols]).ravel().astype(np.float64) if rows.size else np.zeros(0)
    pair_costs = sign * pair_costs  # c holds sign * original costs
    ur = _unmatched(c.shape[0], rows)
    uc = _unmatched(c.shape[1], cols)
    with np.errstate(over="ignore"):  # sums beyond the float64 range are +-inf (costs near 1e308)
        matched = float(pair_costs.sum())
        total = matched
        if unmatched_cost is not None:
            total = matched + float(unmatched_cost) * (ur.size + uc.size)
    return AssignmentResult(rows=rows, cols=cols, cost=total, unmatched_rows=ur, unmatched_cols=uc,
                            pair_costs=pair_costs, matched_cost=matched, problem=problem, solver=solver,
                            shape=tuple(c.shape), n_candidates=int(c.nnz), searches=int(searches),
                            time_s=time.perf_counter() - t0, info=info or {})


def _as_float(u: numbers.Real) -> float:
    """``float(u)``, or ValueError naming ``unmatched_cost`` for an integer beyond the float64 range."""
    try:
        return float(u)
    except OverflowError:
        raise ValueError(f"unmatched_cost: expected a number within the float64 range (|u| < 1.8e308), or "
                         f"np.inf, got an integer of {len(str(abs(int(u))))} digits") from None


def _unmatched_cost(u: Any, maximize: bool):
    """``unmatched_cost`` as a float, or None for "every point of the smaller side is matched".

    ``+inf`` (``-inf`` with ``maximize``: an infinite loss per unmatched point) means the same as
    None; the opposite infinity (an infinite gain for leaving points unmatched) and NaN are errors.
    """
    if u is None:
        return None
    if isinstance(u, bool) or not isinstance(u, numbers.Real):
        raise TypeError(f"unmatched_cost: expected a number or None, got {describe(u)}")
    u = _as_float(u)
    if np.isnan(u):
        raise ValueError("unmatched_cost: expected a number or None, got nan")
    if np.isinf(u):
        if (u < 0) == maximize:
            return None
        want = "-inf" if maximize else "+inf"
        raise ValueError(f"unmatched_cost: expected a finite number, {want} (same as None) or None, got {u}"
                         f"{' with maximize=True' if maximize else ''} (every point would stay unmatched)")
    return u


def _hint() -> str:
    return ("; build the candidate graph with a larger k or radius, or pass unmatched_cost to allow "
            "unmatched points")


# --------------------------------------------------------------------------------- one-to-one

def linear_assignment(cost: Any, *, unmatched_cost: float | None = None, maximize: bool = False,
                      solver: str = "native") -> AssignmentResult:
    """Exact minimum-cost one-to-one assignment (optionally partial) on a dense or sparse matrix.

    Parameters
    ----------
    cost : (n, m) array or scipy sparse matrix
        Cost of pairing row i with column j (any real dtype, bool included). Dense: every pair
        allowed except entries equal to ``+inf`` (``-inf`` with ``maximize=True``), which are
        forbidden pairs, as in :func:`scipy.optimize.linear_sum_assignment`. Sparse: the stored
        entries (explicit zeros included) are the allowed pairs; missing entries and stored
        ``+inf`` (``-inf`` with ``maximize``) are forbidden. NaN and the opposite infinity are
        errors. Rectangular shapes are allowed, and so are empty ones (no rows or no columns, e.g.
        the :func:`knn_graph` of an empty point set): no pairs, every row and column unmatched.
    unmatched_cost : float, optional
        Without it (or with ``+inf``; ``-inf`` with ``maximize``), every row of the smaller side
        is matched (all rows and columns when square), like
        :func:`scipy.optimize.linear_sum_assignment`. With a finite value, any row and any column
        may stay unmatched, at ``unmatched_cost`` each (so a pair is worth matching only when its
        cost is below ``2 * unmatched_cost``): a partial matching, always feasible, exact for any
        finite value (costs are never shifted by it; with a huge value the result is the cheapest
        matching of maximum size on the allowed pairs).
    maximize : bool
        Maximise the total instead (``unmatched_cost`` is then a gain per unmatched point).
    solver : {"native", "highs"}
        ``"native"``: successive shortest augmenting paths with potentials on the sparse graph
        (C++). ``"highs"``: the same problem as an LP solved by HiGHS (integral for this constraint
        matrix; the rounded solution is checked).

    Returns
    -------
    AssignmentResult
        ``rows``, ``cols`` (pairs sorted by row), ``cost`` (total, unmatched costs included),
        ``unmatched_rows``, ``unmatched_cols`` and diagnostics.

    Raises
    ------
    ValueError
        NaN costs or the wrong infinity ("contains invalid numeric entries"), a (row, column) stored
        twice in a sparse matrix (named; scipy would add them up), or an infeasible
        problem ("cost matrix is infeasible": a row or column with no allowed pair, or a set of
        rows whose allowed pairs reach fewer columns than rows): the message names them.

    Notes
    -----
    The optimum is exact up to float64 rounding of the costs. Ties between optimal matchings are
    broken deterministically (fixed processing order; shortest-path ties by column index), so the
    same input always gives the same pairs, but not necessarily the pairs another solver picks.

    Examples
    --------
    >>> import numpy as np, xmodal
    >>> res = xmodal.linear_assignment(np.array([[4.0, 1.0, 3.0], [2.0, 0.5, 5.0]]))
    >>> res.rows.tolist(), res.cols.tolist(), res.cost
    ([0, 1], [1, 0], 3.0)
    >>> res.unmatched_cols.tolist()
    [2]
    >>> xmodal.linear_assignment(np.array([[np.inf, 1.0], [2.0, np.inf]])).cols.tolist()  # inf: forbidden
    [1, 0]
    """
    t0 = time.perf_counter()
    choice(solver, "solver", ("native", "highs"))
    if solver == "highs":
        import_highspy()  # ImportError naming the option and the package, before any work
    if not isinstance(maximize, (bool, np.bool_)):
        raise TypeError(f"maximize: expected True or False, got {describe(maximize)}")
    maximize = bool(maximize)
    u = _unmatched_cost(unmatched_cost, maximize)
    c = _as_csr(cost, maximize=maximize)  # the native solver validates the CSR arrays it is given
    sign = -1.0 if maximize else 1.0
    n, m = c.shape
    work = c if sign > 0 else sp.csr_matrix((-c.data, c.indices, c.indptr), shape=c.shape)
    wu = None if u is None else sign * u
    problem = "one-to-one" if u is None else "partial"
    if n == 0 or m == 0:
        return _finish(c, [], [], sign=1.0, unmatched_cost=u, problem=problem, solver=solver, t0=t0)

    if u is None:
        # Feasibility: every point of the smaller side (both sides when square) needs a candidate.
        row_deg = np.diff(work.indptr)
        col_deg = np.bincount(work.indices, minlength=m)
        if n <= m and (row_deg == 0).any():
            raise ValueError(f"cost: cost matrix is infeasible (no full matching exists): rows "
                             f"{_first(np.flatnonzero(row_deg == 0))} have no allowed pair and cannot be "
                             f"matched{_hint()}")
        if m <= n and (col_deg == 0).any():
            raise ValueError(f"cost: cost matrix is infeasible (no full matching exists): columns "
                             f"{_first(np.flatnonzero(col_deg == 0))} have no allowed pair and cannot be "
                             f"matched{_hint()}")

    # Exact power-of-two scaling when sums of the costs could overflow (costs near 1e300).
    scale = _overflow_scale(work)
    scaled = work if scale == 1.0 else sp.csr_matrix((work.data * scale, work.indices, work.indptr),
                                                     shape=work.shape)
    su = None if wu is None else wu * scale

    if solver == "highs":
        from ._highs import solve_one_to_one

        rows, cols, info = solve_one_to_one(scaled, su)
        return _finish(work, rows, cols, sign=sign, unmatched_cost=u, problem=problem, solver=solver, t0=t0,
                       info=info)

    from .. import _core

    # Partial problems are symmetric in rows and columns: solve with the smaller side as rows, so that
    # fewer rows end on their dummy column (each such search scans its whole reachable component).
    transposed = n > m
    g = scaled.T.tocsr() if transposed else scaled
    g.sort_indices()
    indptr, indices, data = _native_arrays(g)
    out = _core.sparse_assignment(g.shape[0], g.shape[1], indptr, indices, data, su)
    if out["failed_row"] >= 0:
        hr, hc = out["hall_rows"], out["hall_cols"]
        rname, cname = ("columns", "rows") if transposed else ("rows", "columns")
        raise ValueError(
            f"cost: cost matrix is infeasible (no full matching exists): {rname} {_first(np.sort(hr))} "
            f"together have allowed pairs with only {hc.size} {cname} {_first(np.sort(hc))}, so at least one "
            f"of them cannot be matched{_hint()}")
    col_of_row = out["col_of_row"]
    r = np.flatnonzero(col_of_row >= 0)
    cc = col_of_row[r].astype(np.int64)
    rows, cols = (cc, r) if transposed else (r, cc)
    info = {"warm_matched": int(out["warm_matched"]), "scanned": int(out["scanned"])}
    if scale != 1.0:
        info["cost_scale"] = scale
    return _finish(work, rows, cols, sign=sign, unmatched_cost=u, problem=problem, solver="native", t0=t0,
                   searches=out["searches"], info=info)


# ---------------------------------------------------------------------------------------- cover

def cover_assignment(cost: Any, *, max_per_target: int | None = None, solver: str = "native") -> AssignmentResult:
    """Exact minimum-cost cover matching (many-to-one), the Platynereis atlas formulation.

    Every point of the larger side is matched to exactly one point of the smaller side, and every
    point of the smaller side to at least one (at most ``max_per_target`` when given). With a
    square matrix this is a perfect one-to-one matching.

    Parameters
    ----------
    cost : (n, m) array or scipy sparse matrix
        Cost of pairing row i with column j. Dense: every pair allowed except ``+inf`` entries
        (forbidden); sparse: stored entries (explicit zeros included) are the allowed pairs, stored
        ``+inf`` entries are forbidden. NaN and ``-inf`` are errors. The larger side is the rows
        when n >= m. A (0, 0) matrix gives an empty cover; (0, m) or (n, 0) with n, m > 0 is an
        error (the points of the larger side have nothing to be matched to).
    max_per_target : int, optional
        Most points of the larger side a point of the smaller side may take (>= 1). Default:
        unlimited.
    solver : {"native", "highs"}
        ``"native"``: without ``max_per_target``, exact reduction to a one-to-one problem
        (cost = sum of each larger-side point's cheapest pair + a matching saturating the smaller
        side on reduced costs), solved by successive shortest paths; with it, the same cover first,
        then exact shortest-path repairs of the points over the capacity on a flow network, with
        potentials from that cover's dual (``info["over_capacity"]`` units; none when the capacity
        does not bind); when those repairs run long, the same exact repairs restart from the prices
        of a cost-scaling pass (``info["scaling_phases"]`` > 0). ``"highs"``: the LP (integral for
        this constraint matrix).

    Returns
    -------
    AssignmentResult
        ``problem="cover"``; ``len(result) == max(n, m)`` pairs, sorted by row; ``cost`` is the
        sum of the chosen entries; the unmatched arrays are empty.

    Raises
    ------
    ValueError
        NaN or ``-inf`` costs; "cost matrix is infeasible": a larger-side point without any allowed
        pair, smaller-side points whose allowed pairs reach too few larger-side points to cover
        them all, or (with ``max_per_target``) larger-side points whose allowed pairs reach too few
        smaller-side points to take them all (the message names both sets and the reason); not
        enough capacity in all (``max_per_target``).

    Notes
    -----
    Ties between optimal solutions are broken deterministically; a larger-side point outside the
    saturating matching takes its cheapest partner, the lowest index on ties.
    """
    t0 = time.perf_counter()
    choice(solver, "solver", ("native", "highs"))
    if solver == "highs":
        import_highspy()
    cap = positive_int(max_per_target, "max_per_target", allow_none=True)
    c = _as_csr(cost)
    n, m = c.shape
    if n == 0 or m == 0:
        if n + m > 0:
            raise ValueError(f"cost: a cover needs points on both sides, got shape {c.shape}")
        return _finish(c, [], [], sign=1.0, unmatched_cost=None, problem="cover", solver=solver, t0=t0)
    rows_larger = n >= m
    big, small = ("rows", "columns") if rows_larger else ("columns", "rows")
    n_big, n_small = max(n, m), min(n, m)
    deg_r = np.diff(c.indptr)
    deg_c = np.bincount(c.indices, minlength=m)
    deg_big, deg_small = (deg_r, deg_c) if rows_larger else (deg_c, deg_r)
    if (deg_big == 0).any():
        raise ValueError(f"cost: cost matrix is infeasible (no cover exists): {big} "
                         f"{_first(np.flatnonzero(deg_big == 0))} have no allowed pair and cannot be matched"
                         f"{cover_hint(None)}")
    if (deg_small == 0).any():
        raise ValueError(f"cost: cost matrix is infeasible (no cover exists): {small} "
                         f"{_first(np.flatnonzero(deg_small == 0))} have no allowed pair and cannot be covered"
                         f"{cover_hint(None)}")
    if cap is not None and cap * n_small < n_big:
        raise ValueError(f"max_per_target: {n_small} {small} taking at most {cap} each cannot cover all "
                         f"{n_big} {big}; expected max_per_target >= {-(-n_big // n_small)}")

    scale = _overflow_scale(c)
    scaled = c if scale == 1.0 else sp.csr_matrix((c.data * scale, c.indices, c.indptr), shape=c.shape)

    if solver == "highs":
        from ._highs import solve_cover

        rows, cols, info = solve_cover(scaled, cap)
        return _finish(c, rows, cols, sign=1.0, unmatched_cost=None, problem="cover", solver="highs", t0=t0,
                       info=info)

    from .. import _core

    g = scaled.copy()
    g.sort_indices()
    indptr, indices, data = _native_arrays(g)
    # With a capacity the native solver first solves the uncapacitated cover: optimal as it is when it
    # respects the capacity, else the warm start of an exact repair (docs/matching.md).
    out = _core.cover_assignment(n, m, indptr, indices, data, 0 if cap is None else min(cap, n_big))
    if out["failed_row"] != -1:
        raise ValueError(_cover_infeasible(out, cap, rows_larger, n_big, n_small))
    partner = out["col_of_row"].astype(np.int64)
    idx = np.arange(n_big, dtype=np.int64)
    rows, cols = (idx, partner) if rows_larger else (partner, idx)
    info = {"warm_matched": int(out["warm_matched"]), "scanned": int(out["scanned"])}
    if cap is not None:
        info["capacity_binding"] = bool(out["over_capacity"] > 0)
        info["over_capacity"] = int(out["over_capacity"])
        info["scaling_phases"] = max(int(out["scaling_phases"]), 0)
    return _finish(c, rows, cols, sign=1.0, unmatched_cost=None, problem="cover", solver="native", t0=t0,
                   searches=out["searches"], info=info)


def _cover_infeasible(out: dict, cap, rows_larger: bool, n_big: int, n_small: int) -> str:
    """The message of a failed cover search: a set of points whose allowed pairs all lie within a set
    on the other side, and why that blocks every cover.

    Without a capacity the witness is a set S of smaller-side points (``hall_rows``) whose allowed
    pairs reach only the larger-side points B (``hall_cols``), fewer than S. With ``max_per_target``
    the flow search reports the larger-side points B it reached (``hall_rows``) and the smaller-side
    points S (``hall_cols``): every allowed pair of B lies in S, and B outnumbers what S can take,
    ``min(cap * |S|, |S| + n_big - n_small)`` (every other smaller-side point needs one of the
    larger-side points outside B).
    """
    big, small = ("rows", "columns") if rows_larger else ("columns", "rows")
    head = "cost: cost matrix is infeasible (no cover exists): "
    hr, hc = np.sort(out["hall_rows"]), np.sort(out["hall_cols"])
    if cap is None:
        return (f"{head}{small} {_first(hr)} have allowed pairs only with {big} {_first(hc)}, too few to cover "
                f"each of them with a {big[:-1]} of its own{cover_hint(None)}")
    nb, ns = hr.size, hc.size
    why = []
    if nb > ns + n_big - n_small:
        left, other = n_big - nb, n_small - ns
        why.append(f"which leaves {left} other {big[:-1] if left == 1 else big} for the {other} other "
                   f"{small[:-1] if other == 1 else small}, each of which needs one")
    if nb > cap * ns:
        why.append(f"which can take at most max_per_target={cap} each, {cap * ns} in all")
    reason = "; ".join(why) or f"which cannot take them all within max_per_target={cap}"
    return f"{head}{big} {_first(hr)} have allowed pairs only with {small} {_first(hc)}, {reason}{cover_hint(cap)}"
