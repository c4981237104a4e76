"""CPU adapter of :func:`xmodal.knn_graph`: numpy points, the k-d tree kernel of xmodal._core."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._validation import as_points

#: Point dimensions the k-NN kernels take, on both devices (``kMaxDim`` of
#: cpp/include/xmodal/detail/knn_arith.hpp).
POINT_DIMS = tuple(range(1, 9))


def points(x, name: str) -> np.ndarray:
    """``x`` as validated float64 ``(n, d)`` numpy coordinates (n >= 0, d in ``POINT_DIMS``)."""
    return as_points(x, name, dims=POINT_DIMS, min_points=0)


def scaled(p: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(p * spacing)


def graph(pa: np.ndarray, pb: np.ndarray, k: int, radius: float, symmetric: bool) -> sp.csr_matrix:
    """The graph as a scipy CSR matrix (k = 0: no k-NN part; radius < 0: no radius part)."""
    from .. import _core

    out = _core.knn_graph(pa, pb, k, radius, symmetric)
    g = sp.csr_matrix((out["data"], out["indices"], out["indptr"]), shape=(pa.shape[0], pb.shape[0]))
    g.has_sorted_indices = True
    return g
