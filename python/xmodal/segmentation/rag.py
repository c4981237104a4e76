"""Region adjacency graph of a label image and per-edge statistics along the faces between regions.

Conventions:

- Node ids are the label values (``n_nodes = labels.max() + 1``, values below 2^32 - 2). One label
  (``ignore_label``, default 0 = background) may be left out: no edge touches it.
- Edges ``(u, v)``, ``u < v``, join labels that meet on a face (two voxels one step apart along an
  axis: 4-neighbourhood in 2D, 6 in 3D), sorted lexicographically; ``n_faces`` counts the faces.
  With ``offsets``, label pairs joined by a voxel ``p`` and ``p + offset`` also become edges
  (long-range edges, ``n_faces == 0`` if they share no face).
- Boundary statistics: every face ``(p, q)`` contributes the two samples ``b[p]`` and ``b[q]``
  (the nifty / elf convention). Affinity statistics: every link ``(p, p + offsets[c])`` between two
  labels joined by an edge contributes ``a[c, p]`` (values used as given: merge probabilities in the
  xmodal convention).
- Quantiles are exact, with numpy's default ``"linear"`` interpolation. Edges without samples get
  NaN statistics and count 0.
- Native, parallel (``xmodal.set_num_threads``), and independent of the thread count.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .._validation import describe
from ._values import as_float_values

__all__ = ["RegionAdjacencyGraph", "EdgeFeatures", "region_adjacency_graph", "edge_features"]

_MAX_LABEL = (1 << 32) - 3


def _core():
    from .. import _core

    return _core


@dataclass
class RegionAdjacencyGraph:
    """Region adjacency graph of a label image.

    Attributes
    ----------
    n_nodes : int
        ``labels.max() + 1``; node id = label value.
    edges : ndarray of uint64, shape (E, 2)
        ``(u, v)`` with ``u < v``, sorted lexicographically.
    n_faces : ndarray of uint64, shape (E,)
        Faces (voxel pairs one step apart) between the two regions; 0 for a long-range-only edge.
    shape : tuple
        Shape of the label image.
    ignore_label : int or None
        The label no edge touches.
    """

    n_nodes: int
    edges: np.ndarray
    n_faces: np.ndarray
    shape: tuple
    ignore_label: int | None = 0

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])


@dataclass
class EdgeFeatures:
    """Per-edge statistics of a boundary map or of affinities (one row per RAG edge).

    Attributes
    ----------
    mean, min, max : ndarray of float64, shape (E,)
    quantile_levels : tuple of float
        The requested quantile levels in [0, 1].
    quantiles : ndarray of float64, shape (E, len(quantile_levels))
    count : ndarray of int64, shape (E,)
        Samples per edge (two per face for boundary maps, one per link for affinities).
    """

    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    quantile_levels: tuple
    quantiles: np.ndarray
    count: np.ndarray = field(repr=False)

    def get(self, name: str) -> np.ndarray:
        """A statistic by name: ``"mean"``, ``"min"``, ``"max"``, ``"median"`` (= ``"q50"``) or
        ``"qNN"`` (the quantile at NN %, which must have been requested)."""
        if name in ("mean", "min", "max"):
            return getattr(self, name)
        if name == "count":
            return self.count
        level = 0.5 if name == "median" else None
        if level is None and name.startswith("q"):
            try:
                level = float(name[1:]) / 100.0
            except ValueError:
                level = None
        if level is not None:
            for k, q in enumerate(self.quantile_levels):
                if abs(q - level) < 1e-12:
                    return self.quantiles[:, k]
        names = ["mean", "min", "max"] + [f"q{round(100 * q, 6):g}" for q in self.quantile_levels]
        raise ValueError(f"feature: expected one of {', '.join(map(repr, names))}"
                         f"{' or median' if 0.5 in self.quantile_levels else ''}, got {name!r}")


def _as_labels(labels) -> np.ndarray:
    """Labels as a C-contiguous (Z, Y, X) uint32 or uint64 array (2D -> Z = 1)."""
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        labels = np.asarray(labels)
    a = np.asarray(labels)
    if a.dtype == bool or a.dtype == object or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"labels: expected an integer label image, got {describe(labels)}")
    if a.ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D label image, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"labels: expected a non-empty image, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"labels: expected non-negative labels, got minimum {a.min()}")
    if int(a.max()) > _MAX_LABEL:
        raise ValueError(f"labels: expected label values < 2^32 - 2, got {int(a.max())}; relabel consecutively first")
    if a.dtype == np.uint64:
        out = np.ascontiguousarray(a)
    else:
        out = np.ascontiguousarray(a, dtype=np.uint32)
    return out.reshape((1,) + a.shape) if a.ndim == 2 else out


def _as_ignore(ignore_label):
    if ignore_label is None:
        return False, 0
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, numbers.Integral) or ignore_label < 0:
        raise TypeError(f"ignore_label: expected a non-negative integer or None, got {describe(ignore_label)}")
    return True, int(ignore_label)


def _as_offsets(offsets, ndim: int, name: str = "offsets", n_channels: int | None = None) -> np.ndarray:
    o = np.asarray(offsets)
    if o.dtype == object or not (np.issubdtype(o.dtype, np.integer) or
                                 (np.issubdtype(o.dtype, np.floating) and o.size and np.all(o == np.round(o)))):
        raise TypeError(f"{name}: expected integer offsets of shape (n, {ndim}), got {describe(offsets)}")
    if o.ndim != 2 or o.shape[1] != ndim:
        raise ValueError(f"{name}: expected shape (n, {ndim}) (one {ndim}-D offset per row), got shape {o.shape}")
    if n_channels is not None and o.shape[0] != n_channels:
        raise ValueError(f"{name}: expected one offset per affinity channel ({n_channels}), got {o.shape[0]}")
    o = o.astype(np.int64)
    if ndim == 2:
        o = np.concatenate([np.zeros((o.shape[0], 1), np.int64), o], axis=1)
    return np.ascontiguousarray(o)


def region_adjacency_graph(labels, *, ignore_label=0, offsets=None) -> RegionAdjacencyGraph:
    """Region adjacency graph of a 2D or 3D label image.

    Parameters
    ----------
    labels : ndarray of int, 2D or 3D
        Label image (non-negative; node id = label value).
    ignore_label : int or None
        Label that gets no edges (default 0, background); None keeps every label.
    offsets : array_like of int, shape (n, ndim), optional
        Long-range offsets: labels joined by a voxel ``p`` and ``p + offset`` also get an edge
        (e.g. the offsets of long-range affinities).

    Returns
    -------
    RegionAdjacencyGraph
    """
    lab = _as_labels(labels)
    active, value = _as_ignore(ignore_label)
    ndim = np.asarray(labels).ndim
    off = np.zeros((0, 3), np.int64) if offsets is None else _as_offsets(offsets, ndim)
    g = _core().rag_build(lab, active, value, off)
    return RegionAdjacencyGraph(n_nodes=int(g["n_nodes"]), edges=g["edges"].reshape(-1, 2), n_faces=g["n_faces"],
                                shape=tuple(np.shape(labels)), ignore_label=ignore_label)


def _as_quantiles(quantiles) -> np.ndarray:
    if quantiles is None:
        return np.zeros(0, np.float64)
    q = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    if q.ndim != 1 or not np.isfinite(q).all() or (q < 0).any() or (q > 1).any():
        raise ValueError(f"quantiles: expected values in [0, 1], got {describe(quantiles)}")
    return np.ascontiguousarray(q)


def _as_float_image(x, name: str, shape=None) -> np.ndarray:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = np.asarray(x)
    a = as_float_values(x, name, "real values")  # any real dtype, bool included; float32 / float64 kept
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values")
    return np.ascontiguousarray(a)


def edge_features(rag: RegionAdjacencyGraph, labels, boundaries=None, *, affinities=None, offsets=None,
                  quantiles=(0.1, 0.5, 0.9)) -> EdgeFeatures:
    """Statistics of a boundary map or of affinities along each edge of a region adjacency graph.

    Parameters
    ----------
    rag : RegionAdjacencyGraph
        From :func:`region_adjacency_graph` of the same ``labels``.
    labels : ndarray of int
        The label image the graph was built from.
    boundaries : ndarray, shape of labels, optional
        Boundary map (e.g. boundary probabilities); each face contributes its two voxels' values.
        Any real dtype: float32 and float64 are used as given, others (bool, integers, float16)
        converted to float32.
    affinities : ndarray, shape (C, *labels.shape), optional
        Affinities (used as given, any real dtype as ``boundaries``); channel ``c`` joins voxel ``p`` and ``p + offsets[c]``. Give
        either ``boundaries`` or ``affinities`` (with ``offsets``).
    offsets : array_like of int, shape (C, ndim)
        Offsets of the affinity channels.
    quantiles : sequence of float in [0, 1]
        Quantile levels to compute exactly (numpy's "linear" interpolation); ``()`` for none.

    Returns
    -------
    EdgeFeatures
    """
    if not isinstance(rag, RegionAdjacencyGraph):
        raise TypeError(f"rag: expected a RegionAdjacencyGraph, got {describe(rag)}")
    lab = _as_labels(labels)
    shape = tuple(np.shape(labels))
    if shape != tuple(rag.shape):
        raise ValueError(f"labels: expected the shape the graph was built from, {tuple(rag.shape)}, got {shape}")
    if (boundaries is None) == (affinities is None):
        raise ValueError("boundaries, affinities: give exactly one of them")
    q = _as_quantiles(quantiles)
    active, value = _as_ignore(rag.ignore_label)
    uv = np.ascontiguousarray(rag.edges, dtype=np.uint64).reshape(-1, 2)
    if boundaries is not None:
        b = _as_float_image(boundaries, "boundaries", shape)
        b3 = b.reshape(lab.shape)
        out = _core().rag_boundary_features(lab, active, value, int(rag.n_nodes), uv, b3, q)
    else:
        if offsets is None:
            raise ValueError("offsets: required with affinities")
        a = _as_float_image(affinities, "affinities")
        if a.ndim != len(shape) + 1 or a.shape[1:] != shape:
            raise ValueError(f"affinities: expected shape (C, *{shape}), got {a.shape}")
        off = _as_offsets(offsets, len(shape), n_channels=a.shape[0])
        a4 = a.reshape((a.shape[0],) + lab.shape)
        out = _core().rag_affinity_features(lab, active, value, int(rag.n_nodes), uv, a4, off, q)
    nq = q.size
    return EdgeFeatures(mean=out[:, 0].copy(), min=out[:, 1].copy(), max=out[:, 2].copy(),
                        quantile_levels=tuple(float(v) for v in q), quantiles=out[:, 3:3 + nq].copy(),
                        count=out[:, 3 + nq].astype(np.int64))
