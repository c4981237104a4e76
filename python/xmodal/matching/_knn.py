"""Sparse k-nearest-neighbour / radius cost graphs between two point sets.

The dispatcher of the k-NN twins: options validated here once, points converted and validated by
the device's adapter (``_knn_cpu.py``: numpy and xmodal._core; ``_knn_cuda.py``: cupy and
xmodal._cuda), which computes the same graph on either device.
"""

from __future__ import annotations

import logging
from typing import Any

from .._device import is_cuda_array, resolve_device
from .._validation import as_bool, as_spacing, positive_float, positive_int

logger = logging.getLogger(__name__)

__all__ = ["knn_graph"]


def _check_options(k, radius, symmetric):
    """The options, validated once for both devices."""
    k = positive_int(k, "k", allow_none=True)
    radius = positive_float(radius, "radius", allow_none=True, allow_zero=True)
    if k is None and radius is None:
        raise ValueError("k, radius: expected k (an integer >= 1) and/or radius (a number >= 0), got neither")
    return k, radius, as_bool(symmetric, "symmetric")


def knn_graph(a: Any, b: Any, *, k: int | None = None, radius: float | None = None, symmetric: bool = True,
              spacing: Any = None, device: str = "auto"):
    """Sparse matrix of Euclidean distances between nearby points of two sets.

    Pair ``(i, j)`` is stored when ``|a_i - b_j|**2 <= radius**2`` (squared distances in float64,
    as :class:`scipy.spatial.cKDTree` compares them), or when ``b_j`` is among the ``k``
    nearest points of ``b`` to ``a_i``, or (``symmetric=True``) when ``a_i`` is among the ``k``
    nearest points of ``a`` to ``b_j``: the union of all three.

    Parameters
    ----------
    a : (n, d) array
        Points (rows of the result), any real dtype (converted to float64), finite. d = 1 to 8
        (the kernels' limit); for image coordinates d = 2 or 3, columns in image axis order
        (z, y, x). Physical units, or voxel indices together with ``spacing``. n = 0 is allowed.
    b : (m, d) array
        Points (columns of the result), same ``d`` and units as ``a``; m = 0 is allowed.
    k : int, optional
        Number of nearest neighbours (>= 1). When larger than the other set, all its points.
    radius : float, optional
        Distance threshold (>= 0, same units as the distances); pairs at distance <= radius.
    symmetric : bool
        Also link every ``b_j`` to its ``k`` nearest points of ``a`` (default True).
    spacing : float or sequence of d floats, optional
        Physical size of one unit along each axis; coordinates are multiplied by it first, and
        distances and ``radius`` are then in physical units.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` runs on the GPU when ``a`` or ``b`` is a CUDA array (cupy, torch on cuda), else
        on the CPU. ``"cuda"`` with numpy input computes on the GPU and returns a scipy matrix.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, m), float64
        Distances. Column indices are sorted within each row and unique; zero distances (identical
        points) are stored explicitly, so a stored entry always means "candidate pair". An empty
        set (n = 0 or m = 0) gives an empty matrix of shape (n, m) (no stored entries), as
        :class:`scipy.spatial.cKDTree` does: a tile without cells is not an error. For cupy input
        on the GPU, a ``cupyx.scipy.sparse.csr_matrix`` with the same content.

    Notes
    -----
    Neighbours are ranked by (squared distance, index): at equal distance the lower index wins the
    k-th place. Distances are ``sqrt(sum((a_i - b_j)**2))`` in float64, summed in axis order; they
    agree with :class:`scipy.spatial.cKDTree` to rounding. CPU: k-d trees on both sets, queries in
    parallel over :func:`xmodal.get_num_threads` threads; the result does not depend on the thread
    count. GPU: one thread per query, any ``k``, searching a uniform grid of cells over the other
    set (rings of cells around the query, stopped by a conservative distance bound; chosen
    automatically for large inputs) or by brute force (small inputs, strongly clustered sets); the
    same pairs and bit-identical distances as the CPU (both run the arithmetic of
    ``cpp/include/xmodal/detail/knn_arith.hpp``; see docs/matching.md).

    Examples
    --------
    >>> import numpy as np, xmodal
    >>> a = np.array([[0.0, 0.0], [10.0, 0.0]])
    >>> b = np.array([[0.0, 1.0], [10.0, 0.0]])
    >>> g = xmodal.knn_graph(a, b, k=1)
    >>> g.toarray()
    array([[1., 0.],
           [0., 0.]])
    >>> g.nnz  # the zero distance of the identical points is stored
    2
    """
    k, radius, symmetric = _check_options(k, radius, symmetric)
    on_gpu = resolve_device(device, a, b) == "cuda"
    if on_gpu:
        from . import _knn_cuda as backend
    else:
        from . import _knn_cpu as backend
    pa, pb = backend.points(a, "a"), backend.points(b, "b")
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(f"a, b: expected the same number of columns, got {pa.shape[1]} and {pb.shape[1]}")
    s = as_spacing(spacing, pa.shape[1])
    if s is not None:
        pa, pb = backend.scaled(pa, s), backend.scaled(pb, s)
    if k is not None:
        # "larger than the other set: all its points"; clamped so that any integer fits the native int
        # (and kept >= 1: with two empty sets the kernels still need a k-NN or a radius part)
        k = min(k, max(int(pa.shape[0]), int(pb.shape[0]), 1))
    g = backend.graph(pa, pb, 0 if k is None else k, -1.0 if radius is None else radius, symmetric)
    logger.debug("knn_graph (%s): %d x %d points, %d pairs", "cuda" if on_gpu else "cpu", pa.shape[0],
                 pb.shape[0], g.nnz)
    if on_gpu and not (is_cuda_array(a) or is_cuda_array(b)):
        return g.get()  # host input computed on the GPU: a scipy matrix
    return g
