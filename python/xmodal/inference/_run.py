"""Running a planned tiled prediction: locally (a reader thread, the model, a writer thread) or on
dask workers. See :func:`xmodal.inference.predict_tiled` for the contract."""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import io as xio
from ._grid import Tile, blend_weights
from ._model import Runner, model_token
from ._plan import Plan, prepare, read_raw

log = logging.getLogger("xmodal.inference")

# ----------------------------------------------------------------------------------- local run

def _batches(tiles, size):
    """Consecutive tiles with equal window shapes, at most ``size`` per batch."""
    batch = []
    for t in tiles:
        if batch and (len(batch) == size or batch[0].window_shape != t.window_shape):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def _progress_bar(total, enabled):
    from .._progress import progress_bar

    return progress_bar(total, desc="predict_tiled", unit="tile", enabled=enabled, logger=log)


def _write_crop(plan: Plan, t: Tile, y: np.ndarray, digest: str | None = None):
    """Write the tile's region of the window prediction ``y`` (C_out, *window) into plan.out."""
    out = plan.out
    if (plan.out_kind == "numpy" and out.dtype == np.float32 and out.flags.c_contiguous
            and y.dtype == np.float32 and y.flags.c_contiguous):
        from .. import _core

        _core.stitch_paste(out, y, [c.start for c in t.crop], list(t.start),
                           [b - a for a, b in zip(t.start, t.stop)])
    else:
        xio.write_region(out, (slice(None),) + t.region, y[(slice(None),) + t.crop],
                         check_alignment=plan.out_kind == "zarr")
    if plan.ledger is not None:
        plan.ledger.mark_done(t.index, digest)


def _trim_heap():
    """Return freed heap memory to the OS (glibc ``malloc_trim``, as dask workers do); else no-op.

    Windows are large, short-lived buffers allocated in several threads; without trimming, glibc's
    per-thread arenas keep them mapped and the resident size creeps up over a long run.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _read_batch(plan: Plan, batch):
    """Read a batch's windows: (network input or None when every tile is done from this input, digests).

    Batches are formed over all tiles, as in an uninterrupted run, and a batch is reused only as a
    whole, so a resumed run predicts every tile in the same batch as a fresh run would (bitwise
    identical results even where a kernel's rounding depends on the batch).
    """
    raws = [read_raw(plan.image, plan.caxis, t.window) for t in batch]
    digests = [xio.data_digest(r) if plan.hash_inputs else None for r in raws]
    if plan.ledger is not None and all(plan.ledger.is_done(t.index, d) for t, d in zip(batch, digests)):
        return None, digests
    return np.stack([prepare(r, plan.caxis, plan.normalizer) for r in raws]), digests


def _predict_batch(plan: Plan, x: np.ndarray) -> np.ndarray:
    """The model's prediction of the batch ``x``, its shape checked; an exception the model raises
    gets a note naming the windows' shape (and an axis off the down-sampling grid, the usual cause)."""
    try:
        y = plan.runner(x)
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11
            off = [f"axis {ax} ({n} voxels)" for ax, (n, f) in enumerate(zip(x.shape[2:], plan.factor)) if n % f]
            exc.add_note(f"predict_tiled: the model failed on a batch of windows of shape {x.shape}"
                         + (f"; {', '.join(off)} not a multiple of the network's down-sampling factor "
                            f"{plan.factor}: the image's extent there is not either, and the whole-image "
                            f"prediction would fail alike (pad or crop the image)" if off else ""))
        raise
    if y.shape[:2] != (x.shape[0], plan.out_channels) or y.shape[2:] != x.shape[2:]:
        raise ValueError(f"model: output of shape {y.shape} for an input of shape {x.shape}")
    return y


def run_local(plan: Plan):
    blended = plan.blend != "crop"
    acc = wsum = None
    if blended:
        acc = np.zeros((plan.out_channels,) + plan.shape, np.float32)
        wsum = np.zeros(plan.shape, np.float32)
    batches = iter(_batches(plan.tiles, plan.batch_size))
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-write")
    reads: collections.deque = collections.deque()
    writes: collections.deque = collections.deque()
    bar = _progress_bar(len(plan.tiles), plan.progress)
    t_model = 0.0
    t_wait = 0.0
    skipped = 0
    digests: dict = {}

    def submit_next():
        b = next(batches, None)
        if b is not None:
            reads.append((b, reader.submit(_read_batch, plan, b)))

    def accumulate(t, y, digest):
        from .. import _core

        _core.stitch_accumulate(acc, wsum, y, list(t.wstart), blend_weights(t, plan.blend))

    try:
        for _ in range(2):
            submit_next()
        while reads:
            b, fut = reads.popleft()
            t0 = time.perf_counter()
            x, ds = fut.result()
            t_wait += time.perf_counter() - t0
            submit_next()
            digests.update((t.index, d) for t, d in zip(b, ds))
            if x is None:  # every tile of the batch was done from this very input
                skipped += len(b)
                if bar is not None:
                    bar.update(len(b))
                continue
            t0 = time.perf_counter()
            y = _predict_batch(plan, x)
            t_model += time.perf_counter() - t0
            for i, t in enumerate(b):
                yi = np.ascontiguousarray(y[i])
                if blended:
                    writes.append(writer.submit(accumulate, t, yi, ds[i]))
                else:
                    writes.append(writer.submit(_write_crop, plan, t, yi, ds[i]))
            del x, y
            while len(writes) > plan.batch_size + 1:
                writes.popleft().result()
            if plan.out_kind == "zarr":
                _trim_heap()
            if bar is not None:
                bar.update(len(b))
        while writes:
            writes.popleft().result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        if bar is not None:
            bar.close()
    if blended:
        from .. import _core

        _core.stitch_normalize(acc, wsum)
        if plan.out_kind == "numpy" and plan.out is not None:
            plan.out[...] = acc
        else:
            _write_blocks(plan.out, acc)
    plan.stats.update(tiles=len(plan.tiles), skipped=skipped, model_s=t_model, read_wait_s=t_wait, digests=digests)
    return plan.out


def _write_blocks(out, acc):
    """Write the accumulated volume into ``out`` in chunk-aligned slabs (one chunk deep along axis 1)."""
    step = [out.shape[0], out.chunks[1]] + list(out.shape[2:])
    for sl in xio.iter_blocks(out.shape, step):
        xio.write_region(out, sl, acc[sl])


# ----------------------------------------------------------------------------------- dask run

_WORKER_RUNNERS: dict = {}


def _dask_task(tiles, model, image, caxis, normalizer, out, ledger_dir, device, token, hash_inputs):
    """Run on a dask worker: predict ``tiles`` and write them to ``out`` (zarr) or return the crops.

    Returns ``(index, crop or None, input digest, reused)`` per tile; a batch whose tiles are all
    recorded as done from the same input bytes is not predicted again.
    """
    ledger = xio.BlockLedger.attach(ledger_dir) if ledger_dir else None
    raws = [read_raw(image, caxis, t.window) for t in tiles]
    digests = [xio.data_digest(r) if hash_inputs else None for r in raws]
    if ledger is not None and all(ledger.is_done(t.index, d) for t, d in zip(tiles, digests)):
        return [(t.index, None, d, True) for t, d in zip(tiles, digests)]
    runner = _WORKER_RUNNERS.get(token)
    if runner is None or runner.model is not model:
        runner = Runner(model, device)
        _WORKER_RUNNERS.clear()
        _WORKER_RUNNERS[token] = runner
    x = np.stack([prepare(r, caxis, normalizer) for r in raws])
    del raws
    y = runner(x)
    results = []
    for i, t in enumerate(tiles):
        crop = np.ascontiguousarray(y[i][(slice(None),) + t.crop])
        if out is not None:
            xio.write_region(out, (slice(None),) + t.region, crop)
            if ledger is not None:
                ledger.mark_done(t.index, digests[i])
            results.append((t.index, None, digests[i], False))
        else:
            results.append((t.index, crop, digests[i], False))
    return results


def run_dask(plan: Plan, client, device):
    if plan.blend != "crop":
        raise ValueError(f"blend: a dask client runs blend='crop' only (blended modes accumulate across tiles), "
                         f"got {plan.blend!r}")
    from .._optional import optional_import

    distributed = optional_import("distributed", purpose="predict_tiled(client=...)")
    if isinstance(client, str):  # a scheduler address: connect for this run only
        with distributed.Client(client) as own:
            return run_dask(plan, own, device)
    token = model_token(plan.runner.model)
    model_f = client.scatter(plan.runner.model, broadcast=True, hash=False)  # once per worker
    image = plan.image
    if isinstance(image, np.ndarray):
        image = client.scatter(image, broadcast=False, hash=False)
    out = plan.out if plan.out_kind == "zarr" else None
    ledger_dir = plan.ledger.directory if plan.ledger is not None else None
    groups = list(_batches(plan.tiles, plan.batch_size))
    futures = [client.submit(_dask_task, g, model_f, image, plan.caxis, plan.normalizer, out, ledger_dir,
                             device, token, plan.hash_inputs, pure=False) for g in groups]
    by_index = {t.index: t for t in plan.tiles}
    bar = _progress_bar(len(plan.tiles), plan.progress)
    skipped = 0
    digests: dict = {}
    try:
        for fut in distributed.as_completed(futures):
            for index, crop, digest, reused in fut.result():
                digests[index] = digest
                skipped += bool(reused)
                if crop is not None:
                    t = by_index[index]
                    plan.out[(slice(None),) + t.region] = crop
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    plan.stats.update(tiles=len(plan.tiles), skipped=skipped, digests=digests)
    return plan.out
