"""Posterior marginals of a partial one-to-one matching on a sparse graph (log-domain Sinkhorn).

The matchings of rows (cells) to columns (names), each row and each column used at most once, are
given the Gibbs weights ``exp(-sum of the matched relative costs / T)``. A relative cost
``c'_ij = c_ij - u_i - v_j`` is the cost of pairing ``i`` with ``j`` minus the costs of leaving
both unmatched, so "unmatched" is the zero-cost alternative. The entropic relaxation of this
distribution (the "dustbin" Sinkhorn with one private slack per row and per column) gives
marginals ``P_ij = a_i exp(-c'_ij / T) b_j`` with

    a_i (1 + sum_j exp(-c'_ij / T) b_j) = 1        (row i: matched somewhere or unmatched)
    b_j (1 + sum_i a_i exp(-c'_ij / T)) = 1        (column j: taken by some row or absent)

so that every row's marginals plus its unmatched probability ``a_i`` sum to one, and every
column's to at most one. Solved by alternating the two scalings in the log domain, on the stored
entries only: O(nnz) per sweep.
"""

from __future__ import annotations

import numpy as np


class _Segments:
    """Sorted segments of an edge list (by row or by column) for fast per-segment reductions."""

    def __init__(self, key: np.ndarray, n: int):
        self.order = np.argsort(key, kind="stable")
        k = key[self.order]
        self.counts = np.bincount(k, minlength=n)
        self.nonempty = np.flatnonzero(self.counts)
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.starts = starts[self.nonempty]
        self.n = n

    def log1p_sum_exp(self, z_sorted: np.ndarray) -> np.ndarray:
        """Per segment ``log(1 + sum(exp(z)))``; 0 for empty segments."""
        out = np.zeros(self.n)
        if len(self.starts) == 0:
            return out
        mx = np.maximum(np.maximum.reduceat(z_sorted, self.starts), 0.0)
        e = np.exp(z_sorted - np.repeat(mx, self.counts[self.nonempty]))
        s = np.add.reduceat(e, self.starts)
        out[self.nonempty] = mx + np.log(np.exp(-mx) + s)
        return out


def sinkhorn_marginals(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, shape: tuple[int, int], *,
                       temperature: float = 1.0, max_iter: int = 300, tol: float = 1e-6
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Marginals of the relaxed Gibbs distribution over partial matchings.

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
        Stop when no column's slack probability ``b_j`` changes by more than ``tol``.

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
    log_a = np.zeros(n)
    log_b = np.zeros(m)
    b = np.ones(m)
    it = 0
    for it in range(1, max_iter + 1):
        log_a = -R.log1p_sum_exp(zr + log_b[cr])
        log_b = -C.log1p_sum_exp(zc + log_a[rc])
        b_new = np.exp(log_b)
        delta = float(np.max(np.abs(b_new - b))) if m else 0.0
        b = b_new
        if delta < tol:
            break
    # a last row update so that the row constraints hold exactly
    log_a = -R.log1p_sum_exp(zr + log_b[cr])
    p = np.exp(log_a[rows] + z0 + log_b[cols])
    p_col_unmatched = np.clip(1.0 - np.bincount(cols, weights=p, minlength=m), 0.0, 1.0)
    return p, np.exp(log_a), p_col_unmatched, it
