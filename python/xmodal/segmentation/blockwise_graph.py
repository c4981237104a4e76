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

from .._validation import describe
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


def _per_axis(x, ndim, name, minimum):
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        x = [int(x)] * ndim
    try:
        v = [int(a) for a in x]
    except TypeError as exc:
        raise TypeError(f"{name}: expected an integer or {ndim} integers, got {describe(x)}") from exc
    if len(v) != ndim or any(a < minimum for a in v):
        raise ValueError(f"{name}: expected {ndim} integers >= {minimum}, got {describe(x)}")
    return v


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
    if not (hasattr(boundaries, "shape") and hasattr(boundaries, "__getitem__")):
        raise TypeError(f"boundaries: expected an array (numpy, zarr, ...), got {describe(boundaries)}")
    shape = tuple(int(s) for s in boundaries.shape)
    ndim = len(shape)
    if ndim not in (2, 3) or min(shape) < 1:
        raise ValueError(f"boundaries: expected a non-empty 2D or 3D array, got shape {shape}")
    bs = _per_axis(block_shape, ndim, "block_shape", 1)
    hl = _per_axis(halo, ndim, "halo", 0)
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

    import zarr

    grid = [range(0, s, b) for s, b in zip(shape, bs)]
    blocks = list(itertools.product(*grid))
    bindex = {blk: i for i, blk in enumerate(blocks)}
    inner = [tuple(slice(o, min(o + b, s)) for o, b, s in zip(blk, bs, shape)) for blk in blocks]
    own_tmp = workdir is None
    work = tempfile.mkdtemp(prefix="xmodal-sp-") if own_tmp else os.fspath(workdir)
    os.makedirs(work, exist_ok=True)
    seconds = {}
    try:
        sp_store = zarr.create_array(store=os.path.join(work, "superpixels.zarr"), shape=shape,
                                     chunks=tuple(bs), dtype=np.uint32, overwrite=True)

        # -- pass 1: superpixels per block ------------------------------------------------------
        t0 = time.perf_counter()

        def superpixels(i):
            sl = inner[i]
            outer = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(sl, hl, shape))
            b = np.asarray(boundaries[outer])
            m = None if mask is None else np.asarray(mask[outer]).astype(bool)
            sp = distance_transform_watershed(b, threshold=threshold, sigma_seeds=sigma_seeds,
                                              sigma_weights=sigma_weights, alpha=alpha,
                                              min_size=superpixel_min_size, stacked=stacked, spacing=spacing,
                                              mask=m)
            crop = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sl, outer))
            local, k = _relabel_first_occurrence(sp[crop])
            sp_store[sl] = local.astype(np.uint32)
            # Whether this run put the two voxels of each face pair across a block face into one
            # superpixel (the halo holds the neighbour's voxel): evidence for stitching.
            joined = {}
            for d in range(ndim):
                for side, (a, b) in (("up", (sl[d].stop - 1, sl[d].stop)), ("low", (sl[d].start - 1, sl[d].start))):
                    if a < outer[d].start or b >= outer[d].stop or a < 0 or b >= shape[d]:
                        continue
                    pa, pb = list(crop), list(crop)
                    pa[d] = a - outer[d].start
                    pb[d] = b - outer[d].start
                    la, lb = np.take(sp, pa[d], axis=d), np.take(sp, pb[d], axis=d)
                    other = tuple(c for k_, c in enumerate(crop) if k_ != d)
                    la, lb = la[other], lb[other]
                    joined[(side, d)] = (la == lb) & (la > 0)
            return k, np.bincount(local.ravel(), minlength=k + 1)[1:].astype(np.float64), joined

        with ThreadPoolExecutor(n_workers) as ex:
            res = list(ex.map(superpixels, range(len(blocks))))
        counts = np.array([r[0] for r in res], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n_nodes = int(offsets[-1]) + 1
        if n_nodes >= (1 << 32) - 2:
            raise ValueError(f"too many superpixels for one graph ({n_nodes - 1}); use larger superpixels")
        node_size = np.concatenate([[0.0]] + [r[1] for r in res])
        joined = [r[2] for r in res]
        seconds["superpixels"] = time.perf_counter() - t0

        # -- pass 2: edges owned by each block ---------------------------------------------------
        t0 = time.perf_counter()

        def glob(local, i):
            return np.where(local > 0, local.astype(np.int64) + offsets[i], 0)

        def block_edges(i):
            sl = inner[i]
            local = np.asarray(sp_store[sl])
            lab = glob(local, i)
            b = np.asarray(boundaries[sl], dtype=np.float64)
            parts, stitch = [], []
            rag = region_adjacency_graph(local, ignore_label=0)  # local ids: a small graph
            if rag.n_edges:
                f = edge_features(rag, local, b, quantiles=())
                g = rag.edges + np.uint64(offsets[i])
                key = g[:, 0] << np.uint64(32) | g[:, 1]
                parts.append((key, rag.n_faces.astype(np.float64), f.count.astype(np.float64),
                              f.mean * f.count, f.min, f.max))
            for d in range(ndim):
                if sl[d].stop >= shape[d]:
                    continue
                nb = list(blocks[i])
                nb[d] += bs[d]
                j = bindex[tuple(nb)]
                last = list(sl)
                last[d] = slice(sl[d].stop - 1, sl[d].stop)
                first = list(sl)
                first[d] = slice(sl[d].stop, sl[d].stop + 1)
                la = lab[tuple(slice(None) if k != d else slice(-1, None) for k in range(ndim))]
                lb = glob(np.asarray(sp_store[tuple(first)]), j)
                fs = _face_stats(la, lb, np.asarray(boundaries[tuple(last)], dtype=np.float64),
                                 np.asarray(boundaries[tuple(first)], dtype=np.float64))
                if fs is not None:
                    parts.append(fs)
                ja, jb = joined[i].get(("up", d)), joined[j].get(("low", d))
                if ja is not None and jb is not None:
                    la2 = np.squeeze(la, axis=d)
                    lb2 = np.squeeze(lb, axis=d)
                    keep = (la2 != lb2) & (la2 > 0) & (lb2 > 0)
                    if keep.any():
                        k2 = np.minimum(la2, lb2)[keep].astype(np.uint64) << np.uint64(32) | \
                            np.maximum(la2, lb2)[keep].astype(np.uint64)
                        uk, inv = np.unique(k2, return_inverse=True)
                        votes = np.bincount(inv, weights=(ja & jb)[keep], minlength=uk.size)
                        total = np.bincount(inv, minlength=uk.size)
                        stitch.append(uk[votes > 0.5 * total])
            return parts, stitch

        with ThreadPoolExecutor(n_workers) as ex:
            per_block = list(ex.map(block_edges, range(len(blocks))))
        parts = [p for ps, _ in per_block for p in ps]
        # Stitch: superpixels cut by a block face that both blocks' runs (with halo) saw as one.
        rep = np.arange(n_nodes, dtype=np.int64)
        pairs = [k for _, st in per_block for k in st]
        pairs = np.concatenate(pairs) if pairs else np.zeros(0, np.uint64)
        n_stitched = int(pairs.size)
        if pairs.size:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            a = (pairs >> np.uint64(32)).astype(np.int64)
            b = (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
            adj = coo_matrix((np.ones(a.size), (a, b)), shape=(n_nodes, n_nodes))
            _, comp = connected_components(adj, directed=False)
            first = np.full(comp.max() + 1, n_nodes, np.int64)
            np.minimum.at(first, comp, np.arange(n_nodes))
            rep = first[comp]  # each superpixel -> the smallest id of its stitched group
        if parts:
            key = np.concatenate([p[0] for p in parts])
            if n_stitched:  # re-key edges onto the stitched groups; drop edges inside a group
                ku = rep[(key >> np.uint64(32)).astype(np.int64)].astype(np.uint64)
                kv = rep[(key & np.uint64(0xFFFFFFFF)).astype(np.int64)].astype(np.uint64)
                key = np.where(ku == kv, np.uint64(0), np.minimum(ku, kv) << np.uint64(32) | np.maximum(ku, kv))
            uk, inv = np.unique(key, return_inverse=True)
            faces = np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=uk.size)
            cnt = np.bincount(inv, weights=np.concatenate([p[2] for p in parts]), minlength=uk.size)
            ssum = np.bincount(inv, weights=np.concatenate([p[3] for p in parts]), minlength=uk.size)
            smin = np.full(uk.size, np.inf)
            smax = np.full(uk.size, -np.inf)
            np.minimum.at(smin, inv, np.concatenate([p[4] for p in parts]))
            np.maximum.at(smax, inv, np.concatenate([p[5] for p in parts]))
            uv = np.stack([uk >> np.uint64(32), uk & np.uint64(0xFFFFFFFF)], 1).astype(np.uint64)
            stat = {"mean": ssum / cnt, "min": smin, "max": smax}[feature]
            inside = uk == 0  # key 0: edges inside a stitched group (node 0 has no edges)
            uv, cnt, stat = uv[~inside], cnt[~inside], stat[~inside]
        else:
            uv, faces, cnt = np.zeros((0, 2), np.uint64), np.zeros(0), np.zeros(0)
            stat = np.zeros(0)
        seconds["graph"] = time.perf_counter() - t0

        # -- pass 3: one agglomeration ------------------------------------------------------------
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

        # -- pass 4: relabel -----------------------------------------------------------------------
        t0 = time.perf_counter()
        target = np.zeros(shape, dtype) if out is None else out

        def relabel(i):
            sl = inner[i]
            target[sl] = final[glob(np.asarray(sp_store[sl]), i)]

        with ThreadPoolExecutor(n_workers) as ex:
            list(ex.map(relabel, range(len(blocks))))
        seconds["relabel"] = time.perf_counter() - t0
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return BlockwiseAgglomerationResult(labels=target, n_superpixels=n_nodes - 1, n_edges=int(uv.shape[0]),
                                        n_segments=n_seg, n_blocks=len(blocks), n_stitched=n_stitched,
                                        seconds=seconds)
