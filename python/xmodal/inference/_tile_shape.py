"""Largest tile that fits memory."""

from __future__ import annotations

import logging
import numbers

import numpy as np

from .._optional import optional_import
from .._validation import describe, per_axis, positive_float, positive_int
from ._grid import align_down, align_up
from ._model import kept_state, resolve_torch_device
from ._measure import param_device as _param_device
from ._measure import param_dtype as _param_dtype
from ._receptive import GlobalFieldError, is_torch_module, receptive_field
from ._receptive import spatial_signature

log = logging.getLogger("xmodal.inference")


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class ActivationCounter:
    """Context manager summing the bytes of every leaf module's output during forward passes (of
    every operator's output when the model holds TorchScript modules, which take no hooks)."""

    def __init__(self, model):
        self.model = model
        self.bytes = 0
        self._hooks = []
        self._mode = None

    def _hook(self, mod, inp, out):
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if hasattr(o, "numel"):
                self.bytes += o.numel() * o.element_size()

    def __enter__(self):
        import torch

        if any(isinstance(m, torch.jit.ScriptModule) for m in self.model.modules()):
            # TorchScript modules take no hooks: count every operator's new output instead (an upper bound)
            self._mode = _op_output_counter(self)
            self._mode.__enter__()
            return self
        self._hooks = [m.register_forward_hook(self._hook) for m in self.model.modules()
                       if len(list(m.children())) == 0]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(*exc)
        return False


def _op_output_counter(counter):
    """A torch dispatch mode adding the bytes of every operator output that is not a view of its
    inputs to ``counter.bytes`` (it sees the operators a TorchScript module runs)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpOutputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if hasattr(a, "untyped_storage")}
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if hasattr(o, "untyped_storage") and o.untyped_storage().data_ptr() not in inputs:
                    counter.bytes += o.numel() * o.element_size()
            return out

    return OpOutputs()


def activation_bytes_per_voxel(model, ndim: int, in_channels: int, factor, *, shape=None) -> float:
    """Measured bytes per input voxel of one forward pass: the input plus every leaf module's output.

    A forward pass on a small input (default ``8 * factor`` voxels per axis in 2-D, ``4 * factor``
    in 3-D) records the size of every intermediate output with forward hooks. Their sum is an upper
    bound of the live memory of an inference pass (torch frees intermediates it no longer needs).
    The model runs in its mode; a model in training mode gets its buffers back afterwards.
    """
    torch = optional_import("torch")
    mult = 8 if ndim == 2 else 4
    shape = tuple(shape) if shape is not None else tuple(mult * max(f, 4) for f in factor)
    x = torch.zeros((1, in_channels) + shape, dtype=_param_dtype(model, torch), device=_param_device(model, torch))
    with kept_state(model), ActivationCounter(model) as counter, torch.inference_mode():
        model(x)
    return (counter.bytes + x.numel() * x.element_size()) / float(np.prod(shape))


def _shrink_to(limit_voxels, shape, halo, multiple, minimum):
    """Largest tile (multiple of ``multiple``, at most ``shape`` rounded up) whose window fits."""
    tile = [align_up(n, m) for n, m in zip(shape, multiple)]

    def window(t):
        return float(np.prod([min(ti + 2 * h, align_up(n, m)) for ti, h, n, m in zip(t, halo, shape, multiple)]))

    while window(tile) > limit_voxels:
        # shrink the axis with the largest tile by about 1/8 (at least one step of ``multiple``)
        ax = int(np.argmax([t / m if t > mn else -1 for t, m, mn in zip(tile, multiple, minimum)]))
        if tile[ax] <= minimum[ax]:
            break
        new = max(minimum[ax], align_down(int(tile[ax] * 7 / 8), multiple[ax]))
        if new >= tile[ax]:
            new = tile[ax] - multiple[ax]
        tile[ax] = max(new, minimum[ax])
    return tuple(int(t) for t in tile)


def find_tile_shape(model, *, image_shape=None, ndim=None, in_channels=None, halo="auto", multiple_of=None,
                    device="auto", memory_budget=None, max_shape=None, bytes_per_voxel=None):
    """Largest output tile whose input window (tile + 2 halo) fits memory, aligned to the factor.

    Parameters
    ----------
    model : torch.nn.Module
        The network, in the mode it will run (a model in training mode gets its buffers, e.g.
        BatchNorm running statistics, back afterwards).
    image_shape : sequence of int, optional
        Spatial shape of the image; tiles never exceed it (rounded up to the factor). Default: a
        cube of ``max_shape``.
    ndim, in_channels : int, optional
        Spatial axes and input channels (default: from the first convolution).
    halo : "auto" or int or sequence of int
        The halo the tiles will be read with (voxels). ``"auto"`` raises :class:`GlobalFieldError`
        for a network with a global field; a given halo is used with the walked factor.
    multiple_of : sequence of int, optional
        Tiles are multiples of this (default: the down-sampling factor).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        CPU: the window must fit ``memory_budget`` bytes (default: a quarter of the available RAM,
        at most 1 GiB) at the measured per-voxel activation cost
        (:func:`activation_bytes_per_voxel`). GPU: start from the free device memory and probe a
        forward pass, shrinking on out-of-memory errors.
    memory_budget : int, optional
        Bytes for one window's forward pass.
    max_shape : int, optional
        Edge of the search cube without ``image_shape`` (default 1024 in 2-D, 256 in 3-D).
    bytes_per_voxel : float, optional
        Activation cost per input voxel when already measured (else measured here).

    Returns
    -------
    tuple of int
        The tile shape (voxels per spatial axis).

    Raises
    ------
    ValueError / TypeError
        Naming the argument: ``image_shape`` and ``multiple_of`` must be positive, ``halo``
        non-negative, ``memory_budget``, ``max_shape`` and ``bytes_per_voxel`` positive and finite.
    """
    optional_import("torch", purpose="find_tile_shape")  # without torch: ImportError naming the extra
    if not is_torch_module(model):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    nd_m, in_m = spatial_signature(model)
    if ndim is not None and (isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral)):
        raise TypeError(f"ndim: expected 2 or 3, got {describe(ndim)}")
    ndim = ndim or nd_m
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3, got {ndim!r}")
    in_channels = positive_int(in_channels, "in_channels", allow_none=True)
    in_channels = in_channels or in_m or 1
    memory_budget = positive_float(memory_budget, "memory_budget", allow_none=True)
    bytes_per_voxel = positive_float(bytes_per_voxel, "bytes_per_voxel", allow_none=True)
    max_shape = positive_int(max_shape, "max_shape", allow_none=True)
    if image_shape is not None:
        image_shape = per_axis(image_shape, ndim, "image_shape", minimum=1)
    if multiple_of is not None:
        multiple_of = per_axis(multiple_of, ndim, "multiple_of", minimum=1)
    if isinstance(halo, str):
        if halo != "auto":
            raise ValueError(f"halo: expected 'auto' or voxel counts, got {halo!r}")
    else:
        halo = per_axis(halo, ndim, "halo", minimum=0)
    rf, factor = None, None
    if multiple_of is None or isinstance(halo, str) or bytes_per_voxel is None:
        try:
            rf = receptive_field(model, ndim, in_channels=in_channels)
        except GlobalFieldError as exc:  # no finite halo: a given one is used, on the walked factor grid
            if isinstance(halo, str):
                raise
            factor = exc.factor
    factor = rf.factor if rf is not None else factor or tuple(int(m) for m in multiple_of)
    multiple = tuple(int(m) for m in (multiple_of or factor))
    if isinstance(halo, str):
        halo = tuple(int(h) for h in rf.halo)
    if image_shape is None:
        image_shape = ((max_shape or (1024 if ndim == 2 else 256)),) * ndim
    minimum = tuple(min(align_up(2 * h + 1, m), align_up(n, m)) for h, m, n in zip(halo, multiple, image_shape))
    dev = resolve_torch_device(model, device)
    with kept_state(model):  # a model in training mode gets its buffers (BatchNorm statistics) back
        return _fit(model, dev, ndim=ndim, in_channels=in_channels, factor=factor, image_shape=image_shape,
                    halo=halo, multiple=multiple, minimum=minimum, memory_budget=memory_budget,
                    bytes_per_voxel=bytes_per_voxel)


def _fit(model, dev, *, ndim, in_channels, factor, image_shape, halo, multiple, minimum, memory_budget,
         bytes_per_voxel):
    """The measured and (on a GPU) probed tile of :func:`find_tile_shape`."""
    torch = optional_import("torch", purpose="find_tile_shape")
    cost = bytes_per_voxel or activation_bytes_per_voxel(model, ndim, in_channels, factor)
    if dev.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(dev))
        budget = memory_budget or int(0.7 * free)
    else:
        budget = memory_budget or min(_available_ram() // 4, 1 << 30)
    tile = _shrink_to(budget / cost, image_shape, halo, multiple, minimum)
    if dev.startswith("cuda"):
        model.to(dev)
        while True:
            win = tuple(min(t + 2 * h, align_up(n, m)) for t, h, n, m in zip(tile, halo, image_shape, multiple))
            try:
                x = torch.zeros((1, in_channels) + win, device=dev, dtype=_param_dtype(model, torch))
                with torch.inference_mode():
                    model(x)
                del x
                torch.cuda.empty_cache()
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                smaller = _shrink_to(0.7 * float(np.prod(win)), image_shape, halo, multiple, minimum)
                if smaller == tile:
                    raise MemoryError(f"find_tile_shape: even the smallest tile {tile} does not fit the GPU")
                tile = smaller
    log.info("find_tile_shape: %s (%.1f bytes/voxel, budget %.0f MiB, device %s)", tile, cost, budget / 2**20, dev)
    return tile
