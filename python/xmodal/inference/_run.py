"""Running a planned tiled prediction: locally (a reader thread, the model, a writer thread) or on
dask workers. See :func:`xmodal.inference.predict_tiled` for the contract."""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import io as xio
from .._config import capped_threads
from ._grid import BlockSweep, Tile, blend_order, blend_weights, slab_voxels
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


def _read_batch(plan: Plan, batch, skip):
    """Read a batch's windows: (network input, or None when ``skip(tile, digest)`` holds for every tile
    (done from this very input), digests).

    Batches are formed over all tiles, as in an uninterrupted run, and a batch is reused only as a
    whole, so a resumed run predicts every tile in the same batch as a fresh run would (bitwise
    identical results even where a kernel's rounding depends on the batch).
    """
    raws = [read_raw(plan.image, plan.caxis, t.window) for t in batch]
    digests = [xio.data_digest(r) if plan.hash_inputs else None for r in raws]
    if skip is not None and all(skip(t, d) for t, d in zip(batch, digests)):
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
    if np.issubdtype(y.dtype, np.inexact):
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise ValueError(f"model: expected finite outputs, got {bad} NaN or infinite values of {y.size} "
                             f"for a batch of finite input windows of shape {x.shape} (the model made them: "
                             f"e.g. weights with NaN, or values beyond the range of its dtype {y.dtype})")
    return y


def run_local(plan: Plan):
    """Predict every tile of ``plan`` in this process and write (crop) or blend them into ``plan.out``."""
    if plan.blend != "crop":
        return run_blended(plan)
    ledger = plan.ledger
    skip = (lambda t, d: ledger.is_done(t.index, d)) if ledger is not None else None
    _pipeline(plan, plan.tiles, skip, lambda t, y, d: _write_crop(plan, t, y, d))
    return plan.out


def _pipeline(plan: Plan, tiles, skip, consume, batches=None):
    """Read ahead (one thread), predict, and hand every tile's window prediction to
    ``consume(tile, prediction, digest)`` in ``tiles`` order on one writer thread. ``batches``: the
    batches of ``tiles`` when given (a dask task runs some batches of the whole run), else formed
    from ``tiles`` (:func:`_batches`)."""
    batches = iter(_batches(tiles, plan.batch_size) if batches is None else batches)
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-write")
    reads: collections.deque = collections.deque()
    writes: collections.deque = collections.deque()
    bar = _progress_bar(len(tiles), plan.progress)
    t_model = t_wait = 0.0
    skipped = 0
    digests: dict = {}

    def submit_next():
        b = next(batches, None)
        if b is not None:
            reads.append((b, reader.submit(_read_batch, plan, b, skip)))

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
                writes.append(writer.submit(consume, t, np.ascontiguousarray(y[i]), ds[i]))
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
    plan.stats.update(tiles=len(tiles), skipped=skipped, model_s=t_model, read_wait_s=t_wait, digests=digests)


# ----------------------------------------------------------------------------------- blending


class _Block:
    """An open output block: accumulators of ``w * prediction`` and ``w``, the windows still to add,
    the input digests of those added (in sweep order)."""

    __slots__ = ("acc", "wsum", "start", "left", "digests")

    def __init__(self, channels, grid: BlockSweep, k):
        region = grid.region(k)
        shape = tuple(s.stop - s.start for s in region)
        self.acc = np.zeros((channels,) + shape, np.float32)
        self.wsum = np.zeros(shape, np.float32)
        self.start, self.left, self.digests = grid.start(k), grid.count(k), []

    @property
    def nbytes(self) -> int:
        return self.acc.nbytes + self.wsum.nbytes


class BlendStream:
    """Blending out of core: a block of the output is opened when the first window overlapping it
    arrives, and normalised and written to ``plan.out`` (whole chunks, once; its ledger marker after
    it) as soon as the last one is added. Every voxel receives the same weighted sum, in the same
    order, as one output-sized accumulator would: the result is bitwise that of in-core blending
    with the same tile order. ``done``: blocks already in ``out`` (resume), left untouched.

    The kernels run on the writer thread alone (``capped_threads(1)``): the reader, the model and
    the zarr codecs run meanwhile, and an OpenMP team per block call cost more than it saved (on 2
    cores, 4x slower). One thread or many, each element gets the same operations: same result."""

    def __init__(self, plan: Plan, grid: BlockSweep, done=frozenset()):
        self.plan, self.grid, self.done = plan, grid, done
        self.open: dict = {}
        self.bytes = self.peak = self.written = 0

    def add(self, t: Tile, y: np.ndarray, digest) -> None:
        from .. import _core

        weights = blend_weights(t, self.plan.blend)
        for k in self.grid.blocks_of(t):
            if k in self.done:
                continue
            block = self.open.get(k)
            if block is None:
                block = self.open[k] = _Block(self.plan.out_channels, self.grid, k)
                self.bytes += block.nbytes
                self.peak = max(self.peak, self.bytes)
            with capped_threads(1):
                _core.stitch_accumulate(block.acc, block.wsum, y, [w - s for w, s in zip(t.wstart, block.start)],
                                        weights)
            block.digests.append(digest)
            block.left -= 1
            if block.left == 0:
                self._write(k, self.open.pop(k))

    def _write(self, k, block: _Block) -> None:
        from .. import _core

        with capped_threads(1):
            _core.stitch_normalize(block.acc, block.wsum)
        self._store(k, block.acc, xio.combine_digests(block.digests))
        self.bytes -= block.nbytes
        self.written += 1

    def _store(self, k, values: np.ndarray, digest: str) -> None:
        """Write block ``k``'s normalised ``values`` (C_out, *block) to ``plan.out``, then its marker."""
        plan = self.plan
        xio.write_region(plan.out, (slice(None),) + self.grid.region(k), values,
                         check_alignment=plan.out_kind == "zarr")
        if plan.ledger is not None:
            plan.ledger.mark_done(k, digest)

    def close(self) -> None:
        if self.open:  # every block is closed by its last window: a sweep that missed one is a bug
            raise RuntimeError(f"predict_tiled: {len(self.open)} output block(s) left open after the last tile")


def _blocks_done(plan: Plan, grid: BlockSweep, tiles, mine=None) -> set:
    """Blocks a previous run of this job wrote (ledger markers) from the same inputs: the marker's
    digest equals the digest of the windows overlapping the block, read again now. ``mine``: a
    predicate on block indices, the blocks to consider (default all; ``tiles`` must hold every
    tile overlapping them)."""
    marked = []
    for name in plan.ledger.done_blocks():
        try:
            k = tuple(int(p) for p in name.split("_"))
        except ValueError:
            continue
        if grid.contains(k) and (mine is None or mine(k)):
            marked.append(k)
    by_index = {t.index: t for t in tiles}
    digests: dict = {}
    done = set()
    for k in marked:
        for i in grid.tiles_of(k):
            if i not in digests:  # each window read once
                digests[i] = xio.data_digest(read_raw(plan.image, plan.caxis, by_index[i].window))
        rec = plan.ledger.record(k)
        if rec is not None and rec.get("input") == xio.combine_digests(digests[i] for i in grid.tiles_of(k)):
            done.add(k)
    return done


def run_blended(plan: Plan):
    """Blend the window predictions into ``plan.out`` block by block (see :class:`BlendStream`)."""
    tiles, axes = blend_order(plan.shape, plan.tiles)
    grid = BlockSweep(plan.shape, plan.blocks, tiles, axes)
    done = _blocks_done(plan, grid, tiles) if plan.ledger is not None else set()
    skip = None
    if done:  # a batch is skipped when every block its windows overlap is already written
        needed = {t.index for t in tiles if any(k not in done for k in grid.blocks_of(t))}
        skip = lambda t, d: t.index not in needed  # noqa: E731
    stream = BlendStream(plan, grid, done)
    _pipeline(plan, tiles, skip, stream.add)
    stream.close()
    plan.stats.update(blend_peak_bytes=stream.peak, blocks_written=stream.written, blocks_reused=len(done),
                      blend_axes=axes, blend_bound_bytes=4 * (plan.out_channels + 1) * slab_voxels(
                          plan.shape, plan.tiles, plan.blocks, axes[0]))
    return plan.out


# ----------------------------------------------------------------------------------- dask run

_WORKER_RUNNERS: dict = {}


def worker_runner(model, device, token) -> Runner:
    """The :class:`Runner` of ``model`` in this worker process, created once per model (``token``)."""
    runner = _WORKER_RUNNERS.get(token)
    if runner is None or runner.model is not model:
        runner = Runner(model, device)
        _WORKER_RUNNERS.clear()
        _WORKER_RUNNERS[token] = runner
    return runner


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
    runner = worker_runner(model, device, token)
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
    """Crop mode on dask: one task per batch of tiles (blended modes: :mod:`._run_blend_dask`)."""
    if plan.blend != "crop":
        raise ValueError(f"blend: run_dask runs blend='crop'; blended modes run in _run_blend_dask, got {plan.blend!r}")
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
