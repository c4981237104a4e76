"""Cost matrices for the assignment solvers: validation into one canonical CSR form (stored entries =
allowed pairs, +inf = forbidden as in scipy) and the exact power-of-two scaling that keeps the
solvers' sums finite."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import real_array

_SHOW = 8  # indices named in error messages


def _first(idx, n=_SHOW) -> str:
    idx = np.asarray(idx).ravel()
    head = ", ".join(str(int(i)) for i in idx[:n])
    return f"[{head}{', ...' if idx.size > n else ''}] ({idx.size} in all)"


def _drop_entries(c: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """CSR copy of ``c`` without the stored entries where ``keep`` is False (explicit zeros kept)."""
    row_of_entry = np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr))
    counts = np.bincount(row_of_entry[keep], minlength=c.shape[0])
    indptr = np.zeros(c.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((c.data[keep], c.indices[keep], indptr), shape=c.shape)
    out.has_sorted_indices = c.has_sorted_indices
    return out


def _as_csr(cost: Any, name: str = "cost", *, maximize: bool = False) -> sp.csr_matrix:
    """A canonical float64 CSR copy of a dense or sparse cost matrix: stored entries = allowed pairs.

    As in scipy: entries equal to +inf (-inf with ``maximize``) are forbidden pairs and left out;
    NaN and the opposite infinity are errors naming the entry.
    """
    forbidden = -np.inf if maximize else np.inf
    if sp.issparse(cost):
        if cost.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D matrix, got {cost.ndim}-D")
        if not (np.issubdtype(cost.dtype, np.number) or cost.dtype == bool) or np.issubdtype(
                cost.dtype, np.complexfloating):
            raise TypeError(f"{name}: expected a real numeric matrix, got dtype {cost.dtype}")
        if cost.format == "csr":
            c = sp.csr_matrix(cost, dtype=np.float64, copy=True)
        else:
            coo = sp.coo_matrix(cost)
            key = coo.row.astype(np.int64) * coo.shape[1] + coo.col
            if np.unique(key).size != key.size:
                raise ValueError(f"{name}: duplicate entries for the same (row, column); a pair needs one cost")
            c = sp.csr_matrix(coo, dtype=np.float64)
        if not c.has_canonical_format:
            n0 = c.nnz
            c.sort_indices()
            ind, ptr = c.indices, c.indptr
            same = np.diff(ind) == 0
            row_start = np.zeros(ind.size, dtype=bool)
            row_start[ptr[:-1][ptr[:-1] < ind.size]] = True
            if np.any(same & ~row_start[1:]):
                raise ValueError(f"{name}: duplicate entries for the same (row, column); a pair needs one cost")
            assert c.nnz == n0
        fin = np.isfinite(c.data)
        if not fin.all():
            bad = ~fin & (c.data != forbidden)
            if bad.any():
                e = int(np.flatnonzero(bad)[0])
                r = int(np.searchsorted(c.indptr, e, side="right") - 1)
                raise ValueError(_invalid_message(name, r, int(c.indices[e]), c.data[e], maximize))
            c = _drop_entries(c, fin)
        return c
    arr = real_array(cost, name, "a 2-D array or scipy sparse matrix")
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    n, m = arr.shape
    fin = np.isfinite(arr)
    if fin.all():
        indptr = np.arange(0, n * m + 1, m, dtype=np.int64) if m > 0 else np.zeros(n + 1, dtype=np.int64)
        indices = np.tile(np.arange(m, dtype=np.int32), n)
        return sp.csr_matrix((arr.ravel(), indices, indptr), shape=(n, m))
    bad = ~fin & (arr != forbidden)
    if bad.any():
        r, j = np.argwhere(bad)[0]
        raise ValueError(_invalid_message(name, int(r), int(j), arr[r, j], maximize))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(fin.sum(axis=1), out=indptr[1:])
    r, j = np.nonzero(fin)
    out = sp.csr_matrix((arr[r, j], j.astype(np.int32), indptr), shape=(n, m))
    out.has_sorted_indices = True
    return out


def _invalid_message(name: str, r: int, j: int, value: float, maximize: bool) -> str:
    allowed_inf = "-inf" if maximize else "+inf"
    return (f"{name}: contains invalid numeric entries: entry ({r}, {j}) is {value}; expected finite costs, "
            f"or {allowed_inf} for a forbidden pair{' (maximize=True)' if maximize else ''}")


# The solvers' label sums stay far from overflow when every |cost| * (n + m + 8) is below 2**_SUM_EXP.
_SUM_EXP = 1000


def _overflow_scale(c: sp.csr_matrix) -> float:
    """A power of two (exact scaling) that keeps the solvers' sums of costs finite; 1.0 normally.

    Only costs near the float64 limit (about 1e298 and above) are scaled. A huge
    ``unmatched_cost`` needs no scaling: the solvers never add it to the costs.
    """
    big = float(np.abs(c.data).max()) if c.nnz else 0.0
    if big == 0.0:
        return 1.0
    excess = int(np.frexp(big)[1]) + int(np.ceil(np.log2(c.shape[0] + c.shape[1] + 8))) - _SUM_EXP
    return 1.0 if excess <= 0 else float(np.ldexp(1.0, -excess))
