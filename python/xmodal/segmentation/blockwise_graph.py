"""Blockwise superpixel agglomeration for boundary maps larger than memory.

Passes (one block of the boundary map, with halo, in memory per worker):

1. **Superpixels per block.** Each block is read with ``halo`` voxels of context per side (clipped at
   the volume border), cut into superpixels by
   :func:`~xmodal.segmentation.distance_transform_watershed`, cropped to the block and numbered
   1..k in raster order (0 = masked). The block labels go to a work array (zarr, in ``workdir``);
   superpixels never cross block faces.
2. **Stitching.** Superpixel ``l`` of block ``b`` gets the global id ``offset[b] + l`` (cumulative
   counts in block order). A superpixel cut in two by a block face is joined again: for every face
   pair of voxels across a block face, each block's run (whose halo holds the other voxel) says
   whether it put both voxels in one superpixel; two pieces are joined when both runs agree on
   more than half of the face pairs between them (needs ``halo >= 1`` on that axis).
3. **Global region graph.** Each block contributes the edges of the faces it owns: the
   faces inside the block, and the faces between its last slice and the first slice of the next
   block along each axis. Per edge it reports the face count and the count, sum, minimum and maximum
   of the boundary samples (two per face, as in :func:`~xmodal.segmentation.edge_features`); the
   contributions are reduced in block order (deterministic). Edge statistic: ``"mean"``, ``"min"``
   or ``"max"`` (quantiles are not mergeable across blocks).
4. **One agglomeration** of the global graph (:func:`~xmodal.segmentation.agglomerate_graph`:
   GASP, multicut or graph mutex watershed), with the graph-level size filter.
5. **Relabel.** Every block's superpixels are mapped to their segment and written to ``out``.

Labels are consecutive from 1 in the order of the superpixels' global ids (block order, then raster
order inside a block); the result does not depend on the number of workers.
"""

from __future__ import annotations

import itertools
import numbers
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .._validation import describe, per_axis
from .agglomeration import METHODS, _check_beta, _merge_small_segments, agglomerate_graph
from .rag import edge_features, region_adjacency_graph
from .superpixels import _relabel_first_occurrence, distance_transform_watershed

__all__ = ["BlockwiseAgglomerationResult", "blockwise_superpixel_agglomeration"]


@dataclass
class BlockwiseAgglomerationResult:
    """Result of :func:`blockwise_superpixel_agglomeration`.

    Attributes
    ----------
    labels : array
        ``out`` when given, else a numpy array (uint32, or uint64 when needed).
    n_superpixels, n_edges, n_segments, n_blocks : int
    n_stitched : int
        Pairs of superpixels cut by a block face and joined again (see the module docstring).
    seconds : dict
        Wall-clock seconds of the passes ``superpixels``, ``graph``, ``agglomeration``, ``relabel``.
    """

    labels: object
    n_superpixels: int
    n_edges: int
    n_segments: int
    n_blocks: int
    n_stitched: int = 0
    seconds: dict = field(default_factory=dict)


def _face_stats(a, b, va, vb):
    """Edges between label slices a and b (faces a[i] - b[i]) with face count and sample stats."""
    keep = (a != b) & (a > 0) & (b > 0)
    if not keep.any():
        return None
    a, b = a[keep].astype(np.uint64), b[keep].astype(np.uint64)
    va, vb = va[keep].astype(np.float64), vb[keep].astype(np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo << np.uint64(32) | hi
    uk, inv = np.unique(key, return_inverse=True)
    faces = np.bincount(inv, minlength=uk.size)
    ssum = np.bincount(inv, weights=va, minlength=uk.size) + np.bincount(inv, weights=vb, minlength=uk.size)
    smin = np.full(uk.size, np.inf)
    smax = np.full(uk.size, -np.inf)
    for v in (va, vb):
        np.minimum.at(smin, inv, v)
        np.maximum.at(smax, inv, v)
    return uk, faces.astype(np.float64), 2.0 * faces, ssum, smin, smax


def _check_blockwise_args(boundaries, block_shape, halo, out, mask, method, feature, beta, min_size, n_workers):
    """(shape, block_shape, halo) of valid arguments of :func:`blockwise_superpixel_agglomeration`."""
    if not (hasattr(boundaries, "shape") and hasattr(boundaries, "__getitem__")):
        raise TypeError(f"boundaries: expected an array (numpy, zarr, ...), got {describe(boundaries)}")
    shape = tuple(int(s) for s in boundaries.shape)
    ndim = len(shape)
    if ndim not in (2, 3) or min(shape) < 1:
        raise ValueError(f"boundaries: expected a non-empty 2D or 3D array, got shape {shape}")
    bs = per_axis(block_shape, ndim, "block_shape", minimum=1)
    hl = per_axis(halo, ndim, "halo", minimum=0)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if feature not in ("mean", "min", "max"):
        raise ValueError(f"feature: expected 'mean', 'min' or 'max' (quantiles are not mergeable across blocks), "
                         f"got {feature!r}")
    _check_beta(beta, open_interval=method == "multicut")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size: expected a non-negative integer, got {describe(min_size)}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) or n_workers < 1:
        raise ValueError(f"n_workers: expected a positive integer, got {describe(n_workers)}")
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"mask: expected shape {shape}, got {tuple(mask.shape)}")
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"out: expected shape {shape}, got {tuple(out.shape)}")
    return shape, bs, hl


class _BlockGrid:
    """The blocks of a volume: corners in raster order, their inner slices, and the halo."""

    def __init__(self, shape, block_shape, halo):
        self.shape, self.bs, self.hl, self.ndim = shape, block_shape, halo, len(shape)
        self.blocks = list(itertools.product(*[range(0, s, b) for s, b in zip(shape, block_shape)]))
        self.index = {blk: i for i, blk in enumerate(self.blocks)}
        self.inner = [tuple(slice(o, min(o + b, s)) for o, b, s in zip(blk, block_shape, shape))
                      for blk in self.blocks]
        self.n_blocks = len(self.blocks)

    def outer(self, i):
        return tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(self.inner[i], self.hl, self.shape))


def _global_ids(local, offset):
    return np.where(local > 0, local.astype(np.int64) + offset, 0)


def _block_superpixels(grid, boundaries, mask, sp_store, options, i):
    """Pass 1 on block i: superpixels with halo, stored cropped with local ids from 1.

    Returns (count, sizes of the superpixels, joined): ``joined[(side, d)]`` says, for each pair of
    voxels across the block face on axis d, whether this run (whose halo holds the neighbour's voxel)
    put both into one superpixel: the evidence for stitching.
    """
    sl, outer, shape = grid.inner[i], grid.outer(i), grid.shape
    b = np.asarray(boundaries[outer])
    m = None if mask is None else np.asarray(mask[outer]).astype(bool)
    sp = distance_transform_watershed(b, mask=m, **options)
    crop = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sl, outer))
    local, k = _relabel_first_occurrence(sp[crop])
    sp_store[sl] = local.astype(np.uint32)
    joined = {}
    for d in range(grid.ndim):
        for side, (a, c) in (("up", (sl[d].stop - 1, sl[d].stop)), ("low", (sl[d].start - 1, sl[d].start))):
            if a < outer[d].start or c >= outer[d].stop or a < 0 or c >= shape[d]:
                continue
            la = np.take(sp, a - outer[d].start, axis=d)
            lb = np.take(sp, c - outer[d].start, axis=d)
            other = tuple(c_ for k_, c_ in enumerate(crop) if k_ != d)
            la, lb = la[other], lb[other]
            joined[(side, d)] = (la == lb) & (la > 0)
    return k, np.bincount(local.ravel(), minlength=k + 1)[1:].astype(np.float64), joined


def _block_edges(grid, boundaries, sp_store, offsets, joined, i):
    """Pass 2 on block i: its inner edges and the edges across its upper faces (global ids), and the
    superpixel pairs cut by an upper face that both blocks' runs saw as one (keys ``u << 32 | v``)."""
    sl, ndim, shape = grid.inner[i], grid.ndim, grid.shape
    local = np.asarray(sp_store[sl])
    lab = _global_ids(local, offsets[i])
    b = np.asarray(boundaries[sl], dtype=np.float64)
    parts, stitch = [], []
    rag = region_adjacency_graph(local, ignore_label=0)  # local ids: a small graph
    if rag.n_edges:
        f = edge_features(rag, local, b, quantiles=())
        g = rag.edges + np.uint64(offsets[i])
        key = g[:, 0] << np.uint64(32) | g[:, 1]
        parts.append((key, rag.n_faces.astype(np.float64), f.count.astype(np.float64), f.mean * f.count, f.min, f.max))
    for d in range(ndim):
        if sl[d].stop >= shape[d]:
            continue
        nb = list(grid.blocks[i])
        nb[d] += grid.bs[d]
        j = grid.index[tuple(nb)]
        last, first = list(sl), list(sl)
        last[d] = slice(sl[d].stop - 1, sl[d].stop)
        first[d] = slice(sl[d].stop, sl[d].stop + 1)
        la = lab[tuple(slice(None) if k != d else slice(-1, None) for k in range(ndim))]
        lb = _global_ids(np.asarray(sp_store[tuple(first)]), offsets[j])
        fs = _face_stats(la, lb, np.asarray(boundaries[tuple(last)], dtype=np.float64),
                         np.asarray(boundaries[tuple(first)], dtype=np.float64))
        if fs is not None:
            parts.append(fs)
        ja, jb = joined[i].get(("up", d)), joined[j].get(("low", d))
        if ja is not None and jb is not None:
            stitch.extend(_stitch_votes(np.squeeze(la, axis=d), np.squeeze(lb, axis=d), ja & jb))
    return parts, stitch


def _stitch_votes(la, lb, both):
    """Pairs (keys) of superpixels across a face that most of their shared face pairs join in both runs."""
    keep = (la != lb) & (la > 0) & (lb > 0)
    if not keep.any():
        return []
    k2 = np.minimum(la, lb)[keep].astype(np.uint64) << np.uint64(32) | np.maximum(la, lb)[keep].astype(np.uint64)
    uk, inv = np.unique(k2, return_inverse=True)
    votes = np.bincount(inv, weights=both[keep], minlength=uk.size)
    total = np.bincount(inv, minlength=uk.size)
    return [uk[votes > 0.5 * total]]


def _stitch_groups(pairs, n_nodes):
    """Each superpixel -> the smallest id of its stitched group, and the number of stitched pairs."""
    pairs = np.concatenate(pairs) if pairs else np.zeros(0, np.uint64)
    rep = np.arange(n_nodes, dtype=np.int64)
    if pairs.size:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        a = (pairs >> np.uint64(32)).astype(np.int64)
        b = (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
        adj = coo_matrix((np.ones(a.size), (a, b)), shape=(n_nodes, n_nodes))
        _, comp = connected_components(adj, directed=False)
        first = np.full(comp.max() + 1, n_nodes, np.int64)
        np.minimum.at(first, comp, np.arange(n_nodes))
        rep = first[comp]
    return rep, int(pairs.size)


def _merge_edge_parts(parts, rep, n_stitched, feature):
    """One edge list from the blocks' parts: (uv, sample count, the ``feature`` statistic)."""
    if not parts:
        return np.zeros((0, 2), np.uint64), np.zeros(0), np.zeros(0)
    key = np.concatenate([p[0] for p in parts])
    if n_stitched:  # re-key edges onto the stitched groups; drop edges inside a group
        ku = rep[(key >> np.uint64(32)).astype(np.int64)].astype(np.uint64)
        kv = rep[(key & np.uint64(0xFFFFFFFF)).astype(np.int64)].astype(np.uint64)
        key = np.where(ku == kv, np.uint64(0), np.minimum(ku, kv) << np.uint64(32) | np.maximum(ku, kv))
    uk, inv = np.unique(key, return_inverse=True)
    cnt = np.bincount(inv, weights=np.concatenate([p[2] for p in parts]), minlength=uk.size)
    if feature == "mean":
        stat = np.bincount(inv, weights=np.concatenate([p[3] for p in parts]), minlength=uk.size) / cnt
    elif feature == "min":
        stat = np.full(uk.size, np.inf)
        np.minimum.at(stat, inv, np.concatenate([p[4] for p in parts]))
    else:
        stat = np.full(uk.size, -np.inf)
        np.maximum.at(stat, inv, np.concatenate([p[5] for p in parts]))
    uv = np.stack([uk >> np.uint64(32), uk & np.uint64(0xFFFFFFFF)], 1).astype(np.uint64)
    inside = uk == 0  # key 0: edges inside a stitched group (node 0 has no edges)
    return uv[~inside], cnt[~inside], stat[~inside]


def blockwise_superpixel_agglomeration(boundaries, *, block_shape, halo, out=None, mask=None, method="gasp",
                                       beta=0.5, feature="mean", linkage="mean", cannot_link=False,
                                       solver="kernighan-lin", size_exponent=None, threshold=0.5,
                                       sigma_seeds=1.0, sigma_weights=2.0, alpha=1.0,
                                       superpixel_min_size=100, stacked=False, spacing=None, min_size=0,
                                       n_workers=1, workdir=None):
    """Superpixels per block, one global region graph, one agglomeration, relabel per block.

    Parameters
    ----------
    boundaries : array-like, 2D or 3D
        Boundary probabilities (numpy, zarr or anything sliceable with a ``shape``).
    block_shape : int or sequence of int
        Block size per axis (ideally a multiple of the chunks of ``boundaries`` and ``out``).
    halo : int or sequence of int
        Context read around each block for the superpixels (e.g. 2 * sigma_weights + a few voxels;
        with ``stacked=True`` the z halo is not needed).
    out : array-like, optional
        Where to write the labels (e.g. a zarr array of the spatial shape, integer dtype); default a
        new numpy array.
    mask : array-like of bool, optional
        Voxels outside are 0.
    method, beta, linkage, cannot_link, solver, size_exponent, min_size
        As in :func:`~xmodal.segmentation.superpixel_agglomeration`.
    feature : {"mean", "min", "max"}
        Edge statistic of the boundary samples.
    threshold, sigma_seeds, sigma_weights, alpha, superpixel_min_size, stacked, spacing
        Superpixel options (:func:`~xmodal.segmentation.distance_transform_watershed`).
    n_workers : int
        Threads over blocks (the native kernels and scipy release the GIL).
    workdir : path, optional
        Folder for the block superpixels (a zarr array); default a temporary folder removed at the end.

    Returns
    -------
    BlockwiseAgglomerationResult
    """
    shape, bs, hl = _check_blockwise_args(boundaries, block_shape, halo, out, mask, method, feature, beta,
                                          min_size, n_workers)
    import zarr

    grid = _BlockGrid(shape, bs, hl)
    sp_options = dict(threshold=threshold, sigma_seeds=sigma_seeds, sigma_weights=sigma_weights, alpha=alpha,
                      min_size=superpixel_min_size, stacked=stacked, spacing=spacing)
    own_tmp = workdir is None
    work = tempfile.mkdtemp(prefix="xmodal-sp-") if own_tmp else os.fspath(workdir)
    os.makedirs(work, exist_ok=True)
    seconds = {}
    try:
        sp_store = zarr.create_array(store=os.path.join(work, "superpixels.zarr"), shape=shape,
                                     chunks=tuple(bs), dtype=np.uint32, overwrite=True)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_workers) as ex:
            res = list(ex.map(lambda i: _block_superpixels(grid, boundaries, mask, sp_store, sp_options, i),
                              range(grid.n_blocks)))
        counts = np.array([r[0] for r in res], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n_nodes = int(offsets[-1]) + 1
        if n_nodes >= (1 << 32) - 2:
            raise ValueError(f"too many superpixels for one graph ({n_nodes - 1}); use larger superpixels")
        node_size = np.concatenate([[0.0]] + [r[1] for r in res])
        joined = [r[2] for r in res]
        seconds["superpixels"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_workers) as ex:
            per_block = list(ex.map(lambda i: _block_edges(grid, boundaries, sp_store, offsets, joined, i),
                                    range(grid.n_blocks)))
        rep, n_stitched = _stitch_groups([k for _, st in per_block for k in st], n_nodes)
        uv, cnt, stat = _merge_edge_parts([p for ps, _ in per_block for p in ps], rep, n_stitched, feature)
        seconds["graph"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        be = np.clip(stat, 0.0, 1.0)
        node_labels = agglomerate_graph(n_nodes, uv, be, cnt, method=method, beta=beta, linkage=linkage,
                                        cannot_link=cannot_link, solver=solver,
                                        size_exponent=size_exponent).astype(np.int64)
        node_labels = node_labels[rep]  # stitched superpixels follow their group's representative
        node_labels[0] = 0
        if min_size > 0:
            node_labels = _merge_small_segments(node_labels, node_size, uv.astype(np.int64), be, cnt, int(min_size))
        final, n_seg = _relabel_first_occurrence(node_labels)
        dtype = np.uint32 if n_seg < (1 << 32) - 1 else np.uint64
        final = final.astype(dtype)
        seconds["agglomeration"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target = np.zeros(shape, dtype) if out is None else out

        def relabel(i):
            sl = grid.inner[i]
            target[sl] = final[_global_ids(np.asarray(sp_store[sl]), offsets[i])]

        with ThreadPoolExecutor(n_workers) as ex:
            list(ex.map(relabel, range(grid.n_blocks)))
        seconds["relabel"] = time.perf_counter() - t0
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return BlockwiseAgglomerationResult(labels=target, n_superpixels=n_nodes - 1, n_edges=int(uv.shape[0]),
                                        n_segments=n_seg, n_blocks=grid.n_blocks, n_stitched=n_stitched,
                                        seconds=seconds)
