"""Block tasks of the blockwise segmentations (module-level functions of picklable arguments, so
that they run on threads or on dask.distributed workers): those of
:func:`xmodal.segmentation.blockwise_superpixel_agglomeration`, then what pass 1 of
:func:`xmodal.segmentation.blockwise_mutex_watershed` keeps for the fragment graph with which it
joins its blocks with ``join="fragments"`` (the passes of that graph: :mod:`._fragment_graph`)."""

from __future__ import annotations

import io
import itertools
import os

import numpy as np

from .. import io as xio
from .._config import capped_threads
from .rag import edge_features, region_adjacency_graph
from .superpixels import _relabel_first_occurrence, distance_transform_watershed


def save_npz(path, **arrays):
    """``arrays`` written to ``path + ".npz"`` atomically (temporary name, then renamed), its folder
    made when missing."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    xio.atomic_write_bytes(path + ".npz", buf.getvalue())


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


def _global_ids(local, offset):
    return np.where(local > 0, local.astype(np.int64) + offset, 0)


class _Plan:
    """What the block tasks need (picklable, for dask.distributed workers): the grid, the inputs,
    the superpixel options and the work folder (the block superpixels are a zarr array there)."""

    def __init__(self, grid, boundaries, mask, options, work, ledger_dir, sp_path):
        self.grid, self.boundaries, self.mask, self.options = grid, boundaries, mask, options
        self.work, self.ledger_dir, self.sp_path = work, ledger_dir, sp_path
        self.thread_cap = None  # native threads per task (set for the thread pool)

    def store(self):
        import zarr

        return zarr.open_array(self.sp_path, mode="r+")

    def path(self, i):
        return os.path.join(self.work, "blocks", f"{i}.npz")


def _block_superpixels(plan, i):
    """Pass 1 on block i: superpixels with halo, stored cropped with local ids from 1.

    Returns (count, sizes of the superpixels, joined, input digest, reused): ``joined[(side, d)]``
    says, for each pair of voxels across the block face on axis d, whether this run (whose halo
    holds the neighbour's voxel) put both into one superpixel: the evidence for stitching. With a
    ledger, a block whose input reads the same bytes as when it was done is not recomputed.
    """
    grid = plan.grid
    sl, outer, shape = grid.inner[i], grid.outer(i), grid.shape
    b = np.asarray(plan.boundaries[outer])
    m = None if plan.mask is None else np.asarray(plan.mask[outer]).astype(bool)
    ledger, digest, rec = xio.BlockLedger.lookup(plan.ledger_dir, i, plan.path(i), b, m)
    if rec is not None:
        with np.load(plan.path(i)) as f:
            joined = {tuple(int(v) if v.isdigit() else v for v in k.split("_")): f[k] for k in f.files
                      if k != "sizes"}
            return int(rec["count"]), f["sizes"], joined, digest, True
    with capped_threads(plan.thread_cap):
        sp = distance_transform_watershed(b, mask=m, **plan.options)
    crop = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sl, outer))
    local, k = _relabel_first_occurrence(sp[crop])
    plan.store()[sl] = local.astype(np.uint32)
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
    sizes = np.bincount(local.ravel(), minlength=k + 1)[1:].astype(np.float64)
    if ledger is not None:
        buf = io.BytesIO()
        np.savez(buf, sizes=sizes, **{f"{side}_{d}": v for (side, d), v in joined.items()})
        xio.atomic_write_bytes(plan.path(i), buf.getvalue())
        ledger.mark_done(i, digest, count=int(k))
    return k, sizes, joined, digest, False


def _block_edges(plan, offsets, joined, i):
    """Pass 2 on block i: its inner edges and the edges across its upper faces (global ids), and the
    superpixel pairs cut by an upper face that both blocks' runs saw as one (keys ``u << 32 | v``)."""
    grid, boundaries, sp_store = plan.grid, plan.boundaries, plan.store()
    sl, ndim, shape = grid.inner[i], grid.ndim, grid.shape
    local = np.asarray(sp_store[sl])
    lab = _global_ids(local, offsets[i])
    b = np.asarray(boundaries[sl], dtype=np.float64)
    parts, stitch = [], []
    with capped_threads(plan.thread_cap):
        rag = region_adjacency_graph(local, ignore_label=0)  # local ids: a small graph
        f = edge_features(rag, local, b, quantiles=()) if rag.n_edges else None
    if rag.n_edges:
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


def _relabel_block(plan, offsets, final_path, out, i):
    """Pass 5 on block i: its superpixels mapped to their segment, into ``out`` or returned."""
    final = np.load(final_path, mmap_mode="r")
    local = np.asarray(plan.store()[plan.grid.inner[i]])
    ids = _global_ids(local, offsets[i])
    lo, hi = int(ids.min()), int(ids.max())
    part = np.asarray(final[lo:hi + 1])[ids - lo]
    if out is None:
        return part
    out[plan.grid.inner[i]] = part.astype(out.dtype, copy=False)
    return None


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


# ------------------------------------------------------------------------------------------------
# blockwise mutex watershed, join="fragments": the boxes of the fragment graph (passes 2-4: _fragment_graph)

def _meet(a, b):
    """The intersection of two boxes (tuples of slices), or None when it is empty."""
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return box if all(s.start < s.stop for s in box) else None


def _grown(box, reach, shape):
    """``box`` grown by ``reach`` voxels per side, clipped to the volume ``shape``."""
    return tuple(slice(max(0, s.start - int(r)), min(n, s.stop + int(r))) for s, r, n in zip(box, reach, shape))


def _within(box, origin):
    """``box`` in the coordinates of the box ``origin`` that contains it."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, origin))


def near_blocks(plan, bid, reach):
    """``[(n, box)]``: the blocks n other than bid whose inner region meets bid's inner region grown
    by ``reach`` voxels per side, in block order, with ``box`` that intersection (volume coordinates).
    The relation is symmetric: bid's inner region meets n's grown by the same reach."""
    grown = _grown(plan.inner(bid), reach, plan.shape)
    steps = [-(-int(r) // b) for r, b in zip(reach, plan.block_shape)]
    ranges = [range(max(0, i - k), min(g, i + k + 1)) for i, k, g in zip(plan.index(bid), steps, plan.grid)]
    out = []
    for idx in itertools.product(*ranges):
        n = int(np.ravel_multi_index(idx, plan.grid))
        box = None if n == bid else _meet(plan.inner(n), grown)
        if box is not None:
            out.append((n, box))
    return out


def fragment_members(plan, bid, ext, outer):
    """What pass 1 keeps of block bid's run, which labelled its halo region ``outer`` with ``ext``:
    ``own``, the labels of its inner region, and ``seen<n>``, those of the part of block n's inner
    region that its halo covers (block n's fragments are cut by them in pass 2)."""
    members = {"own": ext[_within(plan.inner(bid), outer)]}
    for n, box in near_blocks(plan, bid, plan.halo):
        members[f"seen{n}"] = ext[_within(box, outer)]
    return members
