"""k-NN / radius graph of CUDA arrays on the GPU (xmodal._cuda, brute force tiled)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._device import cuda_module, is_cuda_array
from .._optional import optional_import
from .._validation import as_spacing, describe


def _as_device_points(cp, x: Any, name: str):
    try:
        arr = cp.asarray(x)
    except Exception as exc:  # pragma: no cover - depends on the array library
        raise TypeError(f"{name}: expected an (n, d) array of coordinates, got {describe(x)}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an (n, d) array, got shape {tuple(arr.shape)}")
    if arr.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected 2 or 3 columns (coordinates), got {arr.shape[1]}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name}: expected at least 1 points, got 0")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real numeric (n, d) array, got {describe(x)}")
    arr = cp.ascontiguousarray(arr, dtype=cp.float64)
    if not bool(cp.isfinite(arr).all()):
        raise ValueError(f"{name}: coordinates must be finite")
    return arr


def _wrap(cp, buf, n: int, dtype):
    mem = cp.cuda.UnownedMemory(buf.ptr, buf.nbytes, buf, buf.device)
    return cp.ndarray((n,), dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))


def knn_graph_cuda(a, b, *, k, radius, symmetric, spacing, device):
    """GPU k-NN graph; see :func:`xmodal.knn_graph`. Returns a ``cupyx.scipy.sparse.csr_matrix``
    for CUDA input, a ``scipy.sparse.csr_matrix`` (copied to the host) for host input."""
    cp = optional_import("cupy", purpose="k-NN graphs on the GPU")
    cpx_sparse = optional_import("cupyx.scipy.sparse", purpose="k-NN graphs on the GPU")
    mod = cuda_module()
    if mod is None or not hasattr(mod, "knn_graph"):
        raise RuntimeError("knn_graph on the GPU needs xmodal._cuda built with a CUDA toolkit")
    host_input = not (is_cuda_array(a) or is_cuda_array(b))
    if device == "cpu":  # pragma: no cover - knn_graph only calls here for cuda
        raise ValueError("device: 'cpu' was requested for CUDA arrays; pass numpy arrays for the CPU")
    if k is not None and k > int(mod.knn_max_k):
        raise ValueError(f"k: the GPU graph supports k <= {int(mod.knn_max_k)}, got {k}; use numpy input "
                         "(device='cpu') for larger k")
    pa = _as_device_points(cp, a, "a")
    pb = _as_device_points(cp, b, "b")
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(f"a, b: expected the same number of columns, got {pa.shape[1]} and {pb.shape[1]}")
    if pa.device.id != pb.device.id:
        raise ValueError(f"a, b: expected arrays on the same GPU, got devices {pa.device.id} and {pb.device.id}")
    s = as_spacing(spacing, pa.shape[1])
    if s is not None:
        sd = cp.asarray(s)
        pa = cp.ascontiguousarray(pa * sd)
        pb = cp.ascontiguousarray(pb * sd)
    na, nb = int(pa.shape[0]), int(pb.shape[0])
    with pa.device:
        indptr_b, indices_b, data_b, nnz = mod.knn_graph(
            int(pa.data.ptr), na, int(pb.data.ptr), nb, int(pa.shape[1]), 0 if k is None else int(k),
            -1.0 if radius is None else float(radius), bool(symmetric), int(pa.device.id))
        indptr = _wrap(cp, indptr_b, na + 1, np.int64)
        indices = _wrap(cp, indices_b, int(nnz), np.int32)
        data = _wrap(cp, data_b, int(nnz), np.float64)
        g = cpx_sparse.csr_matrix((data, indices, indptr), shape=(na, nb))
    if host_input:
        return g.get()
    return g
