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
order inside a block); the result does not depend on the number of workers or on the scheduler.

The block tasks (passes 1, 3 and 5; :mod:`xmodal.segmentation._blockwise_tasks`) run on threads or
on a ``dask.distributed`` client. Pass 1, the costly one, is resumable with a ``workdir``: a block is
done when its marker exists (:class:`xmodal.io.BlockLedger`, written after its superpixels and face
evidence), and a rerun reuses it when the block's boundaries (and mask), read again with the halo,
have the same SHA-256 and the superpixel options, blocks and halo are unchanged.
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

from .. import io as xio
from .._config import thread_share
from .._validation import describe, per_axis
from .agglomeration import METHODS, _check_beta, _merge_small_segments, agglomerate_graph
from ._blockwise_checks import _check_out, check_block_mask, check_out_capacity
from ._blockwise_tasks import _block_edges, _block_superpixels, _Plan, _relabel_block
from .superpixels import _relabel_first_occurrence

__all__ = ["BlockwiseAgglomerationResult", "blockwise_superpixel_agglomeration"]

_WRITER = "xmodal.blockwise_superpixel_agglomeration"


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
    n_blocks_resumed : int
        Blocks whose superpixels a resumed run took from the work folder.
    seconds : dict
        Wall-clock seconds of the passes ``superpixels``, ``graph``, ``agglomeration``, ``relabel``.
    """

    labels: object
    n_superpixels: int
    n_edges: int
    n_segments: int
    n_blocks: int
    n_stitched: int = 0
    n_blocks_resumed: int = 0
    seconds: dict = field(default_factory=dict)



def _check_blockwise_args(boundaries, block_shape, halo, out, mask, method, feature, beta, min_size, n_workers):
    """(shape, block_shape, halo, mask) of valid arguments of :func:`blockwise_superpixel_agglomeration`."""
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
    mask = check_block_mask(mask, shape)
    if out is not None:  # integer, and chunks inside blocks: two threads never write one chunk
        _check_out(out, shape, bs)
    return shape, bs, hl, mask


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


def _run(client, n_workers, fn, args):
    """``[fn(*a) for a in args]`` on the dask client, else on ``n_workers`` threads."""
    if client is not None:
        return client.gather(client.map(fn, *zip(*args), pure=False))
    with ThreadPoolExecutor(n_workers) as pool:
        return list(pool.map(lambda a: fn(*a), args))


def _open_work(workdir, shape, bs, hl, sp_options, mask, boundaries):
    """(work folder, ledger folder or None, superpixel store path, own temporary folder?)."""
    import zarr

    own = workdir is None
    work = tempfile.mkdtemp(prefix="xmodal-sp-") if own else os.path.abspath(os.fspath(workdir))
    os.makedirs(os.path.join(work, "blocks"), exist_ok=True)
    signature = xio.job_signature({"function": "xmodal.blockwise_superpixel_agglomeration", "shape": shape,
                                   "dtype": str(boundaries.dtype), "block_shape": bs, "halo": hl,
                                   "superpixels": sp_options, "mask": mask is not None})
    sp_name = f"superpixels-{signature[:16]}.zarr"
    ledger_dir = None
    if not own:  # resumable: the markers (and the superpixel store) of another job are cleared
        ledger_dir = os.path.join(work, "done")
        xio.BlockLedger(ledger_dir, signature)
        for name in os.listdir(work):
            if name.startswith("superpixels") and name != sp_name:
                shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    sp_path = os.path.join(work, sp_name)
    if not os.path.exists(sp_path):
        zarr.create_array(store=sp_path, shape=shape, chunks=tuple(max(1, min(b, s)) for b, s in zip(bs, shape)),
                          dtype=np.uint32)  # a block larger than the volume: chunks capped (zarr allocates whole ones)
    return work, ledger_dir, sp_path, own


def _clean_work(work):
    """Remove what a completed run wrote into the caller's work folder (and the folder when empty)."""
    for name in os.listdir(work):
        if name in ("blocks", "done", "final.npy") or name.startswith("superpixels") or name.startswith(".tmp-"):
            path = os.path.join(work, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
    try:
        os.rmdir(work)
    except OSError:
        pass


def _agglomerate_blocks(plan, offsets, res, n_nodes, method, feature, agg, min_size, run):
    """Passes 2-4: the global graph from the blocks, one agglomeration, size filter, final ids."""
    joined = [r[2] for r in res]
    per_block = run(_block_edges, [(plan, offsets, joined, i) for i in range(plan.grid.n_blocks)])
    rep, n_stitched = _stitch_groups([k for _, st in per_block for k in st], n_nodes)
    uv, cnt, stat = _merge_edge_parts([p for ps, _ in per_block for p in ps], rep, n_stitched, feature)
    be = np.clip(stat, 0.0, 1.0)
    node_labels = agglomerate_graph(n_nodes, uv, be, cnt, method=method, **agg).astype(np.int64)
    node_labels = node_labels[rep]  # stitched superpixels follow their group's representative
    node_labels[0] = 0
    if min_size > 0:
        node_size = np.concatenate([[0.0]] + [r[1] for r in res])
        node_labels = _merge_small_segments(node_labels, node_size, uv.astype(np.int64), be, cnt, int(min_size))
    final, n_seg = _relabel_first_occurrence(node_labels)
    dtype = np.uint32 if n_seg < (1 << 32) - 1 else np.uint64
    return final.astype(dtype), n_seg, int(uv.shape[0]), n_stitched


def blockwise_superpixel_agglomeration(boundaries, *, block_shape, halo, out=None, mask=None, method="gasp",
                                       beta=0.5, feature="mean", linkage="mean", cannot_link=False,
                                       solver="kernighan-lin", size_exponent=None, threshold=0.5,
                                       sigma_seeds=1.0, sigma_weights=2.0, alpha=1.0,
                                       superpixel_min_size=100, stacked=False, spacing=None, min_size=0,
                                       n_workers=None, workdir=None, client=None):
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
        Where to write the labels: an integer array of the spatial shape whose dtype holds the
        segment count (a ValueError before the first write otherwise), e.g. a zarr array, whose
        chunks must divide ``block_shape`` (a ValueError otherwise: blocks write disjoint chunks).
        A zarr ``out`` is flagged incomplete while written and complete at the end (attribute
        ``xmodal_output``, see :mod:`xmodal.io`). Default: a new numpy array.
    mask : array-like of bool or int, optional
        Voxels outside (False / 0) are 0; other dtypes are a TypeError.
    method, beta, linkage, cannot_link, solver, size_exponent, min_size
        As in :func:`~xmodal.segmentation.superpixel_agglomeration`.
    feature : {"mean", "min", "max"}
        Edge statistic of the boundary samples.
    threshold, sigma_seeds, sigma_weights, alpha, superpixel_min_size, stacked, spacing
        Superpixel options (:func:`~xmodal.segmentation.distance_transform_watershed`).
    n_workers : int, optional
        Threads over blocks when there is no ``client`` (default ``xmodal.get_num_threads()``; the
        native kernels and scipy release the GIL). The result does not depend on it.
    workdir : path, optional
        Folder for the block superpixels (a zarr array) and done-markers. Give one to make the run
        resumable: calling again with the same folder skips the superpixels of a block whose
        boundaries (and mask) read the same bytes and whose superpixel options, blocks and halo are
        the same (the agglomeration options may change). What the run wrote there is removed when
        it completes. Default: a temporary folder removed at the end.
    client : dask.distributed.Client, optional
        Run the block tasks on this client (the inputs and ``workdir`` must be reachable from its
        workers); default: threads in this process.

    Returns
    -------
    BlockwiseAgglomerationResult
    """
    if n_workers is None:
        from .. import _core
        n_workers = max(1, _core.num_threads())
    shape, bs, hl, mask = _check_blockwise_args(boundaries, block_shape, halo, out, mask, method, feature, beta,
                                          min_size, n_workers)
    grid = _BlockGrid(shape, bs, hl)
    sp_options = dict(threshold=threshold, sigma_seeds=sigma_seeds, sigma_weights=sigma_weights, alpha=alpha,
                      min_size=superpixel_min_size, stacked=stacked, spacing=spacing)
    work, ledger_dir, sp_path, own = _open_work(workdir, shape, bs, hl, sp_options, mask, boundaries)
    plan = _Plan(grid, boundaries, mask, sp_options, work, ledger_dir, sp_path)
    if client is None:
        plan.thread_cap = thread_share(min(n_workers, grid.n_blocks))

    def run(fn, args):
        return _run(client, n_workers, fn, args)

    seconds = {}
    try:
        t0 = time.perf_counter()
        res = run(_block_superpixels, [(plan, i) for i in range(grid.n_blocks)])
        counts = np.array([r[0] for r in res], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n_nodes = int(offsets[-1]) + 1
        if n_nodes >= (1 << 32) - 2:
            raise ValueError(f"too many superpixels for one graph ({n_nodes - 1}); use larger superpixels")
        seconds["superpixels"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        agg = dict(beta=beta, linkage=linkage, cannot_link=cannot_link, solver=solver, size_exponent=size_exponent)
        final, n_seg, n_edges, n_stitched = _agglomerate_blocks(plan, offsets, res, n_nodes, method, feature, agg,
                                                                min_size, run)
        seconds["agglomeration"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        final_path = os.path.join(work, "final.npy")
        np.save(final_path, final)  # always this run's (it depends on every block)
        check_out_capacity(out, n_seg)
        zarr_out = out is not None and xio.is_zarr_array(out)
        if zarr_out:  # flagged just before the first write, complete after the last (see xmodal.io)
            xio.mark_incomplete(out, _WRITER)
        parts = run(_relabel_block, [(plan, offsets, final_path, out, i) for i in range(grid.n_blocks)])
        target = out
        if out is None:
            target = np.zeros(shape, final.dtype)
            for i, part in enumerate(parts):
                target[grid.inner[i]] = part
        elif zarr_out:
            xio.mark_complete(out, _WRITER)
        seconds["relabel"] = time.perf_counter() - t0
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    if not own:
        _clean_work(work)  # complete: the resume state must not outlive the run
    return BlockwiseAgglomerationResult(labels=target, n_superpixels=n_nodes - 1, n_edges=n_edges,
                                        n_segments=n_seg, n_blocks=grid.n_blocks, n_stitched=n_stitched,
                                        n_blocks_resumed=sum(bool(r[4]) for r in res), seconds=seconds)
