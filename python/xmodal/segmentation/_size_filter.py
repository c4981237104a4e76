"""Size filter: segments smaller than ``min_size`` merged into their most attractive neighbour.

One definition, two executions (in memory, or block by block for label volumes larger than memory):

1. **Statistics.** Per segment: its size (voxels) and its first voxel in raster (C) order (a flat
   index into the volume). Per pair of touching segments: the sum and the count of the merge
   probabilities of the attractive edges they share (channel ``c < n_attractive`` joins ``p`` and
   ``p + offsets[c]``; edges leaving the volume are dropped). Every probability is quantised to an
   integer multiple of ``2**-24`` before it is summed, so the sums are exact integers and do not
   depend on the order in which blocks add them.
2. **Merge.** Small segments are taken smallest first (ties: earliest first voxel); each is merged
   into the neighbour with the highest mean probability over the edges they share (ties: earliest
   first voxel), whose statistics absorb its own; this repeats until every segment has at least
   ``min_size`` voxels or no neighbour left (it then becomes background 0). The orders depend only
   on the partition, not on the label values.
3. **Relabel.** Final ids are consecutive from 1 in raster order of each segment's first voxel.

Block by block, step 1 reads each block's labels with a margin of the largest attractive offset
and the block's affinities, and every edge is counted in the block of its source voxel; step 2
holds one entry per segment and per pair of touching segments with a small member; step 3 rewrites
every block. The result equals the in-memory one exactly, for any block shape.
"""

from __future__ import annotations

import heapq
import numbers

import numpy as np

from .._validation import as_bool, describe, positive_int
from .mws import _check_affinities, _check_finite, _check_n_attractive, _check_offsets

__all__ = ["remove_small_segments"]

_QUANTUM = float(1 << 24)  # merge probabilities are summed as integers in units of 2**-24


# ------------------------------------------------------------------------------ statistics

def _region_stats(lab_ext, ext, inner, aff, offsets, n_attractive, invert, shape):
    """Statistics of the voxels in ``inner`` (global slices) and of the edges leaving them.

    ``lab_ext`` holds the labels of ``ext`` (``inner`` grown by the largest attractive offset,
    clipped to the volume); ``aff`` the attractive channels over ``inner``. Returns ``(ids, sizes,
    first, eu, ev, wsum, wcnt)``: label ids (sorted, non-zero), their voxel counts and first voxel
    (flat index into ``shape``), and the touching pairs ``eu < ev`` with integer probability sums and
    edge counts.
    """
    rel = tuple(slice(i.start - e.start, i.stop - e.start) for i, e in zip(inner, ext))
    lab_in = lab_ext[rel]
    ids, first, sizes = np.unique(lab_in.ravel(), return_index=True, return_counts=True)
    local = np.unravel_index(first, lab_in.shape)
    first = np.ravel_multi_index(tuple(c + s.start for c, s in zip(local, inner)), shape).astype(np.int64)
    keep = ids > 0
    ids, sizes, first = ids[keep], sizes[keep].astype(np.int64), first[keep]
    us, vs, ws = [], [], []
    for c in range(n_attractive):
        off = offsets[c]
        src = tuple(slice(max(i.start, -o), min(i.stop, n - o)) for i, o, n in zip(inner, off, shape))
        if any(s.stop <= s.start for s in src):
            continue
        lu = lab_ext[tuple(slice(s.start - e.start, s.stop - e.start) for s, e in zip(src, ext))].ravel()
        lv = lab_ext[tuple(slice(s.start + o - e.start, s.stop + o - e.start)
                           for s, o, e in zip(src, off, ext))].ravel()
        w = np.asarray(aff[c][tuple(slice(s.start - i.start, s.stop - i.start) for s, i in zip(src, inner))],
                       dtype=np.float64).ravel()
        sel = (lu != lv) & (lu > 0) & (lv > 0)
        if not sel.any():
            continue
        w = w[sel]
        if invert:
            w = 1.0 - w
        us.append(np.minimum(lu[sel], lv[sel]))
        vs.append(np.maximum(lu[sel], lv[sel]))
        ws.append(np.rint(w * _QUANTUM))
    if not us:
        empty = np.zeros(0, np.int64)
        return ids, sizes, first, ids[:0], ids[:0], empty, empty
    u, v, w = np.concatenate(us), np.concatenate(vs), np.concatenate(ws)
    known = np.unique(np.concatenate([u, v]))
    iu, iv = np.searchsorted(known, u), np.searchsorted(known, v)
    key, inv = np.unique(iu.astype(np.int64) * len(known) + iv, return_inverse=True)
    wsum = np.bincount(inv.ravel(), weights=w, minlength=len(key))  # integers < 2**53: exact
    wcnt = np.bincount(inv.ravel(), minlength=len(key))
    return (ids, sizes, first, known[key // len(known)], known[key % len(known)],
            wsum.astype(np.int64), wcnt.astype(np.int64))


def _combine(parts):
    """Add up the statistics of several regions (sizes and sums add, first voxels take the minimum)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p[0] for p in parts])
    uid, inv = np.unique(ids, return_inverse=True)
    sizes = np.zeros(len(uid), np.int64)
    np.add.at(sizes, inv, np.concatenate([p[1] for p in parts]))
    first = np.full(len(uid), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, inv, np.concatenate([p[2] for p in parts]))
    eu, ev = np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts])
    if eu.size == 0:
        return uid, sizes, first, eu, ev, np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, pinv = np.unique(np.stack([np.searchsorted(uid, eu), np.searchsorted(uid, ev)]), axis=1,
                            return_inverse=True)
    pinv = pinv.ravel()
    wsum = np.zeros(pairs.shape[1], np.int64)
    wcnt = np.zeros(pairs.shape[1], np.int64)
    np.add.at(wsum, pinv, np.concatenate([p[5] for p in parts]))
    np.add.at(wcnt, pinv, np.concatenate([p[6] for p in parts]))
    return uid, sizes, first, uid[pairs[0]], uid[pairs[1]], wsum, wcnt


# ------------------------------------------------------------------------------ merge

def _merge_small(stats, min_size: int) -> tuple[np.ndarray, int]:
    """Final id (0 = removed) of every id in ``stats[0]``, and the number of segments kept."""
    ids, sizes, first, eu, ev, wsum, wcnt = stats
    n = len(ids)
    size, fo = sizes.tolist(), first.tolist()
    parent = list(range(n))
    small = sizes < min_size
    iu, iv = np.searchsorted(ids, eu), np.searchsorted(ids, ev)
    sel = small[iu] | small[iv]  # pairs of two large segments never decide anything
    adj: dict[int, dict[int, list]] = {}
    for a, b, s, c in zip(iu[sel].tolist(), iv[sel].tolist(), wsum[sel].tolist(), wcnt[sel].tolist()):
        edge = [s, c]  # shared by both directions
        adj.setdefault(a, {})[b] = edge
        adj.setdefault(b, {})[a] = edge
    heap = [(size[i], fo[i], i) for i in np.flatnonzero(small).tolist()]
    heapq.heapify(heap)
    while heap:
        sz, f, s = heapq.heappop(heap)
        nbrs = adj.get(s)
        if parent[s] != s or size[s] != sz or fo[s] != f or not nbrs:
            continue  # stale entry, or a small segment without neighbours
        best, bs, bc = -1, 0, 1
        for nb, (ws, wc) in nbrs.items():  # highest mean (exact, cross-multiplied); ties: earliest voxel
            if best < 0 or ws * bc > bs * wc or (ws * bc == bs * wc and fo[nb] < fo[best]):
                best, bs, bc = nb, ws, wc
        into = adj[best]
        del into[s]
        for nb, edge in nbrs.items():
            if nb == best:
                continue
            theirs = adj[nb]
            del theirs[s]
            cur = into.get(nb)
            if cur is None:
                into[nb] = theirs[best] = edge
            else:
                cur[0] += edge[0]
                cur[1] += edge[1]
        del adj[s]
        parent[s] = best
        size[best] += size[s]
        fo[best] = min(fo[best], fo[s])
        if size[best] < min_size:
            heapq.heappush(heap, (size[best], fo[best], best))
    root = np.array(parent, dtype=np.int64)
    while True:  # path compression until every entry points at its root
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    final_size, final_first = np.array(size, np.int64), np.array(fo, np.int64)
    alive = (root == np.arange(n)) & (final_size >= min_size)
    order = np.flatnonzero(alive)[np.argsort(final_first[alive], kind="stable")]
    n_kept = len(order)
    new_root = np.zeros(n, np.uint64)
    new_root[order] = np.arange(1, n_kept + 1, dtype=np.uint64)
    return new_root[root], n_kept


# ------------------------------------------------------------------------------ public

def _check_inputs(labels, min_size, affinities, offsets, n_attractive, invert, in_memory):
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        labels = np.asarray(labels)
    dtype = np.dtype(labels.dtype)
    if dtype == object or not np.issubdtype(dtype, np.integer):
        raise TypeError(f"labels: expected an integer label array, got {describe(labels)}")
    if len(labels.shape) not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D array, got shape {tuple(labels.shape)}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral):
        raise TypeError(f"min_size: expected a non-negative integer, got {describe(min_size)}")
    if min_size < 0:
        raise ValueError(f"min_size: expected a non-negative integer, got {min_size}")
    if (affinities is None) != (offsets is None):
        raise ValueError("affinities, offsets: give both or neither")
    invert = as_bool(invert, "invert")
    shape = tuple(int(s) for s in labels.shape)
    o, na = None, 0
    if affinities is not None:
        if in_memory:
            affinities = _check_affinities(affinities)
        elif not (hasattr(affinities, "shape") and hasattr(affinities, "__getitem__")):
            raise TypeError(f"affinities: expected an array of shape (C, *spatial), got {describe(affinities)}")
        if tuple(affinities.shape[1:]) != shape:
            raise ValueError(f"affinities: expected spatial shape {shape}, got {tuple(affinities.shape[1:])}")
        o = _check_offsets(offsets, int(affinities.shape[0]), len(shape))
        na = _check_n_attractive(n_attractive, int(affinities.shape[0]), len(shape))
    return labels, affinities, o, na, invert, shape


def remove_small_segments(labels, min_size, *, affinities=None, offsets=None, n_attractive=None,
                          invert=False, block_shape=None, out=None, client=None, n_workers=None):
    """Remove segments smaller than ``min_size`` voxels, merging them into their best neighbour.

    Without affinities, small segments become background (0). With ``affinities`` and ``offsets``
    (same conventions as :func:`mutex_watershed`), each small segment is merged into the neighbour
    with the highest mean merge probability over the attractive edges they share, smallest segments
    first, until every segment is at least ``min_size`` or has no neighbour left (then it becomes 0).
    Ties are broken by the segments' first voxels in raster order, so the result depends only on
    the partition, not on the label values; probabilities enter the means quantised to multiples
    of ``2**-24``. The module docstring of ``xmodal.segmentation._size_filter`` gives the details.

    Parameters
    ----------
    labels : int array, 2D or 3D
        Segmentation, 0 = background (never merged into). A numpy array, or with ``block_shape``
        any array that slices to numpy (zarr, ...).
    min_size : int
        Minimum segment size in voxels.
    affinities, offsets : optional
        Affinities ``(C, *labels.shape)`` and offsets ``(C, ndim)``; only the first
        ``n_attractive`` (default ndim) channels are read.
    n_attractive : int, optional
        Attractive channels used for the merge decision.
    invert : bool
        Affinities are boundary probabilities.
    block_shape : int or sequence of int, optional
        Work block by block (out of core): each block's statistics are computed from its labels
        (with a margin of the largest attractive offset) and affinities, the merge runs on the
        region graph, and every block is rewritten. The result is identical to the in-memory one.
    out : array, optional
        With ``block_shape``: the integer array to write (may be ``labels`` itself; zarr chunks
        must divide ``block_shape``). Default: a new numpy array.
    client : dask.distributed.Client, optional
        With ``block_shape``: run the block tasks on this client (default: threads in this process).
    n_workers : int, optional
        Threads of the default scheduler (default: ``xmodal.num_threads()``).

    Returns
    -------
    array
        Consecutive labels from 1 in raster order of first occurrence, uint32 (uint64 if needed);
        ``out`` when given.
    """
    return _remove_small(labels, min_size, affinities=affinities, offsets=offsets, n_attractive=n_attractive,
                         invert=invert, block_shape=block_shape, out=out, client=client, n_workers=n_workers)[0]


def _remove_small(labels, min_size, *, affinities, offsets, n_attractive, invert, block_shape, out, client,
                  n_workers):
    """:func:`remove_small_segments` returning ``(labels, number of segments)``."""
    if block_shape is None:
        for name, v in (("out", out), ("client", client)):
            if v is not None:
                raise ValueError(f"{name}: only used with block_shape (block by block), got {describe(v)}")
        lab, aff, o, na, invert, shape = _check_inputs(labels, min_size, affinities, offsets, n_attractive,
                                                       invert, True)
        lab = np.asarray(lab)
        if np.issubdtype(lab.dtype, np.signedinteger) and lab.size and lab.min() < 0:
            raise ValueError("labels: expected non-negative labels")
        if aff is not None and na:
            _check_finite(aff[:na])
        full = tuple(slice(0, n) for n in shape)
        stats = _region_stats(lab, full, full, None if aff is None else aff[:na], o, na, invert, shape)
        new, n_kept = _merge_small(stats, min_size)
        lut_ids = np.concatenate([[0], stats[0]]).astype(lab.dtype)
        lut = np.concatenate([[0], new]).astype(np.uint32 if n_kept < 2**32 else np.uint64)
        return lut[np.searchsorted(lut_ids, lab)], n_kept
    checked = _check_inputs(labels, min_size, affinities, offsets, n_attractive, invert, False)
    return _remove_small_blockwise(*checked, min_size=min_size, block_shape=block_shape, out=out, client=client,
                                   n_workers=n_workers)


# ------------------------------------------------------------------------------ block by block

class _Job:
    """What the block tasks read (picklable, sent once to each dask worker)."""

    def __init__(self, labels, affinities, offsets, n_attractive, invert, shape, reach):
        self.labels, self.affinities, self.offsets = labels, affinities, offsets
        self.n_attractive, self.invert, self.shape, self.reach = n_attractive, invert, shape, reach


def _block_stats(job: _Job, inner):
    ext = tuple(slice(max(0, i.start - r), min(n, i.stop + r)) for i, r, n in zip(inner, job.reach, job.shape))
    lab = np.asarray(job.labels[ext])
    if np.issubdtype(lab.dtype, np.signedinteger) and lab.size and lab.min() < 0:
        raise ValueError("labels: expected non-negative labels")
    aff = None
    if job.n_attractive:
        aff = np.asarray(job.affinities[(slice(0, job.n_attractive),) + tuple(inner)])
        _check_finite(aff, origin=[s.start for s in inner])
    return _region_stats(lab, ext, inner, aff, job.offsets, job.n_attractive, job.invert, job.shape)


def _relabel(job: _Job, inner, ids, new, out):
    """Final ids of one block: written into ``out`` (when not None) or returned."""
    lab = np.asarray(job.labels[inner])
    lut_ids = np.concatenate([[0], ids]).astype(lab.dtype)
    pos = np.minimum(np.searchsorted(lut_ids, lab), len(lut_ids) - 1)
    block = np.concatenate([[0], new])[pos]
    if out is None:
        return block
    out[inner] = block.astype(out.dtype, copy=False)
    return None


def _remove_small_blockwise(labels, aff, o, na, invert, shape, *, min_size, block_shape, out, client, n_workers):
    from .._optional import optional_import
    from .._validation import per_axis
    from ..io import iter_blocks
    from .blockwise import _check_out

    dask = optional_import("dask", purpose="remove_small_segments(block_shape=...)")
    ndim = len(shape)
    bshape = tuple(min(b, s) for b, s in zip(per_axis(block_shape, ndim, "block_shape", minimum=1), shape))
    if out is not None:
        _check_out(out, shape, bshape)
    if client is not None and not hasattr(client, "compute"):
        raise TypeError(f"client: expected a dask.distributed.Client, got {describe(client)}")
    n_workers = positive_int(n_workers, "n_workers", allow_none=True)
    if n_workers is None:
        from .. import _core

        n_workers = max(1, _core.num_threads())
    reach = tuple(int(np.abs(o[:na, d]).max()) if na else 0 for d in range(ndim))
    job = dask.delayed(_Job(labels, aff, o, na, invert, shape, reach), traverse=False)
    blocks = list(iter_blocks(shape, bshape))

    def run(tasks):
        if client is not None:
            return client.gather(client.compute(tasks))
        return dask.compute(*tasks, scheduler="threads", num_workers=n_workers)

    stats = _combine(list(run([dask.delayed(_block_stats, pure=False)(job, b) for b in blocks])))
    new, n_kept = _merge_small(stats, min_size)
    dtype = np.uint32 if n_kept < 2**32 else np.uint64
    if out is not None and n_kept > np.iinfo(np.dtype(out.dtype)).max:
        raise ValueError(f"out: dtype {out.dtype} cannot hold {n_kept} labels")
    ids_d, new_d = dask.delayed(stats[0], traverse=False), dask.delayed(new.astype(dtype), traverse=False)
    local = out is None or isinstance(out, np.ndarray)  # workers cannot write into this process's memory
    target = np.zeros(shape, dtype) if out is None else out
    parts = run([dask.delayed(_relabel, pure=False)(job, b, ids_d, new_d, None if local else target)
                 for b in blocks])
    if local:
        for b, part in zip(blocks, parts):
            target[b] = part
    return target, n_kept
