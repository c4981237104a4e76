"""Receptive field and down-sampling factor of a network, analytic and measured."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .._optional import optional_import
from .._validation import as_bool, describe
from ._measure import eval_mode, extent, gradient_support, measure_factor, param_device, param_dtype
from ._mixing import Scan
from ._probe import GlobalFieldError, ReceptiveFieldError, adaptive_modules, global_field_error, measured_only
from ._probe import settle, statistics_fixed
from ._receptive_jit import NotAnalysable, ScriptWalk, is_script_module
from ._script_axes import script_signature
from ._walks import walk_fx, walk_hooks

__all__ = ["GlobalFieldError", "ReceptiveField", "ReceptiveFieldError", "measure_receptive_field", "receptive_field"]

log = logging.getLogger("xmodal.inference")


@dataclass
class ReceptiveField:
    """Receptive field of a network along each spatial axis (voxels, axis order of the image).

    Attributes
    ----------
    size : tuple of int
        Extent of the input region an output voxel depends on (analytic, along the longest path;
        conservative: an upper bound for the layers it knows).
    factor : tuple of int
        Total down-sampling factor (product of strides down to the coarsest level). Tiles and input
        windows are aligned to it.
    halo : tuple of int
        The halo ``halo="auto"`` uses: ``ceil(size / 2)`` rounded up to a multiple of ``factor``.
    plantseg_halo : tuple of int
        PlantSeg's rule, sum of ``stride_level * dilation * floor(k / 2)`` over the convolutions
        (transposed ones included, poolings not) of the longest path (for a U-Net: sum of ``2**level * floor(k/2)``); a cross-check
        of ``halo`` (it omits the one-sided reach of strided layers, so it is at most ``halo``).
    measured : tuple of int or None
        Extent of the non-zero input gradient of the centre output voxel (``check=True``, or the
        gradient probe of operations the walk could not judge); it can be smaller than ``size``
        (e.g. transposed convolutions reach fewer inputs than their kernel).
    method : str
        How the layers were walked: ``"fx"`` (torch.fx graph, branches merged by maximum),
        ``"hooks"`` (execution order of the leaf modules, treated as one chain: an upper bound for
        branched networks), ``"torchscript"`` (the graph of a ``torch.jit.script`` / ``torch.jit.trace``
        module, branches merged by maximum) or ``"gradient"`` (no known layer found, e.g. functional
        convolutions: the measured extent is used, with factor 1; or layers that could not be walked,
        e.g. a TorchScript convolution whose weight is computed at run time: the extent of the union
        of the gradient supports of three random inputs plus ``factor - 1``, with the factor measured
        by shift equivariance).
    layers : int
        Number of layers with a spatial extent that were walked.
    notes : list of str
        How the field was obtained beyond the walk (fallbacks, gradient probes and their results),
        and what keeps tiles from equalling the whole-volume prediction exactly although the field
        is finite (``F.instance_norm`` / ``F.group_norm``: statistics of each window;
        ``align_corners=True`` up-sampling; circular padding), each also logged as a warning.
    """

    size: tuple
    factor: tuple
    halo: tuple
    plantseg_halo: tuple
    measured: tuple | None = None
    method: str = "fx"
    layers: int = 0
    notes: list = field(default_factory=list)


def spatial_signature(model) -> tuple[int | None, int | None]:
    """(spatial ndim, input channels) from the first convolution of a torch module, else (None, None).

    The channels are the image's: where the first convolution has a multiple of ``2**ndim`` input
    channels, the first convolution the forward pass reaches may be fed by a space-to-depth (YOLO's
    Focus, PixelUnshuffle) or by channels the network adds (coordinates): two forward passes stopped
    at that convolution tell how many image channels feed it (:func:`_image_channels`). A traced
    network gives them by the input it was traced with."""
    torch = optional_import("torch", purpose="tiled inference with torch models")
    nn = torch.nn
    if is_script_module(model, torch):
        traced = _traced_channels(model)
        if traced is not None:
            return traced
    for m in model.modules():
        if is_script_module(m, torch):  # scripted or traced: by the eager class it was compiled from
            nd, c = script_signature(m)
            if nd is not None:
                return nd, c
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            nd = 2 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) else 3
            return nd, _image_channels(model, nd, torch)
    return None, None


class _Reached(Exception):
    """Raised by a forward pre-hook when the first convolution is reached (the pass stops there)."""


def _image_channels(model, nd, torch) -> int:
    """The image channels that give the first convolution the forward pass reaches its ``in_channels``
    (``a * channels + b`` channels reach it: from two passes on 64² / 16³ voxels, stopped there); the
    first convolution's ``in_channels`` where the passes cannot tell. Only where that is a multiple of
    ``2**nd`` (a space-to-depth by 2 multiplies the channels by it): other networks are not run."""
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
                                                           if nd == 2 else (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    first = convs[0]
    lazy = getattr(torch.nn.parameter, "is_lazy", lambda p: False)
    if first.in_channels % 2 ** nd or any(lazy(p) for p in model.parameters()):  # lazy: a pass would set them
        return int(first.in_channels)

    def reach(channels):
        seen = []

        def hook(mod, inputs):
            seen.append((mod, inputs[0].shape[1] if inputs and torch.is_tensor(inputs[0]) else None))
            raise _Reached

        hooks = [m.register_forward_pre_hook(hook) for m in convs]
        x = torch.zeros((1, channels) + (64 if nd == 2 else 16,) * nd, dtype=param_dtype(model, torch),
                        device=param_device(model, torch))
        try:
            with eval_mode(model), torch.no_grad():
                model(x)
        except Exception:  # noqa: BLE001 - _Reached, or the network's own error before any convolution
            pass
        finally:
            for h in hooks:
                h.remove()
        return seen[0] if seen else (None, None)

    conv, got = reach(first.in_channels)
    if conv is None or got is None or got == conv.in_channels:
        return int(first.in_channels if conv is None else conv.in_channels)
    conv2, got2 = reach(first.in_channels + 1)
    a = (got2 - got) if conv2 is conv and got2 is not None else 0
    if a <= 0 or (conv.in_channels - got) % a:
        return int(first.in_channels)
    c = first.in_channels + (conv.in_channels - got) // a
    return int(c) if c >= 1 else int(first.in_channels)


def _traced_channels(model):
    """(ndim, channels) of the input a traced network was traced with (None when unknown)."""
    try:
        sizes = list(model.graph.inputs())[1].type().sizes()
    except Exception:  # noqa: BLE001 - a scripted network: its inputs have no sizes
        return None
    if sizes is None or len(sizes) not in (4, 5) or not isinstance(sizes[1], int):
        return None
    return len(sizes) - 2, int(sizes[1])


def is_torch_module(model) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(model, torch.nn.Module)


def measure_receptive_field(model, ndim: int, *, in_channels: int | None = None, size: int | None = None,
                            factor: tuple | None = None) -> tuple:
    """Extent of the non-zero input gradient of the centre output voxel (sum over output channels).

    The network runs in eval mode on a random input of ``size`` voxels per axis (default 64 in 2-D,
    40 in 3-D, rounded to the down-sampling factor); its training flags are restored afterwards.
    Returns one extent per axis; an extent equal to ``size`` means the field is at least that large.
    """
    torch = optional_import("torch", purpose="receptive field measurement")
    if in_channels is None:
        _, in_channels = spatial_signature(model)
        in_channels = in_channels or 1
    factor = factor or (1,) * ndim
    if size is None:
        size = 64 if ndim == 2 else 40
    shape = tuple(int(math.ceil(size / f) * f) for f in factor)
    with eval_mode(model):
        g = gradient_support(model, in_channels, shape, 0, torch)
    return extent(g)


def _measured_field(model, ndim, in_channels, reason, notes) -> ReceptiveField:
    """Size (union of the gradient supports of 3 random inputs) and factor (shift equivariance) of a
    network whose layers cannot be walked, on the smallest window (64 * k in 2-D, 32 * k in 3-D
    voxels per axis, k <= 4) the network runs on and that holds its field."""
    torch = optional_import("torch")
    base = 64 if ndim == 2 else 32
    errors = []
    for size in (base, 2 * base, 3 * base, 4 * base):
        try:
            with eval_mode(model), statistics_fixed(model, torch) as probed:
                g = np.logical_or.reduce([gradient_support(probed, in_channels, (size,) * ndim, seed, torch,
                                                           fixed=True) for seed in range(3)])
                measured = extent(g)
                if any(m >= size // 2 for m in measured):
                    raise ValueError(f"the input gradient reaches across half the {size}-voxel window (a "
                                     f"normalisation over the whole input?)")
                factor = measure_factor(model, ndim, in_channels, size, measured, torch)
        except Exception as exc:  # noqa: BLE001 - the model's own error at this size: try a larger one
            msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            if errors and errors[-1][1] == msg:  # the same error whatever the size: stop
                break
            errors.append((size, msg))
            continue
        # max pooling passes the gradient to one input of each window: up to factor - 1 voxels unseen
        size = tuple(m + f - 1 for m, f in zip(measured, factor))
        halo = tuple(int(math.ceil(math.ceil(s / 2) / f) * f) for s, f in zip(size, factor))
        notes = notes + [f"the layers could not be walked ({reason}); the size is the measured gradient "
                         f"extent plus factor - 1, the factor is measured"]
        log.info("receptive_field: %s: size %s, factor %s", notes[-1], size, factor)
        return ReceptiveField(size=size, factor=factor, halo=halo, plantseg_halo=halo, measured=measured,
                              method="gradient", layers=0, notes=notes)
    tried = "; ".join(f"{size} voxels: {msg}" for size, msg in errors)
    raise ReceptiveFieldError(f"model: expected a network whose receptive field can be walked or measured, got "
                              f"{_what(model)}: its layers could not be walked ({reason}) and measuring the "
                              f"input gradient failed ({tried}). Give halo= explicitly (voxels of context on "
                              f"each side of a tile)")


def _what(model, short=False) -> str:
    name = getattr(model, "original_name", None)
    if isinstance(name, str):
        return f"a TorchScript module compiled from {name}"
    return f"a {type(model).__name__} module" if short else describe(model)


def _walk(model, ndim, in_channels, torch, notes):
    """(final state, widest state, layers, method, scan) of the walk that suits ``model``."""
    if is_script_module(model, torch):  # scripted or traced: its TorchScript graph
        walk = ScriptWalk(ndim)
        try:
            return (*walk.run(model), "torchscript", Scan(walk.global_ops, walk.unseen, walk.inexact))
        except NotAnalysable:
            raise
        except Exception as exc:  # a graph the walk does not know
            raise NotAnalysable(f"{type(exc).__name__}: {exc}") from exc
    try:
        final, best, n, scan = walk_fx(model, ndim, in_channels, torch)
        return final, best, n, "fx", scan
    except NotAnalysable:  # a slice with a step of a permuted tensor, a TorchScript part: measured
        raise
    except Exception as exc:  # not traceable: fall back to the execution order
        notes.append(f"torch.fx tracing failed ({type(exc).__name__}); walked the execution order")
        final, best, n, scan = walk_hooks(model, ndim, in_channels, torch)
        return final, best, n, "hooks", scan


def receptive_field(model, ndim: int, *, check: bool = False, in_channels: int | None = None) -> ReceptiveField:
    """Receptive field of ``model`` along each of its ``ndim`` spatial axes.

    The analytic value walks the layers (convolution, transposed convolution, max/average pooling,
    up-sampling; kernel, stride, dilation) along the longest path of the network: through its
    torch.fx graph when it can be traced (branches merge by maximum), else through the execution
    order of its leaf modules recorded by forward hooks (treated as one chain, an upper bound).
    TorchScript modules (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``) are walked
    through their graphs (submodules by ``original_name``, traced layers by their operators'
    constants); what no walk can read is measured (``method="gradient"``).
    Padding does not change the field. For every layer ``r += (k - 1) * dilation * jump`` and
    ``jump *= stride`` (``/= stride`` for transposed convolutions and up-sampling); a slice with a
    step on a spatial axis (``x[..., ::2, ::2]``, a space-to-depth) is a layer of stride ``step``.

    Operations that combine every position of a spatial axis make the field the whole input:
    adaptive pooling, and in the torch.fx graph functions, tensor methods and modules such as
    ``x.mean(dim=(2, 3))``, ``x.amax(-1)``, ``(x - x.mean()) / x.std()``, a softmax along a
    spatial axis, ``F.interpolate(size=...)`` to a fixed size, ``flatten`` then ``Linear`` or
    attention over all positions (found by following which input axes each tensor's axes hold;
    reductions over the channel or batch axis stay local). Operations a walk cannot judge (unknown
    functions, axes computed at run time; for the hook walk the tensor operations outside torch's
    modules, for TorchScript products and reductions / softmax whose axes it cannot tell) are
    checked with a gradient probe (the statistics of ``instance_norm`` / ``group_norm`` held fixed,
    inside TorchScript too): a field that grows with the probe window is global (confirmed in float64
    when the gradient beyond the field is at the level of float32 rounding, as an FFT leaves it), a
    local one wider than the walked field replaces it, and one whose window corners read the opposite
    edge (a circular convolution) gets a warning. Each probe is listed in ``notes``. Normalisations by statistics of each window
    written as functions are treated as the InstanceNorm / GroupNorm modules: a warning and a note,
    not an error.

    Parameters
    ----------
    model : torch.nn.Module
        The network (any mode; it is not modified).
    ndim : {2, 3}
        Number of spatial axes.
    check : bool
        Also measure the field from gradients (:func:`measure_receptive_field`) and store it in
        ``measured``; a warning is logged when it exceeds the analytic value.
    in_channels : int, optional
        Input channels for the hook walk and the gradient check (default: from the first convolution).

    Returns
    -------
    ReceptiveField

    Raises
    ------
    GlobalFieldError
        For a global field (a :class:`ReceptiveFieldError` and ``ValueError``): the message names
        the operations and what to do (one tile, a local operation, or ``halo=`` in voxels).
    ReceptiveFieldError
        When the layers can be neither walked nor measured.
    """
    check = as_bool(check, "check")
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3 spatial axes, got {ndim!r}")
    optional_import("torch", purpose="receptive_field")  # without torch: ImportError naming the extra
    if not is_torch_module(model):
        raise TypeError(f"model: expected a torch.nn.Module for an analytic receptive field, got {describe(model)}")
    from ._tta_torch import DihedralTTA

    if isinstance(model, DihedralTTA):  # the inner network's field, widened by the offsets' reach
        inner = receptive_field(model.model, ndim, check=check, in_channels=in_channels)
        return model.widen(inner)
    members = getattr(model, "parallel_members", None)
    if members is not None:  # outputs combined voxel by voxel (an ensemble): the widest member's field
        return _widest([receptive_field(m, ndim, check=check, in_channels=in_channels) for m in members])
    torch = optional_import("torch")
    if in_channels is None:
        _, in_channels = spatial_signature(model)
        in_channels = in_channels or 1
    notes = []
    try:
        final, best, n, method, scan = _walk(model, ndim, in_channels, torch, notes)
    except NotAnalysable as exc:  # e.g. a TorchScript layer with parameters known only at run time
        return _measured_field(model, ndim, in_channels, str(exc), notes)
    factor = tuple(max(1, int(round(v))) for v in best.j) if n else (1,) * ndim
    if scan.global_ops or (n and not np.all(np.isfinite(final.r))):  # adaptive pooling, x.mean((2, 3)), ...
        raise global_field_error(_what(model, True), scan.global_ops or adaptive_modules(model, torch), factor)
    if scan.inexact:  # per-window statistics written as functions, align_corners=True: a warning
        listed = "; ".join(scan.inexact[:4]) + (f"; and {len(scan.inexact) - 4} more" if len(scan.inexact) > 4 else "")
        notes.append(f"{listed}: the tiles will not equal the whole-volume prediction exactly (tile_mismatch "
                     f"measures by how much)")
        log.warning("model: %s; larger tiles reduce the difference", notes[-1])
    if n == 0:  # no layer the walk knows (e.g. functional convolutions): measure from gradients
        size, measured = measured_only(model, ndim, in_channels, notes, _what(model, True))
        halo = tuple(int(math.ceil(m / 2)) for m in size)
        return ReceptiveField(size=size, factor=factor, halo=halo, plantseg_halo=halo, measured=measured,
                              method="gradient", layers=0, notes=notes)
    size = tuple(int(math.ceil(v)) for v in final.r)
    measured = None
    if scan.unseen:  # operations the walk cannot judge: a gradient probe decides
        size, measured = settle(model, ndim, in_channels, size, factor, scan.unseen, notes, _what(model, True))
    halo = tuple(int(math.ceil(math.ceil(s / 2) / f) * f) for s, f in zip(size, factor))
    plantseg = tuple(int(math.ceil(v)) for v in final.p)
    if check:
        msize = max(64 if ndim == 2 else 40, int(max(size)) + 2 * max(factor))
        measured = measure_receptive_field(model, ndim, in_channels=in_channels, size=msize, factor=factor)
        if any(m > s for m, s in zip(measured, size)):
            log.warning("measured receptive field %s exceeds the analytic %s", measured, size)
            notes.append("measured field exceeds the analytic one")
    return ReceptiveField(size=size, factor=factor, halo=halo, plantseg_halo=plantseg, measured=measured,
                          method=method, layers=int(n), notes=notes)


def _widest(fields: list) -> ReceptiveField:
    """The field of networks whose outputs are combined voxel by voxel: per axis the largest size,
    the least common multiple of the factors and the halo of that size on that factor."""
    if not fields:
        raise ValueError("model: an ensemble without members has no receptive field")
    size = tuple(max(f.size[a] for f in fields) for a in range(len(fields[0].size)))
    factor = tuple(math.lcm(*(f.factor[a] for f in fields)) for a in range(len(size)))
    halo = tuple(int(math.ceil(math.ceil(s / 2) / f) * f) for s, f in zip(size, factor))
    plantseg = tuple(max(f.plantseg_halo[a] for f in fields) for a in range(len(size)))
    measured = (tuple(max(f.measured[a] for f in fields) for a in range(len(size)))
                if all(f.measured is not None for f in fields) else None)
    notes = [f"{len(fields)} parallel members (outputs combined voxel by voxel): the widest member's field"]
    return ReceptiveField(size=size, factor=factor, halo=halo, plantseg_halo=plantseg, measured=measured,
                          method=fields[0].method, layers=max(f.layers for f in fields),
                          notes=notes + [n for f in fields for n in f.notes])
