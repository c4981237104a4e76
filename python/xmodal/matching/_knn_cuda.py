"""CUDA adapter of :func:`xmodal.knn_graph`: cupy points, the kernels of xmodal._cuda (cuda/knn.cu:
a uniform-grid search where it pays, else brute force), the same graph as the CPU adapter."""

from __future__ import annotations

import logging

from .._device import as_device_points, cupy_module, current_stream, native_cuda
from ._knn_cpu import POINT_DIMS

logger = logging.getLogger(__name__)

_PURPOSE = "k-NN graphs on the GPU"


def points(x, name: str):
    """``x`` as validated float64 ``(n, d)`` cupy coordinates (no copy for float64 CUDA input; n >= 0,
    d in ``POINT_DIMS``)."""
    return as_device_points(x, name, cupy_module(_PURPOSE), dims=POINT_DIMS, min_points=0)


def scaled(p, spacing):
    cp = cupy_module(_PURPOSE)
    return cp.ascontiguousarray(p * cp.asarray(spacing))


def graph(pa, pb, k: int, radius: float, symmetric: bool):
    """The graph as a ``cupyx.scipy.sparse.csr_matrix`` on the device of ``pa`` (and ``pb``)."""
    cp = cupy_module(_PURPOSE)
    from .._optional import optional_import

    cpx_sparse = optional_import("cupyx.scipy.sparse", purpose=_PURPOSE)
    if pa.shape[0] == 0 or pb.shape[0] == 0:  # no pairs: the empty matrix, without a kernel launch
        with pa.device:
            parts = (cp.zeros(0, cp.float64), cp.zeros(0, cp.int32), cp.zeros(pa.shape[0] + 1, cp.int64))
            return cpx_sparse.csr_matrix(parts, shape=(pa.shape[0], pb.shape[0]))
    mod = native_cuda("knn_graph")
    with pa.device:
        out = mod.knn_graph(pa, pb, k, radius, symmetric, current_stream(cp))
        logger.debug("knn_graph (cuda): a -> b search %s, b -> a search %s", out.get("algorithm"),
                     out.get("algorithm_reverse"))
        parts = [cp.asarray(out[name]) for name in ("data", "indices", "indptr")]  # owners kept, no copy
        return cpx_sparse.csr_matrix(tuple(parts), shape=(pa.shape[0], pb.shape[0]))
