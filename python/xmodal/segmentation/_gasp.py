"""GASP: agglomerative clustering of signed graphs (Bailoni et al., CVPR 2022).

Conventions:

- ``weights`` are signed: ``w > 0`` attracts (the two nodes should be in one segment), ``w < 0``
  repels. From a boundary probability ``b`` the usual choice is ``w = (1 - b) - beta`` (see
  :func:`boundary_to_signed_weights`).
- Two adjacent clusters are joined by one merged edge; its weight is the *linkage* of the weights
  of all original edges between them: ``"sum"``, ``"mean"`` (alias ``"average"``: weighted by
  ``edge_sizes``), ``"max"``, ``"min"`` or ``"abs_max"`` (the weight of largest magnitude, with its
  sign).
- Without cannot-link constraints the merged edge of largest weight is contracted while that weight
  is > 0. With ``cannot_link=True`` the edge of largest ``|w|`` is taken: ``w > 0`` contracts it,
  ``w <= 0`` forbids the two clusters from ever merging. ``linkage="abs_max", cannot_link=True`` is
  the mutex watershed on the graph (equal to :func:`~xmodal.segmentation.mutex_watershed_graph` with
  the positive edges attractive and the negative ones as mutex edges).
- Ties (equal priorities) go to the edge with the smaller id; a merged edge carries the smallest id
  of its parts. With ``abs_max`` and ``|wa| == |wb|`` the part with the smaller id wins.
- Labels are consecutive from 1 in node order of first occurrence.

The kernel is native (``xmodal._core``), single-threaded, releases the GIL, and gives the same
partition as bioimage-cpp's ``GaspClusterPolicy`` (linkages sum / mean / max / min / abs_max without
constraints, and its ``"mutex_watershed"`` linkage for abs_max with constraints) on inputs without
ties.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .._validation import describe
from ._values import as_float_values

__all__ = ["GaspInfo", "gasp", "boundary_to_signed_weights", "LINKAGES"]

#: accepted linkage names -> native code
LINKAGES = {"sum": 0, "mean": 1, "average": 1, "max": 2, "min": 3, "abs_max": 4}


@dataclass
class GaspInfo:
    """Diagnostics of one :func:`gasp` run.

    Attributes
    ----------
    n_clusters : int
        Segments in the result (isolated nodes included).
    n_merges : int
        Contractions performed.
    n_constraints : int
        Cannot-link constraints installed (negative edges with ``cannot_link=True``, and edges
        marked not mergeable).
    n_pushes : int
        Priority-queue insertions (the initial edges plus one per changed merged edge).
    n_duplicate_edges : int
        Input edges that repeated an earlier ``(u, v)`` pair (merged with the linkage first).
    n_rebuilds : int
        Rebuilds of the native cluster-pair hash map (a diagnostic of the implementation).
    seconds : float
        Wall-clock seconds in the native kernel.
    """

    n_clusters: int
    n_merges: int
    n_constraints: int
    n_pushes: int
    n_duplicate_edges: int
    n_rebuilds: int
    seconds: float


def _core():
    from .. import _core

    return _core


def _as_n_nodes(n_nodes) -> int:
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, numbers.Integral):
        raise TypeError(f"n_nodes: expected a non-negative integer, got {describe(n_nodes)}")
    n = int(n_nodes)
    if n < 0 or n >= (1 << 32) - 1:
        raise ValueError(f"n_nodes: expected an integer in [0, 2^32 - 2], got {n}")
    return n


def _as_edges(edges, n_nodes: int, name: str = "edges", *, check_ids: bool = True) -> np.ndarray:
    """(E, 2) uint64 C-contiguous node ids; ids < n_nodes and no self-loops unless check_ids=False
    (the native kernel re-checks both with the same messages)."""
    a = edges if isinstance(edges, np.ndarray) else np.asarray(edges)
    if a.size == 0:
        return np.zeros((0, 2), np.uint64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer node ids of shape (n_edges, 2), got {describe(edges)}")
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (n_edges, 2), got {a.shape}")
    if a.dtype.kind == "i" and a.min() < 0:
        raise ValueError(f"{name}: expected non-negative node ids, got minimum {a.min()}")
    if check_ids:
        if int(a.max()) >= n_nodes:
            raise ValueError(f"{name}: node ids must be < n_nodes = {n_nodes}, got {int(a.max())}")
        same = a[:, 0] == a[:, 1]
        if same.any():
            i = int(np.flatnonzero(same)[0])
            raise ValueError(f"{name}: self-loops are not allowed, row {i} is {a[i].tolist()}")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _as_edge_values(x, name: str, n: int, *, positive: bool = False, check: bool = True) -> np.ndarray:
    """(E,) float64 C-contiguous; finite (and > 0 with positive) unless check=False (the native
    kernel re-checks)."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected real values, got {describe(x)}")
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one value per edge), got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if check:
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: expected finite values, found {a[~np.isfinite(a)][0]}")
        if positive and a.size and a.min() <= 0:
            raise ValueError(f"{name}: expected positive values, got minimum {a.min()}")
    return a


def gasp(n_nodes, edges, weights, *, linkage="mean", cannot_link=False, edge_sizes=None,
         mergeable=None, n_clusters=1, return_info=False):
    """GASP agglomeration of a graph with signed edge weights.

    Parameters
    ----------
    n_nodes : int
        Number of nodes (ids ``0 .. n_nodes - 1``); nodes without edges stay single clusters.
    edges : array_like of int, shape (E, 2)
        Undirected edges ``(u, v)``, ``u != v``. A repeated pair is merged into its first occurrence
        with the linkage before the agglomeration starts.
    weights : array_like of float, shape (E,)
        Signed weights: > 0 attractive, < 0 repulsive (e.g. ``(1 - boundary) - beta``).
    linkage : {"mean", "average", "sum", "max", "min", "abs_max"}
        How the weights of parallel edges combine when clusters merge.
    cannot_link : bool
        GASP with cannot-link constraints: edges are taken by ``|w|`` and a repulsive edge forbids
        its two clusters from merging later. ``abs_max`` with constraints is the mutex watershed.
    edge_sizes : array_like of float, shape (E,), optional
        Positive edge sizes (e.g. face areas in voxels), the weights of ``"mean"`` linkage
        (default: all 1). Other linkages ignore them.
    mergeable : array_like of bool, shape (E,), optional
        False marks an edge that may never be contracted: when it is taken it installs a
        cannot-link constraint instead (a merged edge is mergeable only if all its parts are).
    n_clusters : int
        Stop when this many clusters remain (default 1: only the weights stop the agglomeration).
    return_info : bool
        Also return a :class:`GaspInfo`.

    Returns
    -------
    labels : ndarray of uint32, shape (n_nodes,)
        Consecutive from 1 in node order of first occurrence.
    info : GaspInfo
        Only with ``return_info=True``.

    Notes
    -----
    bioimage-cpp's ``GaspClusterPolicy(linkage=...)`` gives the same partition for ``"sum"``,
    ``"mean"``, ``"max"``, ``"min"`` and ``"abs_max"`` without constraints, and its
    ``"mutex_watershed"`` linkage equals ``linkage="abs_max", cannot_link=True`` here (inputs without
    tied priorities; ties are broken by edge id here, by heap position there).
    """
    n = _as_n_nodes(n_nodes)
    if not isinstance(linkage, str) or linkage not in LINKAGES:
        raise ValueError(f"linkage: expected one of {', '.join(map(repr, LINKAGES))}, got {linkage!r}")
    # ids, self-loops, finite weights and positive sizes are checked by the kernel (same messages)
    uv = _as_edges(edges, n, check_ids=False)
    E = uv.shape[0]
    if E >= (1 << 31):
        raise ValueError(f"edges: expected fewer than 2^31 edges, got {E}")
    w = _as_edge_values(weights, "weights", E, check=False)
    sz = None if edge_sizes is None else _as_edge_values(edge_sizes, "edge_sizes", E, check=False)
    mg = None
    if mergeable is not None:
        m = np.asarray(mergeable)
        if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
            raise TypeError(f"mergeable: expected booleans, got {describe(mergeable)}")
        if m.shape != (E,):
            raise ValueError(f"mergeable: expected shape ({E},) (one flag per edge), got {m.shape}")
        mg = np.ascontiguousarray(m != 0, dtype=np.uint8)
    if cannot_link not in (True, False):
        raise TypeError(f"cannot_link: expected a bool, got {describe(cannot_link)}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or int(n_clusters) < 1:
        raise ValueError(f"n_clusters: expected an integer >= 1, got {describe(n_clusters)}")
    stats = _core().gasp(n, uv, w, sz, mg, LINKAGES[linkage], bool(cannot_link), int(n_clusters))
    labels = stats["labels"]
    if return_info:
        return labels, GaspInfo(n_clusters=int(stats["n_clusters"]), n_merges=int(stats["n_merges"]),
                                n_constraints=int(stats["n_constraints"]), n_pushes=int(stats["n_pushes"]),
                                n_duplicate_edges=int(stats["n_duplicate_edges"]),
                                n_rebuilds=int(stats["n_rebuilds"]), seconds=float(stats["seconds"]))
    return labels


def boundary_to_signed_weights(boundary, *, beta=0.5):
    """Signed GASP weights ``(1 - boundary) - beta`` from boundary probabilities in [0, 1].

    ``beta`` is the bias: an edge attracts when its boundary probability is below ``1 - beta``.
    ``boundary``: any real dtype (integers 0 or 1 only), finite, in [0, 1] (a ValueError otherwise).
    Larger ``beta`` gives more, smaller segments (the ``beta_bias`` of elf's / PlantSeg's GASP).
    """
    b = as_float_values(boundary, "boundary", "boundary probabilities", dtype=np.float64, probabilities=True)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta: expected a number in [0, 1], got {describe(beta)}")
    if not np.isfinite(b).all():
        raise ValueError(f"boundary: expected finite values, found {b[~np.isfinite(b)].ravel()[0]}")
    if b.size and (b.min() < 0.0 or b.max() > 1.0):
        raise ValueError(f"boundary: expected probabilities in [0, 1], got values in [{b.min()}, {b.max()}]")
    return (1.0 - b) - float(beta)
