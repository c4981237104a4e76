"""Mutex watershed (Wolf et al. 2018, 2020) on grids and region graphs.

Conventions (see ``docs/mws.md`` for the conversions from other tools):

- ``affinities`` has shape ``(C, *spatial)`` (2D or 3D) and every channel is a **merge probability**
  (1 = same object), unless ``invert=True`` (then every channel is a boundary probability,
  the elf / PlantSeg convention, and ``1 - value`` is used).
- Channel ``c`` joins voxel ``p`` and voxel ``p + offsets[c]`` (the affogato / bioimage-cpp /
  mwatershed convention; offsets are usually negative, e.g. ``[-1, 0, 0]``). Edges that leave the
  volume are dropped.
- The first ``n_attractive`` channels attract with weight ``a``; the other channels repel with
  weight ``1 - a``. All edges are processed once by descending weight; ties are broken by edge id
  ``c * n_voxels + flat_index(p)`` (the order bioimage-cpp uses).
- Labels are consecutive from 1 in raster order of first occurrence; masked voxels are 0.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .._validation import as_bool, describe, int64_array, real_array
from ._values import as_float_values

__all__ = [
    "MutexWatershedInfo",
    "mutex_watershed",
    "seeded_mutex_watershed",
    "mutex_watershed_graph",
]


@dataclass
class MutexWatershedInfo:
    """Diagnostics of one mutex watershed run.

    Attributes
    ----------
    n_labels : int
        Segments in the result (background 0 excluded).
    n_edges : int
        Edges sorted and processed (after dropping out-of-volume, masked and stride-skipped edges).
    n_merges : int
        Attractive edges that merged two clusters.
    n_mutexes : int
        Distinct mutex constraints recorded between clusters.
    bytes_per_edge : int
        Bytes of one stored edge (8 on the float32 fast path, 16 otherwise); the radix sort needs
        the same again as scratch while it runs.
    peak_bytes : int
        Peak bytes of the large native buffers (edges, sort scratch, union-find and mutex state).
    seconds : dict
        Wall-clock seconds of the phases ``edges``, ``sort`` and ``cluster``.
    """

    n_labels: int
    n_edges: int
    n_merges: int
    n_mutexes: int
    bytes_per_edge: int
    peak_bytes: int
    seconds: dict = field(default_factory=dict)

    @classmethod
    def _from_native(cls, d: dict) -> "MutexWatershedInfo":
        return cls(
            n_labels=int(d["n_labels"]), n_edges=int(d["n_edges"]), n_merges=int(d["n_merges"]),
            n_mutexes=int(d["n_mutexes"]), bytes_per_edge=int(d["bytes_per_edge"]),
            peak_bytes=int(d["peak_bytes"]),
            seconds={"edges": d["seconds_edges"], "sort": d["seconds_sort"],
                     "cluster": d["seconds_cluster"]},
        )


def _core():
    from .. import _core

    return _core


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def _check_mode(bias, n_attractive, strides, C: int, ndim: int):
    """(bias array or None, n_attractive or None with bias, strides) checked together: with a bias
    every channel may attract or repel, so n_attractive is refused and strides must be per offset."""
    b = _check_bias(bias, C)
    if b is not None and n_attractive is not None:
        raise ValueError("n_attractive: not used with bias (the sign of affinity + bias decides which edges "
                         f"attract); give one of them, got n_attractive={n_attractive!r} and a bias")
    na = None if b is not None else _check_n_attractive(n_attractive, C, ndim)
    st = _check_strides(strides, ndim, C)
    if b is not None and st is not None and not isinstance(st[0], list):
        raise ValueError(f"strides: with bias every channel may attract or repel; give per-offset strides of shape "
                         f"({C}, {ndim}) instead of {st}")
    return b, na, st


def _check_affinities(affinities) -> np.ndarray:
    """Affinities as a float32 / float64 array (other real dtypes converted to float32, lists to
    float64; integers must be 0 or 1: see ``_values.py``), shape checked."""
    listed = isinstance(affinities, (list, tuple))
    if not listed and not (hasattr(affinities, "shape") and hasattr(affinities, "dtype")):
        raise TypeError(f"affinities: expected an array of shape (C, *spatial), got {describe(affinities)}")
    a = as_float_values(affinities, "affinities", "merge probabilities", dtype=np.float64 if listed else None,
                        probabilities=True)
    if a.ndim not in (3, 4):
        raise ValueError(
            f"affinities: expected shape (C, y, x) or (C, z, y, x), got shape {a.shape}")
    if a.shape[0] < 1:
        raise ValueError("affinities: expected at least one channel, got 0")
    if any(s < 1 for s in a.shape[1:]):
        raise ValueError(f"affinities: expected a non-empty spatial shape, got {a.shape[1:]}")
    return a


def _check_offsets(offsets, n_channels: int, ndim: int) -> np.ndarray:
    o = int64_array(offsets, "offsets", f"({n_channels}, {ndim}) integer offsets")
    if o.ndim != 2 or o.shape[1] != ndim:
        raise ValueError(
            f"offsets: expected shape ({n_channels}, {ndim}) (one {ndim}-D offset per channel), "
            f"got shape {o.shape}")
    if o.shape[0] != n_channels:
        raise ValueError(
            f"offsets: expected one offset per affinity channel ({n_channels}), got {o.shape[0]}")
    return o


def _check_n_attractive(n_attractive, n_channels: int, ndim: int) -> int:
    if n_attractive is None:
        n_attractive = min(ndim, n_channels)
    if isinstance(n_attractive, bool) or not isinstance(n_attractive, numbers.Integral):
        raise TypeError(f"n_attractive: expected an integer in [0, {n_channels}], got {describe(n_attractive)}")
    if not 0 <= int(n_attractive) <= n_channels:
        raise ValueError(f"n_attractive: expected an integer in [0, {n_channels}], got {int(n_attractive)}")
    return int(n_attractive)


def _check_strides(strides, ndim: int, n_channels: int):
    """None, ``ndim`` ints (repulsive channels only) or ``(n_channels, ndim)`` ints (per offset).

    Returns None, a list of ``ndim`` ints, or a list of ``n_channels`` lists of ``ndim`` ints.
    """
    if strides is None:
        return None
    if isinstance(strides, numbers.Integral) and not isinstance(strides, bool):
        strides = [int(strides)] * ndim
    s = int64_array(strides, "strides",
                    f"{ndim} positive integers or ({n_channels}, {ndim}) per-offset positive integers")
    if s.shape not in ((ndim,), (n_channels, ndim)):
        raise ValueError(f"strides: expected {ndim} values (one per axis, repulsive channels) or shape "
                         f"({n_channels}, {ndim}) (one row per offset, every edge), got shape {s.shape}")
    if (s < 1).any():
        raise ValueError(f"strides: expected positive integers, got {s.tolist()}")
    return s.tolist()


def _check_bias(bias, n_channels: int):
    """None, a real number or ``n_channels`` real numbers -> None or a float64 array (n_channels,)."""
    if bias is None:
        return None
    if isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias: expected a real number or {n_channels} real numbers, got {describe(bias)}")
    b = real_array(bias, "bias", f"a real number or {n_channels} real numbers")
    if b.dtype == bool:
        raise TypeError(f"bias: expected a real number or {n_channels} real numbers, got {describe(bias)}")
    b = np.asarray(b, dtype=np.float64)
    if b.ndim == 0:
        b = np.full(n_channels, float(b))
    if b.shape != (n_channels,):
        raise ValueError(f"bias: expected a scalar or one value per channel ({n_channels}), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"bias: expected finite values, got {b.tolist()}")
    return np.ascontiguousarray(b)


def _check_spatial(x, name: str, shape, *, kind: str):
    if x is None:
        return None
    a = np.asarray(x)
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the spatial shape of affinities), got {a.shape}")
    if kind == "mask":
        if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: expected a boolean mask, got dtype {a.dtype}")
        return np.ascontiguousarray(a != 0, dtype=np.uint8).view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise TypeError(f"{name}: expected integer labels, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
        raise ValueError(f"{name}: expected non-negative labels (0 = unseeded), got minimum {a.min()}")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _check_finite(a: np.ndarray, name: str = "affinities", origin=None) -> None:
    """ValueError naming the channel and voxel of the first non-finite value, or of the first value
    outside [0, 1] (affinities are probabilities), at voxel + ``origin`` (the position of ``a`` in a
    larger volume, when given)."""
    # chunked so that huge inputs need no full-size temporary
    flat = a.reshape(a.shape[0], -1)
    step = max(1, (1 << 24) // max(1, flat.shape[0]))
    for i in range(0, flat.shape[1], step):
        block = flat[:, i:i + step]
        if not np.isfinite(block).all():
            c, j = np.argwhere(~np.isfinite(block))[0]
            idx = np.unravel_index(i + j, a.shape[1:])
            if origin is not None:
                idx = tuple(int(v) + int(o) for v, o in zip(idx, origin))
            raise ValueError(f"{name}: expected finite values, found {block[c, j]} in channel {c} at {tuple(int(v) for v in idx)}")
        if block.size and (block.min() < 0 or block.max() > 1):
            c, j = np.argwhere((block < 0) | (block > 1))[0]
            idx = np.unravel_index(i + j, a.shape[1:])
            if origin is not None:
                idx = tuple(int(v) + int(o) for v, o in zip(idx, origin))
            raise ValueError(f"{name}: expected probabilities in [0, 1], found {block[c, j]} in channel {c} at "
                             f"{tuple(int(v) for v in idx)} (apply a sigmoid to logits first)")


def _check_seed(seed):
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise TypeError(f"seed: expected a non-negative integer or None, got {describe(seed)}")
    return int(seed) & ((1 << 64) - 1)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def mutex_watershed(affinities, offsets, *, n_attractive=None, strides=None,
                    randomize_strides=False, mask=None, invert=False, seed=None, seeds=None,
                    bias=None, return_info=False):
    """Mutex watershed segmentation of a 2D or 3D affinity map.

    Parameters
    ----------
    affinities : ndarray, shape (C, y, x) or (C, z, y, x), any real dtype
        Every channel is a merge probability in [0, 1] (1 = same object) unless ``invert``.
        Channel ``c`` joins voxel ``p`` and voxel ``p + offsets[c]``. Must be finite (a ValueError
        names the channel and voxel of a NaN or infinity, or of a value outside [0, 1]). A
        C-contiguous float32 or float64 array is used without a copy; bool, integer (0 and 1
        only: divide 8-bit maps stored as 0-255 by 255) and float16 values are converted to
        float32.
    offsets : array_like of int, shape (C, ndim)
        Voxel offsets in array axis order (z, y, x), usually negative (``[-1, 0, 0]`` joins a voxel
        with the one before it along z). Edges that leave the volume are dropped; an offset longer
        than the volume is legal and adds no edges. Values must fit a signed 64-bit integer.
    n_attractive : int, optional
        The first ``n_attractive`` channels are attractive (weight ``a``); the remaining channels are
        repulsive (weight ``1 - a``). Default: ``ndim``. Not used with ``bias``.
    strides : int, sequence of ndim ints, or array of shape (C, ndim), optional
        Subsampling of the edges by their source voxel ``p``: an edge is kept when
        ``p[d] % stride[d] == 0`` along every axis d (the grid is anchored at voxel 0).
        ``ndim`` values (or one int) apply to the **repulsive channels only**, as in the original
        method and bioimage-cpp; attractive edges are all kept. A ``(C, ndim)`` array gives one
        stride per offset that applies to **every edge of that offset**, attractive or repulsive,
        as mwatershed's ``strides`` (a row of ones keeps a channel whole).
    randomize_strides : bool
        Keep each subsampled edge with probability ``1 / prod(stride of its channel)`` instead,
        drawn from a counter-based hash of (``seed``, edge id): reproducible for a given ``seed``.
    mask : ndarray of bool, shape spatial, optional
        False voxels are background (label 0) and their edges are dropped.
    invert : bool
        ``affinities`` are boundary probabilities (the elf / PlantSeg convention); ``1 - value`` is
        used as merge probability.
    seed : int, optional
        Seed of the random strides (default 0).
    seeds : ndarray of int, shape spatial, optional
        Seed labels: voxels with the same nonzero seed are one segment from the start and segments
        with different seeds never merge (0 = unseeded).
    bias : float or sequence of C floats, optional
        Signed-weight mode (the mwatershed convention, with the per-channel biases of the blockwise
        pipelines built on it): every edge of channel ``c`` gets the signed weight
        ``s = m + bias[c]``, with ``m`` the merge probability (``1 - value`` with ``invert``),
        computed in the precision of ``affinities``. ``s > 0`` attracts with weight ``s``,
        ``s < 0`` repels with weight ``-s``, ``s == 0`` has no effect; all edges are processed by
        descending ``|s|``. Any channel may attract or repel, so ``n_attractive`` is not used and
        strides must be per offset. A scalar applies to every channel. ``bias = 0`` for the first
        ``n`` channels and ``-1`` for the others is the classic mutex watershed with
        ``n_attractive=n`` (up to attractive edges of weight exactly 0, which the classic method
        still processes last). Typical: ``-0.5`` (merge where ``m > 0.5``); a more negative bias
        for long-range channels splits less. See ``docs/mws.md``.
    return_info : bool
        Also return a :class:`MutexWatershedInfo`.

    Returns
    -------
    labels : ndarray, shape spatial, uint32
        Consecutive labels from 1 (raster order of first occurrence), 0 for masked voxels.
    info : MutexWatershedInfo
        Only with ``return_info=True``.

    Notes
    -----
    bioimage-cpp's ``segmentation.mutex_watershed(affs, offsets, n_attractive)`` uses the repulsive
    channels as repulsion strengths directly; it gives the same partition as this function for
    ``affs[n_attractive:] = 1 - affinities[n_attractive:]``. mwatershed's
    ``agglom(a + bias[:, None, None], offsets)`` gives the same partition as ``bias=bias`` (voxels
    it leaves at 0 are singletons here). See ``docs/mws.md``.
    """
    a = _check_affinities(affinities)
    C, spatial = a.shape[0], a.shape[1:]
    ndim = len(spatial)
    o = _check_offsets(offsets, C, ndim)
    b, na, st = _check_mode(bias, n_attractive, strides, C, ndim)
    na = C if na is None else na
    per_channel = st is not None and isinstance(st[0], list)
    randomize_strides = as_bool(randomize_strides, "randomize_strides")
    invert = as_bool(invert, "invert")
    return_info = as_bool(return_info, "return_info")
    if randomize_strides and st is None:
        raise ValueError("randomize_strides: requires strides")
    m = _check_spatial(mask, "mask", spatial, kind="mask")
    sd = _check_spatial(seeds, "seeds", spatial, kind="seeds")
    seed_value = _check_seed(seed)
    if int(np.prod(spatial)) >= (1 << 32) - 1:
        raise ValueError(f"affinities: at most 2^32 - 2 voxels per call, got {int(np.prod(spatial))}; "
                         "use blockwise_mutex_watershed")
    _check_finite(a)
    single = [1] * ndim if (st is None or per_channel) else st
    cst = np.asarray(st, np.int64) if per_channel else None
    if ndim == 2:
        a4 = a.reshape((C, 1) + spatial)
        o3 = np.concatenate([np.zeros((C, 1), np.int64), o], axis=1)
        st3 = [1] + single
        if cst is not None:
            cst = np.concatenate([np.ones((C, 1), np.int64), cst], axis=1)
    else:
        a4, o3, st3 = a, o, single
    a4 = np.ascontiguousarray(a4)
    out = _core().mws_grid(a4, np.ascontiguousarray(o3), na, st3, bool(randomize_strides and st is not None),
                           seed_value, invert, m, sd, None if cst is None else np.ascontiguousarray(cst), b)
    labels = out["labels"].reshape(spatial)
    if return_info:
        return labels, MutexWatershedInfo._from_native(out)
    return labels


def seeded_mutex_watershed(affinities, offsets, seeds, **kwargs):
    """Mutex watershed in which the given seed labels stay separate objects.

    Same as :func:`mutex_watershed` with ``seeds=seeds``: voxels with the same nonzero seed label
    start as one segment, segments with different seeds never merge, unseeded voxels join the seeds
    or form new segments. Labels of the result are consecutive from 1 (not the seed values); see
    ``docs/mws.md`` for mapping them back.

    ``offsets`` (C, ndim) ints: voxel offsets in array axis order (z, y, x), in voxels whatever the
    voxel size; channel ``c`` of ``affinities`` joins voxel ``p`` and ``p + offsets[c]`` (the first
    ``n_attractive`` attractive, as in :func:`mutex_watershed`). ``seeds``: integer labels of the
    spatial shape, 0 = unseeded; ``kwargs``: the other options of :func:`mutex_watershed`.
    """
    if seeds is None:
        raise ValueError("seeds: expected an integer label array, got None")
    return mutex_watershed(affinities, offsets, seeds=seeds, **kwargs)


def _as_uv(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros((0, 2), np.uint64)
    if a.dtype == object or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected integer node ids of shape (n, 2), got {describe(x)}")
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (n, 2), got {a.shape}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"{name}: expected non-negative node ids, got minimum {a.min()}")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _as_weights(x, name: str, n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0 and n == 0:
        return np.zeros(0, np.float64)
    a = as_float_values(a, name, "real weights", dtype=np.float64)  # any real dtype, bool included
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one weight per edge), got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite weights, found {a[~np.isfinite(a)][0]}")
    return a


def mutex_watershed_graph(n_nodes, edges, weights, mutex_edges, mutex_weights, *, seeds=None,
                          return_info=False):
    """Mutex watershed on a region graph (e.g. superpixel agglomeration).

    Parameters
    ----------
    n_nodes : int
        Number of nodes (ids 0 .. n_nodes - 1).
    edges : array_like of int, shape (E, 2)
        Attractive edges (u, v).
    weights : array_like of float, shape (E,)
        Attraction strength of each edge (higher = merged earlier), e.g. a mean merge probability.
        Any real dtype (bool and integers included), compared as float64.
    mutex_edges : array_like of int, shape (M, 2)
        Repulsive (mutex) edges (u, v). Self-loops ``(u, u)``, in either list, are allowed and have
        no effect (they neither merge nor forbid anything).
    mutex_weights : array_like of float, shape (M,)
        Repulsion strength of each mutex edge (higher = earlier), e.g. 1 - merge probability.
    seeds : array_like of int, shape (n_nodes,), optional
        Seed labels (0 = unseeded): nodes with the same seed start merged, different seeds never merge.
    return_info : bool
        Also return a :class:`MutexWatershedInfo`.

    Returns
    -------
    labels : ndarray of uint32, shape (n_nodes,)
        Consecutive labels from 1 in node order of first occurrence.

    Notes
    -----
    All edges are sorted jointly by descending weight; ties are broken by id (attractive edge i has
    id i, mutex edge j has id E + j). The weights are compared as float64.
    """
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, numbers.Integral):
        raise TypeError(f"n_nodes: expected a non-negative integer, got {describe(n_nodes)}")
    n_nodes = int(n_nodes)
    if n_nodes < 0 or n_nodes >= (1 << 32) - 1:
        raise ValueError(f"n_nodes: expected an integer in [0, 2^32 - 2], got {n_nodes}")
    uv = _as_uv(edges, "edges")
    muv = _as_uv(mutex_edges, "mutex_edges")
    w = _as_weights(weights, "weights", uv.shape[0])
    mw = _as_weights(mutex_weights, "mutex_weights", muv.shape[0])
    for name, arr in (("edges", uv), ("mutex_edges", muv)):
        if arr.size and int(arr.max()) >= n_nodes:
            raise ValueError(f"{name}: node ids must be < n_nodes = {n_nodes}, got {int(arr.max())}")
    sd = None
    if seeds is not None:
        sd = np.asarray(seeds)
        if sd.shape != (n_nodes,):
            raise ValueError(f"seeds: expected shape ({n_nodes},), got {sd.shape}")
        if not np.issubdtype(sd.dtype, np.integer):
            raise TypeError(f"seeds: expected integer labels, got dtype {sd.dtype}")
        if np.issubdtype(sd.dtype, np.signedinteger) and sd.size and sd.min() < 0:
            raise ValueError("seeds: expected non-negative labels (0 = unseeded)")
        sd = np.ascontiguousarray(sd, dtype=np.uint64)
    return_info = as_bool(return_info, "return_info")
    out = _core().mws_graph(n_nodes, uv, w, muv, mw, sd)
    if return_info:
        return out["labels"], MutexWatershedInfo._from_native(out)
    return out["labels"]
