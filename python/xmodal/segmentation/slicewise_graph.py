"""Superpixel agglomeration of a stack of 2D affinity maps larger than memory, a few slices at a time.

A 2D network's affinities on a ``(z, y, x)`` stack (offsets with a zero z component) join no two
voxels of different slices, and :func:`~xmodal.segmentation.superpixel_agglomeration` with
``stacked=True`` segments every slice on its own (superpixels per slice, no region-graph edge
between slices). So a stack can be segmented a group of slices at a time, with every option of the
in-memory route, the learned edge weights (``edge_model``) included, and give the same labels bit
for bit: :func:`slicewise_superpixel_agglomeration`. This is what ``xmodal.segment`` runs on a 2D
model's stack too large for memory (the blockwise route of
:func:`~xmodal.segmentation.blockwise_superpixel_agglomeration`, on the boundary map, is for 3D
affinities and for single images larger than memory).

Two passes:

1. **Groups.** Slices ``[k * slices_per_task, (k + 1) * slices_per_task)`` are read (affinities and
   mask), segmented by :func:`~xmodal.segmentation.superpixel_agglomeration` (``stacked=True``) and
   the labels (consecutive from 1 in raster order) stored in the work directory; then the group is
   marked done (:class:`xmodal.io.BlockLedger`, with the SHA-256 of what it read). With a
   ``workdir`` the pass is resumable: a rerun with the same parameters skips a group whose input
   reads the same bytes. Files are written to a temporary name and renamed (atomic).
2. **Relabel.** Group ``k``'s labels get the offset of the label counts of groups ``0 .. k - 1``
   and are written to ``out`` (idempotent). Labels are therefore consecutive from 1 in order of
   first occurrence over the whole stack, as in the in-memory result.

Groups run on a ``dask.distributed`` client when one is given, else on a pool of threads (dask is
not needed). Only one group of affinities is in memory per worker.
"""

from __future__ import annotations

import inspect
import io
import logging
import numbers
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import io as xio
from .._config import capped_threads, thread_share
from .._validation import describe
from ._values import as_float_values, check_real_dtype

__all__ = ["SlicewiseAgglomerationResult", "slicewise_superpixel_agglomeration"]

log = logging.getLogger(__name__)

_WRITER = "xmodal.slicewise_superpixel_agglomeration"
#: Arguments of superpixel_agglomeration that this function sets itself.
_OWN = ("boundaries", "affinities", "offsets", "n_attractive", "stacked", "mask", "superpixels", "return_info")


@dataclass
class SlicewiseAgglomerationResult:
    """Result of :func:`slicewise_superpixel_agglomeration`.

    Attributes
    ----------
    labels : array
        ``out`` when given, else a numpy array (uint32, or uint64 when needed); 0 = masked.
    n_segments : int
        Number of segments (labels 1..n_segments).
    n_tasks, n_tasks_resumed : int
        Groups of slices, and how many of them a resumed run took from the work directory.
    seconds : dict
        Wall time of the passes (``groups``, ``relabel``).
    """

    labels: object
    n_segments: int
    n_tasks: int
    n_tasks_resumed: int
    seconds: dict = field(default_factory=dict)


class _Plan:
    """What a group task needs (picklable, for dask.distributed workers)."""

    def __init__(self, affinities, offsets, n_attractive, mask, options, slices_per_task, n_slices, workdir,
                 ledger_dir):
        self.affinities, self.offsets, self.n_attractive, self.mask = affinities, offsets, n_attractive, mask
        self.options, self.slices_per_task, self.n_slices = options, slices_per_task, n_slices
        self.workdir, self.ledger_dir = workdir, ledger_dir
        self.thread_cap = None  # native threads per task (set for the thread pool)

    @property
    def n_tasks(self) -> int:
        return -(-self.n_slices // self.slices_per_task)

    def slices(self, k: int) -> slice:
        return slice(k * self.slices_per_task, min((k + 1) * self.slices_per_task, self.n_slices))

    def path(self, k: int) -> str:
        return os.path.join(self.workdir, "groups", f"{k}.npz")


def _run_group(plan: _Plan, k: int):
    """Pass 1 for group ``k``: (label count, input digest, reused)."""
    from .agglomeration import superpixel_agglomeration

    z = plan.slices(k)
    a = as_float_values(plan.affinities[:, z], "affinities", "merge probabilities", dtype=np.float32, probabilities=True)
    m = None if plan.mask is None else np.asarray(plan.mask[z]).astype(bool)
    ledger, digest, rec = xio.BlockLedger.lookup(plan.ledger_dir, k, plan.path(k), a, m)
    if rec is not None:
        return int(rec["n_labels"]), digest, True
    with capped_threads(plan.thread_cap):
        labels = superpixel_agglomeration(affinities=a, offsets=plan.offsets, n_attractive=plan.n_attractive,
                                          stacked=True, mask=m, **plan.options)
    n = int(labels.max(initial=0))
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels)
    xio.atomic_write_bytes(plan.path(k), buf.getvalue())
    if ledger is not None:
        ledger.mark_done(k, digest, n_labels=n)
    return n, digest, False


def _write_group(plan: _Plan, k: int, offset: int, out):
    """Pass 2 for group ``k``: its labels + ``offset`` (0 stays 0), into ``out`` or returned."""
    with np.load(plan.path(k)) as f:
        local = f["labels"]
    dtype = np.uint64 if out is None else np.dtype(out.dtype)
    final = np.where(local > 0, local.astype(np.uint64) + np.uint64(offset), np.uint64(0)).astype(dtype)
    if out is None:
        return final
    out[plan.slices(k)] = final
    return None


def segment_slices_in_memory(affinities: np.ndarray, offsets, *, n_attractive: int, n_workers: int, **options):
    """The labels of ``superpixel_agglomeration(affinities=..., stacked=True, **options)`` for an
    in-memory ``(C, z, y, x)`` stack, its slices segmented on ``n_workers`` threads (same labels)."""
    from .agglomeration import superpixel_agglomeration

    o = np.asarray(offsets)
    o = o if o.shape[1] == 3 else np.hstack([np.zeros((len(o), 1), o.dtype), o])

    share = thread_share(n_workers)

    def one(z):
        with capped_threads(share):  # workers x kernel threads within the thread setting
            return superpixel_agglomeration(affinities=affinities[:, z:z + 1], offsets=o, n_attractive=n_attractive,
                                            stacked=True, **options)

    with ThreadPoolExecutor(max(1, int(n_workers))) as pool:
        parts = list(pool.map(one, range(affinities.shape[1])))
    counts = np.array([int(p.max(initial=0)) for p in parts], np.int64)
    total = int(counts.sum())
    dtype = np.uint32 if total < (1 << 32) - 1 else np.uint64
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.concatenate([np.where(p > 0, p.astype(dtype) + dtype(s), dtype(0)) for p, s in zip(parts, starts)])


def _check(affinities, offsets, n_attractive, slices_per_task, out, mask, options, n_workers):
    from .agglomeration import superpixel_agglomeration

    if not hasattr(affinities, "shape") or not hasattr(affinities, "dtype"):
        affinities = np.asarray(affinities)
    shape = tuple(int(s) for s in affinities.shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"affinities: expected a non-empty array of shape (C, z, y, x) (a 2D model's affinities "
                         f"on a stack), got shape {shape}")
    check_real_dtype(affinities.dtype, "affinities", "merge probabilities")
    o = np.asarray(offsets)
    if o.ndim != 2 or o.shape[0] != shape[0] or o.shape[1] not in (2, 3) or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"offsets: expected integers of shape ({shape[0]}, 2) or ({shape[0]}, 3) for {shape[0]} "
                         f"channels, got {describe(offsets)}")
    if o.shape[1] == 3:
        if np.any(o[:, 0] != 0):
            raise ValueError(f"offsets: expected a zero z component (2D affinities on a stack), got {o.tolist()}")
    else:
        o = np.hstack([np.zeros((len(o), 1), o.dtype), o])
    for name, v, lo, hi in (("n_attractive", n_attractive, 1, shape[0]), ("slices_per_task", slices_per_task, 1, None),
                            ("n_workers", n_workers, 1, None)):
        if v is None and name == "n_workers":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"{name}: expected an integer >= {lo}" + (f" and <= {hi}" if hi else "")
                             + f", got {describe(v)}")
    for name, arr in (("out", out), ("mask", mask)):
        if arr is not None and tuple(int(s) for s in arr.shape) != shape[1:]:
            raise ValueError(f"{name}: expected shape {shape[1:]} (the affinities' spatial shape), got "
                             f"{tuple(arr.shape)}")
    if out is not None and not np.issubdtype(np.dtype(out.dtype), np.integer):
        raise TypeError(f"out: expected an integer array, got dtype {out.dtype}")
    cz = getattr(out, "chunks", None)
    if out is not None and cz is not None and xio.is_zarr_array(out) and slices_per_task % int(cz[0]) \
            and slices_per_task < shape[1]:
        raise ValueError(f"out: its chunks of {int(cz[0])} slices must divide slices_per_task ({slices_per_task}) so "
                         f"that groups write disjoint chunks")
    known = set(inspect.signature(superpixel_agglomeration).parameters) - set(_OWN)
    bad = sorted(set(options) - known)
    if bad:
        raise TypeError(f"options: expected options of superpixel_agglomeration among {sorted(known)}, got {bad}")
    return shape, o.astype(np.int64)


def _signature(plan: _Plan, shape, dtype) -> str:
    opts = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in plan.options.items()}
    return xio.job_signature({"function": _WRITER, "shape": shape, "dtype": str(dtype),
                              "slices_per_task": plan.slices_per_task, "offsets": plan.offsets.tolist(),
                              "n_attractive": plan.n_attractive, "options": opts, "mask": plan.mask is not None})


def slicewise_superpixel_agglomeration(affinities, offsets, *, n_attractive, slices_per_task=1, out=None, mask=None,
                                       client=None, workdir=None, n_workers=None, **options):
    """Superpixels + region-graph agglomeration of a 2D model's affinity stack, a group of slices at a time.

    The labels equal those of ``superpixel_agglomeration(affinities=..., offsets=..., n_attractive=...,
    stacked=True, mask=mask, **options)`` on the whole stack (see the module docstring), with one
    group of ``slices_per_task`` slices in memory per worker.

    Parameters
    ----------
    affinities : array-like, shape (C, z, y, x)
        Merge probabilities of a 2D model on each slice (numpy, zarr, or anything with ``shape``,
        ``dtype`` and slicing to numpy); channel ``c`` joins ``p`` and ``p + offsets[c]`` in a slice.
        Any real dtype, read as float32 (integers must be 0 or 1, as in :func:`mutex_watershed`).
    offsets : array_like of int, shape (C, 2) or (C, 3)
        In-slice offsets (y, x), or (z, y, x) with z = 0.
    n_attractive : int
        The first ``n_attractive`` channels are the short-range (attractive) ones.
    slices_per_task : int
        Slices per group (default 1).
    out : array-like, optional
        Integer array of shape (z, y, x) to write into (e.g. a zarr array; its chunks along z should
        divide ``slices_per_task`` so that groups write disjoint chunks). Default: a numpy array is
        returned. A zarr ``out`` is flagged incomplete while the run writes it, complete when done.
    mask : array-like of bool, shape (z, y, x), optional
        False voxels are 0.
    client : dask.distributed.Client, optional
        Run the groups on this client (the affinities, mask and ``workdir`` must be reachable from
        its workers); default: ``n_workers`` threads in this process.
    workdir : str or path, optional
        Folder for the groups' labels and done-markers. Give one to make the run resumable: calling
        again with the same folder and parameters skips a group whose affinities (and mask) read the
        same bytes as when it was computed. Removed when the run completes. Default: a temporary
        folder removed at the end.
    n_workers : int, optional
        Threads when there is no client (default ``xmodal.get_num_threads()``).
    **options
        Options of :func:`~xmodal.segmentation.superpixel_agglomeration` (``method``, ``beta``,
        ``linkage``, ``threshold``, ``sigma_seeds``, ``superpixel_min_size``, ``min_size``,
        ``edge_model``, ...). They are checked by the first group (a TypeError names unknown ones
        before any work).

    Returns
    -------
    SlicewiseAgglomerationResult
    """
    shape, o = _check(affinities, offsets, n_attractive, slices_per_task, out, mask, options, n_workers)
    if n_workers is None:
        from .. import _core
        n_workers = max(1, _core.num_threads())
    own = workdir is None
    work = tempfile.mkdtemp(prefix="xmodal-slicewise-") if own else os.path.abspath(os.fspath(workdir))
    zarr_out = out is not None and xio.is_zarr_array(out)
    seconds = {}
    try:
        os.makedirs(os.path.join(work, "groups"), exist_ok=True)
        plan = _Plan(affinities, o, int(n_attractive), mask, dict(options), int(slices_per_task), shape[1], work,
                     None if own else os.path.join(work, "done"))
        signature = _signature(plan, shape, affinities.dtype)
        if client is None:
            plan.thread_cap = thread_share(min(n_workers, plan.n_tasks))
        if plan.ledger_dir is not None:
            xio.BlockLedger(plan.ledger_dir, signature)  # clears the markers of a job with other parameters
        if zarr_out:
            xio.mark_incomplete(out, _WRITER)

        def run(fn, args):
            if client is not None:
                return client.gather(client.map(fn, *zip(*args), pure=False))
            with ThreadPoolExecutor(n_workers) as pool:
                return list(pool.map(lambda a: fn(*a), args))

        t0 = time.perf_counter()
        done = run(_run_group, [(plan, k) for k in range(plan.n_tasks)])
        counts = np.array([n for n, _, _ in done], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        n_segments = int(counts.sum())
        if out is not None and n_segments > np.iinfo(np.dtype(out.dtype)).max:
            raise ValueError(f"out: dtype {out.dtype} cannot hold {n_segments} labels")
        seconds["groups"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        parts = run(_write_group, [(plan, k, int(starts[k]), out) for k in range(plan.n_tasks)])
        if out is None:
            labels = np.concatenate(parts, axis=0).astype(np.uint32 if n_segments < (1 << 32) - 1 else np.uint64)
        else:
            labels = out
            if zarr_out:
                xio.mark_complete(out, _WRITER, signature=signature,
                                  input_digest=None if own else xio.combine_digests(d for _, d, _ in done))
        seconds["relabel"] = time.perf_counter() - t0
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    if not own:  # complete: the resume state must not outlive the run
        for name in ("groups", "done"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        try:
            os.rmdir(work)
        except OSError:
            pass
    resumed = sum(bool(r) for _, _, r in done)
    log.info("slicewise superpixel agglomeration: %d slices in %d groups of at most %d (%d resumed), %d segments",
             plan.n_slices, plan.n_tasks, min(plan.slices_per_task, plan.n_slices), resumed, n_segments)
    return SlicewiseAgglomerationResult(labels=labels, n_segments=n_segments, n_tasks=plan.n_tasks,
                                        n_tasks_resumed=resumed, seconds=seconds)
