"""The fragment-graph passes with which :func:`xmodal.segmentation.blockwise_mutex_watershed` joins
its blocks with ``join="fragments"`` (module docstring of :mod:`xmodal.segmentation.blockwise`): module-level
functions of picklable arguments, so that they run on threads or on dask.distributed workers.

Every step is linear in the voxels of a block (no sort of per-voxel arrays): labels are ranked
through tables indexed by the label (``_dense_rank``); the edges of a channel are found on flat
views of the window around the block (``_Window``: a source and its neighbour are a fixed number
of positions apart), reduced over runs of consecutive sources with one fragment pair (``_runs``),
then over the pairs through a hash table (``_reduce_packed``: float32 weights and edge order
packed in one integer; ``_reduce_hashed`` for float64); only the few pairs that share a slot of
the table are sorted.
"""

from __future__ import annotations

import numpy as np

from ._blockwise_tasks import _grown, _meet, _within, near_blocks, save_npz
from ._values import as_float_values

#: table sizes up to which the pairs of labels are ranked through a table (else sorted)
_DENSE_PAIRS = 1 << 20
_NONE = np.iinfo(np.int64).max


def _dense_rank(x, top=None, zero=False):
    """``(rank, count)``: the rank of each value of the non-negative integer array ``x`` among its
    distinct values (``np.unique(x, return_inverse=True)[1]``, in linear time: a table indexed by
    the value; ``top``, when known, bounds the values) and the number of distinct values. ``zero``:
    rank among the values and 0 (0 stays 0, the others count from 1)."""
    present = np.zeros((int(x.max()) if top is None else int(top)) + 1, bool)
    present[x] = True
    present[0] |= zero
    rank = np.cumsum(present, dtype=np.int64)
    return rank[x] - 1, int(rank[-1])


def _pair_ids(a, b):
    """``(ids, count)``: ids 0.. of the distinct voxelwise pairs (a, b) of two non-negative integer
    arrays of one shape, in the order of the pairs (lexicographic), and how many there are."""
    ia, na = _dense_rank(a.ravel())
    ib, nb = _dense_rank(b.ravel())
    key = ia * nb + ib
    if na * nb <= max(_DENSE_PAIRS, 2 * key.size):
        return _dense_rank(key, na * nb - 1)
    uniq, inv = np.unique(key, return_inverse=True)
    return inv.ravel(), int(uniq.size)


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
    top = int(own.max())
    joins = np.zeros(top + 1, bool)
    joins[own[_zone(plan, bid)]] = True
    joins[0] = False
    graph = joins[own]  # voxels of the segments in the graph
    key = own.astype(np.int64)
    key[graph] += top + 1  # labels in the graph and out of it never share an id
    high = int(key.max()) if key.size else 0
    for n, _ in near_blocks(plan, bid, plan.halo):
        rel = _within(_meet(inner, _grown(plan.inner(n), plan.halo, plan.shape)), inner)
        cut = graph[rel]
        if not cut.any():
            continue
        with np.load(plan.path("blocks", n) + ".npz") as z:
            seen = z[f"seen{bid}"]
        part = key[rel]  # a view: written back into key
        ids, count = _pair_ids(part[cut], seen[cut])
        part[cut] = ids + (high + 1)
        high += count  # the ids 0..count-1 all occur
    frag = _dense_rank(key, high, zero=True)[0].astype(np.uint32)  # 0 (masked) stays 0
    in_graph = np.zeros(int(frag.max()) + 1 if frag.size else 1, bool)
    in_graph[frag[graph]] = True
    parts = {}
    for n, _ in near_blocks(plan, bid, plan.reach):
        f = frag[_within(_meet(inner, _grown(plan.inner(n), plan.reach, plan.shape)), inner)]
        parts[f"to{n}"] = np.where(in_graph[f], f, 0).astype(np.uint32)
    save_npz(plan.path("frags", bid), frag=frag, in_graph=in_graph, **parts)
    return int(frag.max())


def _runs(key, w, first=None):
    """:func:`strongest` over the runs of consecutive rows with one key (rows of one key that are not
    consecutive stay apart), in row order; ``(key, w)`` when ``first`` is None (``w`` packed by
    :func:`_pack`: its maximum is the row)."""
    if key.size == 0:
        return (key, w) if first is None else (key, w, first)
    start = np.empty(key.size, bool)
    start[0] = True
    np.not_equal(key[1:], key[:-1], out=start[1:])
    start = np.flatnonzero(start)
    top = np.maximum.reduceat(w, start)
    if first is None:
        return key[start], top
    tied = np.where(w == np.repeat(top, np.diff(np.r_[start, key.size])), first, _NONE)
    return key[start], top, np.minimum.reduceat(tied, start)


def _pack(w, order, base=0):
    """uint64 values that order the rows as single-shot does (largest float32 weight ``w`` >= 0 first,
    then smallest ``base + order`` < 2^32): the bits of w, then those of ``2^32 - 1 - base - order``."""
    packed = w.view(np.uint32).astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= np.subtract(np.uint64(0xFFFFFFFF - base), order.astype(np.uint64, copy=False))
    return packed


def _unpack(packed):
    """``(w, order)`` (float64, int64) of :func:`_pack`'s values."""
    w = (packed >> np.uint64(32)).astype(np.uint32).view(np.float32).astype(np.float64)
    return w, (np.uint64(0xFFFFFFFF) - (packed & np.uint64(0xFFFFFFFF))).astype(np.int64)


def strongest(key, w, first):
    """One row of ``(key, w, first)`` per distinct key (a fragment pair): the edge that single-shot
    processes first, the one with the largest w and among those the smallest edge id ``first`` (its
    tie order); rows sorted by key."""
    order = np.argsort(key)
    return _runs(key[order], w[order], first[order])


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
    """(weight, attractive, present) of channel c's edges as single-shot weighs them. With a bias:
    ``s = m + bias[c]`` in the precision of the affinities, m the merge probability; attractive
    with weight s where s > 0, repulsive with weight -s where s < 0, absent where s = 0. Classic
    mode: the first ``n_attractive`` channels attract with weight m, the others repel with weight
    ``1 - m`` (computed as single-shot does: the stored value or ``1 - value``), every edge present."""
    if kw["bias"] is None:
        attractive = c < kw["n_attractive"]
        w = values if attractive != kw["invert"] else 1 - values
        return w, np.full(values.shape, attractive), np.ones(values.shape, bool)
    s = (1 - values if kw["invert"] else values) + values.dtype.type(kw["bias"][c])
    return np.abs(s), s > 0, s != 0


def _splitmix64(x):
    """The 64-bit mixing function of the native random strides, on uint64 arrays (wrapping)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _stride_row(kw, c):
    """Channel c's strides as single-shot keeps its edges, or None when it keeps them all."""
    st = kw["strides"]  # None, one row per offset, or (classic mode) one stride per axis for the repulsive channels
    if st is not None and not isinstance(st[0], (list, tuple)):
        st = None if c < kw["n_attractive"] else [st] * (c + 1)
    row = None if st is None else [int(k) for k in st[c]]
    return None if row is None or all(k == 1 for k in row) else row


def _stride_draw(kw, c, edge_ids):
    """Which of channel c's edges (single-shot edge ids ``edge_ids()``) single-shot keeps with random
    strides: the native test ``splitmix64(seed ^ splitmix64(id)) < 2^64 / prod(strides)``; None when
    it keeps them all or uses the grid (``_slab_masks``)."""
    from .mws import _check_seed

    row = _stride_row(kw, c)
    if row is None or not kw["randomize_strides"]:
        return None
    share = 1.0
    for k in row:  # divided in the native order, for the same double
        share /= k
    mixed = _splitmix64(np.uint64(_check_seed(kw["seed"])) ^ _splitmix64(edge_ids().astype(np.uint64)))
    return mixed < np.uint64(int(np.ldexp(share, 64)))


class _Window:
    """Block bid's inner region ``inner`` grown by the reach: ``box`` (volume coordinates) of
    ``shape``, and flat arrays over it with ``pad`` elements on either side (``span`` in all), so
    that a source and its neighbour at any offset are ``delta(offset)`` positions apart: ``loc`` (the
    fragments of the graph numbered 1.., ``_fragment_window``) and ``values`` (a channel's
    affinities over the inner region, ``fill``). ``c * span + position`` orders edges as their
    single-shot ids do (``edge_ids``)."""

    def __init__(self, plan, bid, offsets):
        self.inner = plan.inner(bid)
        self.box = _grown(self.inner, plan.reach, plan.shape)
        self.shape = tuple(s.stop - s.start for s in self.box)
        self.steps = [int(np.prod(self.shape[d + 1:])) for d in range(len(self.shape))]
        self.size = int(np.prod(self.shape))
        self.pad = max(abs(self.delta(o)) for o in np.asarray(plan.offsets).tolist())
        self.span = self.size + 2 * self.pad
        self.loc, self.ids = _fragment_window(plan, bid, offsets, self)
        self.graph = self.loc > 0
        self.values = None

    def delta(self, offset):
        return sum(int(d) * k for d, k in zip(offset, self.steps))

    def grid(self, flat):
        """The view over the window of a flat padded array."""
        return flat[self.pad:self.pad + self.size].reshape(self.shape)

    def fill(self, values):
        """``values`` (over the inner region) into the flat padded array ``self.values``."""
        if self.values is None:
            self.values = np.zeros(self.span, values.dtype)
        self.grid(self.values)[_within(self.inner, self.box)] = values

    def edge_ids(self, order, shape):
        """Single-shot edge ids ``c * n_voxels + flat source index`` of the edges ``order = c * span +
        position`` (the volume ``shape``)."""
        c, pos = np.divmod(order, self.span)
        where = np.unravel_index(pos - self.pad, self.shape)
        return c * int(np.prod(shape)) + np.ravel_multi_index(
            tuple(x + s.start for x, s in zip(where, self.box)), shape).astype(np.int64)


def _fragment_window(plan, bid, offsets, win):
    """The fragments in the graph over the window ``win`` (:class:`_Window`) around block bid (its
    own and those of the blocks within reach) as ``(loc, ids)``: ``loc`` (flat, padded) numbers them
    1.. (0 elsewhere) in the order of their provisional ids ``ids[loc]`` (``offsets[block]`` + local
    id; ``ids[0] = 0``)."""
    loc = np.zeros(win.size + 2 * win.pad, np.int32 if win.size < 2**31 else np.int64)  # ids <= voxels
    ids = [np.zeros(1, np.int64)]
    sources = sorted([(bid, plan.inner(bid), "frag")] + [(n, box, f"to{bid}") for n, box in near_blocks(plan, bid, plan.reach)])
    for n, box, name in sources:  # block order: provisional ids ascending
        with np.load(plan.path("frags", n) + ".npz") as z:
            f = z[name]
            keep = z["in_graph"] if name == "frag" else None
        present = np.bincount(f.ravel(), minlength=1) > 0
        if keep is not None:
            present[:keep.size] &= keep
        present[0] = False
        lut = np.cumsum(present) + (sum(x.size for x in ids) - 1)
        lut[~present] = 0
        win.grid(loc)[_within(box, win.box)] = lut[f]
        ids.append(np.flatnonzero(present) + int(offsets[n]))
    return loc, np.concatenate(ids)


def _slab_masks(plan, c, win, lo, hi):
    """Masks (broadcasting over the slab ``lo[0]:hi[0]`` of the window, whole along the other axes)
    of its voxels that are channel c's sources in the block (``lo:hi`` in window coordinates) and
    that single-shot keeps (its strides on the grid anchored at voxel 0); none that keeps all."""
    kw, row = plan.mws_kwargs, _stride_row(plan.mws_kwargs, c)
    grid = row is not None and not kw["randomize_strides"]
    out = []
    for d, (a, b, s) in enumerate(zip(lo, hi, win.box)):
        at = np.arange(a, b) if d == 0 else np.arange(win.shape[d])
        mask = (at >= a) & (at < b)
        if grid:
            mask &= (s.start + at) % row[d] == 0
        if not mask.all():
            out.append(mask.reshape([-1 if e == d else 1 for e in range(len(lo))]))
    return out


def _channel_rows(plan, c, win, n_loc, packed):
    """Channel c's edges from the sources in block bid (``win``: its :class:`_Window`, with the
    channel's affinities filled in) that single-shot keeps, between two fragments of the graph,
    reduced over runs (``_runs``): ``(pair, repulsive, w, order)``, ``pair = lo * n_loc + hi`` of
    the local ids, ``order = c * span + position`` of the source, rows in that order; with
    ``packed``, ``(pair, repulsive, _pack(w, order))``. None when there are none."""
    kw, off = plan.mws_kwargs, [int(d) for d in plan.offsets[c]]
    org = [s.start - w.start for s, w in zip(win.inner, win.box)]  # inner's origin in the window
    lo = [max(o0, -d) for o0, d in zip(org, off)]
    hi = [min(o0 + s.stop - s.start, n - d) for o0, s, d, n in zip(org, win.inner, off, win.shape)]
    if any(a >= b for a, b in zip(lo, hi)):
        return None
    f0, f1, delta = win.pad + lo[0] * win.steps[0], win.pad + hi[0] * win.steps[0], win.delta(off)
    u, v = win.loc[f0:f1], win.loc[f0 + delta:f1 + delta]
    sel = np.not_equal(u, v)
    sel &= win.graph[f0:f1]
    sel &= win.graph[f0 + delta:f1 + delta]
    slab = sel.reshape((hi[0] - lo[0],) + win.shape[1:])  # a view
    for mask in _slab_masks(plan, c, win, lo, hi):
        slab &= mask
    pos = np.flatnonzero(sel)  # from f0
    base = c * win.span + f0  # order = base + pos
    draw = _stride_draw(kw, c, lambda: win.edge_ids(pos + base, plan.shape))
    if draw is not None:
        pos = pos[draw]
    u, v = win.loc[f0:][pos], win.loc[f0 + delta:][pos]
    w, att, present = _signed(win.values[f0:][pos], c, kw)
    if 2 * n_loc * n_loc >= 2**31:
        u = u.astype(np.int64)
    key = (u * n_loc + v) * 2 + ~att  # ordered (u, v): runs along a row
    if not present.all():
        key, w, pos = key[present], w[present], pos[present]
    if key.size == 0:
        return None
    rows = _runs(key, _pack(w, pos, base)) if packed else _runs(key, w, pos + base)
    pair, rep = np.divmod(rows[0].astype(np.int64), 2)
    u, v = np.divmod(pair, n_loc)
    return (np.minimum(u, v) * n_loc + np.maximum(u, v), rep) + rows[1:]


def _reduce_packed(channels):
    """The edges of every channel (``channels``: the packed rows of :func:`_channel_rows`) reduced to
    the strongest per pair and kind: ``{kind: (pair, w, order)}`` with the pairs ascending. The rows
    are hashed by their key ``2 * pair + repulsive`` into a table that keeps one key per slot (the
    last written) and the largest packed row of that key; the rows of the other keys, few, are sorted."""
    n = 1 << min(20, max(10, (2 * sum(ch[0].size for ch in channels)).bit_length()))  # slots (<= 16 MiB)
    keys, best = np.zeros(n, np.int64), np.zeros(n, np.uint64)  # keys > 0, packed rows > 0

    def slots(key):
        with np.errstate(over="ignore"):
            return ((key.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(65 - n.bit_length())).astype(np.intp)

    for pair, rep, _ in channels:
        key = pair * 2 + rep
        keys[slots(key)] = key
    rest = [(np.zeros(0, np.int64), np.zeros(0, np.uint64))]
    for pair, rep, packed in channels:
        key = pair * 2 + rep
        slot = slots(key)
        kept = keys[slot] == key
        np.maximum.at(best, slot[kept], packed[kept])
        rest.append((key[~kept], packed[~kept]))
    key, packed = (np.concatenate(x) for x in zip(*rest))
    order = np.argsort(key)
    at = np.flatnonzero(best)
    key, packed = (np.concatenate(x) for x in zip((keys[at], best[at]), _runs(key[order], packed[order])))
    by_key = np.argsort(key)
    w, order = _unpack(packed[by_key])
    pair, rep = np.divmod(key[by_key], 2)
    return {k: (pair[rep == r], w[rep == r], order[rep == r]) for k, r in (("a", 0), ("r", 1))}


def _reduce_hashed(channels):
    """As :func:`_reduce_packed` for the unpacked rows ``(pair, repulsive, w, order)`` (weights of
    any precision): each channel's rows through :func:`_strongest_hashed`, then those of all channels."""
    n = 1 << min(20, max(10, (4 * max((ch[0].size for ch in channels), default=0)).bit_length()))  # <= 32 MiB
    tables = np.full(n, -np.inf), np.full(n, _NONE), np.full(n, ~np.uint64(0)), np.zeros(n, np.uint64)
    found = {k: [] for k in "ar"}
    for pair, rep, w, order in channels:
        for kind, pick in (("a", rep == 0), ("r", rep == 1)):
            if pick.any():
                found[kind].append(_strongest_hashed(pair[pick].astype(np.uint64), w[pick].astype(np.float64),
                                                     order[pick], tables))
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    return {k: strongest(*(np.concatenate(x) for x in zip(*parts))) if parts else empty for k, parts in found.items()}


def block_edges(plan, bid, offsets, bound):
    """Pass 3: the edges of every channel whose source voxel lies in block bid and whose two ends
    lie in different fragments of the graph, weighed as single-shot does (``_signed``, the same
    strides), reduced per fragment pair to the attractive and the repulsive edge that single-shot
    processes first (for the mutex watershed of fragments the others change nothing). Stored as
    ``a_key, a_w, a_id`` (attractive) and ``r_...``: pair ``lo * bound + hi`` of provisional ids,
    weight, single-shot edge id ``c * n_voxels + flat source index``; returns the pair count."""
    win = _Window(plan, bid, offsets)  # pairs keyed by local ids: small keys
    n_loc, n_channels = int(win.ids.size), len(plan.offsets)
    affs = as_float_values(plan.affinities[(slice(None),) + win.inner], "affinities", "merge probabilities",
                           probabilities=True)
    packed = affs.dtype == np.float32 and n_channels * win.span < 2**32  # weight and order in 64 bits
    channels = []
    for c in range(n_channels):
        win.fill(affs[c])
        rows = _channel_rows(plan, c, win, n_loc, packed)
        if rows is not None:
            channels.append(rows)
    kinds = _reduce_packed(channels) if packed else _reduce_hashed(channels)
    out = {}
    for k, (key, w, order) in kinds.items():
        glo, ghi = win.ids[key // n_loc], win.ids[key % n_loc]
        out.update({f"{k}_key": glo.astype(np.uint64) * np.uint64(bound) + ghi.astype(np.uint64), f"{k}_w": w,
                    f"{k}_id": win.edge_ids(order, plan.shape)})
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
