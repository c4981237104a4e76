"""The safety net of the receptive field walks: a gradient probe of what they could not judge, and
the errors for networks without a usable field.

A walk reads layers; operations written as functions or tensor methods are judged by
:mod:`._mixing` (torch.fx graphs), recorded by name (forward hooks) or read from the graph
(TorchScript). What none of them can judge is checked by measurement: the extent of the input
gradient of the centre output voxel on a window holding the walked field, then on a larger one. An
extent beyond the walked field that grows with the window belongs to an operation that combines
every position (a global field: :class:`GlobalFieldError`); one that does not is a local field the
walk missed, and the measured extent is used.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import numpy as np

from .._optional import optional_import
from ._layers import eager_kind
from ._measure import eval_mode, extent, gradient_support
from ._ops import POINTWISE_MODULES, category, may_mix, normalise

log = logging.getLogger("xmodal.inference")

#: largest probe window (voxels): beyond it the probe is skipped and a note says so
_CAP = {2: 1536 * 1536, 3: 128 ** 3}


class ReceptiveFieldError(ValueError):
    """A network whose receptive field can neither be walked nor measured (give the halo in voxels)."""


class GlobalFieldError(ReceptiveFieldError):
    """A network with operations that combine every position of a spatial axis (global pooling,
    ``x.mean((2, 3))``, normalisation by statistics of the whole input, attention over all
    positions, ``flatten`` then ``Linear``): its receptive field is the whole input, so no halo
    makes tiles equal the whole-volume prediction.

    Attributes
    ----------
    operations : list of str
        The operations found (descriptions naming the function, method or module).
    factor : tuple of int
        The down-sampling factor of the walked layers (tiles are aligned to it when a halo is given).
    """

    def __init__(self, message, *, operations=(), factor=None):
        super().__init__(message)
        self.operations = list(operations)
        self.factor = tuple(factor) if factor is not None else None


def global_field_error(what: str, operations, factor) -> GlobalFieldError:
    """The error for a network (described by ``what``) whose ``operations`` combine every position."""
    ops = list(operations) or ["adaptive (global) pooling"]
    listed = "; ".join(ops[:5]) + (f"; and {len(ops) - 5} more" if len(ops) > 5 else "")
    return GlobalFieldError(
        f"model: expected a network whose outputs depend on a bounded neighbourhood (a finite receptive "
        f"field) for tiled prediction, got {what} with operation(s) that combine every position of a "
        f"spatial axis: {listed}. Its receptive field is the whole input, so no halo makes the tiles equal "
        f"the whole-volume prediction. Predict the image in one tile (tile_shape= its spatial shape, "
        f"halo=0) if it fits in memory, make the operation local (e.g. a pooling with a fixed window), or "
        f"give halo= in voxels to accept tiles that differ from the whole-volume prediction (tile_mismatch "
        f"measures by how much)", operations=ops, factor=factor)


def adaptive_modules(model, torch) -> list:
    """Descriptions of the adaptive pooling modules of ``model`` (for the error message)."""
    found = []
    for name, m in model.named_modules():
        cls = getattr(m, "original_name", None) or type(m).__name__
        if eager_kind(m, torch) == "adaptive" or str(cls).startswith("Adaptive"):
            found.append(f"{cls} module {name!r}")
    return found


@dataclass
class Probe:
    """``verdict``: ``"local"`` (within the walked field), ``"wider"`` (a larger local field),
    ``"global"`` (grows with the window) or ``"skipped"`` (``detail`` says why); ``measured``: the
    gradient extent per axis; ``windows``: the window shapes probed."""

    verdict: str
    measured: tuple | None
    windows: tuple
    detail: str = ""


def probe_field(model, nd: int, in_channels: int, size, factor) -> Probe:
    """Probe ``model`` against the walked field ``size`` (voxels per axis) on the ``factor`` grid."""
    torch = optional_import("torch", purpose="receptive field measurement")
    base = 64 if nd == 2 else 32
    w1 = tuple(f * math.ceil(max(base, int(s) + 2 * f + 2) / f) for s, f in zip(size, factor))
    w2 = tuple(f * math.ceil((w + max(2 * f, w // 2)) / f) for w, f in zip(w1, factor))
    if math.prod(w2) > _CAP[nd]:
        return Probe("skipped", None, (w1, w2), f"the probe windows {w1} and {w2} exceed {_CAP[nd]} voxels")
    try:
        with eval_mode(model), _frozen(model):
            m1 = _extent(model, in_channels, w1, torch)
            if all(m <= s for m, s in zip(m1, size)):
                return Probe("local", m1, (w1,))
            m2 = _extent(model, in_channels, w2, torch)
    except Exception as exc:  # noqa: BLE001 - the network's own error on the probe window
        return Probe("skipped", None, (w1, w2), f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    if any(a > s and b > a for a, b, s in zip(m1, m2, size)):
        return Probe("global", m2, (w1, w2))
    return Probe("wider", m1, (w1, w2))


def _extent(model, in_channels, shape, torch) -> tuple:
    """Extent of the union of the input gradient supports of two random inputs."""
    return extent(np.logical_or.reduce([gradient_support(model, in_channels, shape, seed, torch)
                                        for seed in (0, 1)]))


@contextlib.contextmanager
def _frozen(model):
    """Parameters without gradients while probing: the caller's ``.grad`` stay as they were."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def settle(model, nd, in_channels, size, factor, unseen, notes, what):
    """The field size after probing the operations ``unseen`` by the walk, and the measured
    extent (None when the probe could not run); GlobalFieldError for a global field."""
    listed = "; ".join(unseen[:4]) + (f"; and {len(unseen) - 4} more" if len(unseen) > 4 else "")
    p = probe_field(model, nd, in_channels, size, factor)
    if p.verdict == "global":
        raise global_field_error(what, [f"one of {listed} (the walk cannot judge them; a gradient probe: the "
                                        f"input gradient of the centre output voxel spans {p.measured} voxels "
                                        f"on a {p.windows[-1]} window and grows with the window)"], factor)
    if p.verdict == "wider":
        size = tuple(max(s, m + f - 1) for s, m, f in zip(size, p.measured, factor))
        notes.append(f"the walk could not judge {listed}; a gradient probe measured {p.measured} voxels, more "
                     f"than the walked field: the size is the measured extent plus factor - 1")
        log.info("receptive_field: %s", notes[-1])
    elif p.verdict == "local":
        notes.append(f"the walk could not judge {listed}; a gradient probe on {p.windows[0]} voxels found the "
                     f"field within the walked one")
    else:
        notes.append(f"the walk could not judge {listed} and the gradient probe did not run ({p.detail}): "
                     f"check the field with receptive_field(check=True) or tile_mismatch")
        log.warning("receptive_field: %s", notes[-1])
    return size, p.measured


def measured_only(model, nd, in_channels, notes, what):
    """(size, measured) of a network without a layer the walk knows (e.g. functional convolutions):
    the probed gradient extent, factor 1; GlobalFieldError for a global field."""
    p = probe_field(model, nd, in_channels, (1,) * nd, (1,) * nd)
    if p.verdict == "global":
        raise global_field_error(what, [f"an operation the walk cannot see (a gradient probe: the input gradient "
                                        f"of the centre output voxel spans {p.measured} voxels on a "
                                        f"{p.windows[-1]} window and grows with the window)"], (1,) * nd)
    if p.verdict == "skipped":
        raise ReceptiveFieldError(f"model: expected a network whose receptive field can be walked or measured, "
                                  f"got {what}: no layer the walk knows and the gradient probe failed "
                                  f"({p.detail}). Give halo= explicitly (voxels of context on each side of a tile)")
    notes.append("no known layer found; the size is the measured gradient extent, factor 1")
    return p.measured, p.measured


@contextlib.contextmanager
def recording(model, torch):
    """Record (normalised names of) the torch functions and tensor methods a forward pass calls
    outside torch's own modules, and torch's modules the walk does not apply; yields the list of
    those that may combine positions, or None where torch cannot record them."""
    mode = getattr(getattr(torch, "overrides", None), "TorchFunctionMode", None)
    if mode is None:
        yield None
        return
    names: list = []
    depth = [0]

    class Recorder(mode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if depth[0] == 0:
                name = normalise(getattr(func, "__name__", ""))
                if name in ("max", "min") and ("other" in kwargs or (len(args) > 1 and torch.is_tensor(args[1]))):
                    name = "maximum"
                if may_mix(name) or category(name) == "spatial":  # the hook walk applies modules only
                    names.append(f"{name}()")
            return func(*args, **kwargs)

    def enter(m, inputs):
        depth[0] += 1
        if depth[0] == 1 and eager_kind(m, torch) is None and not _acts_pointwise(m, torch.nn):
            names.append(f"{type(m).__name__} module")

    def leave(m, inputs, output):
        depth[0] -= 1

    own = [m for m in model.modules() if type(m).__module__.startswith("torch.nn.modules") and not list(m.children())]
    hooks = [m.register_forward_pre_hook(enter) for m in own] + [m.register_forward_hook(leave) for m in own]
    try:
        with Recorder():
            yield names
    finally:
        for h in hooks:
            h.remove()


def _acts_pointwise(m, nn) -> bool:
    """Whether a torch.nn module acts value by value (or by the existing policy of normalisations)."""
    mixing = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU, nn.MultiheadAttention, nn.LayerNorm,
              getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(m, nn.Identity) or (type(m).__module__ in POINTWISE_MODULES and not isinstance(m, mixing))
