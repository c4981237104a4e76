"""Receptive field arithmetic of one layer, shared by the eager walks (:mod:`._receptive`) and the
TorchScript walk (:mod:`._receptive_jit`).

A walk carries a :class:`State` per tensor: the receptive field ``r``, the jump ``j`` (input voxels
between neighbouring voxels of the tensor) and PlantSeg's halo ``p``, one value per spatial axis.
A layer is described by its kind (:data:`KINDS`) and an object with the attributes of the matching
``torch.nn`` module (``kernel_size``, ``stride``, ``dilation``; ``scale_factor`` and ``mode`` for
up-sampling; ``upscale_factor`` / ``downscale_factor`` for pixel shuffles): the module itself, a
scripted module's attributes or the constants of an operator.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

#: Layer kinds with a spatial extent.
KINDS = ("conv", "convt", "pool", "adaptive", "upsample", "shuffle", "unshuffle")

#: ``original_name`` of a TorchScript module (the eager class it was compiled from) -> layer kind.
SCRIPT_KINDS = {
    **{f"Conv{n}d": "conv" for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": "convt" for n in (1, 2, 3)},
    **{f"{p}Pool{n}d": "pool" for p in ("Max", "Avg") for n in (1, 2, 3)},
    **{f"Adaptive{p}Pool{n}d": "adaptive" for p in ("Max", "Avg") for n in (1, 2, 3)},
    "Upsample": "upsample", "UpsamplingNearest2d": "upsample", "UpsamplingBilinear2d": "upsample",
    "PixelShuffle": "shuffle", "PixelUnshuffle": "unshuffle",
}


def as_tuple(v, nd):
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return tuple(int(v[0]) for _ in range(nd))
        return tuple(int(x) for x in v)
    return tuple(int(v) for _ in range(nd))


class State:
    __slots__ = ("r", "j", "p")

    def __init__(self, r, j, p):
        self.r, self.j, self.p = r, j, p

    @staticmethod
    def start(nd):
        return State(np.ones(nd), np.ones(nd), np.zeros(nd))

    @staticmethod
    def merge(states, nd=None):
        states = [s for s in states if s is not None]
        if not states:
            return None
        r = np.max([s.r for s in states], axis=0)
        j = np.max([s.j for s in states], axis=0)
        p = np.max([s.p for s in states], axis=0)
        return State(r, j, p)


def eager_kind(mod, torch) -> str | None:
    """The layer kind of an eager module (by its class), None for layers without spatial extent."""
    nn = torch.nn
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "convt"
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return "pool"
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        return "adaptive"
    if isinstance(mod, nn.Upsample):
        return "upsample"
    if isinstance(mod, nn.PixelShuffle):
        return "shuffle"
    if isinstance(mod, nn.PixelUnshuffle):
        return "unshuffle"
    return None


def inexact_layer(mod, kind) -> str | None:
    """Why tiles cannot reproduce layer ``mod`` (of ``kind``) exactly although its field is finite,
    else None: up-sampling with ``align_corners=True`` places its samples by the length of the axis;
    circular padding wraps the opposite edge of the window, not of the image."""
    if kind == "upsample" and getattr(mod, "align_corners", None) is True and "nearest" not in str(mod.mode):
        return "with align_corners=True (it places its samples by the length of the axis)"
    if kind in ("conv", "convt") and getattr(mod, "padding_mode", "zeros") == "circular":
        return "with circular padding (it wraps the window's opposite edge, not the image's)"
    return None


def apply_layer(kind: str, spec, st: State, nd: int) -> State:
    """The state after a layer of ``kind`` whose parameters are the attributes of ``spec``."""
    if kind in ("conv", "convt"):
        k = np.array(as_tuple(spec.kernel_size, nd), float)
        s = np.array(as_tuple(spec.stride, nd), float)
        d = np.array(as_tuple(spec.dilation, nd), float)
        if kind == "conv":
            return State(st.r + (k - 1) * d * st.j, st.j * s, st.p + np.floor(k / 2) * d * st.j)
        return State(st.r + np.ceil((k - 1) * d / s) * st.j, st.j / s, st.p + np.floor(k / 2) * d * st.j / s)
    if kind == "pool":
        k = np.array(as_tuple(spec.kernel_size, nd), float)
        s = np.array(as_tuple(spec.stride if spec.stride is not None else spec.kernel_size, nd), float)
        d = np.array(as_tuple(getattr(spec, "dilation", 1), nd), float)
        return State(st.r + (k - 1) * d * st.j, st.j * s, st.p)
    if kind == "adaptive":
        return State(np.full(nd, np.inf), st.j, st.p)
    if kind == "upsample":
        return upsample(st, spec.scale_factor, spec.mode, nd)
    if kind == "shuffle":  # r x r channels to an r x r block: up-sampling, every voxel of a block alike
        return upsample(st, spec.upscale_factor, "nearest", nd)
    if kind == "unshuffle":  # an r x r block to r x r channels: a stride-r layer of kernel r
        r = np.array(as_tuple(spec.downscale_factor, nd), float)
        return State(st.r + (r - 1) * st.j, st.j * r, st.p)
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def slice_steps(index, rank) -> dict:
    """``{axis: (step, start)}`` of the slices with a step in the basic index ``index`` of a tensor
    of ``rank`` axes (``x[..., ::2, 1::2]``)."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    out, k = {}, 0
    for it in items:
        if it is Ellipsis:
            k += rank - consumed
        elif it is not None:
            if isinstance(it, slice) and it.step is not None and not (isinstance(it.step, int) and it.step == 1):
                out[k] = (it.step, it.start)
            k += 1
    return out


def strided_slice(steps: dict, nd: int):
    """The layer of slices with a step on spatial axes (``x[..., ::2, ::2]``, YOLO's "Focus"
    space-to-depth), ``steps`` ``{spatial axis: (step, start)}``: a stride-``step`` pooling whose
    kernel holds the voxels of one step (the slices of a space-to-depth start at 0 .. step - 1 and are
    concatenated) and the start, ``max(step, start + 1)``; None without a step above 1."""
    steps = {a: (int(s), st) for a, (s, st) in steps.items() if s is not None and int(s) > 1}
    if not steps:
        return None
    kernel, stride = [1] * nd, [1] * nd
    for a, (s, start) in steps.items():
        stride[a] = s
        kernel[a] = max(s, int(start) + 1) if isinstance(start, int) and 0 <= start < 1 << 30 else s
    return SimpleNamespace(kind="pool", kernel_size=tuple(kernel), stride=tuple(stride), dilation=1)


def upsample(st, scale, mode, nd):
    if scale is None:
        raise ValueError("receptive_field: up-sampling to a fixed size has no fixed receptive field")
    s = np.array(as_tuple(scale, nd) if not isinstance(scale, float) else [scale] * nd, float)
    # linear modes read two neighbours; and whatever reads several up-sampled voxels next may straddle
    # a boundary between input voxels: up to s - 1 voxels of the new grid more than a continuous
    # scaling suggests (e.g. a 3 x 3 convolution after two nearest x2 up-samplings)
    extra = (0.0 if mode == "nearest" else 1.0) + (1.0 - 1.0 / s)
    return State(st.r + extra * st.j, st.j / s, st.p)
