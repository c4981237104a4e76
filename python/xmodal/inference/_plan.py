"""Planning a tiled prediction: every check and every choice made before the first tile runs.

:func:`plan_prediction` runs these steps in order, each a function below:

    inputs (model, image layout, options)  -> _check_inputs
    receptive field, factor and halo       -> geometry
    output target's layout                 -> _check_out
    normaliser option                      -> _normalizer_option
    probe of the model on a tiny input     -> _probe
    tile shape                             -> _choose_tile
    (global normalisation statistics)      -> quantile_normalizer
    output array                           -> _make_target
    resume state (signature, ledger)       -> _resume_state
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import io as xio
from .._validation import as_bool, as_progress, describe, per_axis
from ._grid import align_up, blend_blocks, make_tiles
from ._model import Runner, model_token, per_window_statistics
from ._normalize import quantile_normalizer
from ._receptive import GlobalFieldError, ReceptiveFieldError, is_torch_module, receptive_field, spatial_signature

_BLENDS = ("crop", "linear", "gaussian")
WRITER = "xmodal.predict_tiled"


@dataclass
class Plan:
    """Everything a run needs: the model runner, the image and its layout, the tile grid, the
    output target and the resume state."""

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
    progress: object = True  # bool or callable progress(done, total, stage)
    signature: str | None = None  # job signature (zarr outputs): parameters that change the result
    prior_status: dict | None = None  # the zarr output's completion status before this run (None: new)
    stats: dict = field(default_factory=dict)
    blocks: tuple | None = None  # blended modes: the accumulator block (a multiple of a zarr out's chunks)

    @property
    def hash_inputs(self) -> bool:
        """Whether windows are hashed (zarr outputs: resume checks and the completion record)."""
        return self.out_kind == "zarr"


# ----------------------------------------------------------------------------------- windows

def as_image(image):
    """The image as a numpy, zarr or dask array (a path opens a zarr array / OME-Zarr image)."""
    if isinstance(image, (str, os.PathLike)):
        return xio.open_array(image, mode="r")
    if isinstance(image, np.ndarray) or xio.is_zarr_array(image) or _is_dask(image):
        return image
    if hasattr(image, "__array__") and hasattr(image, "shape"):
        return np.asarray(image)
    raise TypeError(f"image: expected a numpy, zarr or dask array (or a zarr path), got {describe(image)}")


def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "compute") and hasattr(x, "chunks")


def layout(model, image, channel_axis):
    """(spatial ndim, channel axis or None, input channels expected by the model or None)."""
    nd_model, in_ch = spatial_signature(model) if is_torch_module(model) else (None, None)
    nd_img = image.ndim
    if channel_axis is not None and not (isinstance(channel_axis, numbers.Integral) and not isinstance(channel_axis, bool)):
        raise TypeError(f"channel_axis: expected an integer or None, got {channel_axis!r}")
    if channel_axis is not None and nd_img > 0 and not -nd_img <= channel_axis < nd_img:
        raise ValueError(f"channel_axis: expected None or an axis of the {nd_img}-D image (-{nd_img} to "
                         f"{nd_img - 1}), got {channel_axis}")
    if nd_model is not None:
        if nd_img == nd_model:
            return nd_model, None, in_ch
        if nd_img == nd_model + 1:
            if channel_axis is None:
                raise ValueError(f"image: has {nd_img} axes for a {nd_model}-D model but channel_axis is None; give "
                                 f"the channel axis of a channel image (a 2-D model's (z, y, x) stack is "
                                 f"predicted slice by slice by `xmodal predict` and xmodal.segment)")
            return nd_model, int(channel_axis) % nd_img, in_ch
        raise ValueError(f"image: expected {nd_model} spatial axes (the model is {nd_model}-D), with or without "
                         f"a channel axis; got shape {tuple(image.shape)}")
    if nd_img in (2, 3):
        return nd_img, None, None
    if nd_img == 4:
        if channel_axis is None:
            raise ValueError("image: a 4-D image needs channel_axis")
        return 3, int(channel_axis) % nd_img, None
    raise ValueError(f"image: expected a 2-D or 3-D image, with or without a channel axis; got shape {tuple(image.shape)}")


def read_raw(image, caxis, window):
    """The image's values in ``window`` (all channels), as stored (numpy); ValueError for NaN or infinity.

    Every window is checked as it is read (no extra pass over a zarr or dask image)."""
    if caxis is None:
        idx = window
    else:
        idx = window[:caxis] + (slice(None),) + window[caxis:]
    x = image[idx]
    if hasattr(x, "compute"):
        x = x.compute(scheduler="sync")
    x = np.asarray(x)
    check_finite(x, tuple(sl.start or 0 for sl in idx))
    return x


def check_finite(x: np.ndarray, origin) -> None:
    """ValueError naming ``image`` and the first non-finite voxel of ``x`` (placed at ``origin``)."""
    if x.dtype.kind not in "fc" or np.isfinite(x).all():
        return
    pos = np.unravel_index(int(np.flatnonzero(~np.isfinite(x))[0]), x.shape)
    at = tuple(int(o + p) for o, p in zip(origin, pos))
    raise ValueError(f"image: expected finite values (a NaN or infinity spreads through the network's "
                     f"receptive field), got {x[pos]} at index {at}")


def _check_finite_in_memory(image, slab_voxels: int = 1 << 24) -> None:
    """The whole-image check before any tile runs, for an in-memory numpy image (slab by slab along
    axis 0); memory-mapped, zarr and dask images are checked window by window as they are read."""
    if type(image) is not np.ndarray or image.dtype.kind not in "fc" or image.ndim == 0:
        return
    step = max(1, slab_voxels // max(1, int(np.prod(image.shape[1:]))))
    for start in range(0, image.shape[0], step):
        check_finite(image[start:start + step], (start,) + (0,) * (image.ndim - 1))


def prepare(x, caxis, normalizer):
    """A raw window as the network's float32 input ``(C, *window)``, normalised."""
    x = np.moveaxis(x, caxis, 0) if caxis is not None else x[None]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if normalizer is not None:
        y = normalizer(x)
        y = np.asarray(y, dtype=np.float32)
        if y.shape != x.shape:
            raise ValueError(f"normalize: the callable changed the window shape {x.shape} to {y.shape}")
        if not np.isfinite(y).all():  # e.g. a per-window z-score of a constant window: 0 / 0
            raise ValueError(f"normalize: expected finite values from the callable, got NaN or infinity for a "
                             f"window of shape {x.shape} (min {float(x.min())}, max {float(x.max())})")
        x = np.ascontiguousarray(y)
    return x


def read_window(image, caxis, window, normalizer):
    """The network input ``(C, *window)`` of one window: read, then normalised."""
    return prepare(read_raw(image, caxis, window), caxis, normalizer)


# ----------------------------------------------------------------------------------- the plan

def plan_prediction(model, image, *, tile_shape, halo, blend, batch_size, device, normalize, channel_axis,
                    out, progress, resume) -> Plan:
    """Validate everything and prepare the run (no tile is predicted here); see the module doc."""
    image, nd, caxis, shape, in_ch = _check_inputs(model, image, blend=blend, channel_axis=channel_axis)
    progress, resume = as_progress(progress, "progress"), as_bool(resume, "resume")
    factor, halo_v = geometry(model, nd, in_ch, halo, warn_small=True)
    runner = Runner(model, device)
    batch = _batch_size(batch_size, runner)
    out_chunks = _check_out(out, nd, shape)
    _check_not_aliased(out, image)
    _warn_per_window_statistics(model)
    normalizer = _normalizer_option(normalize)
    out_ch, cost = _probe(runner, model, factor, shape, in_ch, measure_cost=tile_shape is None)
    tile = _choose_tile(model, tile_shape, shape=shape, factor=factor, halo=halo_v, in_ch=in_ch,  # blended: any chunks
                        out_chunks=out_chunks if blend == "crop" else None, device=runner.device, cost=cost)
    if normalize == "quantile":  # the expensive pass over the image, after every cheap check
        normalizer = quantile_normalizer(image, channel_axis=caxis)
    target, out_kind, existed = _make_target(out, (out_ch,) + shape, tile, image=image, model=model, halo=halo_v,
                                             factor=factor, blend=blend, normalize=normalize)
    plan = Plan(runner=runner, image=image, caxis=caxis, ndim=nd, shape=shape, in_channels=in_ch,
                out_channels=out_ch, tile=tile, halo=halo_v, factor=factor, tiles=make_tiles(shape, tile, halo_v, factor),
                blend=blend, batch_size=batch, normalizer=normalizer, out=target, out_kind=out_kind, progress=progress)
    if blend != "crop":
        plan.blocks = blend_blocks(shape, tile, tuple(target.chunks[1:]) if out_kind == "zarr" else None)
    if out_kind == "zarr":
        _resume_state(plan, normalize=normalize, existed=existed, resume=resume)
    return plan


def _check_inputs(model, image, *, blend, channel_axis):
    """(image as an array, spatial ndim, channel axis, spatial shape, input channels)."""
    if not callable(model):
        raise TypeError(f"model: expected a torch module or a callable on arrays, got {describe(model)}")
    image = as_image(image)
    if blend not in _BLENDS:
        raise ValueError(f"blend: expected one of {_BLENDS}, got {blend!r}")
    nd, caxis, model_in = layout(model, image, channel_axis)
    shape = tuple(int(s) for i, s in enumerate(image.shape) if i != caxis)
    in_ch = int(image.shape[caxis]) if caxis is not None else 1
    if model_in is not None and model_in != in_ch:
        raise ValueError(f"image: the model expects {model_in} input channel(s), the image has {in_ch} "
                         f"(shape {tuple(image.shape)}, channel_axis={caxis})")
    if np.dtype(image.dtype).kind not in "biuf":
        raise TypeError(f"image: expected a real numeric dtype, got {image.dtype}")
    if any(s < 1 for s in shape):
        raise ValueError(f"image: empty spatial shape {shape}")
    _check_finite_in_memory(image)
    return image, nd, caxis, shape, in_ch


def geometry(model, nd, in_ch, halo, *, warn_small=False):
    """(down-sampling factor, halo in voxels): from the analytic receptive field of a torch module.
    ``warn_small``: log a warning when a given halo is less than half the analytic receptive field."""
    factor = (1,) * nd
    try:
        rf = receptive_field(model, nd, in_channels=in_ch) if is_torch_module(model) else None
    except ReceptiveFieldError as exc:  # global, or neither walked nor measured: a given halo is used
        if isinstance(halo, str):
            raise
        factor = getattr(exc, "factor", None) or factor  # a global field: tiles on the walked factor grid
        differ = ": they differ from the whole-volume prediction unless one tile covers the image" \
            if isinstance(exc, GlobalFieldError) else ""
        logging.getLogger("xmodal.inference").warning("%s; using the given halo, tiles aligned to %s voxel(s)%s",
                                                      exc, factor, differ)
        rf = None
    factor = rf.factor if rf is not None else factor
    if not isinstance(halo, str):
        given = per_axis(halo, nd, "halo")
        if warn_small and rf is not None and any(g < math.ceil(r / 2) for g, r in zip(given, rf.size)):
            logging.getLogger("xmodal.inference").warning(
                "halo: %s is less than half the network's analytic receptive field %s (halo='auto' gives %s): "
                "the tiles may differ from the whole-image prediction near their edges", given, rf.size, rf.halo)
        return factor, given
    if halo != "auto":
        raise ValueError(f"halo: expected 'auto' or voxel counts, got {halo!r}")
    if rf is None:
        raise ValueError("halo: 'auto' needs a torch module (analytic receptive field); give the halo in voxels")
    return factor, rf.halo


def _batch_size(batch_size, runner) -> int:
    if batch_size == "auto":
        return 4 if runner.device.startswith("cuda") else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size: expected 'auto' or an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_out(out, nd, shape):
    """Check what can be checked of ``out`` before the probe; the spatial chunks of a zarr ``out``."""
    if out is not None and not (isinstance(out, (str, os.PathLike, np.ndarray)) or xio.is_zarr_array(out)):
        raise TypeError(f"out: expected None, a numpy array, a zarr array or a path, got {describe(out)}")
    if isinstance(out, (str, os.PathLike)) and os.path.exists(out):
        where = os.fspath(out)
        if not os.path.isdir(where):
            raise ValueError(f"out: expected the path of an OME-Zarr image (a folder), got {where!r}, which is an "
                             f"existing file")
        if os.listdir(where) and not any(os.path.exists(os.path.join(where, n)) for n in ("zarr.json", ".zgroup", ".zarray")):
            raise ValueError(f"out: expected a new path or an OME-Zarr image, got {where!r}, a folder that is not "
                             f"a zarr store")
    if not xio.is_zarr_array(out):
        return None
    if out.ndim != nd + 1:
        raise ValueError(f"out: expected shape (C_out, *{shape}), got {out.shape}")
    if np.dtype(out.dtype).kind != "f":  # an integer array would truncate the prediction silently
        raise TypeError(f"out: expected a floating dtype (the prediction is float32), got {out.dtype}")
    return tuple(out.chunks[1:])


def _check_not_aliased(out, image) -> None:
    """ValueError when ``out`` would overwrite ``image`` (shared memory, the same zarr array, or an
    OME-Zarr path holding it): later windows would read predictions instead of the input."""
    if out is None:
        return
    shared = False
    if isinstance(out, np.ndarray) and isinstance(image, np.ndarray) and np.may_share_memory(out, image):
        try:
            shared = bool(np.shares_memory(out, image, max_work=1 << 20))
        except getattr(np, "exceptions", np).TooHardError:  # numpy < 1.25: np.TooHardError
            shared = True
    elif xio.is_zarr_array(out) and xio.is_zarr_array(image):
        a, b = xio.local_store_path(out), xio.local_store_path(image)
        shared = (os.path.realpath(a) == os.path.realpath(b) if a is not None and b is not None
                  else out.store is image.store and str(out.path) == str(image.path))
    elif isinstance(out, (str, os.PathLike)) and xio.is_zarr_array(image):
        where, held = os.path.realpath(os.fspath(out)), xio.local_store_path(image)
        shared = held is not None and (os.path.realpath(held) + os.sep).startswith(where + os.sep)
    if shared:
        raise ValueError(f"out: expected an array or path apart from the image (predictions written there "
                         f"would be read back as input by later windows), got {describe(out)}, which holds "
                         f"the image")


def _warn_per_window_statistics(model) -> None:
    """Log a warning when the model normalises by statistics of the window it sees (no stitching
    reproduces the whole-volume prediction then)."""
    found = per_window_statistics(model) if is_torch_module(model) else []
    if found:
        logging.getLogger("xmodal.inference").warning(
            "model: %s normalise(s) by statistics of each window: the tiles will not equal the whole-volume "
            "prediction (tile_mismatch measures by how much); larger tiles reduce the difference", ", ".join(found))


def _normalizer_option(normalize):
    """The normaliser callable, or None (also for "quantile", computed later, after the cheap checks)."""
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize != "quantile":
            raise ValueError(f"normalize: expected None, 'quantile' or a callable, got {normalize!r}")
        return None
    if callable(normalize):
        return normalize
    raise TypeError(f"normalize: expected None, 'quantile' or a callable, got {describe(normalize)}")


def _probe(runner, model, factor, shape, in_ch, *, measure_cost: bool):
    """Run the model on a tiny input: (output channels, activation bytes per voxel or None)."""
    probe_shape = tuple(min(align_up(max(2 * f, 8), f), align_up(n, f)) for f, n in zip(factor, shape))
    probe = np.zeros((1, in_ch) + probe_shape, np.float32)
    cost = None
    try:
        if runner.is_torch and measure_cost:  # measure the activation cost on the same pass
            from ._tile_shape import ActivationCounter

            with ActivationCounter(model) as counter:
                y = runner(probe)
            cost = (counter.bytes + probe.nbytes) / float(np.prod(probe_shape))
        else:
            y = runner(probe)
    except Exception as exc:
        raise ValueError(f"model: failed on a probe input of shape {probe.shape}: {exc}") from exc
    if y.ndim != len(shape) + 2 or tuple(y.shape[2:]) != probe_shape or y.shape[0] != 1:
        raise ValueError(f"model: the output must have the input's spatial shape; input {probe.shape} gave "
                         f"output {tuple(y.shape)}")
    return int(y.shape[1]), cost


def _choose_tile(model, tile_shape, *, shape, factor, halo, in_ch, out_chunks, device, cost) -> tuple:
    """The output tile: given (checked against the factor, the halo and ``out``'s chunks) or the
    largest that fits memory (:func:`find_tile_shape`)."""
    nd = len(shape)
    if tile_shape is None:
        from ._tile_shape import find_tile_shape

        if not is_torch_module(model):
            raise ValueError(f"tile_shape: the largest tile that fits memory is measured on a torch module; give "
                             f"the tile in voxels for {describe(model)}, got None")

        multiple = tuple(math.lcm(f, c) if out_chunks else f for f, c in zip(factor, out_chunks or factor))
        tile = find_tile_shape(model, image_shape=shape, in_channels=in_ch, halo=halo, multiple_of=multiple,
                               device=device, bytes_per_voxel=cost)
    else:
        tile = per_axis(tile_shape, nd, "tile_shape", minimum=1)
        if any(tile[ax] % factor[ax] and tile[ax] < shape[ax] for ax in range(nd)):
            raise ValueError(f"tile_shape: must be a multiple of the network's down-sampling factor {factor}, "
                             f"got {tile}")
    tile = tuple(min(t, align_up(n, f)) for t, n, f in zip(tile, shape, factor))
    if any(tile[ax] < shape[ax] and tile[ax] < 2 * halo[ax] + 1 for ax in range(nd)):
        raise ValueError(f"tile_shape: every tiled axis needs at least 2 * halo + 1 = "
                         f"{tuple(2 * h + 1 for h in halo)} voxels, got {tile}")
    if out_chunks is not None and any(tile[ax] % out_chunks[ax] and tile[ax] < shape[ax] for ax in range(nd)):
        raise ValueError(f"tile_shape: tiles must be whole multiples of out's chunks {out_chunks} so that "
                         f"writes are chunk-aligned, got {tile}")
    return tile


def _largest_divisor_at_most(n, cap):
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _make_target(out, out_shape, tile, *, image, model, halo, factor, blend, normalize):
    """(the array receiving the prediction, its kind "numpy" / "zarr", whether it existed before)."""
    existed = out is not None and (not isinstance(out, (str, os.PathLike))
                                   or os.path.exists(os.path.join(os.fspath(out), "0", "zarr.json")))
    if out is None:
        return np.zeros(out_shape, np.float32), "numpy", existed
    if isinstance(out, np.ndarray) or xio.is_zarr_array(out):
        if tuple(out.shape) != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {tuple(out.shape)}")
        if np.dtype(out.dtype).kind != "f":
            raise TypeError(f"out: expected a floating dtype, got {out.dtype}")
        return out, "numpy" if isinstance(out, np.ndarray) else "zarr", existed
    nd = len(out_shape) - 1
    chunks = (out_shape[0],) + tuple(_largest_divisor_at_most(t, 128) for t in tile)
    prov = xio.provenance_attributes(WRITER, {
        "tile_shape": tile, "halo": halo, "factor": factor, "blend": blend,
        "normalize": normalize if isinstance(normalize, (str, type(None))) else repr(normalize),
        "model": type(model).__qualname__,
    }, {"image": getattr(getattr(image, "store", None), "root", None) and str(image.store.root)})
    target = xio.create_ome_zarr_image(out, out_shape, np.float32, axes=("c",) + ("z", "y", "x")[-nd:],
                                       chunks=chunks, name="prediction", provenance=prov, writer=WRITER)
    return target, "zarr", existed


def _resume_state(plan: Plan, *, normalize, existed: bool, resume: bool) -> None:
    """A zarr output's job signature, prior completion status and (local store, ``resume``) the ledger
    of finished tiles (crop mode) or finished output blocks (blended modes)."""
    image = plan.image
    # Everything besides the input's values that changes the written result. The input's values
    # enter per tile: every tile's marker holds the digest of the window it was computed from.
    blocks = {} if plan.blocks is None else {"blocks": plan.blocks}  # blended: the ledger records blocks
    plan.signature = xio.job_signature({
        **blocks, "function": WRITER, "tile": plan.tile, "halo": plan.halo, "factor": plan.factor, "shape": plan.shape,
        "image_shape": tuple(int(s) for s in image.shape), "dtype": str(image.dtype), "caxis": plan.caxis,
        "model": model_token(plan.runner.model), "out_channels": plan.out_channels, "blend": plan.blend,
        "batch_size": plan.batch_size, "device": plan.runner.device.split(":")[0],
        "normalize": normalize if normalize is None or isinstance(normalize, str) else "callable",
        "normalizer": None if plan.normalizer is None else xio.object_token(plan.normalizer),
    })
    plan.prior_status = xio.output_status(plan.out) if existed else None  # None: created by this run
    where = xio.local_store_path(plan.out)
    if resume and where is not None:
        plan.ledger = xio.BlockLedger(where.rstrip("/") + ".xmodal-progress", plan.signature)
