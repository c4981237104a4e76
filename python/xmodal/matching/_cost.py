"""Cost matrices for the assignment solvers: validation into one canonical CSR form (stored entries =
allowed pairs, +inf = forbidden as in scipy) and the exact power-of-two scaling that keeps the
solvers' sums finite."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import describe, real_array

_SHOW = 8  # indices named in error messages


def _first(idx, n=_SHOW) -> str:
    idx = np.asarray(idx).ravel()
    head = ", ".join(str(int(i)) for i in idx[:n])
    return f"[{head}{', ...' if idx.size > n else ''}] ({idx.size} in all)"


def cover_hint(cap) -> str:
    """The end of a cover's infeasibility message: what the user can change (a cover has no
    unmatched cost, so that is pointed to the one-to-one problem)."""
    return (f"; build the candidate graph with a larger k or radius{'' if cap is None else ' or raise max_per_target'} "
            "(a cover matches every point; to leave points unmatched, use a one-to-one matching with an "
            "unmatched cost)")


def _drop_entries(c: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """CSR copy of ``c`` without the stored entries where ``keep`` is False (explicit zeros kept)."""
    row_of_entry = np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr))
    counts = np.bincount(row_of_entry[keep], minlength=c.shape[0])
    indptr = np.zeros(c.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((c.data[keep], c.indices[keep], indptr), shape=c.shape)
    out.has_sorted_indices = c.has_sorted_indices
    return out


def _index_array(x: Any, name: str, what: str, fmt: str) -> np.ndarray:
    """An index array of a sparse matrix, checked to be a 1-D numpy integer array."""
    if not isinstance(x, np.ndarray) or x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: invalid {fmt.upper()} matrix: expected {what} to be a 1-D integer array, "
                         f"got {describe(x)}")
    return x


def _check_index_range(idx: np.ndarray, bound: int, name: str, what: str, fmt: str) -> None:
    bad = (idx < 0) | (idx >= bound)
    if bad.any():
        e = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: invalid {fmt.upper()} matrix: {what} index out of range: entry {e} has {what} "
                         f"index {int(idx[e])}, expected 0 <= index < {bound} (the number of {what}s)")


def _check_sparse_structure(cost: Any, name: str) -> None:
    """ValueError naming the first defect of the index arrays of a CSR / CSC / BSR / COO matrix.

    scipy trusts these arrays in its compiled routines (sorting, conversion), where a bad ``indptr``
    or an out-of-range index reads and writes out of bounds: checked here before any of them runs.
    ``indptr[-1]`` (the number of stored entries) may be below the length of ``indices`` and ``data``
    (scipy ignores the tail).
    """
    fmt = cost.format
    if fmt not in ("csr", "csc", "bsr", "coo"):
        return  # dok, lil, dia: Python-level structures, converted through COO (checked after)
    n, m = (int(s) for s in cost.shape)
    data = cost.data
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{name}: invalid {fmt.upper()} matrix: expected data to be a numpy array, "
                         f"got {describe(data)}")
    if fmt == "coo":
        row = _index_array(cost.row, name, "row", fmt)
        col = _index_array(cost.col, name, "col", fmt)
        if data.ndim != 1 or not (row.size == col.size == data.size):
            raise ValueError(f"{name}: invalid COO matrix: expected row, col and data of one length, got "
                             f"{row.size}, {col.size} and {describe(data)}")
        _check_index_range(row, n, name, "row", fmt)
        _check_index_range(col, m, name, "column", fmt)
        return
    if fmt == "bsr":
        if data.ndim != 3:
            raise ValueError(f"{name}: invalid BSR matrix: expected data of shape (blocks, R, C), "
                             f"got {describe(data)}")
        br, bc = (int(s) for s in data.shape[1:])
        if br < 1 or bc < 1 or n % br or m % bc:
            raise ValueError(f"{name}: invalid BSR matrix: blocks of shape ({br}, {bc}) do not tile the "
                             f"shape {(n, m)}")
        major, minor, what, unit = n // br, m // bc, "block column", "block rows"
    elif data.ndim != 1:
        raise ValueError(f"{name}: invalid {fmt.upper()} matrix: expected 1-D data, got {describe(data)}")
    elif fmt == "csr":
        major, minor, what, unit = n, m, "column", "rows"
    else:
        major, minor, what, unit = m, n, "row", "columns"
    indptr = _index_array(cost.indptr, name, "indptr", fmt)
    indices = _index_array(cost.indices, name, "indices", fmt)
    F = fmt.upper()
    if indptr.size != major + 1:
        raise ValueError(f"{name}: invalid {F} matrix: expected indptr of length {major + 1} (number of {unit} "
                         f"+ 1), got length {indptr.size}")
    if indptr[0] != 0:
        raise ValueError(f"{name}: invalid {F} matrix: expected indptr to start at 0, got {int(indptr[0])}")
    dec = np.diff(indptr) < 0
    if dec.any():
        i = int(np.flatnonzero(dec)[0])
        raise ValueError(f"{name}: invalid {F} matrix: expected a non-decreasing indptr, got indptr[{i}] = "
                         f"{int(indptr[i])} > indptr[{i + 1}] = {int(indptr[i + 1])}")
    nnz = int(indptr[-1])
    if nnz > indices.size or nnz > data.shape[0]:
        raise ValueError(f"{name}: invalid {F} matrix: indptr ends at {nnz} stored entries, expected at most the "
                         f"length of indices ({indices.size}) and data ({data.shape[0]})")
    _check_index_range(indices[:nnz], minor, name, what, fmt)


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
        _check_sparse_structure(cost, name)  # before any scipy routine trusts the index arrays
        if cost.format == "csr":
            nnz = int(cost.indptr[-1])  # a fresh copy of the stored entries only (checked above)
            c = sp.csr_matrix((np.array(cost.data[:nnz], dtype=np.float64), np.array(cost.indices[:nnz]),
                               np.array(cost.indptr)), shape=cost.shape)
        else:
            coo = sp.coo_matrix(cost)
            if cost.format not in ("coo", "csc", "bsr"):
                _check_sparse_structure(coo, name)
            key = coo.row.astype(np.int64) * coo.shape[1] + coo.col
            uniq, counts = np.unique(key, return_counts=True)
            if uniq.size != key.size:
                first = int(uniq[np.argmax(counts > 1)])
                raise ValueError(_duplicate_message(name, *divmod(first, coo.shape[1]), key.size - uniq.size))
            c = sp.csr_matrix(coo, dtype=np.float64)
        if not c.has_canonical_format:
            n0 = c.nnz
            c.sort_indices()
            ind, ptr = c.indices, c.indptr
            same = np.diff(ind) == 0
            row_start = np.zeros(ind.size, dtype=bool)
            row_start[ptr[:-1][ptr[:-1] < ind.size]] = True
            dup = same & ~row_start[1:]
            if dup.any():
                e = int(np.flatnonzero(dup)[0]) + 1
                r = int(np.searchsorted(ptr, e, side="right") - 1)
                raise ValueError(_duplicate_message(name, r, int(ind[e]), int(dup.sum())))
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


def _duplicate_message(name: str, r: int, j: int, extra: int) -> str:
    return (f"{name}: duplicate entries for the same (row, column): entry ({r}, {j}) is stored more than once "
            f"({extra} extra entr{'y' if extra == 1 else 'ies'} in all); expected one cost per allowed pair (scipy "
            f"would add them up: call sum_duplicates() first if that is what they mean)")


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
