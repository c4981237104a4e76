"""Posterior marginals of a partial one-to-one matching on a sparse graph (log-domain Sinkhorn).

A partial matching of n rows (cells) to m columns (names), each used at most once, is the
standard augmented assignment problem of size n + m: every row i also has a private "unmatched"
column, every column j a private "absent" row, and the n + m - (matched) private entries pair up
among themselves at no cost. With the relative cost ``c'_ij = c_ij - u_i - v_j`` of a pair (its
cost minus the costs of leaving both unmatched), the private entries cost 0.

The entropic relaxation of this assignment at temperature T (Sinkhorn scaling of
``exp(-c' / T)`` to a doubly stochastic matrix) gives marginals

    P(i -> j)        = a_i exp(-c'_ij / T) b_j
    P(i unmatched)   = a_i b'_i
    P(j absent)      = a'_j b_j

with every row of the augmented matrix (and every column) summing to one, so that each cell's
name probabilities plus its unmatched probability sum to one, and each name's probabilities plus
its absence probability too. The private-private block has rank one, so a sweep costs O(nnz).
Sinkhorn marginals are an approximation of the marginals of the Gibbs distribution over
matchings (too soft where one pair dominates); the temperature is calibrated out of sample.
"""

from __future__ import annotations

import numpy as np


def _lse(v: np.ndarray) -> float:
    """log(sum(exp(v))) of a 1-D array (-inf when empty)."""
    if v.size == 0:
        return -np.inf
    mx = float(v.max())
    return mx + float(np.log(np.exp(v - mx).sum()))


class _Segments:
    """Sorted segments of an edge list (by row or by column) for fast per-segment reductions."""

    def __init__(self, key: np.ndarray, n: int):
        self.order = np.argsort(key, kind="stable")
        self.counts = np.bincount(key, minlength=n)
        self.nonempty = np.flatnonzero(self.counts)
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.starts = starts[self.nonempty]
        self.rep = self.counts[self.nonempty]
        self.n = n

    def logsumexp_with(self, z_sorted: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Per segment ``log(exp(extra) + sum(exp(z)))`` (``extra`` one value per segment)."""
        out = np.array(extra, dtype=np.float64, copy=True)
        if len(self.starts) == 0:
            return out
        ex = out[self.nonempty]
        mx = np.maximum(np.maximum.reduceat(z_sorted, self.starts), ex)
        s = np.add.reduceat(np.exp(z_sorted - np.repeat(mx, self.rep)), self.starts)
        out[self.nonempty] = mx + np.log(np.exp(ex - mx) + s)
        return out


def sinkhorn_marginals(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, shape: tuple[int, int], *,
                       temperature: float = 1.0, max_iter: int = 300, tol: float = 1e-6
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Marginals of the entropic relaxation of a partial one-to-one assignment.

    Parameters
    ----------
    rows, cols : (e,) int arrays
        The allowed pairs (no duplicates).
    cost : (e,) float array
        Relative costs ``c'`` (pair cost minus both unmatched costs); negative = worth matching.
    shape : (n_rows, n_cols)
    temperature : float > 0
    max_iter : int
        Most sweeps.
    tol : float
        Stop when no row's unmatched probability and no column's absence probability changes by
        more than ``tol`` in a sweep.

    Returns
    -------
    p : (e,) marginal probability of each pair
    p_row_unmatched : (n_rows,) probability that the row stays unmatched
    p_col_unmatched : (n_cols,) probability that the column is absent
    iterations : int
    """
    n, m = shape
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    z0 = -np.asarray(cost, np.float64) / float(temperature)
    R = _Segments(rows, n)
    C = _Segments(cols, m)
    zr, cr = z0[R.order], cols[R.order]
    zc, rc = z0[C.order], rows[C.order]
    la = np.zeros(n)    # cell rows
    la2 = np.zeros(m)   # private "absent" rows of the names
    lb = np.zeros(m)    # name columns
    lb2 = np.zeros(n)   # private "unmatched" columns of the cells
    prev = None
    it = 0
    for it in range(1, max_iter + 1):
        la = -R.logsumexp_with(zr + lb[cr], lb2)
        la2 = -np.logaddexp(lb, _lse(lb2))
        lb = -C.logsumexp_with(zc + la[rc], la2)
        lb2 = -np.logaddexp(la, _lse(la2))
        cur = np.concatenate([la + lb2, la2 + lb])
        if prev is not None and float(np.max(np.abs(np.exp(cur) - np.exp(prev)))) < tol:
            break
        prev = cur
    # a last row update so that the cell rows sum to one exactly
    la = -R.logsumexp_with(zr + lb[cr], lb2)
    p = np.exp(la[rows] + z0 + lb[cols])
    p_row_unmatched = np.exp(la + lb2)
    p_col_unmatched = np.clip(1.0 - np.bincount(cols, weights=p, minlength=m), 0.0, 1.0)
    return p, p_row_unmatched, p_col_unmatched, it


#: Sinkhorn settings of the reported confidence (the calibration uses the same).
SINKHORN = {"tol": 1e-5, "max_iter": 200}


def logit(c):
    c = np.clip(np.asarray(c, float), 1e-6, 1 - 1e-6)
    return np.log(c) - np.log1p(-c)


def apply_platt(conf, platt):
    """``sigmoid(a * logit(conf) + b)`` for ``platt = (a, b)`` (identity for (1, 0))."""
    a, b = platt
    return 1.0 / (1.0 + np.exp(-(a * logit(np.asarray(conf, float)) + b)))
