"""Graph + assignment in one call."""

from __future__ import annotations

import numbers
import time
from typing import Any

import numpy as np

from .._validation import choice, describe
from ._assignment import AssignmentResult, _as_float, cover_assignment, linear_assignment
from ._knn import knn_graph

__all__ = ["match_points"]


def _check_unmatched_cost(u: Any) -> None:
    """The costs of :func:`match_points` are distances (>= 0): a negative unmatched cost would leave
    every point unmatched, so it is refused, like NaN; ``np.inf`` means the same as None."""
    if u is None:
        return
    if isinstance(u, bool) or not isinstance(u, numbers.Real):
        raise TypeError(f"unmatched_cost: expected a number >= 0 or None, got {describe(u)}")
    v = _as_float(u)
    if np.isnan(v) or v < 0:
        raise ValueError(f"unmatched_cost: expected a finite number >= 0 (a distance), np.inf (same as None) "
                         f"or None, got {v}")


def match_points(a: Any, b: Any, *, k: int | None = 30, radius: float | None = None,
                 unmatched_cost: float | None = None, mode: str = "one-to-one", spacing: Any = None,
                 max_per_target: int | None = None, symmetric: bool = True, solver: str = "native",
                 device: str = "auto") -> AssignmentResult:
    """Match two point sets exactly on a sparse candidate graph of Euclidean distances.

    Builds :func:`knn_graph` (pairs within ``radius`` or among the ``k`` nearest neighbours, both
    ways when ``symmetric``) and solves :func:`linear_assignment` (``mode="one-to-one"``) or
    :func:`cover_assignment` (``mode="cover"``) on it, with cost = distance.

    Parameters
    ----------
    a, b : (n, d) and (m, d) arrays
        Points, d = 2 or 3 for image coordinates in axis order (z, y, x) (any d from 1 to 8 is
        accepted, see :func:`knn_graph`), physical units (or voxels with ``spacing``). Rows of the
        problem are ``a``, columns ``b``. Either set may be empty (n = 0 or m = 0): one-to-one
        mode then returns no pairs and every point of the other set unmatched (``cost`` counts
        them at ``unmatched_cost`` when given); cover mode needs points in both sets
        (ValueError naming ``a, b``) unless both are empty.
    k : int or None
        Nearest neighbours per point (default 30); None for a radius-only graph.
    radius : float, optional
        Also allow every pair within this distance.
    unmatched_cost : float, optional
        One-to-one only, >= 0 (a distance): a point may stay unmatched at this cost (pairs farther
        apart than ``2 * unmatched_cost`` are then never matched). Without it (or with ``np.inf``) every
        point of the smaller set must be matched on the candidate graph. Exact for any finite
        value (see :func:`linear_assignment`).
    mode : {"one-to-one", "cover"}
        ``"cover"``: every point of the larger set matched exactly once, every point of the smaller
        set at least once (at most ``max_per_target``), the Platynereis atlas formulation.
    spacing : float or sequence, optional
        Voxel size: coordinates are multiplied by it; distances, ``radius`` and
        ``unmatched_cost`` are then in physical units.
    max_per_target : int, optional
        Cover mode only (see :func:`cover_assignment`).
    symmetric : bool
        k-NN of ``b`` in ``a`` too (default True).
    solver : {"native", "highs"}
        Assignment solver.
    device : {"auto", "cpu", "cuda"}
        Where the graph is built (the assignment runs on the CPU).

    Returns
    -------
    AssignmentResult
        Pairs ``(rows[t], cols[t])`` = indices into ``a`` and ``b``; ``pair_costs`` are their
        distances. ``info`` adds ``graph_time_s`` and ``graph_pairs``.

    Examples
    --------
    >>> import numpy as np, xmodal
    >>> a = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]])
    >>> b = a[[2, 0]] + 0.1
    >>> res = xmodal.match_points(a, b, k=2, unmatched_cost=1.0)
    >>> res.rows.tolist(), res.cols.tolist(), res.unmatched_rows.tolist()
    ([0, 2], [1, 0], [1])
    """
    choice(mode, "mode", ("one-to-one", "cover"))
    if mode == "cover" and unmatched_cost is not None:
        raise ValueError("unmatched_cost: not used by mode='cover' (every point is matched); expected None")
    if mode == "one-to-one" and max_per_target is not None:
        raise ValueError("max_per_target: only used by mode='cover'; expected None")
    _check_unmatched_cost(unmatched_cost)
    t0 = time.perf_counter()
    g = knn_graph(a, b, k=k, radius=radius, symmetric=symmetric, spacing=spacing, device=device)
    if type(g).__module__.startswith("cupyx"):
        g = g.get()  # GPU graph -> scipy CSR for the CPU solver
    t_graph = time.perf_counter() - t0
    if mode == "cover" and (g.shape[0] == 0) != (g.shape[1] == 0):
        raise ValueError(f"a, b: mode='cover' matches every point, so it needs points in both sets (or in "
                         f"neither), got {g.shape[0]} and {g.shape[1]} points")
    try:
        if mode == "cover":
            res = cover_assignment(g, max_per_target=max_per_target, solver=solver)
        else:
            res = linear_assignment(g, unmatched_cost=unmatched_cost, solver=solver)
    except ValueError as exc:  # "cost: ..." names an argument of the solvers, not of this function
        if not str(exc).startswith("cost: "):
            raise
        raise ValueError(f"k, radius: on the candidate graph (rows: points of a, columns: points of b): "
                         f"{str(exc)[len('cost: '):]}") from None
    res.info["graph_time_s"] = t_graph
    res.info["graph_pairs"] = int(g.nnz)
    res.time_s = time.perf_counter() - t0
    return res
