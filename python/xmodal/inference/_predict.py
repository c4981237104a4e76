"""Halo tiled inference: predict_tiled."""

from __future__ import annotations

import collections
import logging
import math
import numbers
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import io as xio
from .._validation import as_bool, describe
from ._grid import Tile, align_up, blend_weights, make_tiles
from ._model import Runner, model_token
from ._normalize import quantile_normalizer
from ._receptive import is_torch_module, receptive_field, spatial_signature

log = logging.getLogger("xmodal.inference")

_BLENDS = ("crop", "linear", "gaussian")


@dataclass
class _Plan:
    runner: Runner
    image: Any
    caxis: int | None
    ndim: int
    shape: tuple
    in_channels: int
    out_channels: int
    tile: tuple
    halo: tuple
    factor: tuple
    tiles: list
    blend: str
    batch_size: int
    normalizer: Callable | None
    out: Any
    out_kind: str  # "numpy" | "zarr" | "array"
    ledger: Any = None
    progress: bool = True
    signature: str | None = None  # job signature (zarr outputs): parameters that change the result
    prior_status: dict | None = None  # the zarr output's completion status before this run (None: new)
    stats: dict = field(default_factory=dict)

    @property
    def hash_inputs(self) -> bool:
        """Whether windows are hashed (zarr outputs: resume checks and the completion record)."""
        return self.out_kind == "zarr"


_WRITER = "xmodal.predict_tiled"


# ----------------------------------------------------------------------------------- validation

def _as_image(image):
    if isinstance(image, (str, os.PathLike)):
        return xio.open_array(image, mode="r")
    if isinstance(image, np.ndarray) or xio.is_zarr_array(image) or _is_dask(image):
        return image
    if hasattr(image, "__array__") and hasattr(image, "shape"):
        return np.asarray(image)
    raise TypeError(f"image: expected a numpy, zarr or dask array (or a zarr path), got {describe(image)}")


def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "compute") and hasattr(x, "chunks")


def _per_axis(value, nd, name, *, minimum=0):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),) * nd
    if not isinstance(value, (tuple, list)) or len(value) != nd or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name}: expected an integer or {nd} integers (one per spatial axis), got {value!r}")
    value = tuple(int(v) for v in value)
    if any(v < minimum for v in value):
        raise ValueError(f"{name}: expected values >= {minimum}, got {value}")
    return value


def _layout(model, image, channel_axis):
    """(spatial ndim, channel axis or None, input channels expected by the model or None)."""
    nd_model, in_ch = spatial_signature(model) if is_torch_module(model) else (None, None)
    nd_img = image.ndim
    if channel_axis is not None and not (isinstance(channel_axis, numbers.Integral) and not isinstance(channel_axis, bool)):
        raise TypeError(f"channel_axis: expected an integer or None, got {channel_axis!r}")
    if nd_model is not None:
        if nd_img == nd_model:
            return nd_model, None, in_ch
        if nd_img == nd_model + 1:
            if channel_axis is None:
                raise ValueError(f"image: has {nd_img} axes for a {nd_model}-D model but channel_axis is None")
            return nd_model, int(channel_axis) % nd_img, in_ch
        raise ValueError(f"image: expected {nd_model} spatial axes (the model is {nd_model}-D), with or without "
                         f"a channel axis; got shape {tuple(image.shape)}")
    if nd_img == 2:
        return 2, None, None
    if nd_img == 3:
        return 3, None, None
    if nd_img == 4:
        if channel_axis is None:
            raise ValueError("image: a 4-D image needs channel_axis")
        return 3, int(channel_axis) % nd_img, None
    raise ValueError(f"image: expected a 2-D or 3-D image, with or without a channel axis; got shape {tuple(image.shape)}")


def _read_raw(image, caxis, window):
    """The image's values in ``window`` (all channels), as stored (numpy)."""
    if caxis is None:
        idx = window
    else:
        idx = window[:caxis] + (slice(None),) + window[caxis:]
    x = image[idx]
    if hasattr(x, "compute"):
        x = x.compute(scheduler="sync")
    return np.asarray(x)


def _read_window(image, caxis, window, normalizer):
    return _prepare(_read_raw(image, caxis, window), caxis, normalizer)


def _prepare(x, caxis, normalizer):
    """A raw window as the network's float32 input ``(C, *window)``, normalised."""
    x = np.moveaxis(x, caxis, 0) if caxis is not None else x[None]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if normalizer is not None:
        y = normalizer(x)
        y = np.asarray(y, dtype=np.float32)
        if y.shape != x.shape:
            raise ValueError(f"normalize: the callable changed the window shape {x.shape} to {y.shape}")
        x = np.ascontiguousarray(y)
    return x


def _largest_divisor_at_most(n, cap):
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def plan_prediction(model, image, *, tile_shape, halo, blend, batch_size, device, normalize, channel_axis,
                    out, progress, resume, for_dask=False) -> _Plan:
    """Validate everything and prepare the run (no tile is predicted here)."""
    if not callable(model):
        raise TypeError(f"model: expected a torch module or a callable on arrays, got {describe(model)}")
    image = _as_image(image)
    progress, resume = as_bool(progress, "progress"), as_bool(resume, "resume")
    if blend not in _BLENDS:
        raise ValueError(f"blend: expected one of {_BLENDS}, got {blend!r}")
    nd, caxis, model_in = _layout(model, image, channel_axis)
    shape = tuple(int(s) for i, s in enumerate(image.shape) if i != caxis)
    in_ch = int(image.shape[caxis]) if caxis is not None else 1
    if model_in is not None and model_in != in_ch:
        raise ValueError(f"image: the model expects {model_in} input channel(s), the image has {in_ch} "
                         f"(shape {tuple(image.shape)}, channel_axis={caxis})")
    if np.dtype(image.dtype).kind not in "biuf":
        raise TypeError(f"image: expected a real numeric dtype, got {image.dtype}")
    if any(s < 1 for s in shape):
        raise ValueError(f"image: empty spatial shape {shape}")

    # receptive field, factor, halo
    rf = None
    if is_torch_module(model):
        rf = receptive_field(model, nd, in_channels=in_ch)
        factor = rf.factor
    else:
        factor = (1,) * nd
    if isinstance(halo, str):
        if halo != "auto":
            raise ValueError(f"halo: expected 'auto' or voxel counts, got {halo!r}")
        if rf is None:
            raise ValueError("halo: 'auto' needs a torch module (analytic receptive field); give the halo in voxels")
        halo_v = rf.halo
    else:
        halo_v = _per_axis(halo, nd, "halo")

    # batch size
    runner = Runner(model, device)
    if batch_size == "auto":
        batch = 4 if runner.device.startswith("cuda") else 1
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size: expected 'auto' or an integer >= 1, got {batch_size!r}")
        batch = int(batch_size)

    # output target (shape known after the probe)
    if out is not None and not (isinstance(out, (str, os.PathLike, np.ndarray)) or xio.is_zarr_array(out)):
        raise TypeError(f"out: expected None, a numpy array, a zarr array or a path, got {describe(out)}")
    out_chunks = None
    if xio.is_zarr_array(out):
        if out.ndim != nd + 1:
            raise ValueError(f"out: expected shape (C_out, *{shape}), got {out.shape}")
        if np.dtype(out.dtype).kind != "f":  # an integer array would truncate the prediction silently
            raise TypeError(f"out: expected a floating dtype (the prediction is float32), got {out.dtype}")
        out_chunks = tuple(out.chunks[1:])

    # normaliser
    if normalize is None:
        normalizer = None
    elif isinstance(normalize, str):
        if normalize != "quantile":
            raise ValueError(f"normalize: expected None, 'quantile' or a callable, got {normalize!r}")
        normalizer = None  # computed below, after the cheap checks
    elif callable(normalize):
        normalizer = normalize
    else:
        raise TypeError(f"normalize: expected None, 'quantile' or a callable, got {describe(normalize)}")

    # probe the model on a tiny input: output spatial shape, channel count, activation bytes per voxel
    probe_shape = tuple(min(align_up(max(2 * f, 8), f), align_up(n, f)) for f, n in zip(factor, shape))
    probe = np.zeros((1, in_ch) + probe_shape, np.float32)
    cost = None
    try:
        if runner.is_torch and tile_shape is None:  # measure the activation cost on the same pass
            from ._tile_shape import ActivationCounter

            with ActivationCounter(model) as counter:
                y = runner(probe)
            cost = (counter.bytes + probe.nbytes) / float(np.prod(probe_shape))
        else:
            y = runner(probe)
    except Exception as exc:
        raise ValueError(f"model: failed on a probe input of shape {probe.shape}: {exc}") from exc
    if y.ndim != nd + 2 or tuple(y.shape[2:]) != probe_shape or y.shape[0] != 1:
        raise ValueError(f"model: the output must have the input's spatial shape; input {probe.shape} gave "
                         f"output {tuple(y.shape)}")
    out_ch = int(y.shape[1])

    # tile shape
    if tile_shape is None:
        from ._tile_shape import find_tile_shape

        multiple = tuple(math.lcm(f, c) if out_chunks else f for f, c in zip(factor, out_chunks or factor))
        tile = find_tile_shape(model, image_shape=shape, in_channels=in_ch, halo=halo_v, multiple_of=multiple,
                               device=runner.device, bytes_per_voxel=cost)
    else:
        tile = _per_axis(tile_shape, nd, "tile_shape", minimum=1)
        bad = [ax for ax in range(nd) if tile[ax] % factor[ax] and tile[ax] < shape[ax]]
        if bad:
            raise ValueError(f"tile_shape: must be a multiple of the network's down-sampling factor {factor}, "
                             f"got {tile}")
    tile = tuple(min(t, align_up(n, f)) for t, n, f in zip(tile, shape, factor))
    small = [ax for ax in range(nd) if tile[ax] < shape[ax] and tile[ax] < 2 * halo_v[ax] + 1]
    if small:
        raise ValueError(f"tile_shape: every tiled axis needs at least 2 * halo + 1 = "
                         f"{tuple(2 * h + 1 for h in halo_v)} voxels, got {tile}")
    if out_chunks is not None:
        bad = [ax for ax in range(nd) if tile[ax] % out_chunks[ax] and tile[ax] < shape[ax]]
        if bad:
            raise ValueError(f"tile_shape: tiles must be whole multiples of out's chunks {out_chunks} so that "
                             f"writes are chunk-aligned, got {tile}")

    if normalize == "quantile":
        normalizer = quantile_normalizer(image, channel_axis=caxis)

    out_shape = (out_ch,) + shape
    existed = out is not None and (not isinstance(out, (str, os.PathLike))
                                   or os.path.exists(os.path.join(os.fspath(out), "0", "zarr.json")))
    if out is None:
        target, out_kind = np.zeros(out_shape, np.float32), "numpy"
    elif isinstance(out, np.ndarray):
        if out.shape != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {out.shape}")
        if out.dtype.kind != "f":
            raise TypeError(f"out: expected a floating dtype, got {out.dtype}")
        target, out_kind = out, "numpy"
    elif xio.is_zarr_array(out):
        if tuple(out.shape) != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {tuple(out.shape)}")
        target, out_kind = out, "zarr"
    else:
        chunks = (out_ch,) + tuple(_largest_divisor_at_most(t, 128) for t in tile)
        axes = ("c", "z", "y", "x") if nd == 3 else ("c", "y", "x")
        prov = xio.provenance_attributes("xmodal.predict_tiled", {
            "tile_shape": tile, "halo": halo_v, "factor": factor, "blend": blend,
            "normalize": normalize if isinstance(normalize, (str, type(None))) else repr(normalize),
            "model": type(model).__qualname__,
        }, {"image": getattr(getattr(image, "store", None), "root", None) and str(image.store.root)})
        target = xio.create_ome_zarr_image(out, out_shape, np.float32, axes=axes, chunks=chunks,
                                           name="prediction", provenance=prov, writer=_WRITER)
        out_kind = "zarr"

    tiles = make_tiles(shape, tile, halo_v, factor)
    ledger = signature = prior = None
    if out_kind == "zarr":
        # Everything besides the input's values that changes the written result. The input's values
        # enter per tile: every tile's marker holds the digest of the window it was computed from.
        signature = xio.job_signature({
            "function": _WRITER, "tile": tile, "halo": halo_v, "factor": factor, "shape": shape,
            "image_shape": tuple(int(s) for s in image.shape), "dtype": str(image.dtype), "caxis": caxis,
            "model": model_token(model), "out_channels": out_ch, "blend": blend, "batch_size": batch,
            "device": runner.device.split(":")[0],
            "normalize": normalize if normalize is None or isinstance(normalize, str) else "callable",
            "normalizer": None if normalizer is None else xio.object_token(normalizer),
        })
        prior = xio.output_status(target) if existed else None  # None: created by this run
        where = xio.local_store_path(target)
        if resume and blend == "crop" and where is not None:
            ledger = xio.BlockLedger(where.rstrip("/") + ".xmodal-progress", signature)
    return _Plan(runner=runner, image=image, caxis=caxis, ndim=nd, shape=shape, in_channels=in_ch,
                 out_channels=out_ch, tile=tile, halo=halo_v, factor=factor, tiles=tiles, blend=blend,
                 batch_size=batch, normalizer=normalizer, out=target, out_kind=out_kind, ledger=ledger,
                 progress=progress, signature=signature, prior_status=prior)


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


def _write_crop(plan: _Plan, t: Tile, y: np.ndarray, digest: str | None = None):
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


def _read_batch(plan: _Plan, batch):
    """Read a batch's windows: (network input or None when every tile is done from this input, digests).

    Batches are formed over all tiles, as in an uninterrupted run, and a batch is reused only as a
    whole, so a resumed run predicts every tile in the same batch as a fresh run would (bitwise
    identical results even where a kernel's rounding depends on the batch).
    """
    raws = [_read_raw(plan.image, plan.caxis, t.window) for t in batch]
    digests = [xio.data_digest(r) if plan.hash_inputs else None for r in raws]
    if plan.ledger is not None and all(plan.ledger.is_done(t.index, d) for t, d in zip(batch, digests)):
        return None, digests
    return np.stack([_prepare(r, plan.caxis, plan.normalizer) for r in raws]), digests


def _run_local(plan: _Plan):
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
            y = plan.runner(x)
            t_model += time.perf_counter() - t0
            if y.shape[:2] != (len(b), plan.out_channels) or y.shape[2:] != x.shape[2:]:
                raise ValueError(f"model: output of shape {y.shape} for an input of shape {x.shape}")
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
    for sl in _iter_regions(out.shape, step):
        xio.write_region(out, sl, acc[sl])


def _iter_regions(shape, block):
    import itertools

    for starts in itertools.product(*[range(0, n, b) for n, b in zip(shape, block)]):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))


# ----------------------------------------------------------------------------------- dask run

_WORKER_RUNNERS: dict = {}


def _dask_task(tiles, model, image, caxis, normalizer, out, ledger_dir, device, token, hash_inputs):
    """Run on a dask worker: predict ``tiles`` and write them to ``out`` (zarr) or return the crops.

    Returns ``(index, crop or None, input digest, reused)`` per tile; a batch whose tiles are all
    recorded as done from the same input bytes is not predicted again.
    """
    ledger = xio.BlockLedger.attach(ledger_dir) if ledger_dir else None
    raws = [_read_raw(image, caxis, t.window) for t in tiles]
    digests = [xio.data_digest(r) if hash_inputs else None for r in raws]
    if ledger is not None and all(ledger.is_done(t.index, d) for t, d in zip(tiles, digests)):
        return [(t.index, None, d, True) for t, d in zip(tiles, digests)]
    runner = _WORKER_RUNNERS.get(token)
    if runner is None or runner.model is not model:
        runner = Runner(model, device)
        _WORKER_RUNNERS.clear()
        _WORKER_RUNNERS[token] = runner
    x = np.stack([_prepare(r, caxis, normalizer) for r in raws])
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


def _run_dask(plan: _Plan, client, device):
    if plan.blend != "crop":
        raise ValueError(f"blend: a dask client runs blend='crop' only (blended modes accumulate across tiles), "
                         f"got {plan.blend!r}")
    from .._optional import optional_import

    distributed = optional_import("distributed", purpose="predict_tiled(client=...)")
    if isinstance(client, str):  # a scheduler address: connect for this run only
        with distributed.Client(client) as own:
            return _run_dask(plan, own, device)
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


def _input_digest(plan: _Plan) -> str:
    """The run's input digest: the digests of every tile's window, in tile order (reads, no model)."""
    return xio.combine_digests(xio.data_digest(_read_raw(plan.image, plan.caxis, t.window)) for t in plan.tiles)


# ----------------------------------------------------------------------------------- public API

def predict_tiled(model, image, *, tile_shape=None, halo="auto", blend="crop", batch_size="auto", device="auto",
                  normalize=None, channel_axis=0, out=None, client=None, progress=True, resume=True):
    """Predict a network over an image of any size, tile by tile, with a halo of real context.

    The output is cut into a grid of tiles aligned to the network's total down-sampling factor.
    Every tile is predicted from an input window reaching ``halo`` voxels beyond it (window edges
    inside the volume aligned to the factor; at the volume border only real data, no padding), and
    with ``blend="crop"`` only the tile itself is kept. For a network whose output depends on its
    input only through its receptive field (eval-mode BatchNorm, no InstanceNorm or per-window
    statistics) and ``halo >= receptive field / 2`` the result equals the whole-volume prediction
    (up to float rounding of the convolution algorithms, ~1e-6 in float32).

    Parameters
    ----------
    model : torch.nn.Module or callable
        The network, in the mode it should run (call ``model.eval()`` first). Called on float32
        batches ``(B, C_in, *spatial)``; must return ``(B, C_out, *spatial)`` (same spatial shape).
        A callable that is not a torch module gets and returns numpy arrays.
    image : numpy array, zarr array, dask array or path to a zarr array / OME-Zarr image
        2-D or 3-D, with or without a channel axis. For a torch module the number of spatial axes
        comes from its first convolution; for other callables 2 or 3 axes are spatial and a 4-D
        image has a channel axis.
    tile_shape : sequence of int, optional
        Output tile in voxels per spatial axis, a multiple of the down-sampling factor (axes longer
        than the image are clipped). ``None``: the largest tile that fits memory
        (:func:`find_tile_shape`).
    halo : "auto", int or sequence of int
        Context read around every tile (voxels). ``"auto"``: half the analytic receptive field,
        rounded up to the down-sampling factor (:func:`receptive_field`).
    blend : {"crop", "linear", "gaussian"}
        ``"crop"`` keeps the tile's part of each window prediction (exact; out of core; distributed).
        The blended modes weight whole window predictions (linear ramp across the halo, or a
        Gaussian centred on the tile) with the native accumulation kernel and normalise by the sum
        of weights; they keep one float32 accumulator of the output's size in memory.
    batch_size : "auto" or int
        Windows per forward pass (windows of equal shape are batched). ``"auto"``: 1 on the CPU,
        4 on a GPU.
    device : {"auto", "cpu", "cuda"}
        Where a torch module runs (``"auto"``: where its parameters are if on a GPU, else a GPU when
        torch sees one, else the CPU). The module is moved there.
    normalize : None, "quantile" or callable
        ``"quantile"``: per channel, clip to the global 1 % and 98 % quantiles computed out of core
        (histogram, within ``(max - min) / 65536``) and scale to [0, 1]. A callable is applied to
        every float32 window ``(C, *window)``; it must be point-wise for the result to stitch.
    channel_axis : int or None
        The image's channel axis when it has one.
    out : None, numpy array, zarr array or path
        Where to write ``(C_out, *spatial)``. ``None``: a new float32 numpy array. A path: a new
        OME-Zarr (NGFF 0.5) image with provenance attributes, chunks dividing the tile (reopened
        when it exists with the same layout, so an interrupted run resumes). A zarr array's chunks
        must divide the tile (chunk-aligned writes: parallel writers never share a chunk). A given
        array must have a floating dtype (an integer one would truncate the prediction).
    client : dask.distributed.Client or str, optional
        Run the tiles on its workers (``blend="crop"`` only); the model is scattered once to every
        worker. With a zarr ``out`` the workers write directly, else the crops come back to the
        caller. Identical to the local result.
    progress : bool
        Progress bar on a TTY (needs tqdm).
    resume : bool
        With a zarr ``out`` in a local store (crop mode), record finished tiles as marker files in
        ``<array path>.xmodal-progress`` (written after the tile's chunks, each holding the SHA-256
        of the input window the tile was computed from) and, on a rerun with the same model and
        parameters, skip a tile only when its window, read again, has the same digest (so a rerun
        on other data recomputes). The markers are removed once the run completes. A zarr ``out``
        that is already complete for the same parameters and the same input (digest of all
        windows, recorded in its completion status) is returned without writing.

    Returns
    -------
    numpy.ndarray or zarr.Array
        The prediction ``(C_out, *spatial)``: ``out`` when given (the zarr array for a path).

    Notes
    -----
    A volume axis that is not a multiple of the down-sampling factor: windows still start on the
    factor grid and the last window ends at the volume's end, so the last window has the same
    remainder as the whole volume. A network that pads internally to the factor then gives the
    whole-volume result; one that does not would fail on the whole volume too (and fails here
    with the model's error). Peak memory (crop mode): about ``3 * batch_size + 2`` windows (two batches
    read ahead by one reader thread, one being predicted, ``batch_size + 1`` being written by one
    writer thread) plus the network's activations on one batch, whatever the image size.

    A zarr output is flagged incomplete (attribute ``xmodal_output``) before its first chunk
    changes and complete after its last one, so a killed run leaves an array that
    :func:`xmodal.io.open_array` refuses to read as if it were finished. A path ``out`` is written
    in place: a previous output there is overwritten tile by tile (flagged incomplete meanwhile).
    """
    if client is not None and not isinstance(client, str):
        if not hasattr(client, "scatter") or not hasattr(client, "submit"):
            raise TypeError(f"client: expected a dask.distributed.Client or a scheduler address, got {describe(client)}")
    plan = plan_prediction(model, image, tile_shape=tile_shape, halo=halo, blend=blend, batch_size=batch_size,
                           device=device, normalize=normalize, channel_axis=channel_axis, out=out,
                           progress=progress, resume=resume, for_dask=client is not None)
    t0 = time.perf_counter()
    if plan.out_kind == "zarr":
        prior = plan.prior_status or {}
        if (resume and prior.get("complete") and prior.get("signature") == plan.signature
                and prior.get("input_digest") and _input_digest(plan) == prior["input_digest"]):
            # The output already holds this job's result for this very input: nothing to write.
            if plan.ledger is not None:
                plan.ledger.clear()
            plan.stats.update(tiles=len(plan.tiles), skipped=len(plan.tiles))
            log.info("predict_tiled: %s is complete for this input and these parameters; reused",
                     xio.local_store_path(plan.out))
            return plan.out
        xio.mark_incomplete(plan.out, _WRITER)  # before the first chunk changes
    if client is not None:
        result = _run_dask(plan, client, device)
    else:
        result = _run_local(plan)
    if plan.out_kind == "zarr":
        digests = plan.stats.get("digests", {})
        xio.mark_complete(plan.out, _WRITER, signature=plan.signature,
                          input_digest=xio.combine_digests(digests[t.index] for t in plan.tiles))
        if plan.prior_status is not None and not plan.prior_status.get("complete"):
            where = xio.local_store_path(plan.out)  # what the killed run resumed here left
            xio.remove_temporaries(where)
            if where is not None and isinstance(out, (str, os.PathLike)):  # and in the OME-Zarr group
                xio.remove_temporaries(os.path.dirname(where.rstrip("/")), recursive=False)
    plan.stats.pop("digests", None)
    if plan.ledger is not None:
        plan.ledger.clear()
    log.info("predict_tiled: %d tiles of %s (halo %s, factor %s), %d skipped as done, %.3f s",
             len(plan.tiles), plan.tile, plan.halo, plan.factor, plan.stats.get("skipped", 0),
             time.perf_counter() - t0)
    return result
