"""Blockwise mutex watershed for volumes larger than memory.

1. **Blocks** (resumable). The volume is cut into blocks of ``block_shape``; each block is read with
   ``halo`` voxels per side (clipped at the volume border), segmented with
   :func:`~xmodal.segmentation.mutex_watershed`, and what the join needs is stored in the work
   directory. A block is done when its marker exists (:class:`xmodal.io.BlockLedger`, written
   after the block's file); the marker holds the SHA-256 of the affinities (and mask) the block
   read, halo included, so a resumed run reuses a block only when the same read gives the same
   bytes. Every file is written to a temporary name and renamed (atomic).
2. **Join** (``join``). Votes across faces (classic mode): a block stores its inner labels 1..k and, per face
   shared with a neighbour, the labels of its boundary slice and whether each boundary voxel and its
   neighbour across the face (in the halo) ended in one segment of its run. Label ``l`` of block
   ``b`` gets the provisional id ``offset[b] + l``; for every face and pair (a, b) of labels that
   touch across it, the voxel pairs that *both* runs joined vote to merge, and a and b merge when
   the agreeing fraction exceeds ``merge_threshold``; the merges are connected components.
   Fragment graph (the evidence single-shot uses; the only join with ``bias``, the default in
   classic mode when attractive channels join voxels that share no face): a block stores its run's labels
   of its inner region and of the parts of other blocks that its halo covers. (a) *Fragments*: the
   segments of a block that touch the zone within reach (the largest offset per axis) of a shared
   face are cut by the labels that the other runs which saw their voxels gave them; the other
   segments stay whole, out of the graph. (b) *Edges*: every edge of every channel between two
   fragments in the graph, with single-shot's weight (``m + bias[c]``; classic: ``m`` or ``1 - m``)
   and strides, reduced per fragment pair to the attractive and the repulsive edge that
   single-shot processes first. (c) A
   mutex watershed of the fragments (:func:`~xmodal.segmentation.mutex_watershed_graph`) processes
   them in single-shot's order (weight, then edge id). Where every run agrees with single-shot (a
   halo over the whole volume) the fragments split single-shot's segments and this replays it
   exactly: between two fragments only the first attractive and the first repulsive edge matter.
3. **Relabel.** Final ids are consecutive from 1, ordered by the smallest provisional id of each
   segment (deterministic); each block's labels are mapped and written to ``out`` (idempotent: a
   resumed run rewrites every block). A zarr ``out`` is flagged incomplete before the first write
   and complete after the last (see :mod:`xmodal.io`).

How it differs from single-shot: smaller halos change labels near faces (ARand in ``docs/mws.md``);
strides are anchored per block (the fragment graph keeps the edges single-shot keeps: its grid from
voxel 0, or its random draw). The votes see voxel pairs across a face only: with long-range or
diagonal channels among the first ``n_attractive`` a segment whose pieces are joined by such edges
alone may come out as several labels whatever the halo (hence the fragment graph there). The block
runs themselves can differ from single-shot near faces (mutexes propagate beyond the halo).

Memory: one block (with halo) of affinities per worker; the votes hold the face slices and
one integer per provisional label, the fragment graph one entry (~24 bytes) per pair of fragments
linked by an edge near the faces. The result does not depend on the scheduler or on the number of
workers.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import io as xio
from .._config import capped_threads, thread_share
from .._validation import positive_int
from ._blockwise_checks import _check_arguments, _check_out, check_join, check_out_capacity
from ._blockwise_tasks import fragment_members, save_npz
from ._face_votes import face_members, stitch_votes
from ._fragment_graph import block_edges, block_fragments, stitch_fragments
from .mws import _check_finite, mutex_watershed
from ._values import as_float_values

__all__ = ["BlockwiseResult", "blockwise_mutex_watershed"]
_OLD_HOME = (_check_out,)  # imported from here by other modules

log = logging.getLogger(__name__)


@dataclass
class BlockwiseResult:
    """Result of :func:`blockwise_mutex_watershed`.

    Attributes
    ----------
    labels : array
        The segmentation: ``out`` when given, else a numpy array (uint32, or uint64 when needed).
        Labels are consecutive from 1; 0 = masked.
    n_labels : int
        Number of segments.
    n_blocks : int
        Blocks of the grid.
    n_blocks_resumed : int
        Blocks found done in the work directory (not recomputed).
    n_face_merges : int
        Label pairs merged across block faces (fragment graph: its merges).
    seconds : dict
        Wall-clock seconds of the passes ``blocks``, ``stitch`` (the join; the fragment graph's
        fragments, edges and graph passes, also given as ``stitch_fragments``, ``stitch_edges`` and
        ``stitch_graph``) and ``relabel``.
    """

    labels: object
    n_labels: int
    n_blocks: int
    n_blocks_resumed: int
    n_face_merges: int
    seconds: dict = field(default_factory=dict)


class _Plan:
    """Everything a block task needs (picklable, for dask.distributed workers)."""

    def __init__(self, affinities, offsets, shape, block_shape, halo, mws_kwargs, mask, workdir, ledger_dir,
                 segmenter=None, join="votes"):
        self.affinities, self.offsets, self.shape, self.block_shape = affinities, offsets, shape, block_shape
        self.halo, self.mws_kwargs, self.mask = halo, mws_kwargs, mask
        self.workdir, self.ledger_dir = workdir, ledger_dir
        # segmenter(affinities, mask) -> labels from 1 (0 = masked) of one block with halo; default the MWS
        self.segmenter = segmenter
        self.thread_cap = None  # native threads per block task (set for the thread pool)
        self.grid = tuple(-(-s // b) for s, b in zip(shape, block_shape))
        # join="fragments": blocks joined by the mutex watershed of their fragments (passes 2-4), edges of any offset
        self.graph = segmenter is None and join == "fragments"
        self.reach = tuple(int(r) for r in np.abs(np.asarray(offsets)).max(axis=0))

    @property
    def ndim(self):
        return len(self.shape)

    def block_ids(self):
        return list(range(int(np.prod(self.grid))))

    def index(self, bid):
        return tuple(int(i) for i in np.unravel_index(bid, self.grid))

    def inner(self, bid):
        idx = self.index(bid)
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, self.block_shape, self.shape))

    def outer(self, bid):
        return tuple(slice(max(0, sl.start - h), min(s, sl.stop + h))
                     for sl, h, s in zip(self.inner(bid), self.halo, self.shape))

    def path(self, kind, bid):
        return os.path.join(self.workdir, kind, f"{bid}")


def _run_block(plan: _Plan, bid: int):
    """Pass 1 for one block: (label count, input digest, reused).

    The work is skipped when the ledger records the block as done from the same input bytes.
    """
    inner, outer = plan.inner(bid), plan.outer(bid)
    affs = as_float_values(plan.affinities[(slice(None),) + outer], "affinities", "merge probabilities", probabilities=True)
    mask = None
    if plan.mask is not None:
        mask = np.asarray(plan.mask[outer]).astype(bool)
    # resumable (a ledger): the block's input bytes decide whether it is done
    ledger, digest, rec = xio.BlockLedger.lookup(plan.ledger_dir, bid, plan.path("blocks", bid) + ".npz", affs, mask)
    if rec is not None:
        return int(rec["n_labels"]), digest, True
    _check_finite(affs, origin=[sl.start for sl in outer])  # report the voxel in volume coordinates
    with capped_threads(plan.thread_cap):
        if plan.segmenter is None:
            ext = mutex_watershed(affs, plan.offsets, mask=mask, **plan.mws_kwargs)
        else:
            ext = np.asarray(plan.segmenter(affs, mask)).astype(np.int64, copy=False)
    rel = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
    # ext labels are consecutive from 1; keep those present in the inner block, in ascending order
    inner_ext = ext[rel]
    present = np.bincount(inner_ext.ravel(), minlength=int(ext.max()) + 1) > 0
    present[0] = False
    lut = np.cumsum(present).astype(ext.dtype)
    lut[~present] = 0
    local = lut[inner_ext]
    n_labels = int(present.sum())
    if plan.graph:
        save_npz(plan.path("blocks", bid), **fragment_members(plan, bid, ext, outer))
    else:
        save_npz(plan.path("blocks", bid), labels=local, **face_members(plan, bid, rel, ext, local))
    if ledger is not None:
        ledger.mark_done(bid, digest, n_labels=n_labels)
    return n_labels, digest, False


def _relabel_block(plan: _Plan, bid: int, offset: int, mapping_path: str, out) -> object:
    """Pass 3 for one block: map to final ids; write into ``out`` or return the array."""
    mapping = np.load(mapping_path, mmap_mode="r")
    kind, member = ("frags", "frag") if plan.graph else ("blocks", "labels")
    with np.load(plan.path(kind, bid) + ".npz") as z:
        local = z[member]
    nz = local > 0
    final = np.zeros(local.shape, dtype=mapping.dtype)
    if nz.any():
        ids = local[nz].astype(np.int64) + offset
        lo, hi = int(ids.min()), int(ids.max())
        final[nz] = np.asarray(mapping[lo:hi + 1])[ids - lo]
    if out is None:
        return final
    out[plan.inner(bid)] = final.astype(out.dtype, copy=False)
    return None


_WRITER = "xmodal.blockwise_mutex_watershed"


def _signature(plan: _Plan, affinities, merge_threshold) -> str:
    """Everything besides the input's values that changes the blocks' results (values: per block)."""
    return xio.job_signature({
        "function": _WRITER, "shape": plan.shape, "channels": int(affinities.shape[0]),
        "dtype": str(affinities.dtype), "block_shape": plan.block_shape, "halo": plan.halo,
        "offsets": np.asarray(plan.offsets).tolist(), "mws": dict(plan.mws_kwargs),
        "mask": plan.mask is not None, "merge_threshold": merge_threshold,
        **({"stitch": "fragment graph"} if plan.graph else {}),
    })


def _clean_workdir(workdir: str) -> None:
    """Remove what a run wrote into a caller's work directory (and the directory when then empty)."""
    for name in ("blocks", "done", "frags", "edges"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    names = ["mapping.npy", "params.json"] + [n for n in os.listdir(workdir) if n.startswith(".tmp-")]
    for name in names:
        try:
            os.unlink(os.path.join(workdir, name))
        except OSError:
            pass
    try:
        os.rmdir(workdir)
    except OSError:
        pass


def blockwise_mutex_watershed(affinities, offsets, *, block_shape, halo, out=None, client=None,
                              n_attractive=None, strides=None, randomize_strides=False, mask=None,
                              invert=False, seed=None, workdir=None, n_workers=None,
                              merge_threshold=0.5, bias=None, join=None):
    """Mutex watershed of a volume larger than memory, block by block, stitched across faces.

    Parameters
    ----------
    affinities : array-like, shape (C, *spatial)
        Any array that supports ``shape``, ``dtype`` and slicing to numpy (zarr, numpy, h5py, dask
        ...). Same conventions as :func:`mutex_watershed`: merge probabilities (or boundary
        probabilities with ``invert=True``); channel c joins p and p + offsets[c].
    offsets : array_like of int, shape (C, ndim)
        Offsets in axis order, usually negative.
    block_shape : int or sequence of int
        Inner block size per axis. With a chunked ``out`` (zarr), it must be a multiple of its
        chunks so that blocks write disjoint chunks.
    halo : int or sequence of int
        Context read around each block per side (>= 1 along every axis split into several blocks).
        The largest offset per axis is a good choice.
    out : array-like, optional
        Integer array of the spatial shape to write into (e.g. a zarr array). Default: a numpy array
        is returned.
    client : dask.distributed.Client, optional
        Run the block tasks on this client; default: dask's threaded scheduler in this process.
    n_attractive, strides, randomize_strides, invert, seed, bias
        As in :func:`mutex_watershed` (``strides`` of shape ``(C, ndim)`` are per offset;
        ``bias`` selects the signed-weight mode); strides are anchored at each block's (halo) origin.
    mask : array-like of bool or int, shape spatial, optional
        False (0) voxels are background 0; other dtypes are a TypeError, as in :func:`mutex_watershed`.
    workdir : str or path, optional
        Directory for the per-block results and done-markers. Give one to make the run resumable:
        calling again with the same directory skips a finished block when the parameters are the
        same (job signature; other parameters clear the markers) and the block's affinities and
        mask, read again, have the same SHA-256 as when it was computed (so a rerun on other data
        recomputes, block by block). What the run wrote there is removed when it completes.
        Default: a temporary directory removed at the end.
    n_workers : int, optional
        Threads of the default scheduler (default: ``xmodal.num_threads()``).
    merge_threshold : float
        ``join="votes"``: fraction of agreeing voxel pairs across a face needed to merge two labels
        (default 0.5). Not used by the fragment graph (a ValueError unless 0.5).
    join : {None, "votes", "fragments"}
        How the blocks are joined (module docstring, pass 2). ``"votes"``: votes of the voxel pairs
        across each face (fast, classic mode only). ``"fragments"``: a mutex watershed of the
        blocks' fragments with every channel's edges near the faces, which also reads the
        affinities of each block once more; with a halo over the whole volume it gives the
        single-shot partition. Default (None): ``"fragments"`` with ``bias`` (the only join there)
        or when a channel among the first ``n_attractive`` has an offset to a voxel that does not
        share a face (long-range or diagonal: pieces of a segment joined only by such edges touch
        at no face, and the votes would leave them apart whatever the halo), else ``"votes"``.

    Returns
    -------
    BlockwiseResult
        ``labels`` (``out`` or a numpy array) with consecutive ids from 1, 0 for masked voxels, plus
        diagnostics. A zarr ``out`` is flagged incomplete (attribute ``xmodal_output``) while the
        run writes it and complete, with the job signature and input digest, when done.
    """
    shape, o, bshape, hal, mws_kwargs, mask = _check_arguments(
        affinities, offsets, block_shape=block_shape, halo=halo, out=out, mask=mask, merge_threshold=merge_threshold,
        n_attractive=n_attractive, strides=strides, randomize_strides=randomize_strides, invert=invert, seed=seed,
        bias=bias)
    join = check_join(join, mws_kwargs, o, merge_threshold)
    return _run_blockwise(affinities, o, shape, bshape, hal, mws_kwargs, mask=mask, out=out, client=client,
                          workdir=workdir, n_workers=n_workers, merge_threshold=merge_threshold, join=join)


def _run_blockwise(affinities, o, shape, bshape, hal, mws_kwargs, *, mask, out, client, workdir, n_workers,
                   merge_threshold, segmenter=None, writer=None, join="votes"):
    """The three passes (module docstring) with checked arguments; ``segmenter`` (picklable,
    ``segmenter(affinities, mask) -> labels``) replaces the mutex watershed of each block, and then
    ``mws_kwargs`` describes it for the job signature (and the join is the votes)."""
    from .._optional import optional_import

    dask = optional_import("dask", purpose="blockwise segmentation")
    writer = _WRITER if writer is None else writer
    n_workers = positive_int(n_workers, "n_workers", allow_none=True)
    if n_workers is None:
        from .. import _core
        n_workers = max(1, _core.num_threads())

    own_workdir = workdir is None
    # absolute: block tasks must not follow a later change of the working directory
    workdir = tempfile.mkdtemp(prefix="xmodal-mws-") if own_workdir else os.path.abspath(os.fspath(workdir))
    zarr_out = out is not None and xio.is_zarr_array(out)
    try:
        os.makedirs(os.path.join(workdir, "blocks"), exist_ok=True)
        # A temporary work directory cannot be resumed: no ledger, no hashing.
        plan = _Plan(affinities, o, shape, bshape, hal, mws_kwargs, mask, workdir,
                     None if own_workdir else os.path.join(workdir, "done"), segmenter, join)
        signature = _signature(plan, affinities, float(merge_threshold))
        bids = plan.block_ids()
        if client is None:
            plan.thread_cap = thread_share(min(n_workers, len(bids)))
        if plan.ledger_dir is not None:
            xio.BlockLedger(plan.ledger_dir, signature)  # clears the markers of a job with other parameters
        log.info("%s: %d blocks of %s (%d marked done before)", writer, len(bids), bshape,
                 0 if plan.ledger_dir is None else sum(os.path.exists(os.path.join(plan.ledger_dir, str(b))) for b in bids))

        def run(tasks):
            if client is not None:
                return client.gather(client.compute(tasks))
            # Our own pool, shut down before returning: when a block fails, the blocks still
            # running finish (and queued ones are cancelled) before the error reaches the caller,
            # so nothing writes into the work folder after this function has returned.
            pool = ThreadPoolExecutor(n_workers)
            try:
                return dask.compute(*tasks, scheduler="threads", pool=pool)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

        t0 = time.perf_counter()
        done = list(run([dask.delayed(_run_block, pure=False)(plan, b) for b in bids]))
        counts = [n for n, _, _ in done]
        resumed = sum(bool(r) for _, _, r in done)
        input_digest = None if own_workdir else xio.combine_digests(d for _, d, _ in done)
        t1 = [time.perf_counter()]  # start of the join, then (bias) of its edges and graph passes
        if plan.graph:  # passes 2-4 of the fragment graph (module docstring; save_npz makes their folders)
            counts = run([dask.delayed(block_fragments, pure=False)(plan, b) for b in bids])
            offsets_ = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            t1.append(time.perf_counter())
            run([dask.delayed(block_edges, pure=False)(plan, b, offsets_, int(np.sum(counts)) + 1) for b in bids])
            t1.append(time.perf_counter())
            mapping, n_labels, n_merges = stitch_fragments(plan, int(np.sum(counts)))
        else:
            offsets_, mapping, n_labels, n_merges = stitch_votes(plan, counts, float(merge_threshold))
        mapping_path = os.path.join(workdir, "mapping.npy")
        buf = io.BytesIO()
        np.save(buf, mapping)  # always this run's: it depends on every block
        xio.atomic_write_bytes(mapping_path, buf.getvalue())
        del mapping, buf
        t2 = time.perf_counter()
        check_out_capacity(out, n_labels)
        prior = xio.output_status(out) if zarr_out else None
        if zarr_out:  # flagged just before the first write: a run that fails earlier leaves out as it was
            xio.mark_incomplete(out, writer)
        parts = run([dask.delayed(_relabel_block, pure=False)(plan, b, int(offsets_[b]), mapping_path, out)
                     for b in bids])
        labels = out
        if out is None:
            labels = np.zeros(shape, dtype=np.uint32 if n_labels < 2**32 else np.uint64)
            for b, part in zip(bids, parts):
                labels[plan.inner(b)] = part
        elif zarr_out:
            xio.mark_complete(out, writer, signature=signature, input_digest=input_digest)
            if prior is not None and not prior.get("complete"):
                xio.remove_temporaries(xio.local_store_path(out))  # left by a killed run
        t3 = time.perf_counter()
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if not own_workdir:
        _clean_workdir(workdir)  # the run is complete: its resume state must not outlive it
    return BlockwiseResult(labels=labels, n_labels=n_labels, n_blocks=len(bids), n_blocks_resumed=resumed,
                           n_face_merges=n_merges,
                           seconds={"blocks": t1[0] - t0, "stitch": t2 - t1[0], "relabel": t3 - t2,
                                    **(dict(zip(("stitch_fragments", "stitch_edges", "stitch_graph"),
                                                np.diff(t1 + [t2]).tolist())) if plan.graph else {})})
