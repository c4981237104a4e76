"""Block tasks of the blockwise segmentations (module-level functions of picklable arguments, so
that they run on threads or on dask.distributed workers): those of
:func:`xmodal.segmentation.blockwise_superpixel_agglomeration`, then the fragment-graph passes with
which :func:`xmodal.segmentation.blockwise_mutex_watershed` joins its blocks in ``bias`` mode."""

from __future__ import annotations

import io
import itertools
import os

import numpy as np

from .. import io as xio
from .._config import capped_threads
from ._values import as_float_values
from .rag import edge_features, region_adjacency_graph
from .superpixels import _relabel_first_occurrence, distance_transform_watershed


def save_npz(path, **arrays):
    """``arrays`` written to ``path + ".npz"`` atomically (temporary name, then renamed)."""
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
# blockwise mutex watershed with bias: the fragment graph (see the module docstring of blockwise.py)

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


def _pair_ids(a, b):
    """Ids 0.. of the distinct voxelwise pairs (a, b) of two integer arrays of one shape."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    key = ia.ravel().astype(np.uint64) * np.uint64(int(ib.max()) + 1) + ib.ravel().astype(np.uint64)
    return np.unique(key, return_inverse=True)[1].ravel()


def _zone(plan, bid):
    """The voxels of block bid's inner region within reach of a face it shares with another block
    (where edges leave it): the segments of its run that touch them join the fragment graph."""
    inner, idx = plan.inner(bid), plan.index(bid)
    zone = np.zeros([s.stop - s.start for s in inner], bool)
    for d, r in enumerate(plan.reach):
        for near, sl in ((idx[d] > 0, slice(0, r)), (idx[d] < plan.grid[d] - 1, slice(max(0, zone.shape[d] - r), None))):
            if near and r > 0:
                zone[(slice(None),) * d + (sl,)] = True
    return zone


def block_fragments(plan, bid):
    """Pass 2: the fragments of block bid. The segments of its run that touch the zone near its
    shared faces (``_zone``) are cut by the labels that the runs of the blocks whose halo covers
    their voxels gave them; the others stay whole, out of the graph. Stores the fragments 1..k
    (0 = masked) as ``frag``, which are in the graph (``in_graph``), and the parts that the edge pass
    of each block within reach reads (``to<n>``, 0 where not in the graph); returns k."""
    inner = plan.inner(bid)
    with np.load(plan.path("blocks", bid) + ".npz") as z:
        own = z["own"]
    joins = np.zeros(int(own.max()) + 1, bool)
    joins[np.unique(own[_zone(plan, bid)])] = True
    joins[0] = False
    key = own.astype(np.int64)
    key[joins[own]] += int(own.max()) + 1  # labels in the graph and out of it never share an id
    for n, _ in near_blocks(plan, bid, plan.halo):
        rel = _within(_meet(inner, _grown(plan.inner(n), plan.halo, plan.shape)), inner)
        with np.load(plan.path("blocks", n) + ".npz") as z:
            seen = z[f"seen{bid}"]
        part = key[rel]  # a view: written back into key
        cut = joins[own[rel]]
        if cut.any():
            part[cut] = _pair_ids(part[cut], seen[cut]) + (int(key.max()) + 1)
    ids, inv = np.unique(key, return_inverse=True)
    frag = (inv.reshape(key.shape) + int(ids[0] != 0)).astype(np.uint32)  # 0 (masked) stays 0
    in_graph = np.zeros(int(frag.max()) + 1, bool)
    in_graph[frag[joins[own]]] = True
    parts = {}
    for n, _ in near_blocks(plan, bid, plan.reach):
        f = frag[_within(_meet(inner, _grown(plan.inner(n), plan.reach, plan.shape)), inner)]
        parts[f"to{n}"] = np.where(in_graph[f], f, 0).astype(np.uint32)
    save_npz(plan.path("frags", bid), frag=frag, in_graph=in_graph, **parts)
    return int(frag.max())


def strongest(key, w, first):
    """One row of ``(key, w, first)`` per distinct key (a fragment pair): the edge that single-shot
    processes first, the one with the largest w and among those the smallest edge id ``first`` (its
    tie order); rows sorted by key."""
    if key.size == 0:
        return key, w, first
    order = np.argsort(key)
    key, w, first = key[order], w[order], first[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    top = np.maximum.reduceat(w, start)
    tied = np.where(w == np.repeat(top, np.diff(np.r_[start, key.size])), first, np.iinfo(np.int64).max)
    return key[start], top, np.minimum.reduceat(tied, start)


_NONE = np.iinfo(np.int64).max


def _strongest_hashed(key, w, first, tables):
    """:func:`strongest` (rows unsorted) in linear time: rows hashed into the 2^b slots of ``tables``
    (left as found: -inf, ``_NONE``, all ones, 0); the few keys that share a slot go through it."""
    top, lead, low, high = tables
    bits = np.uint64(top.size.bit_length() - 1)
    with np.errstate(over="ignore"):
        slot = ((key * np.uint64(0x9E3779B97F4A7C15)) >> (np.uint64(64) - bits)).astype(np.intp)
    np.minimum.at(low, slot, key)
    np.maximum.at(high, slot, key)
    alone = low[slot] == high[slot]
    low[slot], high[slot] = ~np.uint64(0), 0
    rest = strongest(key[~alone], w[~alone], first[~alone])
    key, slot, w, first = key[alone], slot[alone], w[alone], first[alone]
    np.maximum.at(top, slot, w)
    tied = w == top[slot]
    np.minimum.at(lead, slot[tied], first[tied])
    win = tied & (lead[slot] == first)  # edge ids are distinct: one row per key
    top[slot], lead[slot] = -np.inf, _NONE
    return tuple(np.concatenate([x[win], y]) for x, y in zip((key, w, first), rest))


def _signed(values, c, kw):
    """(weight, attractive, present) of channel c's edges as single-shot weighs them with a bias:
    ``s = m + bias[c]`` in the precision of the affinities, m the merge probability; attractive
    with weight s where s > 0, repulsive with weight -s where s < 0, absent where s = 0."""
    s = (1 - values if kw["invert"] else values) + values.dtype.type(kw["bias"][c])
    return np.abs(s), s > 0, s != 0


def _splitmix64(x):
    """The 64-bit mixing function of the native random strides, on uint64 arrays (wrapping)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _stride_keep(kw, c, start, shape, edge_ids):
    """Which edges of channel c single-shot keeps, for the box ``shape`` of sources from the global
    voxel ``start`` (``edge_ids()``: their single-shot edge ids): the grid of strides anchored at
    voxel 0, or with random strides the native test ``splitmix64(seed ^ splitmix64(id)) < 2^64 /
    prod(strides)``; None when it keeps them all."""
    from .mws import _check_seed

    st = kw["strides"]  # with a bias: None or one row per offset
    if st is None:
        return None
    row = [int(k) for k in st[c]]
    if all(k == 1 for k in row):
        return None
    if kw["randomize_strides"]:
        share = 1.0
        for k in row:  # divided in the native order, for the same double
            share /= k
        mixed = _splitmix64(np.uint64(_check_seed(kw["seed"])) ^ _splitmix64(edge_ids().astype(np.uint64)))
        return mixed < np.uint64(int(np.ldexp(share, 64)))
    keep = np.ones((1,) * len(shape), bool)
    for d, (s0, n, k) in enumerate(zip(start, shape, row)):
        keep = keep & (((s0 + np.arange(n)) % k) == 0).reshape([n if e == d else 1 for e in range(len(shape))])
    return keep


def _fragment_window(plan, bid, offsets, win):
    """The fragments in the graph over the box ``win`` around block bid (its own and those of the
    blocks within reach) as ``(loc, ids)``: ``loc`` numbers them 1.. (0 elsewhere) in the order of
    their provisional ids ``ids[loc]`` (``offsets[block]`` + local id; ``ids[0] = 0``)."""
    loc = np.zeros([s.stop - s.start for s in win], np.int64)
    ids = [np.zeros(1, np.int64)]
    sources = sorted([(bid, plan.inner(bid), "frag")] + [(n, box, f"to{bid}") for n, box in near_blocks(plan, bid, plan.reach)])
    for n, box, name in sources:  # block order: provisional ids ascending
        with np.load(plan.path("frags", n) + ".npz") as z:
            f = z[name]
            if name == "frag":
                f = np.where(z["in_graph"][f], f, 0)
        present = np.bincount(f.ravel(), minlength=1) > 0
        present[0] = False
        lut = np.cumsum(present) + (sum(x.size for x in ids) - 1)
        loc[_within(box, win)] = np.where(f > 0, lut[f], 0)
        ids.append(np.flatnonzero(present) + int(offsets[n]))
    return loc, np.concatenate(ids)


def block_edges(plan, bid, offsets, bound):
    """Pass 3: the edges of every channel whose source voxel lies in block bid and whose two ends
    lie in different fragments of the graph, weighed as single-shot does (``_signed``, the same
    strides), reduced per fragment pair to the attractive and the repulsive edge that single-shot
    processes first (for the mutex watershed of fragments the others change nothing). Stored as
    ``a_key, a_w, a_id`` (attractive) and ``r_...``: pair ``lo * bound + hi`` of provisional ids,
    weight, single-shot edge id ``c * n_voxels + flat source index``; returns the pair count."""
    inner, kw = plan.inner(bid), plan.mws_kwargs
    win = _grown(inner, plan.reach, plan.shape)
    loc, uniq = _fragment_window(plan, bid, offsets, win)  # pairs keyed by local ids: small tables
    n_loc = np.uint64(uniq.size)
    n = 1 << min(20, max(8, loc.size.bit_length()))  # slots of _strongest_hashed (at most 32 MiB)
    tables = np.full(n, -np.inf), np.full(n, _NONE), np.full(n, ~np.uint64(0)), np.zeros(n, np.uint64)
    affs = as_float_values(plan.affinities[(slice(None),) + inner], "affinities", "merge probabilities",
                           probabilities=True)
    org = [s.start - w.start for s, w in zip(inner, win)]  # inner's origin in the window
    flat = sum(np.arange(s.start, s.stop, dtype=np.int64).reshape([-1 if e == d else 1 for e in range(len(inner))])
               * int(np.prod(plan.shape[d + 1:])) for d, s in enumerate(inner))  # volume index of each voxel
    n_vox = int(np.prod(plan.shape))
    found = {k: [] for k in "ar"}
    for c, off in enumerate(np.asarray(plan.offsets).tolist()):
        lo = [max(o0, -d) for o0, d in zip(org, off)]
        hi = [min(o0 + s.stop - s.start, loc.shape[k] - d) for k, (o0, s, d) in enumerate(zip(org, inner, off))]
        if any(a >= b for a, b in zip(lo, hi)):
            continue
        at = tuple(slice(a - o0, b - o0) for a, b, o0 in zip(lo, hi, org))  # sources in the block
        src, dst = tuple(slice(a, b) for a, b in zip(lo, hi)), tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, off))
        u, v = loc[src], loc[dst]
        w, att, sel = _signed(affs[(c,) + at], c, kw)
        sel = sel & (u > 0) & (v > 0) & (u != v)
        keep = _stride_keep(kw, c, [w0.start + a for w0, a in zip(win, lo)], u.shape, lambda: c * n_vox + flat[at])
        if keep is not None:
            sel &= keep
        for name, pick in (("a", sel & att), ("r", sel & ~att)):
            if pick.any():
                a, b = u[pick].astype(np.uint64), v[pick].astype(np.uint64)
                found[name].append(_strongest_hashed(np.minimum(a, b) * n_loc + np.maximum(a, b), w[pick].astype(np.float64),
                                                     c * n_vox + flat[at][pick], tables))
    out = {}
    for k, parts in found.items():
        key, w, first = strongest(*(np.concatenate(x) for x in zip(*parts))) if parts else \
            (np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.int64))
        glo, ghi = uniq[(key // n_loc).astype(np.int64)], uniq[(key % n_loc).astype(np.int64)]
        out.update({f"{k}_key": glo.astype(np.uint64) * np.uint64(bound) + ghi.astype(np.uint64), f"{k}_w": w,
                    f"{k}_id": first})
    save_npz(plan.path("edges", bid), **out)
    return int(out["a_key"].size + out["r_key"].size)


def stitch_fragments(plan, total):
    """Pass 4: the mutex watershed of the graph of the ``total`` fragments (node 0: background)
    with the edges of every block, processed in single-shot's order (weight, then edge id); returns
    (final id per provisional id, n_labels, n_merges)."""
    from .mws import mutex_watershed_graph

    if total + 1 >= (1 << 32) - 1:
        raise ValueError(f"affinities: the blocks have {total} fragments, more than the graph of fragments holds "
                         "(2^32 - 3); use larger blocks")
    bound = np.uint64(total + 1)
    kinds = []
    for k in ("a", "r"):
        parts = [[], [], []]
        for bid in plan.block_ids():
            with np.load(plan.path("edges", bid) + ".npz") as z:
                for part, f in zip(parts, ("key", "w", "id")):
                    part.append(z[f"{k}_{f}"])
        kinds.append(strongest(*(np.concatenate(p) for p in parts)))  # a pair seen from both of its blocks
    # ranks as weights: distinct, so the graph's own tie rule (attractive first) never applies
    w, first = (np.concatenate([kinds[0][j], kinds[1][j]]) for j in (1, 2))
    rank = np.empty(w.size)
    rank[np.lexsort((first, -w))] = np.arange(w.size, 0, -1)
    uv = [np.stack([key // bound, key % bound], axis=1) for key, _, _ in kinds]
    n_att = uv[0].shape[0]
    labels, info = mutex_watershed_graph(total + 1, uv[0], rank[:n_att], uv[1], rank[n_att:], return_info=True)
    # labels are consecutive in node order of first occurrence: node 0 (no edge) is label 1
    mapping = labels.astype(np.int64) - 1
    n_labels = int(mapping.max())
    return mapping.astype(np.uint32 if n_labels < 2**32 else np.uint64), n_labels, int(info.n_merges)
