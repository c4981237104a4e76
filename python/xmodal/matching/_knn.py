"""Sparse k-nearest-neighbour / radius cost graphs between two point sets."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._device import is_cuda_array, resolve_device
from .._validation import as_bool, as_points, as_spacing, describe, positive_float, positive_int

logger = logging.getLogger(__name__)

__all__ = ["knn_graph"]


def _check_options(k, radius, symmetric):
    k = positive_int(k, "k", allow_none=True)
    radius = positive_float(radius, "radius", allow_none=True, allow_zero=True)
    if k is None and radius is None:
        raise ValueError("k, radius: expected k (an integer >= 1) and/or radius (a number >= 0), got neither")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected True or False, got {describe(symmetric)}")
    return k, radius, bool(symmetric)


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
        Points (rows of the result), d = 2 or 3, columns in image axis order (z, y, x). Physical
        units, or voxel indices together with ``spacing``.
    b : (m, d) array
        Points (columns of the result), same ``d`` and units as ``a``.
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
        ``"auto"`` runs on the GPU when ``a`` or ``b`` is a CUDA array (cupy), else on the CPU.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, m), float64
        Distances. Column indices are sorted within each row and unique; zero distances (identical
        points) are stored explicitly, so a stored entry always means "candidate pair". For cupy
        input on the GPU, a ``cupyx.scipy.sparse.csr_matrix`` with the same content.

    Notes
    -----
    Neighbours are ranked by (squared distance, index): at equal distance the lower index wins the
    k-th place. Distances are ``sqrt(sum((a_i - b_j)**2))`` in float64, summed in axis order; they
    agree with :class:`scipy.spatial.cKDTree` to rounding. CPU: k-d trees on both sets, queries in
    parallel over :func:`xmodal.get_num_threads` threads; the result does not depend on the thread
    count.

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
    symmetric = as_bool(symmetric, "symmetric")
    k, radius, symmetric = _check_options(k, radius, symmetric)
    dev = resolve_device(device, a, b)
    if dev == "cuda" or is_cuda_array(a) or is_cuda_array(b):
        from ._knn_cuda import knn_graph_cuda

        return knn_graph_cuda(a, b, k=k, radius=radius, symmetric=symmetric, spacing=spacing, device=dev)
    pa = as_points(a, "a")
    pb = as_points(b, "b")
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(f"a, b: expected the same number of columns, got {pa.shape[1]} and {pb.shape[1]}")
    s = as_spacing(spacing, pa.shape[1])
    if s is not None:
        pa = np.ascontiguousarray(pa * s)
        pb = np.ascontiguousarray(pb * s)
    from .. import _core

    indptr, indices, data = _core.knn_graph(pa, pb, 0 if k is None else k,
                                            -1.0 if radius is None else radius, symmetric)
    g = sp.csr_matrix((data, indices, indptr), shape=(pa.shape[0], pb.shape[0]))
    g.has_sorted_indices = True
    logger.debug("knn_graph: %d x %d points, %d pairs", pa.shape[0], pb.shape[0], g.nnz)
    return g
